"""PCI functions and SR-IOV: the kernel objects a GPU is made of, pure and synchronous.

A :class:`PciFunction` is one ``/sys/bus/pci/devices/<bdf>``: its identity (the ids of its
configuration header), NUMA node, BARs, the PCI driver bound to it, its IOMMU group and,
when the driver registers it with VFIO, its vfio group and ``vfio-dev/vfio<N>``
(:class:`~mdevfs.model.Binding`). A physical function (PF) that has the SR-IOV capability
carries :class:`Sriov`; enabling virtual functions (VFs) creates them as functions of
their own, each with ``physfn`` and its own IOMMU group (drivers/pci/iov.c).

The PCI driver (:class:`PciDriver`) decides what ``sriov_configure`` does and which
attributes a function has beyond the PCI core's (NVIDIA's ``nvidia/`` group on a VF);
the sysfs view lives in :mod:`mdevfs.sysfs`, the host that owns every function in
:class:`mdevfs.model.Host`.
"""
from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from attrs import Factory, define, frozen

from .errors import fail

if TYPE_CHECKING:
    from .driver import Attribute
    from .model import Binding

@frozen
class PciIds:
    """The identity a function's configuration header gives it."""

    vendor: int
    device: int
    subsystem_vendor: int = 0
    subsystem_device: int = 0
    klass: int = 0
    revision: int = 0xA1


@frozen
class Bar:
    """One line of the ``resource`` file: start, end and flags, as pci_dev->resource[]."""

    start: int
    size: int
    flags: int

    @property
    def end(self) -> int:
        return self.start + self.size - 1 if self.size else 0


class PciDriver(Protocol):
    """The driver bound to a PCI function (``bus/pci/drivers/<name>``)."""

    #: the driver's name, as the ``driver`` link and DRIVER= show it
    name: str
    #: whether it registers each VF with VFIO (vfio-dev/vfioN, /dev/vfio/<group>)
    vfio_vfs: bool
    #: whether it has ``sriov_configure`` (without it a write to sriov_numvfs is ENOENT)
    configures_sriov: bool

    def sriov_configure(self, pf: PciFunction, num_vfs: int) -> None:
        """Before the host makes ``num_vfs`` VFs, or (with 0) before it takes them all away:
        refuse with OSError, or tear down what the driver built on them."""

    def vfs_added(self, pf: PciFunction) -> None:
        """The PF's VFs exist now: e.g. register each as an mdev parent."""

    def function_attributes(self, fn: PciFunction) -> Sequence[Attribute]:
        """Attributes the driver adds to a function it is bound to (e.g. ``nvidia/…``)."""

    def restore_function(self, fn: PciFunction, vendor: Mapping[str, Any]) -> None:
        """Take back a function's state from a state file (``fn.vendor`` is set after);
        raise ValueError, naming the problem, if this driver cannot hold it."""


@define
class NamedDriver:
    """A PCI driver that only has a name (``i915`` under a GVT-g parent): no SR-IOV
    configuration, no attributes of its own."""

    name: str
    vfio_vfs: bool = False
    configures_sriov: bool = False

    def sriov_configure(self, pf: PciFunction, num_vfs: int) -> None:
        fail(errno.ENOENT)

    def vfs_added(self, pf: PciFunction) -> None:
        return None

    def function_attributes(self, fn: PciFunction) -> Sequence[Attribute]:
        return ()

    def restore_function(self, fn: PciFunction, vendor: Mapping[str, Any]) -> None:
        if vendor:
            raise ValueError(f"driver {self.name} keeps no state of its own")


@define(eq=False)
class Sriov:
    """The SR-IOV capability of a PF (``pci_sriov``)."""

    total_vfs: int
    offset: int
    stride: int
    vf_device: int
    drivers_autoprobe: bool = True
    vfs: list[PciFunction] = Factory(list)

    @property
    def num_vfs(self) -> int:
        return len(self.vfs)


@define(eq=False)
class PciFunction:
    """One PCI function, physical or virtual."""

    bdf: str
    path: str
    ids: PciIds
    driver: PciDriver | None = None
    numa_node: int = -1
    bars: tuple[Bar, ...] = ()
    physfn: PciFunction | None = None
    sriov: Sriov | None = None
    iommu_group: int | None = None
    #: set while the driver has it registered with VFIO
    vfio: Binding | None = None
    #: whether its VFIO device is open (a VM uses it): ``mdevfs ctl DIR open <bdf>``
    vfio_open: bool = False
    #: the driver's own per-function state (JSON values: the state file keeps it), e.g.
    #: the vGPU type an NVIDIA VF holds
    vendor: dict[str, Any] = Factory(dict)

    @property
    def domain_bus(self) -> tuple[int, int]:
        domain, bus, _ = self.bdf.split(":")
        return int(domain, 16), int(bus, 16)

    @property
    def devfn(self) -> int:
        slot, fn = self.bdf.rsplit(":", 1)[1].split(".")
        return int(slot, 16) << 3 | int(fn)

    @property
    def is_vf(self) -> bool:
        return self.physfn is not None

    def vf_bdf(self, index: int) -> str:
        """The routing id of VF ``index``: PF + offset + index × stride (iov.c virtfn_bus,
        virtfn_devfn)."""
        assert self.sriov is not None
        domain, bus = self.domain_bus
        rid = self.devfn + self.sriov.offset + self.sriov.stride * index
        devfn = rid & 0xFF
        return f"{domain:04x}:{bus + (rid >> 8):02x}:{devfn >> 3:02x}.{devfn & 7}"

    def vf_path(self, index: int) -> str:
        """A VF sits beside its PF, under the same bridge."""
        return f"{self.path.rpartition('/')[0]}/{self.vf_bdf(index)}"
