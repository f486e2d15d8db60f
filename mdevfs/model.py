"""The kernel objects of the mdev framework and the rules the core enforces.

Pure and synchronous: no FUSE here. The rules and their errnos follow
``mdev-sysfs-abi.md`` §2.2 (create_store) and §2.3 (remove_store); the
sysfs view of these objects lives in :mod:`mdevfs.sysfs`.
"""
from __future__ import annotations

import contextlib
import errno
import heapq
import re
import string
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from attrs import Factory, define, evolve, field, frozen

from .driver import MdevTypeSpec, VendorDriver
from .errors import fail
from .kernel import (
    BIND_BOUND_EBUSY,
    MDEV_CORE_COUNTER,
    PCI_STORE_EINVAL,
    PER_PARENT_MDEV_DRIVER,
    Kernel,
)
from .pci import (
    ANY_ID,
    BasePciDriver,
    Caps,
    DriverEntry,
    PciDriver,
    PciFunction,
    PciIds,
    parse_dynamic_id,
)

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


def parse_numvfs(buf: bytes, einval: bool = True) -> int:
    """``sriov_numvfs_store``'s ``kstrtou16(buf, 0)``: any failure, a value past 65535
    too, is EINVAL (the store turns every parse error into EINVAL, as remove does); before
    5.16 (``einval`` False) kstrtou16's own errno passes: ERANGE past 65535."""
    try:
        value = kstrtoul(buf)
    except OSError as exc:
        fail(errno.EINVAL if einval else exc.errno or errno.EINVAL)
    if value > 0xFFFF:
        fail(errno.EINVAL if einval else errno.ERANGE)
    return value


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
    vfio_group: int
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
class Host:
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

    # --- the PCI bus: functions -------------------------------------------------------------

    def add_pci(self, fn: PciFunction, group: int | None = None, probe: bool = True) -> PciFunction:
        """``pci_device_add()``: the function with its IOMMU group (``group`` when given: a
        restored VF keeps its own) and its interrupt line, then, with ``probe`` and the bus's
        drivers_autoprobe, a driver (device_attach)."""
        if fn.bdf in self.pci:
            raise ValueError(f"PCI function {fn.bdf} is added twice")
        fn.host = self
        owner = self._vf_slots.get(fn.bdf)
        if owner is not None and fn.physfn is not owner:
            raise ValueError(f"PCI function {fn.bdf} is the address of a VF of {owner.bdf}")
        if fn.sriov is not None:
            self._reserve_vfs(fn)
        if self.iommu != "none":
            fn.iommu_group = self._alloc_group(group)
        if not fn.is_vf:  # the firmware's line where the function names one (lines are shared)
            fn.irq = fn.irq or self._irqs.alloc()
            self._irqs.take(fn.irq)
        fn.d3cold_allowed = fn.caps.pm
        self.pci[fn.bdf] = fn
        self._tell("pci_added", fn)
        if probe and self.pci_autoprobe and self._may_probe(fn):
            self.pci_attach(fn)
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
        """``pci_stop_and_remove_bus_device()``: its VFs first, its driver detached, then it goes."""
        if fn.sriov is not None and fn.sriov.vfs:
            self._disable_vfs(fn)
        if fn.driver is not None:
            self._detach_pci(fn)
        del self.pci[fn.bdf]
        if fn.sriov is not None:
            for bdf in [b for b, pf in self._vf_slots.items() if pf is fn]:
                del self._vf_slots[bdf]
        if fn.iommu_group is not None:
            self._group_ids.release(fn.iommu_group)
        if not fn.is_vf and all(f.irq != fn.irq for f in self.pci.values()):
            self._irqs.release(fn.irq)
        self._tell("pci_removed", fn)

    def remove_store(self, fn: PciFunction, buf: bytes) -> int:
        """A function's ``remove`` (pci-sysfs.c remove_store): kstrtoul, any failure EINVAL;
        non-zero takes the function (and what hangs on it) off the bus until a rescan."""
        if _parse_ulong(buf):
            self.remove_pci(fn)
            self.removed.append(fn)
        return len(buf)

    def rescan(self, buf: bytes, bus: int | None = None) -> int:
        """``rescan`` of the bus (or of a function's bus): kstrtoul, any failure EINVAL;
        non-zero finds every removed function (on that bus) again, as at boot."""
        if _parse_ulong(buf):
            for fn in [f for f in self.removed if bus is None or f.domain_bus[1] == bus]:
                self.removed.remove(fn)
                fresh = attrs_evolve_function(fn)
                self.add_pci(fresh)
        return len(buf)

    # --- the PCI bus: drivers and binding ------------------------------------------------------

    def register_pci_driver(self, driver: PciDriver) -> DriverEntry:
        """A driver (or one more instance of a driver's name) on the bus; unbound functions
        its id table takes are probed, as driver_register's driver_attach does."""
        entry = self.pci_drivers.get(driver.name)
        if entry is None:
            entry = self.pci_drivers[driver.name] = DriverEntry(
                driver.name, driver.module, driver.module_version)
            self._tell("pci_driver_added", entry)
        entry.instances.append(driver)
        return entry

    def unregister_pci_driver(self, driver: PciDriver) -> None:
        entry = self.pci_drivers.get(driver.name)
        if entry is not None and driver in entry.instances:
            for fn in [f for f in self.pci.values() if f.driver is driver]:
                self._detach_pci(fn)
            entry.instances.remove(driver)

    def _matching(self, fn: PciFunction, entry: DriverEntry) -> PciDriver | None:
        """pci_match_device: with driver_override, only the driver it names takes the
        function, whatever its ids; else a dynamic id of the driver's, or an instance's own
        id table."""
        if fn.driver_override is not None:
            return entry.instances[0] if fn.driver_override == entry.name else None
        if any(dyn.matches(fn) for dyn in entry.dynamic_ids):
            return entry.instances[0]
        return next((drv for drv in entry.instances if drv.matches(fn)), None)

    def _may_probe(self, fn: PciFunction) -> bool:
        """pci_device_can_probe: a VF probes only if its PF's sriov_drivers_autoprobe is on
        or it has a driver_override."""
        pf = fn.physfn
        return (pf is None or pf.sriov is None or pf.sriov.drivers_autoprobe
                or fn.driver_override is not None)

    def pci_attach(self, fn: PciFunction) -> bool:
        """``device_attach()``: the first driver that takes ``fn`` binds it; a probe that
        refuses lets the next try. True when bound."""
        if fn.driver is not None or not self._may_probe(fn):
            return fn.driver is not None
        for entry in list(self.pci_drivers.values()):
            drv = self._matching(fn, entry)
            if drv is None:
                continue
            try:
                self._probe_pci(fn, drv)
            except OSError:
                continue
            return True
        return False

    def pci_bind(self, fn: PciFunction, name: str) -> None:
        """``bind_store``: the function must match the driver (else ENODEV) and have none (else
        EBUSY; ENODEV before 5.14); a VF its PF may not autoprobe is ENODEV; the probe's own
        errno passes."""
        entry = self.pci_drivers[name]
        if fn.driver is not None:
            fail(errno.EBUSY if self.kernel.has(BIND_BOUND_EBUSY) else errno.ENODEV)
        drv = self._matching(fn, entry)
        if drv is None or not self._may_probe(fn):
            fail(errno.ENODEV)
        self._probe_pci(fn, drv)

    def pci_unbind(self, fn: PciFunction, name: str) -> None:
        """``unbind_store``: a function bound to this driver is detached (its driver's remove
        cannot refuse), else ENODEV."""
        if fn.driver is None or fn.driver.name != name:
            fail(errno.ENODEV)
        self._detach_pci(fn)

    def drivers_probe(self, fn: PciFunction) -> None:
        """``drivers_probe_store`` of one function: attach it if it has no driver."""
        self.pci_attach(fn)

    def new_id(self, name: str, buf: bytes) -> int:
        """``new_id_store``: a dynamic id for the driver, then every unbound function it now
        takes is probed. An id its table (or a dynamic id) already takes is EEXIST, when
        given without driver data."""
        entry = self.pci_drivers[name]
        dyn, fields = parse_dynamic_id(buf)
        probe_fn = PciFunction("ffff:ff:1f.7", "", PciIds(
            dyn.vendor, dyn.device, dyn.subvendor, dyn.subdevice, dyn.klass))
        if fields < 7 and self._matching(probe_fn, entry) is not None:
            fail(errno.EEXIST)
        if fields == 7:
            fail(errno.EINVAL)  # driver_data must be one of the static table's: none here
        entry.dynamic_ids.append(dyn)
        for fn in list(self.pci.values()):
            if fn.driver is None and dyn.matches(fn) and fn.driver_override is None:
                self.pci_attach(fn)
        return len(buf)

    def remove_id(self, name: str, buf: bytes) -> int:
        """``remove_id_store``: the first dynamic id equal to the one given goes, else ENODEV."""
        entry = self.pci_drivers[name]
        dyn, _ = parse_dynamic_id(buf)
        for i, have in enumerate(entry.dynamic_ids):
            if (have.vendor, have.device) == (dyn.vendor, dyn.device) and \
                    dyn.subvendor in (ANY_ID, have.subvendor) and \
                    dyn.subdevice in (ANY_ID, have.subdevice) and \
                    not (dyn.klass ^ have.klass) & dyn.class_mask:
                del entry.dynamic_ids[i]
                return len(buf)
        fail(errno.ENODEV)

    def _probe_pci(self, fn: PciFunction, drv: PciDriver) -> None:
        """really_probe: the driver's probe; then the function is its, registered with VFIO
        if the driver does that."""
        drv.probe(fn)
        fn.driver, fn.powered = drv, True
        if drv.enables:  # pci_enable_device and a 64-bit DMA mask, as a device driver does
            fn.enable_cnt, fn.dma_bits = 1, 64
        if drv.registers_vfio(fn):
            group = fn.iommu_group if fn.iommu_group is not None else -1
            fn.vfio = self._vfio_register(group)
            if not drv.enables:  # vfio-pci allows runtime PM: idle, it suspends to D3hot
                fn.runtime_allowed = True
        self._tell("pci_bound", fn)

    def _detach_pci(self, fn: PciFunction) -> None:
        drv = fn.driver
        assert drv is not None
        if fn.sriov is not None and fn.sriov.vfs:
            self._disable_vfs(fn)  # a PF driver's remove disables SR-IOV
        drv.remove(fn)
        if fn.sriov is not None:
            fn.sriov.driver_max = None  # pci_iov_remove: the capability's TotalVFs again
        if fn.vfio is not None:
            self._vfio_unregister(fn.vfio)
            fn.vfio, fn.vfio_open = None, False
            if not drv.enables:  # vfio-pci forbids runtime PM again as it lets go
                fn.runtime_allowed = False
        fn.driver, fn.enable_cnt, fn.dma_bits = None, 0, 32
        self._tell("pci_unbound", fn, drv)

    # --- SR-IOV -------------------------------------------------------------------------------

    def set_numvfs(self, pf: PciFunction, buf: bytes,
                   groups: Sequence[int | None] = ()) -> int:
        """``sriov_numvfs_store`` (drivers/pci/iov.c): parse, bound by sriov_totalvfs
        (ERANGE), nothing to do for the current count, ENOENT without a driver that can
        configure SR-IOV, 0 disables every VF, a new count needs 0 first (EBUSY). The
        VFs exist before the write returns; ``groups`` (a restore) gives their IOMMU groups."""
        sriov = pf.sriov
        assert sriov is not None
        count = parse_numvfs(buf, einval=self.kernel.has(PCI_STORE_EINVAL))
        if count > sriov.limit:
            fail(errno.ERANGE)
        if count == sriov.num_vfs:
            return len(buf)
        if pf.driver is None or not pf.driver.configures_sriov:
            fail(errno.ENOENT)
        if count and sriov.num_vfs:
            fail(errno.EBUSY)
        pf.driver.sriov_configure(pf, count)
        if count == 0:
            self._disable_vfs(pf)
            return len(buf)
        for i in range(count):
            vf = PciFunction(bdf=pf.vf_bdf(i), path=pf.vf_path(i), physfn=pf,
                             ids=evolve(pf.ids, device=sriov.vf_device), numa_node=pf.numa_node,
                             bars=pf.vf_bars(i), caps=Caps(link=pf.caps.link, pm=False,
                                                           msix=True, resets=("flr",)),
                             vfio_pci_refused=sriov.vf_vfio_pci_refused)
            sriov.vfs.append(vf)  # virtfn<i> is its place in this list
            self.add_pci(vf, groups[i] if i < len(groups) else None)
        pf.driver.vfs_added(pf)
        return len(buf)

    def _disable_vfs(self, pf: PciFunction) -> None:
        """pci_disable_sriov: every VF goes, the last first."""
        assert pf.sriov is not None
        for vf in reversed(pf.sriov.vfs):
            self.remove_pci(vf)
        pf.sriov.vfs.clear()

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
        return Binding(group, group, self._vfio_devices.alloc(), self._vfio_minors.alloc())

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
        if mdev.binding is not None or not self.kernel.has(PER_PARENT_MDEV_DRIVER):
            mdev.parent.driver.remove(mdev)
        self._destroy(mdev, vendor_removed=True)
        return len(buf)

    def _destroy(self, mdev: MdevDevice, vendor_removed: bool = False) -> None:
        """``mdev_device_remove()``: a bound device is detached from its driver first."""
        parent = mdev.parent
        holds = mdev.binding is not None or not self.kernel.has(PER_PARENT_MDEV_DRIVER)
        if holds and not vendor_removed:
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

    @property
    def module_version(self) -> str | None:  # type: ignore[override]
        return getattr(self.vendor, "module_version", None)

    def matches(self, fn: PciFunction) -> bool:
        return fn.bdf == self.parent

    def probe(self, fn: PciFunction) -> None:
        self.host._register_parent(self.parent, self.path, self.vendor).own_pci = fn

    def remove(self, fn: PciFunction) -> None:
        if self.parent in self.host.parents:
            self.host._unregister_parent(self.parent)


def attrs_evolve_function(fn: PciFunction) -> PciFunction:
    """A removed function as a rescan finds it again: its identity and capabilities, nothing
    of what the kernel or a driver set on it."""
    return PciFunction(bdf=fn.bdf, path=fn.path, ids=fn.ids, numa_node=fn.numa_node,
                       bars=fn.bars, caps=fn.caps, physfn=fn.physfn,
                       sriov=None if fn.sriov is None else evolve(fn.sriov, vfs=[],
                                                                 drivers_autoprobe=True),
                       vfio_pci_refused=fn.vfio_pci_refused)


def _parse_ulong(buf: bytes) -> int:
    try:
        return kstrtoul(buf)
    except OSError:
        fail(errno.EINVAL)


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
