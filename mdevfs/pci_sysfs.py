"""A PCI function's files, as ``drivers/pci/pci-sysfs.c``, ``iov.c`` and ``pci.c`` make them.

Each file is a shared :class:`~mdevfs.nodes.Op` over the :class:`~mdevfs.pci.PciFunction` it
belongs to; :func:`function_files` says which a function has (by its kind, its capabilities
and the kernel), and the tree attaches them (:meth:`mdevfs.tree.Tree.pci_added`). The
configuration space (:func:`config_space`) is built from the same facts as the other files:
the ids, BARs, the PCI Express link, the power management capability and the SR-IOV
capability, whose registers follow ``sriov_numvfs``.
"""
from __future__ import annotations

import errno
import struct
import time
from collections.abc import Callable
from typing import Any

from .attributes import props_text, synth_uevent, text
from .errors import fail
from .kernel import (
    KSTRTOBOOL_ENABLED_DISABLED,
    KSTRTOBOOL_TRUE_FALSE,
    PCI_STORE_EINVAL,
    RESET_METHOD,
    VF_MSIX_FILES,
    Kernel,
)
from .kparse import kstrtoint, kstrtoul, parse_ulong, pci_store_parse, sysfs_word
from .nodes import PAGE_SIZE, Op
from .pci import LINK_SPEEDS, RESET_METHODS, PciFunction

#: MAX_NUMNODES of Debian's kernels (CONFIG_NODES_SHIFT=10)
MAX_NUMNODES = 1024


def pci_uevent(fn: PciFunction) -> dict[str, str]:
    """pci_uevent(): what a PCI function's ``uevent`` holds, and its events carry."""
    ids = fn.ids
    props = {"DRIVER": fn.driver.name} if fn.driver is not None else {}
    props.update({
        "PCI_CLASS": f"{ids.klass:X}",
        "PCI_ID": f"{ids.vendor:04X}:{ids.device:04X}",
        "PCI_SUBSYS_ID": f"{ids.subsystem_vendor:04X}:{ids.subsystem_device:04X}",
        "PCI_SLOT_NAME": fn.bdf,
        "MODALIAS": modalias(fn)})
    return props


def modalias(fn: PciFunction) -> str:
    ids = fn.ids
    return (f"pci:v{ids.vendor:08X}d{ids.device:08X}sv{ids.subsystem_vendor:08X}"
            f"sd{ids.subsystem_device:08X}bc{ids.klass >> 16:02X}"
            f"sc{ids.klass >> 8 & 0xFF:02X}i{ids.klass & 0xFF:02X}")


# --- parsing as the kernel's stores do --------------------------------------------------------

def _parsed(fn: PciFunction, parse: Callable[[bytes], int], buf: bytes) -> int:
    """:func:`mdevfs.kparse.pci_store_parse` in ``fn``'s kernel."""
    return pci_store_parse(parse, buf, fn.host is None or fn.host.kernel.has(PCI_STORE_EINVAL))


def kstrtobool(fn: PciFunction, buf: bytes) -> bool:
    """kstrtobool: its first character (y, t, e, 1 / n, f, d, 0), or ``on``/``off``; else
    EINVAL. t and f count from 5.19, e and d from 6.16."""
    first = buf[:1].lower()
    kernel = fn.host.kernel if fn.host is not None else Kernel()
    known = b"yn10" + b"tf" * kernel.has(KSTRTOBOOL_TRUE_FALSE) + \
        b"ed" * kernel.has(KSTRTOBOOL_ENABLED_DISABLED)
    if first and first in known:
        return first in b"yte1"
    if first == b"o" and buf[1:2].lower() in (b"n", b"f"):
        return buf[1:2].lower() == b"n"
    fail(errno.EINVAL)


# --- the files -----------------------------------------------------------------------------

def _hex(width: int, get: Callable[[PciFunction], int]) -> Op:
    return Op(show=lambda fn: f"0x{get(fn):0{width}x}\n".encode())


def _flag(get: Callable[[PciFunction], bool], put: Callable[[PciFunction, bool], None]) -> Op:
    """A 0644 flag: shows 0 or 1; a store is kstrtoul, any failure EINVAL in every era; any
    non-zero value sets it."""
    def store(fn: PciFunction, buf: bytes) -> int:
        put(fn, bool(parse_ulong(buf)))
        return len(buf)

    return Op(show=lambda fn: text(int(get(fn))), store=store)


def _enable_store(fn: PciFunction, buf: bytes) -> int:
    """enable_store: kstrtoul (EINVAL); a function with a driver is EBUSY; non-zero enables
    (pci_enable_device counts), 0 disables an enabled one, else EIO."""
    value = _parsed(fn, kstrtoul, buf)
    if fn.driver is not None:
        fail(errno.EBUSY)
    if value:
        fn.enable_cnt += 1
        fn.powered = True
    elif fn.enable_cnt:
        fn.enable_cnt -= 1
    else:
        fail(errno.EIO)
    return len(buf)


def _numa_store(fn: PciFunction, buf: bytes) -> int:
    """numa_node_store: kstrtoint (EINVAL; before 5.16 its own errno); a node below -1,
    past MAX_NUMNODES or offline is EINVAL; else the node is overridden (the kernel taints
    itself, FW_BUG)."""
    node = _parsed(fn, kstrtoint, buf)
    nodes = fn.host.numa_nodes if fn.host is not None else 1
    if (node < 0 and node != -1) or node >= MAX_NUMNODES or (node != -1 and node >= nodes):
        fail(errno.EINVAL)
    fn.numa_node = node
    return len(buf)


def _driver_override_store(fn: PciFunction, buf: bytes) -> int:
    """driver_set_override: at least PAGE_SIZE - 1 bytes is EINVAL; the name is the text up to
    a newline; an empty one clears the override."""
    if len(buf) >= PAGE_SIZE - 1:
        fail(errno.EINVAL)
    name = buf.split(b"\0", 1)[0].split(b"\n", 1)[0].decode("latin-1")
    fn.driver_override = name or None
    return len(buf)


def _reset_store(fn: PciFunction, buf: bytes) -> int:
    """reset_store: kstrtoul, and only 1 (else EINVAL); no reset method in force is ENOTTY."""
    if _parsed(fn, kstrtoul, buf) != 1:
        fail(errno.EINVAL)
    if not fn.reset_methods:
        fail(errno.ENOTTY)
    return len(buf)


def _reset_method_store(fn: PciFunction, buf: bytes) -> int:
    """reset_method_store: "" disables every method, "default" restores those probed at boot,
    else the names given, in order; one unknown or unsupported is EINVAL and changes nothing."""
    words = sysfs_word(buf)
    if words == "":
        fn.resets = ()
        return len(buf)
    if words == "default":
        fn.resets = None
        return len(buf)
    chosen: list[str] = []
    for word in buf.split(b"\0", 1)[0].decode("latin-1").split(" "):
        name = word.strip()
        if not name:
            continue
        if name not in RESET_METHODS or name not in fn.caps.resets:
            fail(errno.EINVAL)
        if len(chosen) == len(RESET_METHODS):
            fail(errno.EINVAL)  # too many
        chosen.append(name)
    fn.resets = tuple(chosen)
    return len(buf)


def _msix_count_store(fn: PciFunction, buf: bytes) -> int:
    """sriov_vf_msix_count_store: kstrtoint (EINVAL; before 5.16 its own errno), negative
    EINVAL; a PF driver without
    sriov_set_msix_vec_count (none here) EOPNOTSUPP."""
    if _parsed(fn, kstrtoint, buf) < 0:
        fail(errno.EINVAL)
    fail(errno.EOPNOTSUPP)


def _cpus(fn: PciFunction) -> list[int]:
    """The CPUs of the function's NUMA node (every CPU for node -1)."""
    host = fn.host
    cpus, nodes = (host.cpus, host.numa_nodes) if host is not None else (2, 1)
    if fn.numa_node < 0:
        return list(range(cpus))
    per = max(1, cpus // nodes)
    return [c for c in range(cpus) if c // per == fn.numa_node]


def _cpu_mask(fn: PciFunction) -> bytes:
    """``%*pb`` (lib/vsprintf.c bitmap_string): the hex bitmap of nr_cpu_ids bits in 32-bit
    chunks separated by commas, most significant first, each zero-padded to its width (the
    first chunk's: its bits, nr_cpu_ids % 32 or 32, in hex digits)."""
    mask = sum(1 << c for c in _cpus(fn))
    host_cpus = fn.host.cpus if fn.host is not None else 2
    words = [(mask >> (32 * i)) & 0xFFFFFFFF for i in range((host_cpus + 31) // 32)]
    first = f"{words[-1]:0{-(-(host_cpus % 32 or 32) // 4)}x}"
    return text(",".join([first, *(f"{w:08x}" for w in reversed(words[:-1]))]))


def _cpu_list(fn: PciFunction) -> bytes:
    """``%*pbl``: ranges such as ``0-1,4``."""
    cpus, parts = _cpus(fn), []
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        parts.append(f"{cpus[i]}" if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return text(",".join(parts))


def _link(index: int) -> Callable[[PciFunction], bytes]:
    def show(fn: PciFunction) -> bytes:
        link = fn.link_state()
        assert link is not None
        value = link[index]
        return text(LINK_SPEEDS.get(value, "Unknown") if index in (0, 2) else value)

    return show


#: resource_show prints PCI_BRIDGE_RESOURCES lines for a device that is not a bridge:
#: six BARs, the ROM and six SR-IOV BARs
_RESOURCE_LINES = 13


def _resource(fn: PciFunction) -> bytes:
    bars = list(fn.bars[:6]) + [None] * (6 - len(fn.bars[:6])) + [None] + fn.iov_bars()
    bars += [None] * (_RESOURCE_LINES - len(bars))
    return "".join(f"0x{b.start if b else 0:016x} 0x{b.end if b else 0:016x} "
                   f"0x{b.flags if b else 0:016x}\n" for b in bars).encode()


def _resource_file(index: int) -> Op:
    """``resource<N>``: mode 0600, the BAR's size; a memory BAR is mapped, never read or
    written (EIO: sysfs_kf_bin_read has no read); an I/O BAR takes only 1-, 2- or 4-byte port
    accesses (EINVAL for any other: mdevfs gives no port I/O)."""
    def refuse(fn: PciFunction, buf: bytes = b"") -> Any:
        fail(errno.EINVAL if fn.bars[index].flags & 0x100 else errno.EIO)

    return Op(show=refuse, store=refuse, fixed_mode=0o600, size=lambda fn: fn.bars[index].size)


def _power_state(fn: PciFunction) -> bytes:
    return text(fn.power_state())


def _ari_enabled(fn: PciFunction) -> bytes:
    """pci_ari_enabled(bus): the bridge above forwards ARI, as it does below a root port when
    the device has the ARI capability; a function on a root bus has no bridge."""
    below_port = fn.path.count("/") > 2
    return text(int(below_port and (fn.physfn or fn).caps.ari))


PCI_FILES = {
    "ari_enabled": Op(show=_ari_enabled),
    "broken_parity_status": _flag(lambda fn: fn.broken_parity,
                                  lambda fn, v: setattr(fn, "broken_parity", v)),
    "class": _hex(6, lambda fn: fn.ids.klass),
    "config": Op(show=lambda fn: config_space(fn), store=lambda fn, buf: len(buf),
                 limit=4096, unprivileged_limit=64,
                 size=lambda fn: 4096 if fn.caps.link is not None or fn.is_vf else 256),
    "consistent_dma_mask_bits": Op(show=lambda fn: text(fn.dma_bits)),
    "d3cold_allowed": _flag(lambda fn: fn.d3cold_allowed,
                            lambda fn, v: setattr(fn, "d3cold_allowed", v)),
    "device": _hex(4, lambda fn: fn.ids.device),
    "dma_mask_bits": Op(show=lambda fn: text(fn.dma_bits)),
    "driver_override": Op(show=lambda fn: text(fn.driver_override or "(null)"),
                          store=_driver_override_store),
    "enable": Op(show=lambda fn: text(fn.enable_cnt), store=_enable_store),
    "irq": Op(show=lambda fn: text(fn.irq)),
    "local_cpulist": Op(show=_cpu_list),
    "local_cpus": Op(show=_cpu_mask),
    "modalias": Op(show=lambda fn: text(modalias(fn))),
    "msi_bus": _flag(lambda fn: not fn.no_msi, lambda fn, v: setattr(fn, "no_msi", not v)),
    "numa_node": Op(show=lambda fn: text(fn.numa_node), store=_numa_store),
    "power_state": Op(show=_power_state),
    "resource": Op(show=_resource),
    "revision": _hex(2, lambda fn: fn.ids.revision),
    "subsystem_device": _hex(4, lambda fn: fn.ids.subsystem_device),
    "subsystem_vendor": _hex(4, lambda fn: fn.ids.subsystem_vendor),
    "uevent": Op(show=lambda fn: props_text(pci_uevent(fn)), store=lambda fn, buf: synth_uevent(
        buf, f"/{fn.path}", "pci", pci_uevent(fn))),
    "vendor": _hex(4, lambda fn: fn.ids.vendor),
}
#: a PCI Express function's link files (pcie_dev_attrs)
PCIE_FILES = {
    "current_link_speed": Op(show=_link(2)),
    "current_link_width": Op(show=_link(3)),
    "max_link_speed": Op(show=_link(0)),
    "max_link_width": Op(show=_link(1)),
}
#: a function's own hotplug files, which a VF does not have (pci_dev_hp_attrs)
HOTPLUG_FILES = {
    "remove": Op(store=lambda fn, buf: fn.host.remove_store(fn, buf), fixed_mode=0o220),
    "rescan": Op(store=lambda fn, buf: fn.host.rescan(buf, fn.domain_bus[1])),
}
RESET_FILE = Op(store=_reset_store)
RESET_METHOD_FILE = Op(show=lambda fn: text(" ".join(fn.reset_methods)) if fn.reset_methods
                       else b"", store=_reset_method_store)
RESOURCE_FILES = [_resource_file(i) for i in range(6)]


def _set_vf_autoprobe(fn: PciFunction, buf: bytes) -> int:
    """sriov_drivers_autoprobe_store: kstrtobool, else EINVAL."""
    assert fn.sriov is not None
    fn.sriov.drivers_autoprobe = kstrtobool(fn, buf)
    return len(buf)


#: a PF's SR-IOV files (iov.c)
SRIOV_FILES = {
    "sriov_numvfs": Op(show=lambda fn: text(fn.sriov.num_vfs),
                       store=lambda fn, buf: fn.host.set_numvfs(fn, buf)),
    "sriov_totalvfs": Op(show=lambda fn: text(fn.sriov.limit)),
    "sriov_offset": Op(show=lambda fn: text(fn.sriov.offset)),
    "sriov_stride": Op(show=lambda fn: text(fn.sriov.stride)),
    "sriov_vf_device": Op(show=lambda fn: f"{fn.sriov.vf_device:x}\n".encode()),
    "sriov_drivers_autoprobe": Op(show=lambda fn: text(int(fn.sriov.drivers_autoprobe)),
                                  store=_set_vf_autoprobe),
}
VF_TOTAL_MSIX = Op(show=lambda fn: b"0\n")
VF_MSIX_COUNT = Op(store=_msix_count_store)


def function_files(fn: PciFunction) -> dict[str, Op]:
    """The files pci-sysfs.c and iov.c give ``fn``, by its kind and the kernel."""
    kernel = fn.host.kernel if fn.host is not None else None

    def newer(change: str) -> bool:
        return kernel is None or kernel.has(change)

    files = dict(PCI_FILES)
    if not fn.is_vf:
        files.update(HOTPLUG_FILES)
    if fn.caps.link is not None:
        files.update(PCIE_FILES)
    if fn.caps.resets:
        files["reset"] = RESET_FILE
        if newer(RESET_METHOD):
            files["reset_method"] = RESET_METHOD_FILE
    for i, bar in enumerate(fn.bars[:6]):
        if bar is not None and bar.size:
            files[f"resource{i}"] = RESOURCE_FILES[i]
            if bar.prefetchable:
                files[f"resource{i}_wc"] = RESOURCE_FILES[i]
    if fn.sriov is not None:
        files.update(SRIOV_FILES)
        if newer(VF_MSIX_FILES):
            files["sriov_vf_total_msix"] = VF_TOTAL_MSIX
    if fn.is_vf and newer(VF_MSIX_FILES):
        files["sriov_vf_msix_count"] = VF_MSIX_COUNT
    return files


# --- power/ of a PCI function (drivers/base/power/sysfs.c, as pci_pm_init leaves it) ---------

def _pm_control_store(fn: PciFunction, buf: bytes) -> int:
    """control_store: ``auto`` allows runtime PM, ``on`` forbids it, else EINVAL."""
    fn.runtime_allowed = _word(buf, {"auto": True, "on": False})
    return len(buf)


def _async_store(fn: PciFunction, buf: bytes) -> int:
    fn.async_suspend = _word(buf, {"enabled": True, "disabled": False})
    return len(buf)


def _word(buf: bytes, words: dict[str, bool]) -> bool:
    """The value of the word ``buf`` is (sysfs_streq: one trailing newline allowed), else
    EINVAL."""
    word = sysfs_word(buf)
    if word not in words:
        fail(errno.EINVAL)
    return words[word]


def _active_ms(fn: PciFunction) -> bytes:
    return text(0 if fn.suspended else int((time.monotonic() - fn.born) * 1000))


def _suspended_ms(fn: PciFunction) -> bytes:
    return text(int((time.monotonic() - fn.born) * 1000) if fn.suspended else 0)


PCI_POWER_FILES = {
    "async": Op(show=lambda fn: b"enabled\n" if fn.async_suspend else b"disabled\n",
                store=_async_store),
    "control": Op(show=lambda fn: b"auto\n" if fn.runtime_allowed else b"on\n",
                  store=_pm_control_store),
    "runtime_active_time": Op(show=_active_ms),
    "runtime_enabled": Op(show=lambda fn: b"enabled\n" if fn.runtime_allowed else b"forbidden\n"),
    "runtime_status": Op(show=lambda fn: b"suspended\n" if fn.suspended else b"active\n"),
    "runtime_suspended_time": Op(show=_suspended_ms),
    "runtime_usage": Op(show=lambda fn: text(fn.runtime_usage)),
}


# --- the configuration space ---------------------------------------------------------------------

def config_space(fn: PciFunction) -> bytes:
    """The function's configuration space as its files describe it: the type-0 header (ids,
    command and status, BARs, subsystem ids, interrupt pin), then the capability chain: power
    management at 0x40, MSI-X at 0x48, PCI Express at 0x54 (its link, FLR when ``flr`` is a
    reset method); a VF, without power management, has them at 0x40 and 0x4C. Extended
    capabilities from 0x100: ARI, and a PF's SR-IOV capability, whose NumVFs, offset, stride
    and VF device id follow ``sriov_*``, and whose VF BARs hold where VF0's start.
    256 bytes for a conventional function, 4096 for a PCI Express one. A VF's vendor and
    device ids read all ones, as on hardware (its files show the PF's vendor and the VF id)."""
    ids = fn.ids
    cfg = bytearray(4096 if fn.caps.link is not None or fn.is_vf else 256)
    command = (0x0006 if fn.enable_cnt else 0x0002) | (0x0400 if fn.caps.msix else 0)
    if fn.is_vf:
        command &= ~0x0002  # a VF's Memory Space bit is reserved (no_command_memory)
    vendor, device = (0xFFFF, 0xFFFF) if fn.is_vf else (ids.vendor, ids.device)
    struct.pack_into("<HHHHI", cfg, 0, vendor, device, command, 0x0010,
                     ids.klass << 8 | ids.revision)
    if not fn.is_vf:
        _put_bars(cfg, 0x10, fn.bars)
        cfg[0x3D] = 0x01 if fn.irq else 0  # INTA
        cfg[0x3C] = fn.irq & 0xFF
    struct.pack_into("<HH", cfg, 0x2C, ids.subsystem_vendor, ids.subsystem_device)
    caps = []
    if fn.caps.pm and not fn.is_vf:
        # PM v3, no PME; NoSoftRst set unless "pm" is a reset method; D0
        caps.append((0x01, struct.pack("<HH", 0x0003, 0 if "pm" in fn.caps.resets else 0x0008)))
    if fn.caps.msix:
        caps.append((0x11, struct.pack("<HII", 0x001F, 0x00000000 | 0, 0x00001000)))
    link = fn.link_state()
    if link is not None:
        caps.append((0x10, _pcie_cap(fn, link)))
    cfg[0x34] = 0x40 if caps else 0
    at = 0x40
    for i, (cap_id, body) in enumerate(caps):
        nxt = 0 if i == len(caps) - 1 else at + _round4(2 + len(body))
        cfg[at:at + 2] = bytes((cap_id, nxt))
        cfg[at + 2:at + 2 + len(body)] = body
        at = nxt
    if len(cfg) == 4096:
        _put_extended(cfg, fn)
    return bytes(cfg)


def _round4(n: int) -> int:
    return -(-n // 4) * 4


def _put_bars(cfg: bytearray, at: int, bars: tuple[Any, ...]) -> None:
    for i, bar in enumerate(bars[:6]):
        if bar is None or not bar.size:
            continue
        low = bar.flags & 0xF  # the BAR's own low bits: memory type, prefetchable
        struct.pack_into("<I", cfg, at + 4 * i, (bar.start & 0xFFFFFFF0) | low)
        if bar.wide and i < 5:
            struct.pack_into("<I", cfg, at + 4 * (i + 1), bar.start >> 32)


def _pcie_cap(fn: PciFunction, link: tuple[int, int, int, int]) -> bytes:
    """Capability version 2, an Endpoint; DevCap with FLR when ``flr`` is a reset method;
    LnkCap/LnkSta/LnkCap2 with the link's maximum and current speed and width."""
    max_speed, max_width, cur_speed, cur_width = link
    devcap = 0x10000000 if "flr" in fn.caps.resets else 0
    lnkcap = max_speed | max_width << 4
    lnksta = cur_speed | cur_width << 4
    lnkcap2 = sum(1 << s for s in range(1, max_speed + 1))
    body = bytearray(0x3A)  # the capability after its id and next pointer
    struct.pack_into("<HI", body, 0, 0x0002, devcap)  # flags at +2, DevCap at +4
    struct.pack_into("<I", body, 0x0A, lnkcap)  # LnkCap at +0x0c
    struct.pack_into("<H", body, 0x10, lnksta)  # LnkSta at +0x12
    struct.pack_into("<I", body, 0x2A, lnkcap2)  # LnkCap2 at +0x2c
    return bytes(body)


def _put_extended(cfg: bytearray, fn: PciFunction) -> None:
    """ARI at 0x100 (functions with it, and VFs), then a PF's SR-IOV at 0x110."""
    pf = fn.sriov
    if not (fn.caps.ari or fn.is_vf or pf is not None):
        struct.pack_into("<I", cfg, 0x100, 0)  # no extended capability (not all ones)
        return
    sriov_at = 0x110 if pf is not None else 0
    struct.pack_into("<I", cfg, 0x100, 0x000E | 1 << 16 | sriov_at << 20)  # ARI v1
    if pf is None:
        return
    num = pf.num_vfs
    control = 0x0019 if num else 0x0010  # VF Enable, VF MSE, ARI Capable Hierarchy
    # header, capabilities, control, status, InitialVFs, TotalVFs, NumVFs, function
    # dependency link, First VF Offset, VF Stride, reserved, VF Device ID, supported page
    # sizes, system page size (4 KiB)
    struct.pack_into("<IIHHHHHHHHHHII", cfg, sriov_at, 0x0010 | 1 << 16, 0, control, 0,
                     pf.total_vfs, pf.total_vfs, num, 0, pf.offset, pf.stride, 0, pf.vf_device,
                     0x00000553, 0x00000001)
    _put_bars(cfg, sriov_at + 0x24, tuple(fn.iov_bars()))  # VF BARn: where VF0's starts
