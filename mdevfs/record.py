"""``mdevfs record``: a live host's (or any sysfs root's) mdev tree as a topology file.

    recording = scan(Path("/sys"))           # what the tree shows; problems noted, never raised
    text = topology_text(recording)          # the TOML: known drivers where they reproduce it

A parent is given to the vendor driver mdevfs knows (mtty, mdpy, mbochs, GVT-g, NVIDIA) when
that driver, with options inferred from the recording, shows the same types, names,
descriptions, device APIs, available_instances, vendor attributes and migration versions
(checked on a scratch host, no mount). Otherwise it is given to the ``recorded`` driver
(``vendors/recorded.py``), with pool arithmetic inferred from the one snapshot and comments
saying what was inferred and what a recording cannot show. SR-IOV NVIDIA GPUs become
``[[gpu]]`` entries; existing devices ``[[device]]`` entries, in IOMMU group order so that
their vfio numbers come out as recorded. Read errors, missing files and links that leave
the root are listed in the file's header and in :attr:`Recording.problems`.
"""
from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from attrs import Factory, define, field

UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
#: files of a type directory the core makes; the rest are the driver's
_TYPE_CORE = {"available_instances", "create", "description", "device_api", "devices", "name",
              "migration_version"}
#: entries of a device directory the core, vfio and the PM core make
_DEVICE_CORE = {"driver", "iommu_group", "mdev_type", "power", "remove", "subsystem", "uevent",
                "vfio-dev", "migration_version"}
PCI_VENDOR_NVIDIA = 0x10DE


@define
class RecType:
    type_id: str
    name: str | None = None
    description: str | None = None
    device_api: str | None = None
    available: int | None = None
    migration: str | None = None
    #: other files of the type directory, by path relative to it
    extra: dict[str, str] = Factory(dict)


@define
class RecDevice:
    uuid: str
    type_id: str
    iommu_group: int | None = None
    vfio_index: int | None = None
    #: the mdev driver it is bound to; None when unbound
    mdev_driver: str | None = None
    #: vendor files by path relative to the device directory: (content, writable)
    attrs: dict[str, tuple[str, bool]] = Factory(dict)


@define
class RecParent:
    name: str
    path: str
    subsystem: tuple[str, str] | None = None
    uevent: dict[str, str] = Factory(dict)
    #: PCI identity files (vendor, device, …) as read, when the parent is a PCI function
    pci: dict[str, str] = Factory(dict)
    iommu_group: int | None = None
    types: list[RecType] = Factory(list)
    devices: list[RecDevice] = Factory(list)


@define
class RecGpu:
    """An SR-IOV PF of NVIDIA's: what a ``[[gpu]]`` entry needs."""

    address: str
    path: str
    device: int
    num_vfs: int
    numa_node: int
    iommu_group: int | None = None


@define
class Recording:
    root: Path
    parents: list[RecParent] = Factory(list)
    gpus: list[RecGpu] = Factory(list)
    problems: list[str] = Factory(list)
    _real_root: str = field(default="", init=False)

    # --- reading, never raising --------------------------------------------------------------

    def read(self, path: Path, missing_ok: bool = False) -> str | None:
        """A file's text without its one final newline; None (and a problem) if unreadable."""
        try:  # non-blocking: a FIFO planted in a copied tree must not hang the recording
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
            with open(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "not a regular file")
                data = f.read(65536)
        except OSError as exc:
            if not (missing_ok and exc.errno == errno.ENOENT):
                self.problems.append(f"{self.rel(path)}: cannot read: "
                                     f"{errno.errorcode.get(exc.errno or 0, exc.errno)} "
                                     f"({exc.strerror})")
            return None
        text = data.decode("utf-8", errors="replace")
        return text[:-1] if text.endswith("\n") else text

    def number(self, path: Path, base: int = 10, missing_ok: bool = False) -> int | None:
        text = self.read(path, missing_ok)
        if text is None:
            return None
        try:
            return int(text.strip(), base)
        except ValueError:
            self.problems.append(f"{self.rel(path)}: not a number: {text[:40]!r}")
            return None

    def link(self, path: Path) -> str | None:
        """Where a link points, relative to the root (None, and a problem, if it leaves it)."""
        if not path.is_symlink():
            return None
        real = os.path.realpath(path)
        if not self._real_root:
            self._real_root = os.path.realpath(self.root)
        if not real.startswith(self._real_root + "/"):
            self.problems.append(f"{self.rel(path)}: links outside the root ({os.readlink(path)})")
            return None
        return real[len(self._real_root) + 1:]

    def rel(self, path: Path) -> str:
        return os.path.relpath(path, self.root)

    def listdir(self, path: Path) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                self.problems.append(f"{self.rel(path)}: cannot list: {exc.strerror}")
            return []


def scan(root: str | os.PathLike[str]) -> Recording:
    """Read every mdev parent, type and device under ``root`` (a sysfs root)."""
    rec = Recording(Path(root))
    if not (rec.root / "class/mdev_bus").is_dir():
        rec.problems.append("class/mdev_bus: missing (no mdev parent, or not a sysfs root)")
    for name in rec.listdir(rec.root / "class/mdev_bus"):
        path = rec.link(rec.root / "class/mdev_bus" / name)
        if path is None:
            continue
        if (rec.root / path / "physfn").is_symlink():
            continue  # an Ampere VF: its GPU's [[gpu]] entry makes it a parent again
        rec.parents.append(_parent(rec, name, path))
    for address in rec.listdir(rec.root / "bus/pci/devices"):
        gpu = _gpu(rec, address)
        if gpu is not None:
            rec.gpus.append(gpu)
    return rec


def _parent(rec: Recording, name: str, path: str) -> RecParent:
    pdir = rec.root / path
    parent = RecParent(name, path)
    sub = rec.link(pdir / "subsystem")
    if sub is not None and sub.count("/") == 1:
        kind, _, subsys = sub.partition("/")
        parent.subsystem = (kind, subsys)
    parent.uevent = _props(rec.read(pdir / "uevent") or "")
    if parent.subsystem == ("bus", "pci"):
        for key in ("vendor", "device", "subsystem_vendor", "subsystem_device", "class",
                    "revision"):
            value = rec.read(pdir / key, missing_ok=True)
            if value is not None:
                parent.pci[key] = value
        parent.iommu_group = _group(rec, pdir)
    for type_id in rec.listdir(pdir / "mdev_supported_types"):
        parent.types.append(_type(rec, pdir / "mdev_supported_types" / type_id))
    for entry in rec.listdir(pdir):
        if UUID_RE.fullmatch(entry) and (pdir / entry / "mdev_type").is_symlink():
            parent.devices.append(_device(rec, pdir / entry))
    known = {t.type_id for t in parent.types}
    for type_id in sorted({d.type_id for d in parent.devices} - known - {"?"}):
        rec.problems.append(f"{path}/mdev_supported_types/{type_id}: not recorded, only named by "
                            f"its devices' mdev_type links: its name, description and "
                            f"available_instances are unknown (umockdev-record does not keep "
                            f"mdev_supported_types/); it is replayed full")
        parent.types.append(RecType(type_id, device_api="vfio-pci"))
    return parent


def _type(rec: Recording, tdir: Path) -> RecType:
    mtype = RecType(tdir.name)
    mtype.name = rec.read(tdir / "name")
    mtype.description = rec.read(tdir / "description", missing_ok=True)
    mtype.device_api = rec.read(tdir / "device_api")
    mtype.available = rec.number(tdir / "available_instances")
    mtype.migration = rec.read(tdir / "migration_version", missing_ok=True)
    for rel, _writable in _files(rec, tdir, _TYPE_CORE):
        value = rec.read(tdir / rel)
        if value is not None:
            mtype.extra[rel] = value
    return mtype


def _device(rec: Recording, ddir: Path) -> RecDevice:
    target = rec.link(ddir / "mdev_type")
    dev = RecDevice(ddir.name.lower(), target.rsplit("/", 1)[-1] if target else "?")
    if target is None:
        rec.problems.append(f"{rec.rel(ddir)}/mdev_type: unreadable; the device is left out")
    dev.iommu_group = _group(rec, ddir)
    driver = rec.link(ddir / "driver")
    dev.mdev_driver = driver.rsplit("/", 1)[-1] if driver else None
    vfio = [n for n in rec.listdir(ddir / "vfio-dev") if n.startswith("vfio")]
    if vfio and vfio[0][4:].isdigit():
        dev.vfio_index = int(vfio[0][4:])
    for rel, writable in _files(rec, ddir, _DEVICE_CORE):
        value = rec.read(ddir / rel)
        if value is not None:
            dev.attrs[rel] = (value, writable)
    return dev


def _gpu(rec: Recording, address: str) -> RecGpu | None:
    path = rec.link(rec.root / "bus/pci/devices" / address)
    if path is None:
        return None
    fdir = rec.root / path
    if not (fdir / "sriov_totalvfs").exists() or (fdir / "mdev_supported_types").exists():
        return None
    if rec.number(fdir / "vendor", 16) != PCI_VENDOR_NVIDIA:
        return None
    numa = rec.number(fdir / "numa_node", missing_ok=True)
    return RecGpu(address, path, rec.number(fdir / "device", 16) or 0,
                  rec.number(fdir / "sriov_numvfs") or 0, -1 if numa is None else numa,
                  _group(rec, fdir))


def _group(rec: Recording, directory: Path) -> int | None:
    target = rec.link(directory / "iommu_group")
    if target is None or not target.rsplit("/", 1)[-1].isdigit():
        return None
    return int(target.rsplit("/", 1)[-1])


def _files(rec: Recording, directory: Path, core: set[str]) -> Iterable[tuple[str, bool]]:
    """Regular files below ``directory`` outside the core's names: (relative path, writable)."""
    for name in rec.listdir(directory):
        if name in core:
            continue
        path = directory / name
        if path.is_symlink():
            continue
        if path.is_dir():
            for rel, writable in _files(rec, path, set()):
                yield f"{name}/{rel}", writable
        elif path.is_file():
            mode = path.stat().st_mode
            if mode & 0o444:
                yield name, bool(mode & 0o200)


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


# --- anonymizing --------------------------------------------------------------------------

_SERIAL_RE = re.compile(r"serial|uuid|guid", re.IGNORECASE)


def anonymize(rec: Recording) -> None:
    """Replace every UUID (devices' and any inside a value) by a made-up one, the same one
    for the same UUID everywhere, and values of files named like a serial number."""
    mapping: dict[str, str] = {}

    def fake(match: re.Match[str]) -> str:
        key = match[0].lower()
        if key not in mapping:
            n = len(mapping) + 1
            mapping[key] = f"{n:08x}-0000-4000-8000-{n:012x}"
        return mapping[key]

    def clean(name: str, value: str) -> str:
        if _SERIAL_RE.search(name.rsplit("/", 1)[-1]) and not UUID_RE.fullmatch(value.strip()):
            return "anonymized" if value else value
        return UUID_RE.sub(fake, value)

    for parent in rec.parents:
        for dev in sorted(parent.devices, key=device_order):
            dev.uuid = UUID_RE.sub(fake, dev.uuid)
            dev.attrs = {k: (clean(k, v), w) for k, (v, w) in dev.attrs.items()}
        for mtype in parent.types:
            mtype.extra = {k: clean(k, v) for k, v in mtype.extra.items()}
        parent.uevent = {k: clean(k, v) for k, v in parent.uevent.items()}


def device_order(dev: RecDevice) -> tuple[int, int, str]:
    """Bound devices by IOMMU group (the order the kernel numbered them), then unbound ones."""
    group = dev.iommu_group
    return (0 if group is not None else 1, group if group is not None else 0, dev.uuid)


# --- TOML --------------------------------------------------------------------------------

def toml_value(value: Any) -> str:
    """A TOML value: strings as basic strings (JSON escapes are TOML's, but DEL)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{toml_value(k)} = {toml_value(v)}"
                                for k, v in value.items()) + " }" if value else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def comment(lines: Iterable[str]) -> str:
    return "".join(f"# {line}\n".replace("# \n", "#\n") for line in lines)
