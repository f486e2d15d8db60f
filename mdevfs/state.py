"""The state file: every created device, on disk before ``create`` or ``remove`` returns.

An append-only journal of JSON lines. The first line is a snapshot, each later line
one change::

    {"format": "mdevfs-state", "version": 2, "devices": [
      {"uuid": "…", "parent": "mtty", "type": "mtty-1", "iommu_group": 0, "vendor": {}}]}
    {"op": "add", "uuid": "…", "parent": "mtty", "type": "mtty-2", "iommu_group": 1, "vendor": {}}
    {"op": "vendor", "uuid": "…", "vendor": {"label": "blue"}}
    {"op": "unbind", "uuid": "…"}           # the device stays, driverless, without a group
    {"op": "bind", "uuid": "…", "iommu_group": 2}  # before 5.14: bound after its create
    {"op": "remove", "uuid": "…"}

``vendor`` is the driver's own per-device state (:attr:`MdevDevice.vendor`, filled in
``probe`` and in its attribute stores), so it must hold JSON values.

**Cost.** A change appends its lines with one write(2) and one fsync(2) before the
write to ``create`` or ``remove`` returns: the same cost at 10 devices and 100,000.
When the changes outnumber the devices (and 1,000), the journal is compacted: a new
snapshot is written to a temporary file in the same directory (O_CREAT|O_EXCL|
O_NOFOLLOW), fsynced and renamed over the file, keeping its mode, its owner and any
top-level keys it did not write itself; amortised, still O(1) per change.

**Crashes.** A record is either whole, with its newline, or the last line of the
file: a last line without a newline, or one that is not JSON, is a write torn by a
crash; it is dropped with a warning (its ``write`` never returned). Anything else
that is wrong is refused whole with a :class:`StateError` naming the file, the line
or device and the problem. Version 1 files (one JSON document) are read too.

**Ownership.** One daemon at a time: the daemon holds an exclusive flock(2) on the
file while it runs; a second gets :class:`StateInUse`. A path that is a symbolic
link, a FIFO or anything but a regular file is refused, never followed or replaced.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import pcistate
from .errors import StateError, StateInUse
from .journal import change_line, device_line, dumps, parse_line
from .kparse import parse_uuid
from .model import Host, HostObserver, MdevDevice
from .pci import PciFunction

log = logging.getLogger(__name__)

FORMAT = "mdevfs-state"
_OPS = ("add", "remove", "vendor", "bind", "unbind", "pci")
VERSION = 2
_KEYS = {"uuid", "parent", "type", "iommu_group", "vendor"}
_HEADER_KEYS = {"format", "version", "devices", "gpus", "pci"}
#: compact once the journal holds more change lines than this and than devices
COMPACT_AFTER = 1000


#: a device as the file records it: its IOMMU group (None: unbound) and vendor JSON
Recorded = tuple[int | None, str]
#: ("add" | "remove" | "vendor" | "bind" | "unbind", the device, its record before the change)
Change = tuple[str, MdevDevice, Recorded | None]


class StateSaveError(OSError):
    """A change could not be made durable; ``changes`` are the ones not recorded,
    for the caller to undo."""

    def __init__(self, message: str, changes: list[Change]) -> None:
        super().__init__(errno.EIO, message)
        self.changes = changes


class StateFile(HostObserver):
    """Keeps ``path`` equal to the host's devices; attach with :meth:`open`."""

    def __init__(self, path: Path, host: Host) -> None:
        self.path = path
        self.host = host
        self.fd = -1
        self._extra: dict[str, Any] = {}     # top-level keys of others, kept on compaction
        self._groups: dict[int, str] = {}    # while restoring: IOMMU group -> its device
        #: uuid -> (IOMMU group, vendor state as JSON text) as the file has it
        self._recorded: dict[str, Recorded] = {}
        self._pending: list[Change] = []
        #: each PCI function's record (pcistate) as the file has it, as JSON text, and the
        #: functions whose record may have changed since
        self._pci_recorded: dict[str, str] = {}
        self._pci_touched: dict[str, PciFunction] = {}
        self._pci: dict[str, Any] = {}       # while loading: function address -> its record
        self._lines = 0                      # change lines since the snapshot
        self._size = 0                       # bytes of whole records on disk
        self._broken = False                 # a write failed: compact at the next change
        self._paused = False

    # --- opening ------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], host: Host) -> StateFile:
        """Lock ``path`` (created if missing), restore its devices into ``host`` and start
        observing it. Raises StateError, StateInUse."""
        state = cls(Path(os.path.abspath(path)), host)
        try:
            state._lock()
            records = state._load()
            state._restore_pci()  # VFs first: an mdev may live on one (Ampere)
            for i, record in enumerate(records):
                state._restore(i, record)
            state._groups.clear()
        except BaseException:
            state.close()
            raise
        host.observers.append(state)
        return state

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock
            self.fd = -1

    def _bad(self, problem: str, index: int | None = None, uuid: Any = None) -> StateError:
        where = "" if index is None else f" device #{index + 1}" + (f" ({uuid})" if uuid else "") + ":"
        return StateError(f"state file {self.path}:{where} {problem}")

    def _lock(self) -> None:
        """Open and flock the file. The file is replaced by rename when compacted, so a
        lock is good only while the path still names the locked inode: check, retry."""
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
                             | os.O_CLOEXEC | os.O_NOCTTY)
            except FileNotFoundError:
                if self._create():
                    return
                continue
            except OSError as exc:
                raise self._bad(self._open_problem(exc)) from None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise self._bad("not a regular file (a FIFO, device or directory); "
                                    "give a file")
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise StateInUse(f"state file {self.path}: in use by another mdevfs "
                                     f"daemon{_holder(st)}; one daemon per state file") from None
                try:
                    same = os.stat(self.path, follow_symlinks=False).st_ino == st.st_ino
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                os.set_blocking(fd, True)
                self.fd = fd
                return
            os.close(fd)  # replaced meanwhile: lock the new one
        raise self._bad("it keeps being replaced; is another program writing it?")

    def _open_problem(self, exc: OSError) -> str:
        try:  # a sticky directory may answer EACCES for another user's link
            link = stat.S_ISLNK(os.lstat(self.path).st_mode)
        except OSError:
            link = False
        if link:
            return ("it is a symbolic link; mdevfs neither follows nor replaces one: "
                    "give the file itself")
        return f"cannot open it: {exc.strerror}"

    def _create(self) -> bool:
        """A missing file is created whole (an empty snapshot) by rename, never seen half
        written; False when another process created it meanwhile."""
        fd = self._write_snapshot([], None)
        try:
            os.link(self._tmp(), self.path)
        except FileExistsError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            raise self._bad(f"cannot create it: {exc.strerror}") from None
        finally:
            _unlink(self._tmp())
        self._fsync_dir()
        self.fd = fd
        self._size = os.fstat(fd).st_size
        return True

    def _load(self) -> list[Any]:
        chunks = []
        while data := os.pread(self.fd, 1 << 20, sum(map(len, chunks))):
            chunks.append(data)
        raw = b"".join(chunks)
        self._size = len(raw)
        if not raw.strip():
            return []
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            raise self._bad(f"corrupt (not UTF-8 text: {exc})") from None
        first, newline, body = text.partition("\n")
        header = parse_line(first)
        if not isinstance(header, dict) or header.get("version") == 1:
            whole = parse_line(text)  # version 1: one JSON document; or a snapshot pretty-printed
            if isinstance(whole, Exception):
                raise self._bad(f"corrupt (not JSON: {whole})")
            version = whole.get("version") if isinstance(whole, dict) else None
            devices = self._check_header(whole, 2 if version == 2 else 1)
            self._broken = True  # rewritten as a journal at the first change
            return devices
        devices = self._check_header(header, 2)
        by_uuid: dict[Any, Any] = {}
        for i, rec in enumerate(devices):
            key = rec.get("uuid") if isinstance(rec, dict) else None
            if not isinstance(key, str):
                key = object()  # _restore says what is wrong with it
            elif key in by_uuid:
                raise self._bad("duplicate UUID (recorded twice)", i, key)
            by_uuid[key] = rec
        lines = body.split("\n")
        tail = lines.pop()  # "" when the last record is whole
        good = len(first.encode()) + len(newline)
        for n, line in enumerate(lines, start=2):
            change = parse_line(line)
            if isinstance(change, Exception):
                raise self._bad(f"line {n}: corrupt (not JSON: {change})")
            self._apply(by_uuid, change, n)
            good += len(line.encode()) + 1
            self._lines += 1
        if tail:
            log.warning("state file %s: dropped a torn last record (%d bytes: %r), cut short "
                        "by a crash before its write returned", self.path, len(tail.encode()),
                        tail[:80])
            os.ftruncate(self.fd, good)
            os.fsync(self.fd)
            self._size = good
        return list(by_uuid.values())

    def _check_header(self, doc: Any, version: int) -> list[Any]:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise self._bad(f"corrupt (not an mdevfs state file: no \"format\": \"{FORMAT}\")")
        if doc.get("version") != version:
            raise self._bad(f"version {doc.get('version')!r} is not supported (only 1, a "
                            f"JSON document, and 2, a journal)")
        devices = doc.get("devices")
        if not isinstance(devices, list):
            raise self._bad("corrupt (\"devices\" is not a list)")
        self._extra = {k: v for k, v in doc.items() if k not in _HEADER_KEYS}
        gpus, pci = doc.get("gpus", {}), doc.get("pci", {})
        if not isinstance(gpus, dict) or not isinstance(pci, dict):
            raise self._bad("corrupt (\"pci\" is not an object)")
        try:  # "gpus": each PF's VFs, as files written before "pci" were
            self._pci = {**{bdf: pcistate.upgrade(vfs) for bdf, vfs in gpus.items()}, **pci}
        except ValueError as exc:
            raise self._bad(f"corrupt (\"gpus\": {exc})") from None
        return devices

    def _apply(self, by_uuid: dict[str, Any], change: Any, n: int) -> None:
        where = f"line {n}:"
        if not isinstance(change, dict) or change.get("op") not in _OPS:
            raise self._bad(f"{where} corrupt (not a change: an object with \"op\" "
                            f"{', '.join(_OPS)})")
        op, uuid = change["op"], change.get("uuid")
        if op == "pci":  # a function's binding, and a PF's VFs and their state, whole
            if not isinstance(change.get("bdf"), str):
                raise self._bad(f"{where} corrupt (\"bdf\" is not a string)")
            try:
                self._pci[change["bdf"]] = (change["pci"] if "pci" in change
                                            else pcistate.upgrade(change.get("vfs")))
            except ValueError as exc:
                raise self._bad(f"{where} corrupt ({exc})") from None
            return
        if not isinstance(uuid, str):
            raise self._bad(f"{where} corrupt (\"uuid\" is not a string)")
        if op == "add":
            if uuid in by_uuid:
                raise self._bad(f"{where} {uuid} is added twice")
            by_uuid[uuid] = {k: v for k, v in change.items() if k != "op"}
        elif uuid not in by_uuid:
            raise self._bad(f"{where} {op} of {uuid}, which is not recorded")
        elif op == "remove":
            del by_uuid[uuid]
        elif op in ("bind", "unbind"):  # a bind's group is checked as every group is
            by_uuid[uuid] = dict(by_uuid[uuid], iommu_group=change.get("iommu_group"))
        else:
            by_uuid[uuid] = dict(by_uuid[uuid], vendor=change.get("vendor"))

    def _restore(self, i: int, rec: Any) -> None:
        if not isinstance(rec, dict):
            raise self._bad("corrupt (not an object)", i)
        uuid = rec.get("uuid")
        if set(rec) != _KEYS:
            missing, extra = _KEYS - set(rec), set(rec) - _KEYS
            raise self._bad("corrupt (" + "; ".join(
                ([f"missing {', '.join(sorted(missing))}"] if missing else [])
                + ([f"unknown {', '.join(sorted(extra))}"] if extra else [])) + ")", i, uuid)
        try:
            ok = isinstance(uuid, str) and parse_uuid(uuid.encode()) == uuid and len(uuid) == 36
        except (OSError, UnicodeEncodeError):
            ok = False
        if not ok:
            raise self._bad(f"{uuid!r} is not a lower-case UUID", i)
        group, vendor = rec["iommu_group"], rec["vendor"]
        bound = group is not None  # null: unbound from its driver (no group) when saved
        if bound and (not isinstance(group, int) or isinstance(group, bool)
                      or not 0 <= group < 2**31):
            raise self._bad(f"iommu_group {group!r} is not a whole number from 0 to 2^31-1 "
                            f"(or null, unbound)", i, uuid)
        if not isinstance(vendor, dict):
            raise self._bad("vendor is not an object", i, uuid)
        for key in ("parent", "type"):
            if not isinstance(rec[key], str):
                raise self._bad(f"{key} {rec[key]!r} is not a string", i, uuid)
        parent = self.host.parents.get(rec["parent"])
        if parent is None:
            raise self._bad(f"parent {rec['parent']!r} is not in the topology "
                            f"(parents: {', '.join(self.host.parents)})", i, uuid)
        mtype = parent.types.get(rec["type"])
        if mtype is None:
            raise self._bad(f"parent {parent.name!r} offers no type {rec['type']!r} "
                            f"(types: {', '.join(parent.types)})", i, uuid)
        if uuid in self.host.devices:
            raise self._bad("duplicate UUID (recorded twice)", i, uuid)
        if bound and group in self._groups:
            raise self._bad(f"IOMMU group {group} is also recorded for device "
                            f"{self._groups[group]}", i, uuid)
        if parent.driver.available_instances(mtype) is None and parent.available(mtype) <= 0:
            raise self._bad(f"parent {parent.name!r} has no room for it (the core counter "
                            f"allows {parent.driver.max_instances()})", i, uuid)
        if bound:
            self._groups[group] = uuid
        try:
            mdev = self.host.restore(mtype, uuid, group, vendor, bound=bound)
        except OSError as exc:
            raise self._bad(f"driver {parent.driver.name!r} refused it: {exc.strerror} "
                            f"(the topology has no room for the recorded devices)", i, uuid) from exc
        self._recorded[uuid] = (mdev.iommu_group, dumps(mdev.vendor))

    def _restore_pci(self) -> None:
        """Each recorded function's driver and override, and each PF's VFs, with their IOMMU
        groups, drivers and driver state, as the card and its driver allow them."""
        for bdf, rec in self._pci.items():
            fn = self.host.pci.get(bdf)
            try:
                if fn is None:
                    raise ValueError("not a PCI function of the topology")
                pcistate.apply(self.host, fn, rec)
            except (OSError, ValueError) as exc:
                raise self._bad(f"PCI function {bdf}: {getattr(exc, 'strerror', None) or exc}") \
                    from exc
        self._pci.clear()
        self._pci_recorded = {bdf: dumps(rec) for bdf, rec in pcistate.records(self.host).items()}

    def undo_pci(self, fn: PciFunction, before: str) -> None:
        """Bring ``fn`` back to its record ``before`` (a change the disk refused)."""
        pcistate.apply(self.host, fn, json.loads(before))

    # --- observing ----------------------------------------------------------------------

    def pci_added(self, fn: PciFunction) -> None:
        if not self._paused:
            top = fn.physfn or fn
            self._pci_touched[top.bdf] = top

    def pci_bound(self, fn: PciFunction) -> None:
        self.pci_added(fn)

    def pci_unbound(self, fn: PciFunction, driver: Any) -> None:
        self.pci_added(fn)

    pci_removed = pci_added

    def device_added(self, mdev: MdevDevice) -> None:
        if not self._paused:
            self._pending.append(("add", mdev, None))

    def device_removed(self, mdev: MdevDevice) -> None:
        if self._paused:
            return
        if self._pending and self._pending[-1][:2] == ("unbind", mdev):
            self._pending.pop()  # the model detaches a bound device before removing it
        self._pending.append(("remove", mdev, self._recorded.get(mdev.uuid)))

    def device_bound(self, mdev: MdevDevice) -> None:  # before 5.14: bound after its create
        if not self._paused:
            self._pending.append(("bind", mdev, self._recorded.get(mdev.uuid)))

    def device_unbound(self, mdev: MdevDevice, binding: Any) -> None:
        if not self._paused:
            self._pending.append(("unbind", mdev, self._recorded.get(mdev.uuid)))

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Changes made meanwhile are not recorded (an undo of unrecorded ones)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    # --- writing ------------------------------------------------------------------------

    def resync(self) -> None:
        """Changes were made that the file lacks and nobody could undo: the next flush
        writes the whole state again."""
        self._broken = True

    def flush(self, touched: Any = None) -> None:
        """Make every change since the last flush durable; ``touched`` is the object whose
        attribute was just written (a device whose vendor state may have changed).
        Raises StateSaveError, with the changes not recorded, when the disk refuses."""
        if isinstance(touched, MdevDevice) and self.host.devices.get(touched.uuid) is touched:
            before = self._recorded.get(touched.uuid)
            if before is not None and dumps(touched.vendor) != before[1]:
                self._pending.append(("vendor", touched, before))
        if isinstance(touched, PciFunction):
            self.pci_added(touched)
        for bdf, fn in self._pci_touched.items():
            if self.host.pci.get(bdf) is fn and \
                    dumps(pcistate.record(fn)) != self._pci_recorded.get(bdf):
                self._pending.append(("pci", fn, self._pci_recorded.get(bdf)))  # type: ignore[arg-type]
        self._pci_touched.clear()
        if not self._pending:
            if self._broken:  # catch up when there is room again; nothing new to lose
                try:
                    self._compact()
                except OSError:
                    pass
            return
        changes, self._pending = self._pending, []
        try:
            if self._broken:  # the file lacks changes: only a whole snapshot can catch up
                self._compact()
            elif self._lines + len(changes) > max(COMPACT_AFTER, len(self.host.devices)):
                try:
                    self._compact()
                except OSError:  # no room for a snapshot: the journal still takes a line
                    self._append(changes)
            else:
                self._append(changes)
        except OSError as exc:
            raise StateSaveError(f"state file {self.path}: cannot record the change: "
                                 f"{exc.strerror or exc}", changes) from exc
        for op, mdev, _ in changes:
            if op == "pci":
                self._pci_recorded[mdev.bdf] = dumps(pcistate.record(mdev))  # type: ignore[arg-type]
            elif op == "remove":
                self._recorded.pop(mdev.uuid, None)
            else:
                self._recorded[mdev.uuid] = (mdev.iommu_group, dumps(mdev.vendor))

    def _append(self, changes: list[Change]) -> None:
        data = "".join(dumps(change_line(op, mdev)) + "\n" for op, mdev, _ in changes).encode()
        try:
            done = 0
            while done < len(data):
                done += os.write(self.fd, data[done:])
            os.fsync(self.fd)
        except OSError:
            try:  # take back a partial record, so that later ones follow a whole one
                os.ftruncate(self.fd, self._size)
            except OSError:
                self._broken = True
            raise
        self._size += len(data)
        self._lines += len(changes)

    def _compact(self) -> None:
        """A fresh snapshot, renamed over the file; keeps its mode, owner, foreign keys."""
        old = os.fstat(self.fd)
        devices = [device_line(d) for d in self.host.devices.values()]
        fd = self._write_snapshot(devices, old, pcistate.records(self.host))
        try:
            os.rename(self._tmp(), self.path)
        except OSError:
            os.close(fd)
            _unlink(self._tmp())
            raise
        # the file is the new one from here: appends go to it even if the fsync below fails
        os.close(self.fd)  # the old inode and its lock; the new one is locked already
        self.fd = fd
        self._size = os.fstat(fd).st_size
        self._lines = 0
        self._broken = False
        self._fsync_dir()

    def _write_snapshot(self, devices: list[dict[str, Any]], like: os.stat_result | None,
                        pci: dict[str, Any] | None = None) -> int:
        tmp = self._tmp()
        _unlink(tmp)  # only the daemon holding the lock writes it; a leftover is stale
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644 if like is None else 0o600)
        except OSError as exc:
            if like is None:
                raise self._bad(f"cannot create {tmp.name} beside it: {exc.strerror}") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if like is not None:
                if os.geteuid() == 0 and (like.st_uid, like.st_gid) != (os.getuid(), os.getgid()):
                    os.fchown(fd, like.st_uid, like.st_gid)
                os.fchmod(fd, stat.S_IMODE(like.st_mode))
            head = {"format": FORMAT, "version": VERSION, "devices": devices, **self._extra}
            if pci:
                head["pci"] = pci
            data = (dumps(head) + "\n").encode()
            done = 0
            while done < len(data):
                done += os.write(fd, data[done:])
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        return fd

    def _tmp(self) -> Path:
        return self.path.with_name(f".{self.path.name}.mdevfs-tmp")

    def _fsync_dir(self) -> None:
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # the rename itself must survive a crash
        finally:
            os.close(fd)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _holder(st: os.stat_result) -> str:
    """`` (pid N)`` of the process holding a flock on the file, from /proc/locks."""
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if "FLOCK" in fields and want in fields:
                    return f" (pid {fields[fields.index(want) - 1]})"
    except OSError:
        pass
    return ""
