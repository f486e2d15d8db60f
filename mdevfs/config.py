"""Topology files: which parents a host has, where, and which vendor driver owns each.

    [host]
    iommu_group_base = 0            # first IOMMU group number handed to an mdev

    [[parent]]
    driver = "mtty"                 # entry point, "module:factory" or "file.py[:factory]"
    name = "mtty"                   # dev_name, the /sys/class/mdev_bus link (default: driver's)
    path = "devices/virtual/mtty/mtty"   # under the sysfs root (default: driver's)
    [parent.options]                # handed to the driver factory as they are
    ports = 24

A bad file is refused whole with a :class:`TopologyError` naming the file,
the entry and the problem.
"""
from __future__ import annotations

import importlib.resources
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attrs import frozen

from .driver import DriverLoadError, load_factory
from .model import Host

_HOST_KEYS = {"iommu_group_base"}
_PARENT_KEYS = {"driver", "name", "path", "options"}


class TopologyError(Exception):
    """The topology cannot be used; the message names the file, the entry and the problem."""


@frozen
class ParentEntry:
    driver: str
    name: str | None
    path: str | None
    options: Mapping[str, Any]


@frozen
class Topology:
    source: str
    base_dir: Path | None
    iommu_group_base: int
    parents: tuple[ParentEntry, ...]

    @classmethod
    def default(cls) -> Topology:
        text = importlib.resources.files("mdevfs").joinpath("default.toml").read_text()
        return cls.from_text(text, "<default topology>")

    @classmethod
    def from_toml(cls, path: str | Path) -> Topology:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise TopologyError(f"{path}: cannot read: {exc.strerror}") from exc
        return cls.from_text(text, str(path), path.resolve().parent)

    @classmethod
    def from_text(cls, text: str, source: str, base_dir: Path | None = None) -> Topology:
        def bad(where: str, problem: str) -> TopologyError:
            return TopologyError(f"{source}: {where}: {problem}")

        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TopologyError(f"{source}: not valid TOML: {exc}") from exc
        unknown = set(doc) - {"host", "parent"}
        if unknown:
            raise bad("top level", f"unknown table(s) {', '.join(sorted(unknown))}")
        host = doc.get("host", {})
        if set(host) - _HOST_KEYS:
            raise bad("[host]", f"unknown key(s) {', '.join(sorted(set(host) - _HOST_KEYS))}")
        base = host.get("iommu_group_base", 0)
        if not isinstance(base, int) or base < 0:
            raise bad("[host] iommu_group_base", "must be a whole number ≥ 0")
        raw = doc.get("parent", [])
        if not isinstance(raw, list) or not raw:
            raise bad("[[parent]]", "at least one parent is needed")
        parents = []
        for i, entry in enumerate(raw):
            where = f"parent #{i + 1}"
            extra = set(entry) - _PARENT_KEYS
            if extra:
                raise bad(where, f"unknown key(s) {', '.join(sorted(extra))}")
            driver = entry.get("driver")
            if not isinstance(driver, str) or not driver:
                raise bad(where, "'driver' is required (an entry point, module:factory or file.py)")
            name, path = entry.get("name"), entry.get("path")
            if name is not None and (not isinstance(name, str) or not name or "/" in name):
                raise bad(where, f"'name' {name!r} must be a non-empty string without '/'")
            if path is not None and (not isinstance(path, str)
                                     or not path.strip("/").startswith("devices/")):
                raise bad(where, f"'path' {path!r} must lie under devices/")
            options = entry.get("options", {})
            if not isinstance(options, dict):
                raise bad(where, "'options' must be a table")
            parents.append(ParentEntry(driver, name, path, options))
        return cls(source, base_dir, base, tuple(parents))

    def build(self) -> Host:
        """Load every driver and register every parent; raises TopologyError."""
        host = Host(iommu_group_base=self.iommu_group_base)
        paths: set[str] = set()
        for i, entry in enumerate(self.parents):
            where = f"{self.source}: parent #{i + 1} (driver {entry.driver!r})"
            try:
                driver = load_factory(entry.driver, self.base_dir)(entry.options)
            except DriverLoadError as exc:
                raise TopologyError(f"{where}: {exc}") from exc
            except Exception as exc:
                raise TopologyError(f"{where}: the driver refused its options: "
                                    f"{type(exc).__name__}: {exc}") from exc
            name = entry.name or driver.default_parent
            path = (entry.path or driver.default_path).strip("/")
            if name in host.parents:
                raise TopologyError(f"{where}: parent name {name!r} is used twice")
            if path in paths or any(p.startswith(path + "/") or path.startswith(p + "/")
                                    for p in paths):
                raise TopologyError(f"{where}: path {path!r} overlaps another parent's")
            paths.add(path)
            try:
                host.add_parent(name, path, driver)
            except Exception as exc:
                raise TopologyError(f"{where}: {type(exc).__name__}: {exc}") from exc
        return host
