"""A PCI function's files, as ``drivers/pci/pci-sysfs.c`` and ``iov.c`` make them.

Each file is a shared :class:`~mdevfs.nodes.Op` over the :class:`~mdevfs.pci.PciFunction`
it belongs to; the tree attaches them (:meth:`mdevfs.tree.Tree.pci_added`).
"""
from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from typing import Any

from .attributes import props_text, text, uevent_store
from .errors import fail
from .nodes import Op
from .pci import PciFunction


def pci_uevent(fn: PciFunction) -> dict[str, str]:
    """pci_uevent(): what a PCI function's ``uevent`` holds, and its events carry."""
    ids = fn.ids
    props = {"DRIVER": fn.driver.name} if fn.driver is not None else {}
    props.update({
        "PCI_CLASS": f"{ids.klass:X}",
        "PCI_ID": f"{ids.vendor:04X}:{ids.device:04X}",
        "PCI_SUBSYS_ID": f"{ids.subsystem_vendor:04X}:{ids.subsystem_device:04X}",
        "PCI_SLOT_NAME": fn.bdf,
        "MODALIAS": (f"pci:v{ids.vendor:08X}d{ids.device:08X}sv{ids.subsystem_vendor:08X}"
                     f"sd{ids.subsystem_device:08X}bc{ids.klass >> 16:02X}"
                     f"sc{ids.klass >> 8 & 0xFF:02X}i{ids.klass & 0xFF:02X}")})
    return props


def _pci_config(fn: PciFunction) -> bytes:
    """A type-0 configuration header (256 bytes): ids, revision, class and subsystem ids;
    no capabilities."""
    ids = fn.ids
    head = struct.pack("<HHHHI", ids.vendor, ids.device, 0, 0, ids.klass << 8 | ids.revision)
    head = head.ljust(0x2C, b"\0") + struct.pack("<HH", ids.subsystem_vendor, ids.subsystem_device)
    return head.ljust(256, b"\0")


#: resource_show prints PCI_BRIDGE_RESOURCES lines for a device that is not a bridge:
#: six BARs, the ROM and six SR-IOV BARs
_RESOURCE_LINES = 13


def _resource(fn: PciFunction) -> bytes:
    bars = list(fn.bars) + [None] * (_RESOURCE_LINES - len(fn.bars))
    return "".join(f"0x{b.start if b else 0:016x} 0x{b.end if b else 0:016x} "
                   f"0x{b.flags if b else 0:016x}\n" for b in bars).encode()


def _hex(width: int, get: Callable[[Any], int]) -> Op:
    return Op(show=lambda fn: f"0x{get(fn):0{width}x}\n".encode())


#: what pci-sysfs.c shows for every PCI function and clients read (libvirt's udevProcessPCI,
#: NVIDIA's go-nvlib: numa_node and resource)
PCI_FILES = {
    "vendor": _hex(4, lambda fn: fn.ids.vendor),
    "device": _hex(4, lambda fn: fn.ids.device),
    "subsystem_vendor": _hex(4, lambda fn: fn.ids.subsystem_vendor),
    "subsystem_device": _hex(4, lambda fn: fn.ids.subsystem_device),
    "class": _hex(6, lambda fn: fn.ids.klass),
    "revision": _hex(2, lambda fn: fn.ids.revision),
    "numa_node": Op(show=lambda fn: text(fn.numa_node)),
    "resource": Op(show=_resource),
    "config": Op(show=_pci_config),
    "uevent": Op(show=lambda fn: props_text(pci_uevent(fn)), store=uevent_store),
}
#: a PF's SR-IOV files (pci-sysfs.c and iov.c); the tree adds sriov_numvfs, which the host stores
SRIOV_FILES = {
    "sriov_totalvfs": Op(show=lambda fn: text(fn.sriov.total_vfs)),
    "sriov_offset": Op(show=lambda fn: text(fn.sriov.offset)),
    "sriov_stride": Op(show=lambda fn: text(fn.sriov.stride)),
    "sriov_vf_device": Op(show=lambda fn: f"{fn.sriov.vf_device:x}\n".encode()),
    "sriov_drivers_autoprobe": Op(show=lambda fn: text(int(fn.sriov.drivers_autoprobe)),
                                  store=lambda fn, buf: _set_vf_autoprobe(fn, buf)),
}


def _set_vf_autoprobe(fn: PciFunction, buf: bytes) -> int:
    """sriov_drivers_autoprobe_store: ``kstrtobool`` (its first one or two characters:
    y, t, 1, on; n, f, 0, off), else EINVAL."""
    word = buf[:2].decode("latin-1").lower()
    if word[:1] in ("y", "t", "1") or word == "on":
        fn.sriov.drivers_autoprobe = True
    elif word[:1] in ("n", "f", "0") or word == "of":
        fn.sriov.drivers_autoprobe = False
    else:
        fail(errno.EINVAL)
    return len(buf)
