"""Topology files: which parents a host has, where, and which vendor driver owns each.

    [host]
    iommu_group_base = 0            # first IOMMU group number handed out
    pm_advanced_debug = true        # CONFIG_PM_ADVANCED_DEBUG (Debian: y): 4 more power/ files
    kernel = "7.3"                  # the kernel emulated, 5.10 to 7.3 (default: the newest)
    iommu = "intel"                 # the IOMMU unit: "intel" (dmar0), "amd" (ivhd0), "none"
    cpus = 2                        # CPUs and NUMA nodes (local_cpus, numa_node writes)
    numa_nodes = 1
    pci_drivers = ["vfio-pci", "pci-stub"]   # drivers without ids of their own on the bus

    [[parent]]
    driver = "mtty"                 # entry point, "module:factory" or "file.py[:factory]"
    name = "mtty"                   # dev_name, the /sys/class/mdev_bus link (default: driver's)
    path = "devices/virtual/mtty/mtty"   # under the sysfs root (default: driver's)
    [parent.options]                # checked against what the driver declares, then handed over
    ports = 24

    [[gpu]]                         # a PCI device given whole (an SR-IOV GPU), before parents
    driver = "nvidia-sriov"         # a driver that makes gpu devices (mdevfs drivers lists them)
    address = "0000:41:00.0"
    path = "devices/pci0000:40/0000:40:01.1/0000:41:00.0"   # default: devices/pci<dom>:00/<addr>
    [gpu.options]
    model = "L40S"

    [[device]]                      # a device that exists at start (mdevfs record writes them)
    uuid = "…"                      # lower case
    parent = "mtty"                 # a parent's name
    type = "mtty-1"                 # one of its type ids
    iommu_group = 0                 # its group (default: the lowest free); bound = false: unbound
    vendor = { … }                  # the driver's per-device state (as in a state file)

A bad file is refused whole with a :class:`TopologyError` naming the file,
the entry and the problem.
"""
from __future__ import annotations

import importlib.resources
import os
import re
import stat
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from attrs import Factory, evolve, frozen

from .driver import GPU, PARENT, DriverLoadError, build, installed, kind_of, load_factory, shape_problem
from .errors import TopologyError
from .kernel import VFIO_PCI_ID_TABLE, VFIO_PCI_RUNTIME_PM, Kernel
from .model import Host
from .pci import GENERIC_DRIVERS, GenericDriver

_HOST_KEYS = {"iommu_group_base", "pm_advanced_debug", "kernel", "iommu", "cpus", "numa_nodes",
              "pci_drivers"}
_PARENT_KEYS = {"driver", "name", "path", "options"}
_DEVICE_KEYS = {"uuid", "parent", "type", "iommu_group", "bound", "vendor"}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a parent's name (a /sys/class/mdev_bus entry), or None."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if name in (".", "..") or "/" in name or not name.isprintable():
        return "must be a file name: not '.' or '..', without '/' or control characters"
    return None


def path_problem(path: object) -> str | None:
    """Why ``path`` cannot be a parent's directory under the root, or None: it lies
    under ``devices/``, and every part between its slashes is a plain name (no empty,
    '.' or '..' part, no NUL), so that no link of the tree points outside the mount."""
    if not isinstance(path, str):
        return "must be a string"
    parts = path.strip("/").split("/")
    if not path.isprintable() or any(p in ("", ".", "..") for p in parts):
        return ("must be plain names between single slashes (no '', '.' or '..' part, no "
                "control characters)")
    if parts[0] != "devices" or len(parts) < 2:
        return "must lie under devices/"
    return None


@frozen
class Machine:
    """What a ``[host]`` table says of the machine beyond its devices."""

    kernel: Kernel = Factory(Kernel)
    iommu: str = "intel"
    cpus: int = 2
    numa_nodes: int = 1
    pci_drivers: tuple[str, ...] = tuple(GENERIC_DRIVERS)


def _machine(host: Mapping[str, Any], bad: Any) -> Machine:
    default = Machine()
    kernel = host.get("kernel", str(default.kernel))
    if not isinstance(kernel, str):
        raise bad("[host] kernel", "must be a version string such as \"5.10\"")
    try:
        parsed = Kernel.parse(kernel)
    except ValueError as exc:
        raise bad("[host] kernel", str(exc)) from None
    iommu = host.get("iommu", default.iommu)
    if iommu not in ("intel", "amd", "none"):
        raise bad("[host] iommu", "must be \"intel\", \"amd\" or \"none\"")
    numbers = {}
    for key, top in (("cpus", 8192), ("numa_nodes", 1024)):
        value = host.get(key, getattr(default, key))
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
            raise bad(f"[host] {key}", f"must be a whole number from 1 to {top}")
        numbers[key] = value
    drivers = host.get("pci_drivers", list(default.pci_drivers))
    if not isinstance(drivers, list) or \
            not all(isinstance(d, str) and d in GENERIC_DRIVERS for d in drivers):
        raise bad("[host] pci_drivers", f"must be a list of {', '.join(GENERIC_DRIVERS)}")
    return Machine(parsed, iommu, numbers["cpus"], numbers["numa_nodes"], tuple(drivers))


@frozen
class ParentEntry:
    driver: str
    name: str | None
    path: str | None
    options: Mapping[str, Any]


@frozen
class GpuEntry:
    """A PCI device given whole (an SR-IOV GPU): its driver builds its functions."""

    driver: str
    address: str
    path: str
    options: Mapping[str, Any]


@frozen
class DeviceEntry:
    """A device that exists when the topology is mounted (and after a reset)."""

    uuid: str
    parent: str
    type: str
    iommu_group: int | None
    bound: bool
    vendor: Mapping[str, Any]


_GPU_KEYS = {"driver", "address", "path", "options"}
_BDF = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]")


@frozen
class Topology:
    source: str
    base_dir: Path | None
    iommu_group_base: int
    parents: tuple[ParentEntry, ...]
    pm_advanced_debug: bool = True
    gpus: tuple[GpuEntry, ...] = ()
    devices: tuple[DeviceEntry, ...] = ()
    machine: Machine = Factory(lambda: Machine())

    def on_kernel(self, version: str | None) -> Topology:
        """This topology on kernel ``version`` (``--kernel``: it overrides ``[host] kernel``);
        itself for None. TopologyError for a version mdevfs does not know."""
        if version is None:
            return self
        try:
            kernel = Kernel.parse(version)
        except ValueError as exc:
            raise TopologyError(str(exc)) from None
        return evolve(self, machine=evolve(self.machine, kernel=kernel))

    @classmethod
    def default(cls) -> Topology:
        text = importlib.resources.files("mdevfs").joinpath("default.toml").read_text()
        return cls.from_text(text, "<default topology>")

    @classmethod
    def from_toml(cls, path: str | Path) -> Topology:
        path = Path(path)
        try:  # non-blocking: a FIFO would hang the open until a writer came
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as exc:
            raise TopologyError(f"{path}: cannot read: {exc.strerror}") from exc
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise TopologyError(f"{path}: not a regular file")
            try:
                text = f.read().decode()
            except (OSError, UnicodeDecodeError) as exc:
                raise TopologyError(f"{path}: cannot read: {exc}") from exc
        return cls.from_text(text, str(path), path.resolve().parent)

    @classmethod
    def from_text(cls, text: str, source: str, base_dir: Path | None = None) -> Topology:
        def bad(where: str, problem: str) -> TopologyError:
            return TopologyError(f"{source}: {where}: {problem}")

        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TopologyError(f"{source}: not valid TOML: {exc}") from exc
        except RecursionError:
            raise TopologyError(f"{source}: not usable TOML: nested too deeply") from None
        unknown = set(doc) - {"host", "parent", "gpu", "device"}
        if unknown:
            raise bad("top level", f"unknown table(s) {', '.join(sorted(unknown))}")
        host = doc.get("host", {})
        if not isinstance(host, dict):
            raise bad("host", "must be a table ([host])")
        if set(host) - _HOST_KEYS:
            raise bad("[host]", f"unknown key(s) {', '.join(sorted(set(host) - _HOST_KEYS))}")
        base = host.get("iommu_group_base", 0)
        if not isinstance(base, int) or isinstance(base, bool) or not 0 <= base < 2**31:
            raise bad("[host] iommu_group_base", "must be a whole number from 0 to 2^31-1")
        pm_debug = host.get("pm_advanced_debug", True)
        if not isinstance(pm_debug, bool):
            raise bad("[host] pm_advanced_debug", "must be true or false")
        machine = _machine(host, bad)
        gpus = _gpus(doc.get("gpu", []), bad)
        parents = []
        for where, entry in _tables(doc.get("parent", []), "parent", _PARENT_KEYS, bad):
            driver = entry.get("driver")
            if not isinstance(driver, str) or not driver:
                raise bad(where, "'driver' is required (an entry point, module:factory or file.py)")
            name, path = entry.get("name"), entry.get("path")
            if name is not None:
                problem = name_problem(name)
                if problem:
                    raise bad(where, f"'name' {name!r} {problem}")
            if path is not None:
                problem = path_problem(path)
                if problem:
                    raise bad(where, f"'path' {path!r} {problem}")
            options = entry.get("options", {})
            if not isinstance(options, dict):
                raise bad(where, "'options' must be a table")
            parents.append(ParentEntry(driver, name, path, options))
        if not (parents or gpus):
            raise bad("[[parent]]", "at least one parent (or [[gpu]]) is needed")
        return cls(source, base_dir, base, tuple(parents), pm_debug, gpus,
                   _devices(doc.get("device", []), bad), machine)

    def build(self) -> Host:
        """Load every driver and register every GPU, parent and device; raises TopologyError."""
        return self.populate(self.empty_host())

    def empty_host(self) -> Host:
        """The host of this topology before anything registers: a view (the sysfs tree) that
        must see every device observes it first, then :meth:`populate` fills it."""
        m = self.machine
        return Host(iommu_group_base=self.iommu_group_base,
                    pm_advanced_debug=self.pm_advanced_debug, kernel=m.kernel, iommu=m.iommu,
                    cpus=m.cpus, numa_nodes=m.numa_nodes)

    def populate(self, host: Host, devices: bool = True) -> Host:
        """Register the topology's GPUs, parents and (unless told not to) devices, with fresh
        drivers, in ``host`` (an empty one: a new host, or one reset). The devices' own IOMMU
        groups are kept from the functions and VFs made first."""
        held = [d.iommu_group for d in self.devices if d.iommu_group is not None]
        with host.groups_held(held):
            plugged = self._plug(host)
            for device in plugged:  # VFs are made once the bus is enumerated, as at boot
                after_boot = getattr(device, "after_boot", None)
                if after_boot is not None:
                    after_boot(host)
        return self.add_devices(host) if devices else host

    def _plug(self, host: Host) -> list[Any]:
        """Every GPU and parent on the bus, as the kernel finds them at boot; the GPUs'
        devices (whose ``after_boot`` comes next)."""
        for name in self.machine.pci_drivers:
            entry = host.pci_drivers.get(name)
            if entry is None or not entry.instances:
                module, vfio = GENERIC_DRIVERS[name]
                host.register_pci_driver(GenericDriver(
                    name, module, vfio, id_table=vfio and host.kernel.has(VFIO_PCI_ID_TABLE),
                    runtime_pm=host.kernel.has(VFIO_PCI_RUNTIME_PM)))
        paths: set[str] = set()
        plugged = []
        for i, gpu in enumerate(self.gpus):  # PCI devices first, as the kernel finds them at boot
            where = f"{self.source}: gpu #{i + 1} (driver {gpu.driver!r})"
            if gpu.address in host.pci:
                raise TopologyError(f"{where}: address {gpu.address} is used twice")
            device = self._make(GPU, gpu.driver, where, gpu.options, self.base_dir)
            try:
                device.plug(host, gpu.address, gpu.path)
            except Exception as exc:
                raise TopologyError(f"{where}: {type(exc).__name__}: {exc}") from exc
            paths.add(gpu.path)
            plugged.append(device)
        for i, entry in enumerate(self.parents):
            where = f"{self.source}: parent #{i + 1} (driver {entry.driver!r})"
            driver = self._make(PARENT, entry.driver, where, entry.options)
            name = entry.name or driver.default_parent
            path = entry.path or driver.default_path
            problem = name_problem(name) or path_problem(path)
            if problem:  # a driver's defaults obey the rules of the file
                raise TopologyError(f"{where}: {name!r} / {path!r}: {problem}")
            path = path.strip("/")
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
        return plugged

    def _make(self, kind: str, spec: str, where: str, *args: Any) -> Any:
        """A fresh driver (``kind`` "parent") or device ("gpu") from the factory ``spec``,
        checked to be what the entry needs; TopologyError naming ``where`` otherwise."""
        try:
            factory = load_factory(spec, self.base_dir)
        except DriverLoadError as exc:
            raise TopologyError(f"{where}: {exc}") from exc
        if kind_of(factory) != kind:
            made = "PCI devices ([[gpu]])" if kind_of(factory) == GPU else "mdev parents ([[parent]])"
            raise TopologyError(f"{where}: driver {spec!r} makes {made}, not "
                                f"{'[[gpu]]' if kind == GPU else '[[parent]]'} entries")
        try:
            made_obj = build(factory, *args)
        except Exception as exc:
            raise TopologyError(f"{where}: the driver refused its options: "
                                f"{type(exc).__name__}: {exc}") from exc
        problem = shape_problem(made_obj, kind)
        if problem:
            raise TopologyError(f"{where}: {problem}")
        return made_obj

    def add_devices(self, host: Host) -> Host:
        """Create the topology's ``[[device]]`` entries in ``host``; raises TopologyError."""
        for i, dev in enumerate(self.devices):  # in file order: vfio numbers follow it
            self.add_device(host, dev, f"device #{i + 1}")
        return host

    def add_device(self, host: Host, dev: DeviceEntry, where: str = "device") -> None:
        """Create one ``[[device]]`` entry in ``host``; raises TopologyError."""
        where = f"{self.source}: {where} ({dev.uuid})"
        parent = host.parents.get(dev.parent)
        mtype = parent.types.get(dev.type) if parent is not None else None
        if mtype is None:
            raise TopologyError(f"{where}: no parent {dev.parent!r} with type {dev.type!r}")
        if dev.uuid in host.devices:
            raise TopologyError(f"{where}: the UUID is used twice")
        try:
            host.restore(mtype, dev.uuid, dev.iommu_group, dev.vendor, dev.bound)
        except (OSError, ValueError) as exc:
            raise TopologyError(f"{where}: cannot be created: {exc}") from exc


def _gpus(raw: Any, bad: Any) -> tuple[GpuEntry, ...]:
    """The ``[[gpu]]`` entries: a driver (an installed factory of gpu devices), a PCI
    address, the device's path (default ``devices/pci<domain>:00/<address>``) and its
    options."""
    gpus = []
    for where, entry in _tables(raw, "gpu", _GPU_KEYS, bad):
        driver, address = entry.get("driver"), entry.get("address")
        if not isinstance(driver, str) or not driver:
            made = ", ".join(name for name, _ in installed(GPU)) or "none installed"
            raise bad(where, f"'driver' must name the driver of the device ({made})")
        if not isinstance(address, str) or not _BDF.fullmatch(address):
            raise bad(where, f"'address' {address!r} must be a PCI address like 0000:41:00.0")
        path = entry.get("path", f"devices/pci{address[:4]}:00/{address}")
        problem = path_problem(path)
        if problem or (isinstance(path, str) and not path.rstrip("/").endswith("/" + address)):
            raise bad(where, f"'path' {path!r} {problem or 'must end in the address'}")
        options = entry.get("options", {})
        if not isinstance(options, dict):
            raise bad(where, "'options' must be a table")
        gpus.append(GpuEntry(driver, address, path.strip("/"), options))
    return tuple(gpus)


def device_entry(raw: Mapping[str, Any], source: str) -> DeviceEntry:
    """One ``[[device]]`` table, checked for form as a topology file's are."""
    def bad(where: str, problem: str) -> TopologyError:
        return TopologyError(f"{source}: {where}: {problem}")

    return _devices([dict(raw)], bad)[0]


def _devices(raw: Any, bad: Any) -> tuple[DeviceEntry, ...]:
    """The ``[[device]]`` entries, checked for form (their parents and types when built)."""
    devices = []
    for where, entry in _tables(raw, "device", _DEVICE_KEYS, bad):
        uuid, parent, mtype = entry.get("uuid"), entry.get("parent"), entry.get("type")
        if not isinstance(uuid, str) or not _UUID.fullmatch(uuid):
            raise bad(where, f"'uuid' {uuid!r} must be a lower-case UUID")
        if not isinstance(parent, str) or not isinstance(mtype, str):
            raise bad(where, "'parent' and 'type' must be strings")
        group, bound = entry.get("iommu_group"), entry.get("bound", True)
        if group is not None and (not isinstance(group, int) or isinstance(group, bool)
                                  or not 0 <= group < 2**31):
            raise bad(where, "'iommu_group' must be a whole number from 0 to 2^31-1")
        if not isinstance(bound, bool) or (group is not None and not bound):
            raise bad(where, "'bound' must be true or false (an unbound device has no group)")
        vendor = entry.get("vendor", {})
        if not isinstance(vendor, dict):
            raise bad(where, "'vendor' must be a table")
        devices.append(DeviceEntry(uuid, parent, mtype, group, bound, vendor))
    return tuple(devices)


def _tables(raw: Any, name: str, keys: set[str], bad: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each entry of the array of tables ``[[name]]`` with where it is, once it is known to
    be a table of known keys."""
    if not isinstance(raw, list):
        raise bad(f"[[{name}]]", f"must be an array of tables ([[{name}]])")
    for i, entry in enumerate(raw):
        where = f"{name} #{i + 1}"
        if not isinstance(entry, dict):
            raise bad(where, f"must be a table ([[{name}]])")
        extra = set(entry) - keys
        if extra:
            raise bad(where, f"unknown key(s) {', '.join(sorted(extra))}")
        yield where, entry
