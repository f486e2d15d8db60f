"""A parent replayed from a recording (``mdevfs record``, ``mdevfs import``).

The driver of a parent whose vendor mdevfs does not know, or whose recording a known driver
does not reproduce: it offers the recorded types with their recorded files, and counts
instances with the arithmetic ``mdevfs record`` inferred from one snapshot. Everything it
could not see is the topology file's comments' business, not guessed here.

Options (written by ``mdevfs record``; hand-editable)::

    prefix = "nvidia"                  # dev_driver_string(parent): the type ids' prefix
    mdev_driver = "nvidia-vgpu-vfio"   # the driver devices bind to
    subsystem = "bus/pci"              # where the parent's subsystem link points
    uevent = { PCI_ID = "10DE:1BB3" }  # the parent's uevent properties
    pool = 8                           # units of one pool all types draw on (omit: a count per type)
    [[type]]
    id = "nvidia-63"                   # <prefix>-<sysfs name>
    name = "GRID P4-1Q"                # omit: the name file shows the sysfs name (6.1+ core)
    description = "num_heads=4, …"     # omit: no description file
    device_api = "vfio-pci"
    cost = 1                           # units a device takes from ``pool``
    capacity = 8                       # without ``pool``: devices of this type at most
    migration_version = "…"            # omit: no attribute
    attributes = { "extra" = "text" }  # other files of the type directory, read-only
    [type.device_attributes]           # vendor files of each device ({uuid}: the device's)
    "vendor/sample_mdev_dev" = "This is MDEV {uuid}"

A device's own value of an attribute (``[[device]] vendor``) replaces the type's. A create
that does not fit answers ENOSPC; a write of ``migration_version`` is accepted only when it
equals the recorded string (EINVAL otherwise); writable device attributes keep what is
written. The vendor's true errnos and migration rules are not in a recording.
"""
from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence
from typing import Any

from mdevfs.driver import Attribute, BaseDriver, MdevTypeSpec, Option
from mdevfs.errors import fail
from mdevfs.model import MdevDevice, MdevType

from ._options import known, text, whole

_TYPE_KEYS = ["id", "name", "description", "device_api", "cost", "capacity",
              "migration_version", "attributes", "device_attributes", "writable"]


class StaticVersion:
    """A recorded ``migration_version``: shown as it was, accepted only when equal."""

    def __init__(self, value: str) -> None:
        self.value = value

    def version(self) -> str:
        return self.value

    def check(self, source: str) -> None:
        if source != self.value:
            fail(errno.EINVAL, "not the recorded migration_version (the vendor's rules were "
                               "not recorded)")


class Recorded(BaseDriver):
    """One recorded parent."""

    OPTIONS = (Option("prefix", "str", "recorded", "the type-id prefix (the driver's name)"),
               Option("mdev_driver", "str", "vfio_mdev", "the mdev driver devices bind to"),
               Option("subsystem", "str", "class/recorded", "class/<name> or bus/<name>"),
               Option("uevent", "table", {}, "the parent's uevent properties"),
               Option("pool", "int", -1, "one pool the types share (-1: a count per type)"),
               Option("type", "list", [], "the types: tables of id, name, description, "
                      "device_api, cost or capacity, migration, attributes, "
                      "device_attributes"))

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.name = text(self.options, "prefix", "recorded")
        self.mdev_driver = text(self.options, "mdev_driver", "vfio_mdev")
        kind, _, sub = text(self.options, "subsystem", "class/recorded").partition("/")
        if kind not in ("class", "bus") or not sub or "/" in sub:
            raise ValueError(f"option 'subsystem' must be class/<name> or bus/<name>, not "
                             f"{self.options['subsystem']!r}")
        self.subsystem = (kind, sub)
        self.default_parent = sub
        self.default_path = f"devices/virtual/{sub}/{sub}"
        self.uevent = _strings(self.options.get("uevent", {}), "uevent")
        self.pool = whole(self.options, "pool", -1, minimum=-1)  # -1: a count per type
        self.specs: dict[str, Mapping[str, Any]] = {}
        for i, entry in enumerate(self.options.get("type", [])):
            if not isinstance(entry, dict):
                raise ValueError(f"type #{i + 1} must be a table")
            self._add_type(i, entry)
        self.used: dict[str, int] = {}  # devices bound, by sysfs name

    def _add_type(self, i: int, entry: Mapping[str, Any]) -> None:
        where = f"type #{i + 1}"
        try:
            known(entry, _TYPE_KEYS)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        type_id = entry.get("id")
        if not isinstance(type_id, str) or not type_id.startswith(self.name + "-"):
            raise ValueError(f"{where}: 'id' must be a string starting with {self.name}-")
        for key in ("cost", "capacity"):
            whole(entry, key, 0)
        _strings(entry.get("attributes", {}), f"{where} attributes")
        _strings(entry.get("device_attributes", {}), f"{where} device_attributes")
        self.specs[type_id.removeprefix(self.name + "-")] = entry

    def types(self) -> Sequence[MdevTypeSpec]:
        return tuple(MdevTypeSpec(name, device_api=e.get("device_api", "vfio-pci"),
                                  pretty_name=e.get("name"), description=e.get("description"))
                     for name, e in self.specs.items())

    # --- counting ------------------------------------------------------------------------

    def _cost(self, sysfs_name: str) -> int:
        return self.specs[sysfs_name].get("cost", 1)

    def available_instances(self, mtype: MdevType) -> int:
        name = mtype.spec.sysfs_name
        if self.pool >= 0:
            taken = sum(self._cost(n) * count for n, count in self.used.items())
            return max(self.pool - taken, 0) // max(self._cost(name), 1)
        return max(self.specs[name].get("capacity", 0) - self.used.get(name, 0), 0)

    def probe(self, mdev: MdevDevice) -> None:
        if self.available_instances(mdev.mdev_type) <= 0:
            fail(errno.ENOSPC)
        name = mdev.mdev_type.spec.sysfs_name
        self.used[name] = self.used.get(name, 0) + 1

    def remove(self, mdev: MdevDevice) -> None:
        name = mdev.mdev_type.spec.sysfs_name
        self.used[name] = self.used.get(name, 0) - 1

    # --- files ---------------------------------------------------------------------------

    def device_attributes(self, mdev: MdevDevice) -> Sequence[Attribute]:
        entry = self.specs[mdev.mdev_type.spec.sysfs_name]
        writable = set(entry.get("writable", ()))
        attrs = []
        for name, template in entry.get("device_attributes", {}).items():
            def show(name: str = name, template: str = template) -> str | None:
                value = mdev.vendor[name] if name in mdev.vendor else \
                    template.replace("{uuid}", mdev.uuid)
                return value or None  # an empty file reads 0 bytes, not a newline

            def store(buf: bytes, name: str = name) -> None:
                mdev.vendor[name] = buf.decode("latin-1").split("\0", 1)[0].removesuffix("\n")

            attrs.append(Attribute(name, show=show, store=store if name in writable else None))
        return attrs

    def type_attributes(self, mtype: MdevType) -> Sequence[Attribute]:
        values = self.specs[mtype.spec.sysfs_name].get("attributes", {})
        return tuple(Attribute(name, show=lambda v=value: v or None) for name, value in values.items())

    def parent_uevent(self) -> Mapping[str, str]:
        return self.uevent

    def migration(self, target: MdevType | MdevDevice) -> StaticVersion | None:
        mtype = target if isinstance(target, MdevType) else target.mdev_type
        value = self.specs[mtype.spec.sysfs_name].get("migration_version")
        return StaticVersion(value) if isinstance(value, str) else None


def _strings(table: Any, where: str) -> dict[str, str]:
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ValueError(f"{where} must be a table of strings")
    return dict(table)
