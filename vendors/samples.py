"""The kernel's sample mdev drivers (samples/vfio-mdev), as spec §3 describes them."""
from __future__ import annotations

import errno
from collections.abc import Sequence

from mdevfs.driver import Attribute, BaseDriver, MdevTypeSpec
from mdevfs.errors import fail
from mdevfs.model import MdevDevice, MdevType


class Mtty(BaseDriver):
    """mtty.c: a virtual serial card with MAX_MTTYS = 24 ports in one pool.

    ``mtty-1`` takes one port, ``mtty-2`` two; available_instances is
    ``avail_ports / nr_ports`` (24 and 12 at first); a create that does not fit
    is ENOSPC (since "vfio/mtty: Enforce available_instances", 2021). No
    description file. Each device has ``vendor/sample_mdev_dev``.
    Option: ``ports`` (default 24) resizes the pool.
    """

    name = "mtty"
    mdev_driver = "mtty"
    subsystem = ("class", "mtty")
    default_parent = "mtty"
    default_path = "devices/virtual/mtty/mtty"

    _TYPES = (MdevTypeSpec("1", pretty_name="Single port serial"),
              MdevTypeSpec("2", pretty_name="Dual port serial"))

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.avail_ports = int(self.options.get("ports", 24))

    def types(self) -> Sequence[MdevTypeSpec]:
        return self._TYPES

    @staticmethod
    def _ports(mtype: MdevType) -> int:
        return int(mtype.spec.sysfs_name)

    def available_instances(self, mtype: MdevType) -> int:
        return self.avail_ports // self._ports(mtype)

    def probe(self, mdev: MdevDevice) -> None:
        ports = self._ports(mdev.mdev_type)
        if ports > self.avail_ports:
            fail(errno.ENOSPC)
        self.avail_ports -= ports

    def remove(self, mdev: MdevDevice) -> None:
        self.avail_ports += self._ports(mdev.mdev_type)

    def device_attributes(self, mdev: MdevDevice) -> Sequence[Attribute]:
        return (Attribute("vendor/sample_mdev_dev", show=lambda: f"This is MDEV {mdev.uuid}"),)
