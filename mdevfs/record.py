"""``mdevfs record``: a live host's (or any sysfs root's) mdev tree as a topology file.

    recording = scan(Path("/sys"))           # what the tree shows; problems noted, never raised
    made = infer.replay(recording)           # the TOML: known drivers where they reproduce it

A parent is given to an installed vendor driver that recognises it (its factory's
``from_recording``) when that driver, with the options it inferred, shows the same types,
names, descriptions, device APIs, available_instances, vendor attributes and migration
versions (checked on a scratch host, no mount). Otherwise it is given to the ``recorded``
driver (``vendors/recorded.py``), with pool arithmetic inferred from the one snapshot and
comments saying what was inferred and what a recording cannot show. A PCI function with
SR-IOV that is not an mdev parent (an NVIDIA GPU whose VFs hold vGPUs) becomes a ``[[gpu]]``
entry of the driver that recognises it; existing devices ``[[device]]`` entries, in IOMMU
group order so that their vfio numbers come out as recorded. Read errors, missing files and links that leave
the root are listed in the file's header and in :attr:`Recording.problems`.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from attrs import Factory, define, field

from .beneath import Root
from .config import name_problem, path_problem
from .kernel import (
    CHANGES,
    KNOWN,
    MDEV_GROUP_NAMED,
    NEWEST,
    NO_VFIO_MDEV_DRIVER,
    OLDEST,
    PER_PARENT_MDEV_DRIVER,
    VFIO_DEV_CLASS,
    Version,
)
from .kparse import UUID_PATTERN, sysfs_number

UUID_RE = re.compile(UUID_PATTERN)
#: files of a type directory the core makes; the rest are the driver's
_TYPE_CORE = {"available_instances", "create", "description", "device_api", "devices", "name",
              "migration_version"}
#: entries of a device directory the core, vfio and the PM core make
_DEVICE_CORE = {"driver", "iommu_group", "mdev_type", "power", "remove", "subsystem", "uevent",
                "vfio-dev", "migration_version"}


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
    """An mdev parent as recorded: what a driver's ``from_recording`` is asked about."""

    name: str
    path: str
    subsystem: tuple[str, str] | None = None
    uevent: dict[str, str] = Factory(dict)
    #: PCI identity files (vendor, device, …) as read, when the parent is a PCI function
    pci: dict[str, str] = Factory(dict)
    iommu_group: int | None = None
    types: list[RecType] = Factory(list)
    devices: list[RecDevice] = Factory(list)

    def type_ids(self) -> set[str]:
        return {t.type_id for t in self.types}

    def available(self) -> dict[str, int | None]:
        """Each type's available_instances, as read (None: unreadable)."""
        return {t.type_id: t.available for t in self.types}

    def bound(self) -> dict[str, int]:
        """Each type's devices that are bound to a driver (holding its resources)."""
        counts = {t.type_id: 0 for t in self.types}
        for dev in self.devices:
            if dev.mdev_driver is not None and dev.type_id in counts:
                counts[dev.type_id] += 1
        return counts


@define
class RecFunction:
    """A PCI function with the SR-IOV capability that is not an mdev parent: what a
    ``[[gpu]]`` entry of a driver that recognises it needs."""

    address: str
    path: str
    vendor: int
    device: int
    num_vfs: int
    numa_node: int
    iommu_group: int | None = None


@define
class Recording:
    root: Path
    parents: list[RecParent] = Factory(list)
    #: the SR-IOV functions that are not mdev parents
    functions: list[RecFunction] = Factory(list)
    problems: list[str] = Factory(list)
    #: CONFIG_PM_ADVANCED_DEBUG: a parent's power/ has ``async`` (true with no parent)
    pm_advanced_debug: bool = True
    #: what the tree tells of the kernel's era: (change, whether it has it, what showed it),
    #: a change being a key of :data:`mdevfs.kernel.CHANGES`
    era: list[tuple[str, bool, str]] = Factory(list)
    #: the tree, read from below its root (:class:`mdevfs.beneath.Root`); None once closed
    tree: Root | None = field(default=None, repr=False)

    # --- reading, never raising, never leaving the root ------------------------------------

    def read(self, rel: str, missing_ok: bool = False) -> str | None:
        """A file's text without its one final newline; None (and a problem) if unreadable."""
        assert self.tree is not None
        try:  # regular files only: a FIFO planted in a copied tree must not hang the recording
            data = self.tree.read(rel)
        except OSError as exc:
            if not (missing_ok and exc.errno == errno.ENOENT):
                self.problem(rel, exc)
            return None
        text = data.decode("utf-8", errors="replace")
        return text[:-1] if text.endswith("\n") else text

    def problem(self, rel: str, exc: OSError, what: str = "read") -> None:
        why = ("it leads outside the root" if exc.errno == errno.EXDEV
               else "a loop of links" if exc.errno == errno.ELOOP
               else f"{errno.errorcode.get(exc.errno or 0, exc.errno)} ({exc.strerror})")
        self.problems.append(f"{rel}: cannot {what}: {why}")

    def number(self, rel: str, base: int = 10, missing_ok: bool = False) -> int | None:
        text = self.read(rel, missing_ok)
        if text is None:
            return None
        try:
            return int(text.strip(), base)
        except ValueError:
            self.problems.append(f"{rel}: not a number: {text[:40]!r}")
            return None

    def link(self, rel: str) -> str | None:
        """Where a link leads, every link followed, as a path from the root; None if
        ``rel`` is no link, and (with a problem) if it leads outside the root or nowhere."""
        assert self.tree is not None
        if not self.tree.is_link(rel):
            return None
        try:
            return self.tree.resolve(rel)
        except OSError as exc:
            try:
                target = self.tree.readlink(rel)
            except OSError:
                target = "?"
            self.problems.append(f"{rel}: a link that cannot be followed ({target!r}): "
                                 + ("it leads outside the root" if exc.errno == errno.EXDEV
                                    else os.strerror(exc.errno or errno.EIO)))
            return None

    def listdir(self, rel: str) -> list[str]:
        assert self.tree is not None
        try:
            return self.tree.listdir(rel)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                self.problem(rel, exc, "list")
            return []

    def is_link(self, rel: str) -> bool:
        assert self.tree is not None
        return self.tree.is_link(rel)

    def exists(self, rel: str) -> bool:
        assert self.tree is not None
        return self.tree.exists(rel)


def scan(root: str | os.PathLike[str]) -> Recording:
    """Read every mdev parent, type and device under ``root`` (a sysfs root), never outside."""
    rec = Recording(Path(root))
    with Root(root) as tree:
        rec.tree = tree
        try:
            _scan(rec)
        finally:
            rec.tree = None
    return rec


def _scan(rec: Recording) -> None:
    if not rec.tree.is_dir("class/mdev_bus"):  # type: ignore[union-attr]
        rec.problems.append("class/mdev_bus: missing (no mdev parent, or not a sysfs root)")
    for name in rec.listdir("class/mdev_bus"):
        path = rec.link(f"class/mdev_bus/{name}")
        if path is None:
            continue
        problem = name_problem(name) or path_problem(path)
        if problem:
            rec.problems.append(f"class/mdev_bus/{name}: left out: its name or path {problem}")
            continue
        if rec.is_link(f"{path}/physfn"):
            continue  # an Ampere VF: its GPU's [[gpu]] entry makes it a parent again
        rec.parents.append(_parent(rec, name, path))
    if rec.parents:
        rec.pm_advanced_debug = any(rec.exists(f"{p.path}/power/async") for p in rec.parents)
    for address in rec.listdir("bus/pci/devices"):
        fn = _function(rec, address)
        if fn is not None:
            rec.functions.append(fn)
    _era(rec)


def _era(rec: Recording) -> None:
    """The kernel's era, from what only some kernels show: which driver an mdev is bound to
    (vfio_mdev before 5.14), whether vfio_mdev is on the bus (before 5.19), whether a bound
    mdev has vfio-dev (from 6.1) and whether its IOMMU group has a name (from 5.16)."""
    bound = [(p, d) for p in rec.parents for d in p.devices if d.mdev_driver is not None]
    for _, dev in bound[:1]:  # said without its UUID: --anonymize leaves none in the file
        rec.era.append((PER_PARENT_MDEV_DRIVER, dev.mdev_driver != "vfio_mdev",
                        f"a bound mdev's driver is {dev.mdev_driver}"))
        rec.era.append((VFIO_DEV_CLASS, dev.vfio_index is not None,
                        f"it has {'a' if dev.vfio_index is not None else 'no'} vfio-dev"))
        if dev.iommu_group is not None:
            named = rec.exists(f"kernel/iommu_groups/{dev.iommu_group}/name")
            rec.era.append((MDEV_GROUP_NAMED, named, f"its IOMMU group has {'a' if named else 'no'}"
                            f" name"))
    if rec.exists("bus/mdev/drivers/vfio_mdev"):
        rec.era.append((NO_VFIO_MDEV_DRIVER, False, "bus/mdev/drivers has vfio_mdev"))


def kernel_of(rec: Recording) -> tuple[str | None, str]:
    """The kernel a replay of ``rec`` emulates (None: the newest, nothing says otherwise) and
    why: the newest of the kernels mdevfs knows best (kernel.KNOWN) that agrees with every sign
    of the era, else the oldest release that does."""
    lo, hi = OLDEST, NEWEST
    for change, has, _ in rec.era:
        since = CHANGES[change].since
        if has:
            lo = max(lo, since)
        else:
            hi = min(hi, Version(since.major, since.minor - 1) if since.minor else
                     Version(since.major - 1, 99))
    if not rec.era:
        return None, "nothing recorded tells the kernel's era"
    signs = "; ".join(why for _, _, why in rec.era)
    if lo > hi:
        return None, f"the signs of the era disagree ({signs})"
    fits = [v for v in map(Version.parse, KNOWN) if lo <= v <= hi]
    chosen = fits[-1] if fits else lo
    return str(chosen), f"{signs}: a kernel from {lo} to {hi if hi < NEWEST else 'now'}"


def _parent(rec: Recording, name: str, path: str) -> RecParent:
    parent = RecParent(name, path)
    sub = rec.link(f"{path}/subsystem")
    if sub is not None and sub.count("/") == 1:
        kind, _, subsys = sub.partition("/")
        parent.subsystem = (kind, subsys)
    parent.uevent = _props(rec.read(f"{path}/uevent") or "")
    if parent.subsystem == ("bus", "pci"):
        for key in ("vendor", "device", "subsystem_vendor", "subsystem_device", "class",
                    "revision"):
            value = rec.read(f"{path}/{key}", missing_ok=True)
            if value is not None:
                parent.pci[key] = value
        parent.iommu_group = _group(rec, path)
    for type_id in rec.listdir(f"{path}/mdev_supported_types"):
        parent.types.append(_type(rec, f"{path}/mdev_supported_types/{type_id}"))
    for entry in rec.listdir(path):
        if UUID_RE.fullmatch(entry) and rec.is_link(f"{path}/{entry}/mdev_type"):
            parent.devices.append(_device(rec, f"{path}/{entry}"))
    known = {t.type_id for t in parent.types}
    for type_id in sorted({d.type_id for d in parent.devices} - known - {"?"}):
        rec.problems.append(f"{path}/mdev_supported_types/{type_id}: not recorded, only named by "
                            f"its devices' mdev_type links: its name, description and "
                            f"available_instances are unknown (umockdev-record does not keep "
                            f"mdev_supported_types/); it is replayed full")
        parent.types.append(RecType(type_id, device_api="vfio-pci"))
    return parent


def _type(rec: Recording, tdir: str) -> RecType:
    mtype = RecType(tdir.rsplit("/", 1)[-1])
    mtype.name = rec.read(f"{tdir}/name")
    mtype.description = rec.read(f"{tdir}/description", missing_ok=True)
    mtype.device_api = rec.read(f"{tdir}/device_api")
    mtype.available = rec.number(f"{tdir}/available_instances")
    mtype.migration = rec.read(f"{tdir}/migration_version", missing_ok=True)
    for rel, _writable in _files(rec, tdir, _TYPE_CORE):
        value = rec.read(f"{tdir}/{rel}")
        if value is not None:
            mtype.extra[rel] = value
    return mtype


def _device(rec: Recording, ddir: str) -> RecDevice:
    target = rec.link(f"{ddir}/mdev_type")
    dev = RecDevice(ddir.rsplit("/", 1)[-1].lower(), target.rsplit("/", 1)[-1] if target else "?")
    if target is None:
        rec.problems.append(f"{ddir}/mdev_type: unreadable; the device is left out")
    dev.iommu_group = _group(rec, ddir)
    driver = rec.link(f"{ddir}/driver")
    dev.mdev_driver = driver.rsplit("/", 1)[-1] if driver else None
    vfio = [n for n in rec.listdir(f"{ddir}/vfio-dev") if n.startswith("vfio")]
    index = sysfs_number(vfio[0][4:]) if vfio else None
    if index is not None:
        dev.vfio_index = index
    for rel, writable in _files(rec, ddir, _DEVICE_CORE):
        value = rec.read(f"{ddir}/{rel}")
        if value is not None:
            dev.attrs[rel] = (value, writable)
    return dev


def _function(rec: Recording, address: str) -> RecFunction | None:
    path = rec.link(f"bus/pci/devices/{address}")
    if path is None:
        return None
    if not rec.exists(f"{path}/sriov_totalvfs") or rec.exists(f"{path}/mdev_supported_types"):
        return None
    numa = rec.number(f"{path}/numa_node", missing_ok=True)
    return RecFunction(address, path, rec.number(f"{path}/vendor", 16) or 0,
                       rec.number(f"{path}/device", 16) or 0,
                       rec.number(f"{path}/sriov_numvfs") or 0, -1 if numa is None else numa,
                       _group(rec, path))


def _group(rec: Recording, directory: str) -> int | None:
    target = rec.link(f"{directory}/iommu_group")
    return None if target is None else sysfs_number(target.rsplit("/", 1)[-1])


def _files(rec: Recording, directory: str, core: set[str],
           depth: int = 0) -> Iterable[tuple[str, bool]]:
    """Regular files below ``directory`` outside the core's names, not through links:
    (relative path, writable)."""
    assert rec.tree is not None
    for name in rec.listdir(directory):
        if name in core:
            continue
        try:
            st = rec.tree.lstat(f"{directory}/{name}")
        except OSError as exc:
            rec.problem(f"{directory}/{name}", exc)
            continue
        if stat.S_ISDIR(st.st_mode) and depth < 8:
            for rel, writable in _files(rec, f"{directory}/{name}", set(), depth + 1):
                yield f"{name}/{rel}", writable
        elif stat.S_ISREG(st.st_mode) and st.st_mode & 0o444:
            yield name, bool(st.st_mode & 0o200)


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
            for key in ("name", "description", "migration"):
                value = getattr(mtype, key)
                if value is not None:
                    setattr(mtype, key, UUID_RE.sub(fake, value))
        parent.uevent = {k: clean(k, v) for k, v in parent.uevent.items()}
    # the problems name paths, and a device's path holds its UUID
    rec.problems = [UUID_RE.sub(fake, problem) for problem in rec.problems]


def device_order(dev: RecDevice) -> tuple[int, int, str]:
    """Bound devices by IOMMU group (the order the kernel numbered them), then unbound ones."""
    group = dev.iommu_group
    return (0 if group is not None else 1, group if group is not None else 0, dev.uuid)


# --- comments --------------------------------------------------------------------------

def comment(lines: Iterable[str]) -> str:
    """``# line`` for each line; a line break or any other character that is not printable
    (names from a recorded tree may hold them) is written escaped, so that a comment stays
    one comment."""
    return "".join(f"# {_printable(line)}\n".replace("# \n", "#\n") for line in lines)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)
