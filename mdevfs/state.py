"""The state file: every created device, written durably before ``create`` or ``remove`` returns.

    {"format": "mdevfs-state", "version": 1, "devices": [
      {"uuid": "…", "parent": "mtty", "type": "mtty-1", "iommu_group": 0, "vendor": {}}]}

Devices are listed in creation order; ``vendor`` is the driver's own per-device
state (:attr:`MdevDevice.vendor`, which a driver fills in ``probe`` and in its
attribute stores), so it must hold JSON values. Each change is written to a
temporary file, fsynced, renamed over the old one and the directory fsynced:
after a crash the file is the old state or the new one, never a torn mix.

A restart restores exactly the recorded devices with their IOMMU groups and
vendor state (``probe`` sees ``mdev.vendor`` already filled). A file that is
corrupt or does not fit the topology is refused whole with a :class:`StateError`
naming the file, the device and the problem; nothing is silently dropped.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .model import Host, HostObserver, MdevDevice, parse_uuid

FORMAT = "mdevfs-state"
VERSION = 1
_KEYS = {"uuid", "parent", "type", "iommu_group", "vendor"}


class StateError(Exception):
    """The state file cannot be used; the message names the file, the device and the problem."""


class StateFile(HostObserver):
    """Keeps ``path`` equal to the host's devices; attach with :meth:`open`."""

    def __init__(self, path: Path, host: Host) -> None:
        self.path = path
        self.host = host
        self._saved: str | None = None
        self._groups: dict[int, str] = {}  # while restoring: IOMMU group -> its device

    @classmethod
    def open(cls, path: str | os.PathLike[str], host: Host) -> StateFile:
        """Restore the devices recorded in ``path`` (a missing file is an empty state)
        into ``host`` and start observing it. Writes nothing: call :meth:`save` for that."""
        state = cls(Path(path).absolute(), host)
        for i, record in enumerate(state._load()):
            state._restore(i, record)
        host.observers.append(state)
        return state

    def _bad(self, problem: str, index: int | None = None, uuid: Any = None) -> StateError:
        where = "" if index is None else f" device #{index + 1}" + (f" ({uuid})" if uuid else "") + ":"
        return StateError(f"state file {self.path}:{where} {problem}")

    def _load(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise self._bad(f"cannot read it: {exc}") from exc
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise self._bad(f"corrupt (not JSON: {exc})") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise self._bad(f"corrupt (not an mdevfs state file: no \"format\": \"{FORMAT}\")")
        if doc.get("version") != VERSION:
            raise self._bad(f"version {doc.get('version')!r} is not supported (only {VERSION})")
        devices = doc.get("devices")
        if not isinstance(devices, list):
            raise self._bad("corrupt (\"devices\" is not a list)")
        return devices

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
        if not isinstance(group, int) or isinstance(group, bool) or group < 0:
            raise self._bad(f"iommu_group {group!r} is not a whole number", i, uuid)
        if not isinstance(vendor, dict):
            raise self._bad("vendor is not an object", i, uuid)
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
        if group in self._groups:
            raise self._bad(f"IOMMU group {group} is also recorded for device "
                            f"{self._groups[group]}", i, uuid)
        if parent.driver.available_instances(mtype) is None and parent.available(mtype) <= 0:
            raise self._bad(f"parent {parent.name!r} has no room for it (the core counter "
                            f"allows {parent.driver.max_instances()})", i, uuid)
        self._groups[group] = uuid
        try:
            self.host.restore(mtype, uuid, group, vendor)
        except OSError as exc:
            raise self._bad(f"driver {parent.driver.name!r} refused it: {exc.strerror} "
                            f"(the topology has no room for the recorded devices)", i, uuid) from exc

    # --- writing ------------------------------------------------------------------------

    def snapshot(self) -> str:
        devices = [{"uuid": d.uuid, "parent": d.parent.name, "type": d.mdev_type.type_id,
                    "iommu_group": d.iommu_group, "vendor": d.vendor}
                   for d in self.host.devices.values()]
        doc = {"format": FORMAT, "version": VERSION, "devices": devices}
        return json.dumps(doc, indent=1) + "\n"

    def save(self) -> None:
        """Write the host's devices durably, unless the file already says exactly that."""
        text = self.snapshot()
        if text == self._saved:
            return
        if self._saved is None:  # the first save: drop temporaries of a daemon killed mid-save
            for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
                stale.unlink(missing_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # the rename itself must survive a crash
        finally:
            os.close(fd)
        self._saved = text

    def device_added(self, mdev: MdevDevice) -> None:
        self.save()

    def device_removed(self, mdev: MdevDevice) -> None:
        self.save()
