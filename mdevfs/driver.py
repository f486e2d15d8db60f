"""The vendor-driver interface, modelled on the kernel's ``struct mdev_driver``.

A vendor driver owns one parent device. mdevfs talks to it only through
:class:`VendorDriver`; drivers are found through the ``mdevfs.vendors``
entry-point group (or, for prototyping, by ``module:attr`` or a Python file
path in the topology). The entry point names a factory called as
``factory(options)`` with the parent's ``[parent.options]`` table.

A factory declares (docs/drivers.md has the whole contract):

* ``kind``: ``"parent"`` (the default: an mdev parent's driver, a ``[[parent]]`` entry) or
  ``"gpu"`` (a PCI device given whole, a ``[[gpu]]`` entry: ``factory(options, base_dir)``
  makes an object with ``plug(host, address, path)``);
* ``OPTIONS``: the :class:`Option` s it takes; :func:`build` refuses any other name, or a
  value of another type, naming the valid ones, before the factory runs (the factory checks
  ranges and what depends on other options);
* ``from_recording(found)`` (optional): whether the driver made what ``mdevfs record``
  found, and with which options: for a parent factory ``found`` is a
  :class:`mdevfs.record.RecParent`, for a gpu factory a :class:`mdevfs.record.RecFunction`;
  it returns the options (a gpu factory: the options and lines saying what the replay
  keeps), or None. ``record`` then checks the driver shows what was recorded;
* ``discrete_gpu`` (a parent factory): the parent is a discrete GPU, which a fleet's
  ``gpus = N`` counts;
* a gpu device's ``after_boot(host)`` (optional) runs once every GPU and parent of the
  topology is on the bus: where it enables VFs, as a host's boot scripts do.

Errors: a driver refuses an operation by raising ``OSError(errno, ...)``
(use :func:`mdevfs.errors.fail`); the errno reaches the user's ``write(2)``
or ``read(2)`` unchanged, as the kernel passes a driver's return through.
"""
from __future__ import annotations

import errno
import functools
import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from attrs import frozen

from .errors import fail
from .kernel import Kernel

if TYPE_CHECKING:
    from .model import MdevDevice, MdevType

ENTRY_POINT_GROUP = "mdevfs.vendors"
#: interfaces beside sysfs that a vendor's software speaks (NVIDIA's NVML): ``factory(host,
#: identity)`` makes an object with ``answer(call, args) -> list`` and ``files() -> dict``
#: (what it shows under /proc); its module's ``environment(control)`` is what a process
#: needs to use it (``mdevfs run`` sets it)
SERVICE_GROUP = "mdevfs.services"

#: the TOML types an option may have, by name
_KINDS: dict[str, tuple[type, ...]] = {"int": (int,), "str": (str,), "bool": (bool,),
                                       "table": (dict,), "list": (list,)}


@frozen
class Option:
    """One option a factory takes: its name, TOML type (``int``, ``str``, ``bool``,
    ``table``, ``list``, or two of them: ``int|str``), the value it has when not given
    (None: none, or one the factory works out: ``doc`` says how) and what it does;
    ``example``, a value ``mdevfs drivers`` shows where the default alone would not make a
    parent (a required option)."""

    name: str
    kind: str
    default: Any
    doc: str
    example: Any = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` cannot be this option's, or None."""
        types = tuple(t for kind in self.kind.split("|") for t in _KINDS[kind])
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            what = " or ".join(self.kind.split("|"))
            return f"option {self.name!r} must be {'an' if what[0] == 'i' else 'a'} {what}, " \
                   f"not {value!r}"
        return None


def options_of(factory: Callable[..., Any]) -> tuple[Option, ...] | None:
    """The options ``factory`` declares (None: it declares none, as an older plugin)."""
    declared = getattr(factory, "OPTIONS", None)
    return tuple(declared) if declared is not None else None


def check_options(factory: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """Refuse, with a ValueError naming the valid ones, an option ``factory`` does not
    declare or a value of the wrong type. A factory that declares nothing is not checked."""
    declared = options_of(factory)
    if declared is None:
        return
    by_name = {o.name: o for o in declared}
    unknown = sorted(set(options) - set(by_name))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} (known: "
                         f"{', '.join(by_name) or 'none'})")
    for name, value in options.items():
        problem = by_name[name].problem(value)
        if problem:
            raise ValueError(problem)


def build(factory: Callable[..., Any], options: Mapping[str, Any] | None, *args: Any) -> Any:
    """``factory(options, *args)``, its options checked first (:func:`check_options`)."""
    options = dict(options or {})
    check_options(factory, options)
    return factory(options, *args)


@frozen
class MdevTypeSpec:
    """One type a parent offers; its type id is ``<driver name>-<sysfs_name>``."""

    sysfs_name: str
    device_api: str = "vfio-pci"
    #: the ``name`` file; None shows ``sysfs_name``, as the 6.1+ core does
    pretty_name: str | None = None
    #: the ``description`` file; None means no file at all (6.1+ hides it)
    description: str | None = None


@frozen
class Attribute:
    """A vendor attribute: ``name`` may hold a group, as in ``vendor/sample_mdev_dev``.

    ``show`` returns the text without the final newline (None: the file reads empty, 0
    bytes); ``store`` gets the
    written bytes (at most 4096, one call per write(2)) and raises OSError to fail.
    The file mode follows from which of the two exist: 0444, 0200 or 0644.
    """

    name: str
    show: Callable[[], str] | None = None
    store: Callable[[bytes], None] | None = None


@runtime_checkable
class Migration(Protocol):
    """The ``migration_version`` of one type or device (the proposal (v5), ABI §5.2)."""

    def version(self) -> str:
        """The opaque ASCII string (≤ 4096 bytes); raise OSError when unsupported."""

    def check(self, source: str) -> None:
        """Accept a source's string (trailing newline already stripped) or raise OSError."""


class VendorDriver(Protocol):
    """The contract between mdevfs and a vendor driver (one instance per parent)."""

    #: dev_driver_string(parent): the prefix of every type id ("mtty", "i915", "nvidia")
    name: str
    #: the driver on the mdev bus that devices bind to (the ``driver`` link)
    mdev_driver: str
    #: where the parent's ``subsystem`` link points: ("class", "mtty") or ("bus", "pci")
    subsystem: tuple[str, str]
    #: default dev_name and device path of the parent, used when the topology gives none
    default_parent: str
    default_path: str

    def types(self) -> Sequence[MdevTypeSpec]:
        """The types the parent offers, in registration order."""

    def available_instances(self, mtype: MdevType) -> int | None:
        """The driver's own arithmetic (kernel ``get_available``), or None to leave
        counting to the core: one counter per parent shared by all its types,
        starting at :meth:`max_instances`, exhaustion EUSERS (kernels from 6.1)."""

    def max_instances(self) -> int:
        """The parent's core counter; used only when available_instances gives None."""

    def probe(self, mdev: MdevDevice) -> None:
        """Take the resources of a new device, or raise OSError (e.g. ENOSPC) to refuse.
        Called before the device is visible; on failure nothing is created."""

    def remove(self, mdev: MdevDevice) -> None:
        """Release the device's resources, or raise OSError (e.g. EBUSY) to refuse."""

    def device_attributes(self, mdev: MdevDevice) -> Sequence[Attribute]:
        """Per-device vendor attributes (the kernel's dev_groups): the same names for every
        device of a type, as the kernel's static attribute groups are; only the values
        (what show and store do) are the device's."""

    def type_attributes(self, mtype: MdevType) -> Sequence[Attribute]:
        """Extra type attributes, as drivers could add them before 6.1."""

    def parent_uevent(self) -> Mapping[str, str]:
        """The parent's uevent properties (e.g. MAJOR, MINOR, DEVNAME or PCI_ID)."""

    def migration(self, target: MdevType | MdevDevice) -> Migration | None:
        """The migration_version of a type or device; None means no attribute."""

    def set_option(self, key: str, value: Any) -> None:
        """Change a driver option at run time (``mdevfs ctl DIR set-option``), e.g. a
        software version that migration_version reports. ``value`` is a JSON scalar.
        Refuse with OSError(errno) or ValueError (answered as EINVAL with its text).
        The types a parent offers must not change: they are read at registration."""

    def parent_attributes(self) -> Sequence[Attribute]:
        """Attributes of the parent device itself (``mdev_parent_ops.dev_attr_groups``,
        before 5.19), for a parent that is a class device."""

    #: the kernel the host runs (:class:`mdevfs.kernel.Kernel`), set by the host when it
    #: registers the parent: a driver that behaves as the kernel's did in an era asks it
    kernel: Kernel


class BaseDriver:
    """Defaults for every optional part of :class:`VendorDriver`; subclass it."""

    name = "base"
    mdev_driver = "vfio_mdev"
    subsystem = ("class", "base")
    default_parent = "base"
    default_path = "devices/virtual/base/base"
    kernel = Kernel()

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = dict(options or {})

    def types(self) -> Sequence[MdevTypeSpec]:
        return ()

    def available_instances(self, mtype: MdevType) -> int | None:
        return None

    def max_instances(self) -> int:
        return 0

    def probe(self, mdev: MdevDevice) -> None:
        return None

    def remove(self, mdev: MdevDevice) -> None:
        return None

    def device_attributes(self, mdev: MdevDevice) -> Sequence[Attribute]:
        return ()

    def type_attributes(self, mtype: MdevType) -> Sequence[Attribute]:
        return ()

    def parent_uevent(self) -> Mapping[str, str]:
        return {}

    def migration(self, target: MdevType | MdevDevice) -> Migration | None:
        return None

    def set_option(self, key: str, value: Any) -> None:
        fail(errno.EINVAL, f"driver {self.name} has no run-time option {key!r}")

    def parent_attributes(self) -> Sequence[Attribute]:
        return ()


#: what a factory of the ``mdevfs.vendors`` group makes: an mdev parent's driver
#: (:class:`VendorDriver`, a ``[[parent]]`` entry) or a PCI device given whole (a ``[[gpu]]``
#: entry: ``factory(options, base_dir)`` with ``plug(host, address, path)``)
PARENT, GPU = "parent", "gpu"
_MEMBERS = {
    PARENT: ("name", "mdev_driver", "subsystem", "default_parent", "default_path", "types",
             "available_instances", "max_instances", "probe", "remove", "device_attributes",
             "type_attributes", "parent_uevent", "migration"),
    GPU: ("plug",),
}


def kind_of(factory: Callable[..., Any]) -> str:
    """The kind of entry ``factory`` makes: its ``kind`` attribute, ``"parent"`` by default."""
    kind = getattr(factory, "kind", PARENT)
    return kind if kind in _MEMBERS else PARENT


def shape_problem(made: object, kind: str) -> str | None:
    """Why ``made`` (what a factory returned) cannot serve as a ``kind``, or None."""
    missing = [m for m in _MEMBERS[kind] if not hasattr(made, m)]
    if missing:
        what = "an mdev parent's driver" if kind == PARENT else "a [[gpu]] device"
        return (f"its factory returned {type(made).__name__!s}, which is not {what}: it has "
                f"no {', '.join(missing)}")
    return None


class DriverLoadError(Exception):
    """A driver named in a topology could not be found or loaded."""


@functools.cache
def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The ``mdevfs.vendors`` entry points, looked up once: a scan of every installed
    distribution costs milliseconds, and a reset builds every driver again. (Imported
    here: importlib.metadata alone costs 20 ms of a start-up that may need no entry point.)"""
    import importlib.metadata

    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


@functools.cache
def _service_points() -> dict[str, Any]:
    import importlib.metadata

    return {ep.name: ep for ep in importlib.metadata.entry_points(group=SERVICE_GROUP)}


def service_names() -> list[str]:
    return sorted(_service_points())


def load_service(name: str) -> Callable[..., Any] | None:
    """The factory of installed service ``name``, None if there is none (or it is broken)."""
    point = _service_points().get(name)
    try:
        return point.load() if point is not None else None
    except Exception:  # a broken third-party plugin: as if not installed
        return None


def service_environment(control: str) -> dict[str, str]:
    """What a process needs to use every installed service through the daemon whose control
    socket is ``control`` (a service that cannot be set up here is left out)."""
    env: dict[str, str] = {}
    for name in service_names():
        factory = load_service(name)
        module = importlib.import_module(factory.__module__) if factory is not None else None
        setup = getattr(module, "environment", None)
        if setup is None:
            continue
        try:
            env.update(setup(control))
        except OSError:
            continue  # e.g. no C compiler for NVML's library: the rest still works
    return env


def installed(kind: str) -> list[tuple[str, Callable[..., Any]]]:
    """The installed factories (``mdevfs.vendors`` entry points) that make ``kind``
    entries, by name; one that cannot be loaded is left out (``mdevfs drivers`` says why)."""
    found = []
    for name in sorted(_entry_points()):
        try:
            factory = load_factory(name)
        except DriverLoadError:
            continue
        if kind_of(factory) == kind:
            found.append((name, factory))
    return found


@functools.cache
def load_factory(spec: str, base_dir: Path | None = None) -> Callable[..., VendorDriver]:
    """Find a driver factory by entry-point name, ``module:attr``, or ``path.py:attr``,
    once per process: a later call gives the same factory.

    A bare ``path.py`` takes the factory named ``Driver`` in it.
    """
    try:
        if ".py" in spec:
            file, _, attr = spec.partition(".py")
            path = Path(file + ".py")
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            mod_name = f"mdevfs_user_driver_{path.stem}"
            loader = importlib.util.spec_from_file_location(mod_name, path)
            if loader is None or loader.loader is None or not path.is_file():
                raise DriverLoadError(f"driver {spec!r}: no such file {path}")
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
            return getattr(module, attr.lstrip(":") or "Driver")
        if ":" in spec:
            mod, _, attr = spec.partition(":")
            return getattr(importlib.import_module(mod), attr)
        found = _entry_points().get(spec)
        if found is None:
            raise DriverLoadError(
                f"driver {spec!r}: no entry point of that name in group {ENTRY_POINT_GROUP!r}"
                f" (known: {', '.join(sorted(_entry_points())) or 'none'})")
        return found.load()
    except DriverLoadError:
        raise
    except Exception as exc:  # any import-time failure of third-party code
        raise DriverLoadError(f"driver {spec!r} failed to load: {type(exc).__name__}: {exc}") from exc
