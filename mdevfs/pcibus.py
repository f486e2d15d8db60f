"""The PCI bus of a host, as drivers/pci and drivers/base run it: functions added and
removed (hot-plug, rescan), drivers registered, matched, bound and unbound (driver_override,
new_id, drivers_probe), and SR-IOV's VFs made and taken away. :class:`PciBus` is the part of
:class:`mdevfs.model.Host` that does it; pure and synchronous.
"""
from __future__ import annotations

import contextlib
import errno
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from attrs import evolve

from .errors import fail
from .kernel import BIND_BOUND_EBUSY, PCI_STORE_EINVAL, UNBOUND_POWER_D0
from .kparse import kstrtou16, parse_ulong, pci_store_parse
from .pci import ANY_ID, Caps, DriverEntry, PciDriver, PciFunction, PciIds, parse_dynamic_id

if TYPE_CHECKING:
    from .kernel import Kernel
    from .model import Binding, Ida


class PciBus:
    """The PCI bus's half of a host (its fields are the host's: ``pci``, ``pci_drivers``,
    ``pci_autoprobe``, ``removed``, the idas)."""

    __slots__ = ()
    kernel: Kernel
    iommu: str
    pci: dict[str, PciFunction]
    pci_drivers: dict[str, DriverEntry]
    pci_autoprobe: bool
    removed: list[PciFunction]
    _vf_slots: dict[str, PciFunction]
    _irqs: Ida

    def _tell(self, event: str, *args: Any) -> None: ...
    def _alloc_group(self, wanted: int | None) -> int: ...
    def _release_group(self, number: int) -> None: ...
    def _vfio_register(self, group: int) -> Binding: ...
    def _vfio_unregister(self, binding: Binding) -> None: ...

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
        # pci_setup_device leaves current_state unknown; from 6.16 pci_pm_init puts it in D0
        fn.powered = self.kernel.has(UNBOUND_POWER_D0)
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
            self._release_group(fn.iommu_group)
        if not fn.is_vf and all(f.irq != fn.irq for f in self.pci.values()):
            self._irqs.release(fn.irq)
        self._tell("pci_removed", fn)

    def remove_store(self, fn: PciFunction, buf: bytes) -> int:
        """A function's ``remove`` (pci-sysfs.c remove_store): kstrtoul, any failure EINVAL;
        non-zero takes the function (and what hangs on it) off the bus until a rescan."""
        if parse_ulong(buf):
            self.remove_pci(fn)
            self.removed.append(fn)
        return len(buf)

    def rescan(self, buf: bytes, bus: int | None = None) -> int:
        """``rescan`` of the bus (or of a function's bus): kstrtoul, any failure EINVAL;
        non-zero finds every removed function (on that bus) again, as at boot."""
        if parse_ulong(buf):
            for fn in [f for f in self.removed if bus is None or f.domain_bus[1] == bus]:
                self.removed.remove(fn)
                fresh = attrs_evolve_function(fn)
                self.add_pci(fresh)
        return len(buf)

    # --- the PCI bus: drivers and binding ------------------------------------------------------

    def register_pci_driver(self, driver: PciDriver) -> DriverEntry:
        """A driver (or one more instance of a driver's name) on the bus. Nothing is probed
        here: every driver registers before the functions it takes are added (which probes
        them), and one more instance of a name (another GPU) is no driver_register, so a
        function its user unbound stays unbound."""
        entry = self.pci_drivers.get(driver.name)
        if entry is None:
            entry = self.pci_drivers[driver.name] = DriverEntry(
                driver.name, driver.module, driver.module_version, driver.id_table_data)
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
        id table. A driver mdevfs keeps as one instance per GPU (a GPU's parent driver, an
        SR-IOV GPU's) answers through that GPU's instance alone: a function of no GPU of its
        finds nothing to probe; a generic driver (``takes_others``) probes any."""
        own = next((drv for drv in entry.instances if drv.matches(fn)), None)
        other = next((drv for drv in entry.instances if drv.takes_others), None)
        if fn.driver_override is not None:
            return own or other if fn.driver_override == entry.name else None
        if own is None and any(dyn.matches(fn) for dyn in entry.dynamic_ids):
            return other
        return own

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
        """``bind_store``: the function must match the driver (else ENODEV), then have none
        (else EBUSY) and be one its PF lets probe (else ENODEV); the probe's own errno
        passes. Before 5.14 a bound function and a failed probe were ENODEV too."""
        drv = self._matching(fn, self.pci_drivers[name])
        if drv is None:
            fail(errno.ENODEV)
        since = self.kernel.has(BIND_BOUND_EBUSY)
        if fn.driver is not None:
            fail(errno.EBUSY if since else errno.ENODEV)
        if not self._may_probe(fn):
            fail(errno.ENODEV)
        try:
            self._probe_pci(fn, drv)
        except OSError:
            if since:
                raise
            fail(errno.ENODEV)

    def pci_unbind(self, fn: PciFunction, name: str) -> None:
        """``unbind_store``: a function bound to this driver is detached (its driver's remove
        cannot refuse), else ENODEV."""
        if fn.driver is None or fn.driver.name != name:
            fail(errno.ENODEV)
        self._detach_pci(fn)

    def open_vfio(self, fn: PciFunction, on: bool) -> None:
        """A VM opens (or closes) ``fn``'s VFIO device: opening enables the function
        (pci_enable_device: D0, where it stays after the close unless it idles again)."""
        fn.vfio_open = on
        if on:
            fn.powered = True

    def drivers_probe(self, fn: PciFunction) -> None:
        """``drivers_probe_store`` of one function: attach it if it has no driver."""
        self.pci_attach(fn)

    def new_id(self, name: str, buf: bytes) -> int:
        """``new_id_store``: without driver data, an id the driver already takes (its table
        or a dynamic id) is EEXIST; a driver with an id table takes only driver data one of
        its entries has, else EINVAL. Then ``driver_attach()``: every function without a
        driver that this driver now takes is probed by it (a refusal is no error)."""
        entry = self.pci_drivers[name]
        dyn, fields = parse_dynamic_id(buf)
        probe_fn = PciFunction("ffff:ff:1f.7", "", PciIds(
            dyn.vendor, dyn.device, dyn.subvendor, dyn.subdevice, dyn.klass))
        if fields < 7 and (any(dyn.matches(probe_fn) for dyn in entry.dynamic_ids)
                           or any(drv.matches(probe_fn) for drv in entry.instances)):
            fail(errno.EEXIST)  # pci_match_device: a dynamic id, or the id table, takes it
        if entry.id_table_data is not None and dyn.driver_data not in entry.id_table_data:
            fail(errno.EINVAL)
        entry.dynamic_ids.append(dyn)
        self._driver_attach(entry)
        return len(buf)

    def _driver_attach(self, entry: DriverEntry) -> None:
        for fn in list(self.pci.values()):
            if fn.driver is None and self._may_probe(fn):
                drv = self._matching(fn, entry)
                if drv is not None:
                    with contextlib.suppress(OSError):
                        self._probe_pci(fn, drv)

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
        if the driver does that (vfio_iommu_group_get: EINVAL for a function without an
        IOMMU group)."""
        if fn.iommu_group is None and drv.registers_vfio(fn):
            fail(errno.EINVAL)
        drv.probe(fn)
        fn.driver = drv
        if drv.enables:  # pci_enable_device (D0) and a 64-bit DMA mask, as a device driver does
            fn.enable_cnt, fn.dma_bits, fn.powered = 1, 64, True
        if drv.registers_vfio(fn):
            fn.vfio = self._vfio_register(fn.iommu_group)
            if not drv.enables and not drv.idles_d3hot:
                fn.runtime_allowed = True  # vfio-pci allows runtime PM: idle, it suspends
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
        # pci_device_remove: a function left on is in a state "unknown" to the next driver
        fn.driver, fn.enable_cnt, fn.dma_bits, fn.powered = None, 0, 32, False
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
        count = pci_store_parse(kstrtou16, buf, self.kernel.has(PCI_STORE_EINVAL))
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
        return len(buf)

    def _disable_vfs(self, pf: PciFunction) -> None:
        """pci_disable_sriov: every VF goes, the last first."""
        assert pf.sriov is not None
        for vf in reversed(pf.sriov.vfs):
            self.remove_pci(vf)
        pf.sriov.vfs.clear()


def attrs_evolve_function(fn: PciFunction) -> PciFunction:
    """A removed function as a rescan finds it again: its identity and capabilities, nothing
    of what the kernel or a driver set on it; its interrupt line, the firmware's, again."""
    return PciFunction(bdf=fn.bdf, path=fn.path, ids=fn.ids, numa_node=fn.numa_node, irq=fn.irq,
                       bars=fn.bars, caps=fn.caps, physfn=fn.physfn,
                       sriov=None if fn.sriov is None else evolve(fn.sriov, vfs=[],
                                                                 drivers_autoprobe=True),
                       vfio_pci_refused=fn.vfio_pci_refused)
