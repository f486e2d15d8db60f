"""Intel GVT-g (i915): mediated vGPUs of an integrated GPU (ABI §4.1, the proposal's series §5.3).

The parent is the GPU at ``0000:00:02.0`` (``devices/pci0000:00/0000:00:02.0``,
subsystem bus ``pci``); the type-id prefix is the PCI driver's name, ``i915``.

Types: ``GVTg_V5_{8,4,2,1}`` (``GVTg_V4_…`` on gen8), taken in that order from
the vgpu.c table (low GM, high GM, fences, weight, EDID resolution); registration
stops at the first type whose low GM does not fit the aperture left to vGPUs, so
a small aperture offers fewer types. All types draw on one shared pool of low GM
(aperture - 128 MB), high GM (hidden GGTT - 384 MB) and fences (fences - 4);
available_instances is the 6.1+ ``intel_vgpu_get_available``: the minimum over
the three. A create that does not fit is ENOSPC (aperture_gm.c). ``name`` shows
the sysfs name (6.1+ core); each device has ``intel_vgpu/vgpu_id`` (lowest free
id from 1).

migration_version (the proposal (v5) 2/4 and 4/4), at type and device nodes, mode 0644:
``"%04x-%04x-%s-%08x"`` of PCI vendor 0x8086, the device id, the type name and
the software version. Unsupported (read and write fail with ENODEV, logged) on a
platform other than gen8/gen9 or when the software version is
INV_SOFTWARE_VERSION (0xffffffff, as v5 was posted). A write is compatible only
when it equals the local string (sysfs_streq; the framework has already dropped
one trailing newline, so the comparison here is exact); otherwise EINVAL, and
the reason is logged after re-parsing both strings as ``"%x-%x-%16[^-]-%x"``.

Options: ``gen`` (9), ``device_id`` (0x1616 on gen8, else 0x1912),
``software_version`` (1), ``aperture_mb`` (1024), ``ggtt_mb`` (4096),
``fences`` (32). ``software_version`` changes at run time too, through
``set_option`` (``mdevfs ctl DIR set-option PARENT software_version 2``).

Not emulated: the strings are recomputed on every access (the driver builds them
at init and at create; a real change of version means reloading i915); the OLD
init-time available_instances without fences; GVT_MAX_VGPU; EBUSY on removing
an open vGPU; the EDID spellings are [rec].
"""
from __future__ import annotations

import errno
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mdevfs.driver import Attribute, BaseDriver, MdevTypeSpec, Migration, Option
from mdevfs.errors import fail
from mdevfs.model import MdevDevice, MdevType
from mdevfs.pci import MEM64, MEM64_PREFETCH, Bar, Caps

from ._options import whole

log = logging.getLogger(__name__)

PCI_VENDOR_ID_INTEL = 0x8086
INV_SOFTWARE_VERSION = 0xFFFFFFFF
HOST_LOW_GM_MB, HOST_HIGH_GM_MB, HOST_FENCE = 128, 384, 4
#: a gen8 (Broadwell GT2) or a gen9 (Skylake GT2, HD Graphics 530) device id
DEFAULT_DEVICE = {8: 0x1616, 9: 0x1912}

#: vgpu.c's vgpu_types: name, low GM MB, high GM MB, fences, weight (16/n), EDID
_CONFS = (("8", 64, 384, 4, 2, "1024x768"),
          ("4", 128, 512, 4, 4, "1920x1200"),
          ("2", 256, 1024, 4, 8, "1920x1200"),
          ("1", 512, 2048, 4, 16, "1920x1200"))

_REASONS = ("wrong string format. probably wrong GVT version", "physical device not matched",
            "migration software version not matched", "vgpu type not matched")


class Gvt(BaseDriver):
    """One GVT-g capable GPU."""

    name = "i915"
    mdev_driver = "intel_vgpu_mdev"  # the spec tags this name [rec]
    subsystem = ("bus", "pci")
    default_parent = "0000:00:02.0"
    default_path = "devices/pci0000:00/0000:00:02.0"
    #: an integrated GPU on the root bus: no PCI Express link of its own, FLR; its GTT/MMIO
    #: and aperture BARs (sizes as lspci shows a Skylake GT2)
    pci_caps = Caps(link=None, resets=("flr",))
    pci_bars = (Bar(0xDE000000, 16 << 20, MEM64), None, Bar(0xC0000000, 256 << 20, MEM64_PREFETCH))
    #: i915's pciidlist: each entry's driver_data is a pointer to its device info
    #: (INTEL_VGA_DEVICE), no value a user can give, so new_id refuses every one (EINVAL)
    pci_driver_data: frozenset[int] = frozenset()

    OPTIONS = (Option("gen", "int", 9, "the GPU's generation: 8 (Broadwell) or 9 (Skylake)"),
               Option("device_id", "int", None, "its PCI device id (0x1616 on gen 8, else 0x1912)"),
               Option("software_version", "int", 1, "the migration software version "
                      "(0xffffffff: migration unsupported); also at run time"),
               Option("aperture_mb", "int", 1024, "the aperture (low graphics memory), MB"),
               Option("ggtt_mb", "int", 4096, "the whole graphics translation table, MB"),
               Option("fences", "int", 32, "the fence registers"))

    @staticmethod
    def from_recording(parent: Any) -> dict[str, Any] | None:
        """GVT-g types (i915-GVTg_V<gen>_<n>): the generation, the device id and the
        software version its migration_version strings carry."""
        ids = parent.type_ids()
        if not ids or not all(i.startswith("i915-GVTg_V") for i in ids):
            return None
        options: dict[str, Any] = {"gen": 8 if any("_V4_" in i for i in ids) else 9}
        if "device" in parent.pci:
            options["device_id"] = int(parent.pci["device"], 16)
        versions = [t.migration for t in parent.types if t.migration]
        if versions and re.fullmatch(r".*-[0-9a-f]{8}", versions[0]):
            options["software_version"] = int(versions[0].rsplit("-", 1)[1], 16)
        return options

    def __init__(self, options: Mapping[str, object] | None = None) -> None:
        super().__init__(options)
        self.gen = whole(self.options, "gen", 9, minimum=1)
        self.device_id = whole(self.options, "device_id", DEFAULT_DEVICE.get(self.gen, 0x1912),
                               maximum=0xFFFF)
        self.set_software_version(whole(self.options, "software_version", 1,
                                        maximum=INV_SOFTWARE_VERSION))
        aperture = whole(self.options, "aperture_mb", 1024, minimum=HOST_LOW_GM_MB)
        ggtt = whole(self.options, "ggtt_mb", 4096, minimum=aperture + HOST_HIGH_GM_MB)
        fences = whole(self.options, "fences", 32, minimum=HOST_FENCE)
        #: what vGPUs may take, and what they have taken: low GM, high GM, fences
        self.total = (aperture - HOST_LOW_GM_MB, ggtt - aperture - HOST_HIGH_GM_MB,
                      fences - HOST_FENCE)
        self.taken = [0, 0, 0]
        version = 4 if self.gen == 8 else 5
        self._confs: dict[str, tuple[int, int, int]] = {}
        self._types = []
        for n, low, high, fence, weight, edid in _CONFS:
            if self.total[0] // low == 0:
                break  # intel_gvt_init_vgpu_types: this and every larger type is left out
            sysfs_name = f"GVTg_V{version}_{n}"
            self._confs[sysfs_name] = (low, high, fence)
            self._types.append(MdevTypeSpec(sysfs_name, description=(
                f"low_gm_size: {low}MB\nhigh_gm_size: {high}MB\nfence: {fence}\n"
                f"resolution: {edid}\nweight: {weight}")))

    def set_software_version(self, version: int) -> None:
        """Change the migration software version (0xffffffff: migration unsupported)."""
        if not 0 <= version <= INV_SOFTWARE_VERSION:
            raise ValueError(f"software version {version!r} is not a u32")
        self.software_version = version

    def set_option(self, key: str, value: object) -> None:
        """Run-time options (``mdevfs ctl DIR set-option``): only ``software_version``."""
        if key != "software_version":
            return super().set_option(key, value)  # EINVAL: no such run-time option
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"software_version must be a whole number, not {value!r}")
        self.set_software_version(value)

    def types(self) -> Sequence[MdevTypeSpec]:
        return tuple(self._types)

    def available_instances(self, mtype: MdevType) -> int:
        need = self._confs[mtype.spec.sysfs_name]
        return min((total - taken) // n for total, taken, n in zip(self.total, self.taken, need))

    def probe(self, mdev: MdevDevice) -> None:
        need = self._confs[mdev.mdev_type.spec.sysfs_name]
        for item, total, taken, n in zip(("low GM space", "high GM space", "fence"),
                                         self.total, self.taken, need):
            if n > total - taken:
                log.error("fail to allocate resource %s: request %d avail %d max %d taken %d",
                          item, n, total - taken, total, taken)
                fail(errno.ENOSPC)
        self.taken = [taken + n for taken, n in zip(self.taken, need)]
        if "vgpu_id" not in mdev.vendor:  # a device restored from saved state keeps its id
            ids = {d.vendor.get("vgpu_id") for t in mdev.mdev_type.parent.types.values()
                   for d in t.devices.values()}
            mdev.vendor["vgpu_id"] = min(set(range(1, len(ids) + 2)) - ids)

    def remove(self, mdev: MdevDevice) -> None:
        need = self._confs[mdev.mdev_type.spec.sysfs_name]
        self.taken = [taken - n for taken, n in zip(self.taken, need)]

    def device_attributes(self, mdev: MdevDevice) -> Sequence[Attribute]:
        return (Attribute("intel_vgpu/vgpu_id", show=lambda: str(mdev.vendor["vgpu_id"])),)

    def parent_uevent(self) -> Mapping[str, str]:
        return {"DRIVER": "i915", "PCI_CLASS": "30000",
                "PCI_ID": f"{PCI_VENDOR_ID_INTEL:04X}:{self.device_id:04X}"}

    def migration(self, target: MdevType | MdevDevice) -> Migration:
        if isinstance(target, MdevDevice):
            return GvtMigration(self, target.mdev_type.spec.sysfs_name, "this vgpu")
        return GvtMigration(self, target.spec.sysfs_name, f"type {target.type_id}")

    def supported(self) -> bool:
        """Whether migration is supported here; logs why not, as the patch does."""
        if self.gen not in (8, 9):
            log.error("Local hardware does not support migration on %d", self.gen)
            return False
        if self.software_version == INV_SOFTWARE_VERSION:
            log.error("Local GVT does not support migration")
            return False
        return True


class GvtMigration:
    """The migration_version of one GVT type or vGPU (``where`` names it in the log)."""

    def __init__(self, gvt: Gvt, type_name: str, where: str) -> None:
        self.gvt = gvt
        self.type_name = type_name
        self.where = where

    def _local(self) -> str:
        if not self.gvt.supported():
            log.error("Migration not supported on %s. Please search previous detailed log",
                      self.where)
            fail(errno.ENODEV)
        return (f"{PCI_VENDOR_ID_INTEL:04x}-{self.gvt.device_id:04x}-{self.type_name}"
                f"-{self.gvt.software_version:08x}")

    def version(self) -> str:
        return self._local()

    def check(self, source: str) -> None:
        local = self._local()
        if source != local:
            log.error("Migration version mismatched. Possible reason: %s. Local migration "
                      "version:%s, Remote migration version:%s",
                      mismatch_reason(local, source), local, source)
            fail(errno.EINVAL)


_HEX = re.compile(r"[ \t\n\v\f\r]*(?:0[xX](?=[0-9a-fA-F]))?([0-9a-fA-F]+)")
_NOT_DASH = re.compile(r"[^-]{1,16}")


def scan(text: str) -> list[int | str]:
    """The kernel's ``sscanf(text, "%x-%x-%16[^-]-%x", ...)``: the fields it fills.

    ``%x`` skips white space, takes an optional ``0x`` and hex digits, and keeps
    the low 32 bits; ``%16[^-]`` takes 1 to 16 characters other than ``-``; a
    literal ``-`` must match. Scanning stops at the first mismatch or at the end.
    """
    fields: list[int | str] = []
    pos = 0
    for i, conv in enumerate("xxsx"):
        if i:
            if text[pos:pos + 1] != "-":
                break
            pos += 1
        match = (_HEX if conv == "x" else _NOT_DASH).match(text, pos)
        if match is None or pos >= len(text):
            break
        fields.append(int(match.group(1), 16) & 0xFFFFFFFF if conv == "x" else match.group())
        pos = match.end()
    return fields


def mismatch_reason(local: str, remote: str) -> str:
    """``is_compatible()``'s guess at why two strings differ, for the log only."""
    left, right = scan(local), scan(remote)
    if len(left) != len(right):
        return _REASONS[0]
    pad = [0, 0, "", 0]
    vid_l, did_l, type_l, sv_l = left + pad[len(left):]
    vid_r, did_r, type_r, sv_r = right + pad[len(right):]
    if (vid_l, did_l) != (vid_r, did_r):
        return _REASONS[1]
    if sv_l != sv_r:
        return _REASONS[2]
    if type_l != type_r:
        return _REASONS[3]
    return _REASONS[0]
