"""The kernel objects of the mdev framework and the rules the core enforces.

Pure and synchronous: no FUSE here. The rules and their errnos follow
``mdev-sysfs-abi.md`` §2.2 (create_store) and §2.3 (remove_store); the
sysfs view of these objects lives in :mod:`mdevfs.sysfs`.
"""
from __future__ import annotations

import errno
import heapq
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import Factory, define, evolve, field, frozen

from .driver import MdevTypeSpec, VendorDriver
from .errors import fail
from .pci import NamedDriver, PciFunction, PciIds

UUID_STRING_LEN = 36
_HEX = frozenset(string.hexdigits)
_UUID = re.compile(rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ULONG_MAX = 2**64 - 1


def parse_uuid(buf: bytes) -> str:
    """``create_store`` input → the canonical lower-case UUID (spec §2.2 rows 1 and 3).

    36 or 37 bytes; ``uuid_is_valid()`` checks only the first 36: hyphens at
    8, 13, 18, 23 and hex digits (either case) elsewhere. The 37th byte is not
    looked at, so ``"<uuid>\\n"`` and ``"<uuid>X"`` both pass.
    """
    if not UUID_STRING_LEN <= len(buf) <= UUID_STRING_LEN + 1:
        fail(errno.EINVAL)
    head = buf[:UUID_STRING_LEN]
    if _UUID.fullmatch(head) is None:
        fail(errno.EINVAL)
    return head.decode("ascii").lower()


def kstrtoul(buf: bytes, base: int = 0) -> int:
    """The kernel's ``kstrtoul(buf, base, &val)`` on a sysfs store buffer.

    sysfs NUL-terminates the buffer, so parsing stops at the first NUL. An optional
    ``+``; base 0 means ``0x`` hex when a hex digit follows, leading ``0`` octal, else
    decimal (base 16 also takes a ``0x`` prefix); one trailing newline. Anything else is
    EINVAL, a value past ULONG_MAX is ERANGE (lib/kstrtox.c ``_kstrtoull``); callers that,
    like ``remove_store``, turn every failure into EINVAL catch it.
    """
    s = buf.split(b"\0", 1)[0].decode("latin-1")
    if s.startswith("+"):
        s = s[1:]
    if base in (0, 16) and s[:2] in ("0x", "0X") and s[2:3] and s[2:3] in _HEX:
        base, s = 16, s[2:]
    elif base == 0:
        base = 8 if s.startswith("0") else 10
    if s.endswith("\n"):
        s = s[:-1]
    if not s:
        fail(errno.EINVAL)
    value = 0
    for ch in s:
        digit = int(ch, 16) if ch in _HEX else 99
        if digit >= base:
            fail(errno.EINVAL)
        value = value * base + digit
        if value > _ULONG_MAX:
            fail(errno.ERANGE)
    return value


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


def parse_numvfs(buf: bytes) -> int:
    """``sriov_numvfs_store``'s ``kstrtou16(buf, 0)``: any failure, a value past 65535
    too, is EINVAL (the store turns every parse error into EINVAL, as remove does)."""
    try:
        value = kstrtoul(buf)
    except OSError:
        fail(errno.EINVAL)
    if value > 0xFFFF:
        fail(errno.EINVAL)
    return value


def pci_ids(props: Mapping[str, str]) -> PciIds:
    """A PCI function's ids from its uevent properties (PCI_ID, PCI_SUBSYS_ID, PCI_CLASS)."""
    vendor, device = (int(x, 16) for x in props["PCI_ID"].split(":"))
    sub_vendor, sub_device = (int(x, 16) for x in props.get("PCI_SUBSYS_ID", "0:0").split(":"))
    return PciIds(vendor, device, sub_vendor, sub_device, int(props.get("PCI_CLASS", "0"), 16))


@frozen
class Binding:
    """What binding a device to its driver made: ``vfio_register_emulated_iommu_dev()``
    gives it a new IOMMU group (named ``vfio-noiommu``), that group's ``/dev/vfio/<minor>``
    and the ``vfio-dev/vfio<index>`` device. Each number comes from an ida of its own."""

    iommu_group: int
    vfio_group: int
    vfio_index: int


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
        count = self.driver.available_instances(mtype)
        if count is None:
            count = self.driver.max_instances() - self.core_used
        return max(count, 0)

    def devices(self) -> list[MdevDevice]:
        return [d for t in self.types.values() for d in t.devices.values()]


class HostObserver:
    """Told of every change, after the model has made it (the sysfs tree, events, state)."""

    def parent_added(self, parent: Parent) -> None: ...
    def parent_removed(self, parent: Parent) -> None: ...
    def device_added(self, mdev: MdevDevice) -> None: ...
    def device_removed(self, mdev: MdevDevice) -> None: ...
    def device_unbound(self, mdev: MdevDevice, binding: Binding) -> None: ...
    def pci_added(self, fn: PciFunction) -> None: ...
    def pci_removed(self, fn: PciFunction) -> None: ...


@define(eq=False)
class Host:
    """The machine: registered parents, every mdev on the global list, IOMMU groups."""

    iommu_group_base: int = 0
    #: CONFIG_PM_ADVANCED_DEBUG, as Debian builds it: four more files in every power/
    pm_advanced_debug: bool = True
    parents: dict[str, Parent] = Factory(dict)
    devices: dict[str, MdevDevice] = Factory(dict)
    #: every PCI function, by its address
    pci: dict[str, PciFunction] = Factory(dict)
    observers: list[HostObserver] = Factory(list)
    #: the address of every VF a PF may enable → that PF
    _vf_slots: dict[str, PciFunction] = field(init=False, factory=dict)
    _group_ids: Ida = field(init=False)
    _vfio_groups: Ida = field(init=False)
    _vfio_devices: Ida = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._group_ids = Ida(self.iommu_group_base)
        self._vfio_groups = Ida()
        self._vfio_devices = Ida()

    # --- PCI functions and SR-IOV ----------------------------------------------------------

    def add_pci(self, fn: PciFunction, group: int | None = None) -> PciFunction:
        """``pci_device_add()`` and the driver's probe: the function with its IOMMU group
        (``group`` when given: a restored VF keeps its own), registered with VFIO when it is
        a VF of a driver that does so."""
        if fn.bdf in self.pci:
            raise ValueError(f"PCI function {fn.bdf} is added twice")
        owner = self._vf_slots.get(fn.bdf)
        if owner is not None and fn.physfn is not owner:
            raise ValueError(f"PCI function {fn.bdf} is the address of a VF of {owner.bdf}")
        if fn.sriov is not None:
            self._reserve_vfs(fn)
        fn.iommu_group = self._alloc_group(group)
        if fn.is_vf and fn.driver is not None and fn.driver.vfio_vfs:
            fn.vfio = Binding(fn.iommu_group, self._vfio_groups.alloc(), self._vfio_devices.alloc())
        self.pci[fn.bdf] = fn
        for obs in self.observers:
            obs.pci_added(fn)
        return fn

    def _reserve_vfs(self, pf: PciFunction) -> None:
        """A PF owns the addresses and paths of every VF it may enable (iov.c computes them
        from the offset and stride): another function there is a topology's mistake."""
        assert pf.sriov is not None
        slots = [pf.vf_bdf(i) for i in range(pf.sriov.total_vfs)]
        for bdf in slots:
            if int(bdf.split(":")[1], 16) > 0xFF:
                raise ValueError(f"the VFs of {pf.bdf} would need bus numbers past ff")
            clash = self.pci.get(bdf) or self._vf_slots.get(bdf)
            if clash is not None or bdf == pf.bdf:
                raise ValueError(f"VF {bdf} of {pf.bdf} would have the address of "
                                 f"{(clash or pf).bdf}" + ("'s VFs" if bdf in self._vf_slots else ""))
        self._vf_slots.update(dict.fromkeys(slots, pf))

    def vf_owner(self, bdf: str) -> PciFunction | None:
        """The PF whose VF would have address ``bdf``, if any."""
        return self._vf_slots.get(bdf)

    def remove_pci(self, fn: PciFunction) -> None:
        del self.pci[fn.bdf]
        if fn.sriov is not None:
            for bdf in [b for b, pf in self._vf_slots.items() if pf is fn]:
                del self._vf_slots[bdf]
        if fn.vfio is not None:
            self._vfio_groups.release(fn.vfio.vfio_group)
            self._vfio_devices.release(fn.vfio.vfio_index)
            fn.vfio = None
        if fn.iommu_group is not None:
            self._group_ids.release(fn.iommu_group)
        for obs in self.observers:
            obs.pci_removed(fn)

    def set_numvfs(self, pf: PciFunction, buf: bytes,
                   groups: Sequence[int | None] = ()) -> int:
        """``sriov_numvfs_store`` (drivers/pci/iov.c): parse, bound by sriov_totalvfs
        (ERANGE), nothing to do for the current count, ENOENT without a driver that can
        configure SR-IOV, 0 disables every VF, a new count needs 0 first (EBUSY). The
        VFs exist before the write returns; ``groups`` (a restore) gives their IOMMU groups."""
        sriov = pf.sriov
        assert sriov is not None
        count = parse_numvfs(buf)
        if count > sriov.total_vfs:
            fail(errno.ERANGE)
        if count == sriov.num_vfs:
            return len(buf)
        if pf.driver is None or not pf.driver.configures_sriov:
            fail(errno.ENOENT)
        if count and sriov.num_vfs:
            fail(errno.EBUSY)
        pf.driver.sriov_configure(pf, count)
        if count == 0:
            for vf in reversed(sriov.vfs):
                self.remove_pci(vf)
            sriov.vfs.clear()
            return len(buf)
        for i in range(count):
            vf = PciFunction(bdf=pf.vf_bdf(i), path=pf.vf_path(i), physfn=pf,
                             ids=evolve(pf.ids, device=sriov.vf_device),
                             driver=pf.driver if sriov.drivers_autoprobe else None,
                             numa_node=pf.numa_node, bars=pf.bars[:1])
            sriov.vfs.append(vf)  # virtfn<i> is its place in this list
            self.add_pci(vf, groups[i] if i < len(groups) else None)
        pf.driver.vfs_added(pf)
        return len(buf)

    # --- mdev parents -----------------------------------------------------------------------

    def add_parent(self, name: str, path: str, driver: VendorDriver) -> Parent:
        """``mdev_register_parent()``: the parent and its types appear."""
        if name in self.parents:
            raise ValueError(f"parent {name!r} is registered twice")
        owner = self._vf_slots.get(name)
        if owner is not None and name not in self.pci:
            raise ValueError(f"parent {name!r} has the address of a VF of {owner.bdf}")
        parent = Parent(host=self, name=name, path=path.strip("/"), driver=driver)
        if driver.subsystem == ("bus", "pci") and name not in self.pci:
            props = driver.parent_uevent()
            if "PCI_ID" in props:  # the GPU the parent is: a PCI function of its own
                parent.own_pci = self.add_pci(PciFunction(
                    bdf=name, path=parent.path, ids=pci_ids(props),
                    driver=NamedDriver(props.get("DRIVER", driver.name))))
        for spec in driver.types():
            type_id = f"{driver.name}-{spec.sysfs_name}"
            parent.types[type_id] = MdevType(parent=parent, spec=spec, type_id=type_id)
        self.parents[name] = parent
        for obs in self.observers:
            obs.parent_added(parent)
        return parent

    def remove_parent(self, name: str) -> None:
        """``mdev_unregister_parent()``: every device of the parent is destroyed first."""
        parent = self.parents[name]
        for mdev in parent.devices():
            self._destroy(mdev)
        del self.parents[name]
        for obs in self.observers:
            obs.parent_removed(parent)
        if parent.own_pci is not None:
            self.remove_pci(parent.own_pci)

    def create(self, mtype: MdevType, buf: bytes) -> int:
        """``create_store()``: checks in the kernel's order (spec §2.2); returns len(buf)."""
        uuid = parse_uuid(buf)
        if uuid in self.devices:
            fail(errno.EEXIST)
        parent = mtype.parent
        if self.parents.get(parent.name) is not parent:
            fail(errno.ENODEV)
        counted = parent.driver.available_instances(mtype) is None
        if counted and parent.available(mtype) <= 0:
            fail(errno.EUSERS)
        self.restore(mtype, uuid)
        return len(buf)

    def restore(self, mtype: MdevType, uuid: str, group: int | None = None,
                vendor: Mapping[str, Any] | None = None, bound: bool = True) -> MdevDevice:
        """``mdev_device_create()`` of validated input: probe the driver (binding the
        device, in IOMMU group ``group`` when given) and register the device; an
        unbound device (``bound=False``, from a state file) is registered unprobed."""
        mdev = MdevDevice(uuid=uuid, mdev_type=mtype, vendor=dict(vendor or {}))
        parent = mtype.parent
        if bound:
            mdev.binding = self._bind(mdev, group)
        if parent.driver.available_instances(mtype) is None:
            parent.core_used += 1
        self.devices[uuid] = mtype.devices[uuid] = mdev
        for obs in self.observers:
            obs.device_added(mdev)
        return mdev

    def _bind(self, mdev: MdevDevice, group: int | None) -> Binding:
        """The driver's probe, then vfio's registration; on failure nothing is taken."""
        iommu_group = self._alloc_group(group)
        try:
            mdev.parent.driver.probe(mdev)
        except BaseException:
            self._group_ids.release(iommu_group)
            raise
        return Binding(iommu_group, self._vfio_groups.alloc(), self._vfio_devices.alloc())

    def unbind(self, mdev: MdevDevice) -> None:
        """``device_driver_detach()``: the driver's remove (it cannot refuse), and the
        IOMMU group and vfio device go; the device stays, driverless, until removed."""
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
        self._vfio_groups.release(binding.vfio_group)
        self._vfio_devices.release(binding.vfio_index)
        for obs in self.observers:
            obs.device_unbound(mdev, binding)

    def remove(self, mdev: MdevDevice, buf: bytes) -> int:
        """``remove_store()`` (spec §2.3): kstrtoul base 0, any failure EINVAL; 0 is a
        successful no-op."""
        try:
            value = kstrtoul(buf)
        except OSError:
            fail(errno.EINVAL)
        if value == 0:
            return len(buf)
        if self.devices.get(mdev.uuid) is not mdev:
            fail(errno.ENODEV)
        if mdev.binding is not None:
            mdev.parent.driver.remove(mdev)
        self._destroy(mdev, vendor_removed=True)
        return len(buf)

    def _destroy(self, mdev: MdevDevice, vendor_removed: bool = False) -> None:
        """``mdev_device_remove()``: a bound device is detached from its driver first."""
        parent = mdev.parent
        if mdev.binding is not None:
            if not vendor_removed:
                try:
                    parent.driver.remove(mdev)
                except OSError:
                    pass  # unregistering a parent destroys its devices regardless
            self._detach(mdev)
        del self.devices[mdev.uuid]
        del mdev.mdev_type.devices[mdev.uuid]
        if parent.driver.available_instances(mdev.mdev_type) is None:
            parent.core_used -= 1
        for obs in self.observers:
            obs.device_removed(mdev)

    def _alloc_group(self, wanted: int | None) -> int:
        """``iommu_group_alloc()``: the lowest free id (an ida), from the host's base."""
        ids = self._group_ids
        if wanted is None:
            return ids.alloc()
        if not ids.take(wanted):
            raise ValueError(f"IOMMU group {wanted} is in use")
        return wanted


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
