"""What the state file keeps of the PCI bus: each function's driver and ``driver_override``,
and each PF's VFs (their IOMMU groups, drivers and the driver's state, such as the vGPU an
NVIDIA VF holds) and ``sriov_drivers_autoprobe``.

One record per function that is not a VF (:func:`record`), applied back by :func:`apply`,
which is both the restore of a state file and the undo of a change the disk refused: it
brings a function to what its record says, checking every value against the card as the
kernel and the driver would (an IOMMU group in use, a driver that does not take the function,
a vGPU that does not fit are ValueErrors naming the problem).
"""
from __future__ import annotations

from typing import Any

from .model import Host
from .pci import PciFunction

_FUNCTION_KEYS = {"driver", "override"}
_VF_KEYS = {"bdf", "iommu_group", "driver", "override", "vendor"}


def record(fn: PciFunction) -> dict[str, Any]:
    """The record of a function that is not a VF."""
    rec: dict[str, Any] = {"driver": _driver(fn), "override": fn.driver_override}
    if fn.sriov is not None:
        rec["autoprobe"] = fn.sriov.drivers_autoprobe
        rec["vfs"] = [{"bdf": vf.bdf, "iommu_group": vf.iommu_group, "driver": _driver(vf),
                       "override": vf.driver_override, "vendor": vf.vendor}
                      for vf in fn.sriov.vfs]
    return rec


def records(host: Host) -> dict[str, Any]:
    return {fn.bdf: record(fn) for fn in host.pci.values() if not fn.is_vf}


def _driver(fn: PciFunction) -> str | None:
    return fn.driver.name if fn.driver is not None else None


def upgrade(vfs: Any) -> dict[str, Any]:
    """A record of an earlier format (a PF's list of VFs, each bound to the PF's driver)."""
    if not isinstance(vfs, list):
        raise ValueError("\"vfs\" is not a list")
    return {"driver": "nvidia", "override": None, "autoprobe": True,
            "vfs": [dict(v, driver="nvidia", override=None) if isinstance(v, dict) else v
                    for v in vfs]}


def apply(host: Host, fn: PciFunction, rec: Any) -> None:
    """Bring ``fn`` (not a VF) to ``rec``: its override and driver, then its VFs."""
    if fn.is_vf:
        raise ValueError("a VF is recorded with its PF")
    if not isinstance(rec, dict) or not _FUNCTION_KEYS <= set(rec):
        raise ValueError("corrupt (not a record with driver and override)")
    _bind(host, fn, rec)
    if "vfs" not in rec:
        return
    pf = fn.sriov
    vfs = rec["vfs"]
    if pf is None:
        raise ValueError("has no SR-IOV capability")
    if not isinstance(rec.get("autoprobe"), bool) or not isinstance(vfs, list) or not all(
            isinstance(v, dict) and set(v) == _VF_KEYS and isinstance(v["vendor"], dict)
            for v in vfs):
        raise ValueError("corrupt (\"vfs\" is not a list of {bdf, iommu_group, driver, "
                         "override, vendor}, or \"autoprobe\" not true or false)")
    groups = [v["iommu_group"] for v in vfs]
    for group in groups:
        if group is not None and (not isinstance(group, int) or isinstance(group, bool)
                                  or not 0 <= group < 2**31):
            raise ValueError(f"IOMMU group {group!r} is not a whole number from 0 to 2^31-1")
    pf.drivers_autoprobe = rec["autoprobe"]
    for vf in pf.vfs:
        vf.vendor.clear()  # each VF's state is checked against the ones restored before it
    if pf.num_vfs != len(vfs) or [vf.iommu_group for vf in pf.vfs] != groups:
        if pf.num_vfs:
            host.set_numvfs(fn, b"0")
        if vfs:
            host.set_numvfs(fn, str(len(vfs)).encode(), groups)
    for vf, vrec in zip(pf.vfs, vfs):
        if vf.bdf != vrec["bdf"]:
            raise ValueError(f"VF {vrec['bdf']} is {vf.bdf} in this topology")
        _bind(host, vf, vrec)
        if vf.driver is not None:
            vf.driver.restore_function(vf, vrec["vendor"])
        elif vrec["vendor"]:
            raise ValueError(f"VF {vf.bdf} has no driver to hold its state")
        vf.vendor = dict(vrec["vendor"])


def _bind(host: Host, fn: PciFunction, rec: dict[str, Any]) -> None:
    override, driver = rec["override"], rec["driver"]
    if override is not None and not isinstance(override, str):
        raise ValueError(f"{fn.bdf}: override {override!r} is not a string")
    if driver is not None and not isinstance(driver, str):
        raise ValueError(f"{fn.bdf}: driver {driver!r} is not a string")
    if driver is not None and driver not in host.pci_drivers:
        raise ValueError(f"{fn.bdf}: no driver {driver!r} on this host "
                         f"(drivers: {', '.join(host.pci_drivers)})")
    fn.driver_override = override or None
    if _driver(fn) == driver:
        return
    if fn.driver is not None:
        host.pci_unbind(fn, fn.driver.name)
    if driver is not None:
        try:
            host.pci_bind(fn, driver)
        except OSError as exc:
            raise ValueError(f"{fn.bdf}: driver {driver} does not take it "
                             f"({exc.strerror})") from None
