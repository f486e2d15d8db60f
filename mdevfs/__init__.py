"""mdevfs: a kernel-faithful emulator of the Linux mediated-device (mdev) sysfs interface."""
from .config import Topology, TopologyError
from .driver import Attribute, BaseDriver, MdevTypeSpec, Migration, VendorDriver
from .model import Host, MdevDevice, MdevType, Parent

__all__ = ["Attribute", "BaseDriver", "Host", "MdevDevice", "MdevType", "MdevTypeSpec",
           "Migration", "Parent", "Topology", "TopologyError", "VendorDriver"]
__version__ = "0.1.0"
