"""The kernel objects of the mdev framework and the rules the core enforces.

Pure and synchronous: no FUSE here. The rules and their errnos follow
``docs/abi.md`` §2.2 (create_store) and §2.3 (remove_store); the
sysfs view of these objects lives in :mod:`mdevfs.tree`.
"""
from __future__ import annotations

import contextlib
import errno
import heapq
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from attrs import Factory, define, field, frozen

from .driver import MdevTypeSpec, VendorDriver
from .errors import fail
from .kernel import (
    MDEV_CORE_COUNTER,
    PER_PARENT_MDEV_DRIVER,
    Kernel,
)
from .kparse import parse_ulong, parse_uuid
from .pci import (
    BasePciDriver,
    Caps,
    DriverEntry,
    PciDriver,
    PciFunction,
    PciIds,
)
from .pcibus import PciBus


@define(eq=False)
class MdevType:
    """One ``mdev_supported_types/<type_id>`` of a parent."""

    parent: Parent
    spec: MdevTypeSpec
    type_id: str
    devices: dict[str, MdevDevice] = Factory(dict)

    @property
    def available_instances(self) -> int:
        return self.parent.available(self)


def pci_ids(props: Mapping[str, str]) -> PciIds:
    """A PCI function's ids from its uevent properties (PCI_ID, PCI_SUBSYS_ID, PCI_CLASS)."""
    vendor, device = (int(x, 16) for x in props["PCI_ID"].split(":"))
    sub_vendor, sub_device = (int(x, 16) for x in props.get("PCI_SUBSYS_ID", "0:0").split(":"))
    return PciIds(vendor, device, sub_vendor, sub_device, int(props.get("PCI_CLASS", "0"), 16))


@frozen
class Binding:
    """What binding a device to its driver made: ``vfio_register_emulated_iommu_dev()``
    gives it a new IOMMU group (named ``vfio-noiommu``), that group's vfio group (named, as
    ``class/vfio/<N>`` and ``/dev/vfio/<N>``, after the IOMMU group; its character device's
    minor from vfio's group ida) and the ``vfio-dev/vfio<index>`` device (an ida of its own)."""

    iommu_group: int
    vfio_index: int
    vfio_minor: int = 0


@define(eq=False)
class MdevDevice:
    """A created mdev, named by its lower-case UUID; bound to its parent's driver from
    create until an ``unbind`` (the kernel never binds it again: ``mdev_match`` is 0)."""

    uuid: str
    mdev_type: MdevType
    #: None once unbound: no driver, no IOMMU group, no vendor attributes, no vfio-dev
    binding: Binding | None = None
    #: the vendor driver's own per-device state (e.g. a resolution it shows)
    vendor: dict[str, Any] = Factory(dict)

    @property
    def parent(self) -> Parent:
        return self.mdev_type.parent

    @property
    def iommu_group(self) -> int | None:
        return self.binding.iommu_group if self.binding is not None else None


@define(eq=False)
class Parent:
    """A registered parent device and the driver that owns it."""

    host: Host
    name: str
    path: str
    driver: VendorDriver
    types: dict[str, MdevType] = Factory(dict)
    #: devices counted against the core's per-parent counter (6.1+ rule)
    core_used: int = 0
    #: the PCI function registering the parent made (a GPU given only as an mdev parent);
    #: it goes with the parent. A VF that becomes a parent was there before and stays.
    own_pci: PciFunction | None = None

    def available(self, mtype: MdevType) -> int:
        """available_instances: the driver's arithmetic or the core's counter; from 6.1 the
        core prints it unsigned, before each driver printed its own (mtty's went negative)."""
        count = self.driver.available_instances(mtype)
        if count is None:
            count = self.driver.max_instances() - self.core_used
        return max(count, 0) if self.host.kernel.has(MDEV_CORE_COUNTER) else count

    def devices(self) -> list[MdevDevice]:
        return [d for t in self.types.values() for d in t.devices.values()]


class HostObserver:
    """Told of every change, after the model has made it (the sysfs tree, events, state)."""

    def parent_added(self, parent: Parent) -> None: ...
    def parent_removed(self, parent: Parent) -> None: ...
    def device_added(self, mdev: MdevDevice) -> None: ...
    def device_removed(self, mdev: MdevDevice) -> None: ...
    def device_bound(self, mdev: MdevDevice) -> None: ...
    def device_unbound(self, mdev: MdevDevice, binding: Binding) -> None: ...
    def pci_added(self, fn: PciFunction) -> None: ...
    def pci_removed(self, fn: PciFunction) -> None: ...
    def pci_bound(self, fn: PciFunction) -> None: ...
    def pci_unbound(self, fn: PciFunction, driver: PciDriver) -> None: ...
    def pci_driver_added(self, entry: DriverEntry) -> None: ...


#: the mdev driver every mdev binds to before per-parent drivers (5.14)
VFIO_MDEV = "vfio_mdev"


@define(eq=False)
class Host(PciBus):
    """The machine: registered parents, every mdev on the global list, IOMMU groups, PCI
    functions and the drivers on the PCI bus, and the kernel it runs."""

    iommu_group_base: int = 0
    #: CONFIG_PM_ADVANCED_DEBUG, as Debian builds it: four more files in every power/
    pm_advanced_debug: bool = True
    kernel: Kernel = Factory(Kernel)
    #: the IOMMU: "intel" (dmar0), "amd" (ivhd0) or "none"
    iommu: str = "intel"
    cpus: int = 2
    numa_nodes: int = 1
    parents: dict[str, Parent] = Factory(dict)
    devices: dict[str, MdevDevice] = Factory(dict)
    #: every PCI function, by its address
    pci: dict[str, PciFunction] = Factory(dict)
    #: the drivers on the PCI bus, by name, in registration order
    pci_drivers: dict[str, DriverEntry] = Factory(dict)
    #: bus/pci/drivers_autoprobe and bus/mdev/drivers_autoprobe
    pci_autoprobe: bool = True
    mdev_autoprobe: bool = True
    #: functions removed through their ``remove`` file, for a rescan to find again
    removed: list[PciFunction] = Factory(list)
    observers: list[HostObserver] = Factory(list)
    #: the address of every VF a PF may enable → that PF
    _vf_slots: dict[str, PciFunction] = field(init=False, factory=dict)
    _group_ids: Ida = field(init=False)
    _vfio_devices: Ida = field(init=False)
    _vfio_minors: Ida = field(init=False)
    _irqs: Ida = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._group_ids = Ida(self.iommu_group_base)
        self._vfio_devices, self._vfio_minors = Ida(), Ida()
        self._irqs = Ida(16)

    def _tell(self, event: str, *args: Any) -> None:
        for obs in self.observers:
            getattr(obs, event)(*args)

    def clear(self) -> None:
        """Back to the empty host a topology populates: no parent, no PCI function (a PF's
        VFs go first), drivers with no instance and no dynamic id, nothing removed to be
        rescanned, both buses autoprobing."""
        for name in list(self.parents):
            self.remove_parent(name)
        for fn in reversed([f for f in self.pci.values() if not f.is_vf]):
            self.remove_pci(fn)
        for entry in self.pci_drivers.values():
            entry.instances.clear()
            entry.dynamic_ids.clear()
        self.removed.clear()
        self.pci_autoprobe = self.mdev_autoprobe = True

    # --- mdev parents -----------------------------------------------------------------------

    def add_parent(self, name: str, path: str, driver: VendorDriver) -> Parent:
        """``mdev_register_parent()``: the parent and its types appear. A GPU given only as an
        mdev parent (``[[parent]]`` on the PCI bus, with PCI ids) is a PCI function first,
        whose driver registers the parent when it binds, and unregisters it when it unbinds."""
        if name in self.parents:
            raise ValueError(f"parent {name!r} is registered twice")
        owner = self._vf_slots.get(name)
        if owner is not None and name not in self.pci:
            raise ValueError(f"parent {name!r} has the address of a VF of {owner.bdf}")
        if driver.subsystem == ("bus", "pci") and name not in self.pci:
            props = driver.parent_uevent()
            if "PCI_ID" in props:  # the GPU the parent is: a PCI function of its own
                pci_driver = ParentDriver(self, name, path.strip("/"), driver,
                                          props.get("DRIVER", driver.name))
                self.register_pci_driver(pci_driver)
                fn = self.add_pci(PciFunction(
                    bdf=name, path=path.strip("/"), ids=pci_ids(props),
                    bars=tuple(getattr(driver, "pci_bars", ())),
                    caps=getattr(driver, "pci_caps", Caps())))
                if name not in self.parents:  # bus autoprobe is off: registered unbound
                    return self._register_parent(name, path, driver)
                self.parents[name].own_pci = fn
                return self.parents[name]
        return self._register_parent(name, path, driver)

    def _register_parent(self, name: str, path: str, driver: VendorDriver) -> Parent:
        parent = Parent(host=self, name=name, path=path.strip("/"), driver=driver)
        if hasattr(driver, "kernel"):
            driver.kernel = self.kernel  # type: ignore[attr-defined]
        for spec in driver.types():
            type_id = f"{driver.name}-{spec.sysfs_name}"
            parent.types[type_id] = MdevType(parent=parent, spec=spec, type_id=type_id)
        self.parents[name] = parent
        self._tell("parent_added", parent)
        return parent

    def remove_parent(self, name: str) -> None:
        """Hot-unplug: ``mdev_unregister_parent()`` (every device of the parent is destroyed
        first); a GPU given as a parent leaves the bus with it."""
        parent = self.parents[name]
        fn = parent.own_pci
        if fn is not None and fn.bdf in self.pci:
            driver = fn.driver
            self.remove_pci(fn)  # its driver's remove unregisters the parent
            if isinstance(driver, ParentDriver):
                self.unregister_pci_driver(driver)
            if name not in self.parents:
                return
        self._unregister_parent(name)

    def _unregister_parent(self, name: str) -> None:
        parent = self.parents[name]
        for mdev in parent.devices():
            self._destroy(mdev)
        del self.parents[name]
        self._tell("parent_removed", parent)

    # --- mdev devices ------------------------------------------------------------------------

    def mdev_driver_of(self, parent: Parent) -> str:
        """The mdev driver a device of ``parent`` binds to: the parent's own from 5.14, before
        that ``vfio_mdev``."""
        return parent.driver.mdev_driver if self.kernel.has(PER_PARENT_MDEV_DRIVER) else VFIO_MDEV

    def create(self, mtype: MdevType, buf: bytes) -> int:
        """``create_store()``: checks in the kernel's order (ABI §2.2); returns len(buf)."""
        uuid = parse_uuid(buf)
        if uuid in self.devices:
            fail(errno.EEXIST)
        parent = mtype.parent
        if self.parents.get(parent.name) is not parent:
            fail(errno.ENODEV)
        counted = parent.driver.available_instances(mtype) is None
        if counted and parent.available(mtype) <= 0:
            fail(errno.EUSERS)
        # before 5.14 a new mdev is bound only if the bus autoprobes
        bound = self.mdev_autoprobe or self.kernel.has(PER_PARENT_MDEV_DRIVER)
        self.restore(mtype, uuid, bound=bound)
        return len(buf)

    def restore(self, mtype: MdevType, uuid: str, group: int | None = None,
                vendor: Mapping[str, Any] | None = None, bound: bool = True) -> MdevDevice:
        """``mdev_device_create()`` of validated input: probe the driver (binding the
        device, in IOMMU group ``group`` when given) and register the device; an
        unbound device (``bound=False``, from a state file) is registered unprobed.
        Before 5.14 the driver's create takes the resources whether the device binds or not."""
        mdev = MdevDevice(uuid=uuid, mdev_type=mtype, vendor=dict(vendor or {}))
        parent = mtype.parent
        if not self.kernel.has(PER_PARENT_MDEV_DRIVER):
            parent.driver.probe(mdev)  # mdev_parent_ops.create: held until remove
        if bound:
            mdev.binding = self._bind(mdev, group)
        if parent.driver.available_instances(mtype) is None:
            parent.core_used += 1
        self.devices[uuid] = mtype.devices[uuid] = mdev
        self._tell("device_added", mdev)
        return mdev

    def _bind(self, mdev: MdevDevice, group: int | None) -> Binding:
        """The driver's probe (from 5.14), then vfio's registration; on failure nothing is
        taken."""
        iommu_group = self._alloc_group(group)
        if self.kernel.has(PER_PARENT_MDEV_DRIVER):
            try:
                mdev.parent.driver.probe(mdev)
            except BaseException:
                self._group_ids.release(iommu_group)
                raise
        return self._vfio_register(iommu_group)

    def _vfio_register(self, group: int) -> Binding:
        """vfio's registration of a device in IOMMU group ``group``: its vfio group (a
        minor of vfio's) and its vfio-dev index."""
        return Binding(group, self._vfio_devices.alloc(), self._vfio_minors.alloc())

    def _vfio_unregister(self, binding: Binding) -> None:
        self._vfio_devices.release(binding.vfio_index)
        self._vfio_minors.release(binding.vfio_minor)

    def bind(self, mdev: MdevDevice) -> None:
        """Bind an unbound mdev to vfio_mdev (``bind`` or ``drivers_probe``): before 5.14
        only; from then on nothing matches an mdev (``mdev_match`` is 0): ENODEV."""
        if self.kernel.has(PER_PARENT_MDEV_DRIVER) or mdev.binding is not None:
            fail(errno.ENODEV)
        mdev.binding = self._bind(mdev, None)
        self._tell("device_bound", mdev)

    def unbind(self, mdev: MdevDevice) -> None:
        """``device_driver_detach()``: the driver's remove (it cannot refuse; from 5.14 only:
        before, the resources stay with the device), and the IOMMU group and vfio device go;
        the device stays, driverless, until removed."""
        if self.kernel.has(PER_PARENT_MDEV_DRIVER):
            try:
                mdev.parent.driver.remove(mdev)
            except OSError:
                pass  # remove() is void in the kernel: detaching always succeeds
        self._detach(mdev)

    def _detach(self, mdev: MdevDevice) -> None:
        binding = mdev.binding
        assert binding is not None
        mdev.binding = None
        self._group_ids.release(binding.iommu_group)
        self._vfio_unregister(binding)
        self._tell("device_unbound", mdev, binding)

    def holds(self, mdev: MdevDevice) -> bool:
        """Whether ``mdev`` holds its driver's resources: while bound (the driver's probe
        takes them, its remove gives them back); before 5.14, from create to remove."""
        return mdev.binding is not None or not self.kernel.has(PER_PARENT_MDEV_DRIVER)

    @staticmethod
    def removes(buf: bytes) -> bool:
        """Whether ``buf``, written to a device's ``remove``, removes it: a value kstrtoul
        takes, and not 0 (:meth:`remove`'s rule)."""
        try:
            return parse_ulong(buf) != 0
        except OSError:
            return False

    def remove(self, mdev: MdevDevice, buf: bytes) -> int:
        """``remove_store()`` (ABI §2.3): kstrtoul base 0, any failure EINVAL; 0 is a
        successful no-op."""
        value = parse_ulong(buf)
        if value == 0:
            return len(buf)
        if self.devices.get(mdev.uuid) is not mdev:
            fail(errno.ENODEV)
        if self.holds(mdev):
            mdev.parent.driver.remove(mdev)
        self._destroy(mdev, vendor_removed=True)
        return len(buf)

    def _destroy(self, mdev: MdevDevice, vendor_removed: bool = False) -> None:
        """``mdev_device_remove()``: a bound device is detached from its driver first."""
        parent = mdev.parent
        if self.holds(mdev) and not vendor_removed:
            try:
                parent.driver.remove(mdev)
            except OSError:
                pass  # unregistering a parent destroys its devices regardless
        if mdev.binding is not None:
            self._detach(mdev)
        del self.devices[mdev.uuid]
        del mdev.mdev_type.devices[mdev.uuid]
        if parent.driver.available_instances(mdev.mdev_type) is None:
            parent.core_used -= 1
        self._tell("device_removed", mdev)

    @contextlib.contextmanager
    def groups_held(self, numbers: Sequence[int]) -> Iterator[None]:
        """Keep IOMMU group ``numbers`` from everything made meanwhile: a topology's devices
        keep the groups they were recorded with though the VFs and functions made before
        them (at boot) take the lowest free ones."""
        held = [n for n in dict.fromkeys(numbers) if self._group_ids.take(n)]
        try:
            yield
        finally:
            for number in held:
                self._group_ids.release(number)

    def _release_group(self, number: int) -> None:
        self._group_ids.release(number)

    def _alloc_group(self, wanted: int | None) -> int:
        """``iommu_group_alloc()``: the lowest free id (an ida), from the host's base."""
        ids = self._group_ids
        if wanted is None:
            return ids.alloc()
        if not ids.take(wanted):
            raise ValueError(f"IOMMU group {wanted} is in use")
        return wanted


class ParentDriver(BasePciDriver):
    """The PCI driver of a GPU given only as an mdev parent (i915 under GVT-g, nvidia under a
    Tesla P4): it takes that one function, and registers the parent when it binds it
    (``mdev_register_parent`` in its probe) and unregisters it when it lets go."""

    def __init__(self, host: Host, parent: str, path: str, vendor: VendorDriver,
                 name: str) -> None:
        self.host, self.parent, self.path, self.vendor = host, parent, path, vendor
        self.name = name
        self.module = getattr(vendor, "module", None) or name
        #: its id table's driver_data, as the vendor driver declares it (``pci_driver_data``)
        self.id_table_data = getattr(vendor, "pci_driver_data", frozenset({0}))

    @property
    def module_version(self) -> str | None:  # type: ignore[override]
        return getattr(self.vendor, "module_version", None)

    def matches(self, fn: PciFunction) -> bool:
        return fn.bdf == self.parent

    def probe(self, fn: PciFunction) -> None:
        """Its GPU (the bus gives it no other: it takes no others); a parent already
        registered (plugged while the bus did not autoprobe) is the one it takes over."""
        parent = self.host.parents.get(self.parent) or \
            self.host._register_parent(self.parent, self.path, self.vendor)
        parent.own_pci = fn

    def remove(self, fn: PciFunction) -> None:
        if self.parent in self.host.parents:
            self.host._unregister_parent(self.parent)


@define(eq=False)
class Ida:
    """The kernel's ida: hands out the lowest free id at or above ``base``."""

    base: int = 0
    _used: set[int] = field(factory=set, init=False)
    _free: list[int] = field(factory=list, init=False)  # a heap of ids below _next
    _next: int = field(default=-1, init=False)

    def alloc(self) -> int:
        self._next = max(self._next, self.base)
        while self._free:
            found = heapq.heappop(self._free)
            if found not in self._used:  # freed, and not taken back since
                self._used.add(found)
                return found
        found = self._next
        while found in self._used:
            found += 1
        self._next = found + 1
        self._used.add(found)
        return found

    def take(self, wanted: int) -> bool:
        """Claim a given id (a restored device keeps its group); False if in use."""
        if wanted in self._used:
            return False
        self._used.add(wanted)
        return True

    def release(self, found: int) -> None:
        self._used.discard(found)
        if found < self._next:  # ids from _next up are free unless in _used
            heapq.heappush(self._free, found)
