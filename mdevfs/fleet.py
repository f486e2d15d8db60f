"""Fleets: many emulated hosts from one ``fleet.toml``, each a mount of its own.

    [fleet]
    topology = "host.toml"        # the hosts' shared topology (default: the embedded one)
    state_dir = "state"           # optional: host H keeps its devices in state/H.json

    [[host]]
    name = "old-{n:02}"           # with count: old-01 … old-50 ({n} counts from 1)
    count = 50
    kernel = "5.10"               # optional: the kernel they run (default: the topology's)
    gpus = 4                      # optional: the number of discrete GPUs (see below)
    [host.options.DRIVER]         # optional: merged into the options of every [[parent]]
    manager = "535.54.03"         # and [[gpu]] of that driver

    [[host]]
    name = "lab"
    topology = "lab.toml"         # a topology of its own; overrides apply to it too
    state = "lab.json"            # optional, relative to the fleet file

Relative paths are the fleet file's. A host's discrete GPUs are its topology's ``[[gpu]]``
entries and ``[[parent]]`` entries of a driver that says it is one (``discrete_gpu``), in
file order; ``gpus = N``
keeps the first N, or copies the last one onto the next free PCI buses (``0000:42:00.0``,
``0000:43:00.0``, …) until there are N. A host with overrides mounts a topology written
into its directory, with driver files and catalogs made absolute.

Every host is one daemon (pyfuse3 serves one mount per process), started by
:func:`mdevfs.process.start`, detached, in ``DIR/<host>/``: ``sys`` (its sysfs root),
``mdevfs.log``, ``uevents.sock`` and the written topology; its control socket is the
default for its root (:func:`mdevfs.runtime.default_control`), so ``mdevfs ctl
DIR/<host>/sys …`` finds it. ``DIR/fleet.json`` records the hosts for ``status``,
``run`` and ``down``.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w
from attrs import frozen

from . import namespace, process, runtime
from .beneath import read_regular, write_new
from .config import Topology
from .control import Client
from .errors import MountError, UsageError
from .mounts import mountpoints

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_HOST_KEYS = {"name", "count", "topology", "gpus", "options", "state", "kernel"}
_FLEET_KEYS = {"topology", "state_dir"}
RECORD = "fleet.json"
#: daemons started at once; each spends most of its start in Python's imports (CPU)
WORKERS = 2 * (os.cpu_count() or 1)


@frozen
class HostSpec:
    """One host of a fleet: its topology (a file, or text written from the shared one
    with overrides) and its optional state file."""

    name: str
    topology: Path | None  # None: the embedded default
    text: str | None  # the topology to write and mount instead, when there are overrides
    state: Path | None


def load(path: str | os.PathLike[str]) -> list[HostSpec]:
    """Parse a fleet file into its hosts; raises UsageError (TopologyError for a host's
    topology) naming the file, the entry and the problem, before anything is mounted."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot read a fleet: {exc}") from None
    base = path.resolve().parent
    fleet = doc.get("fleet", {})
    if set(doc) - {"fleet", "host"} or not isinstance(fleet, dict) or set(fleet) - _FLEET_KEYS:
        raise UsageError(f"{path}: a fleet has [fleet] (topology, state_dir) and [[host]] "
                         f"tables only")
    shared = base / fleet["topology"] if "topology" in fleet else None
    state_dir = base / fleet["state_dir"] if "state_dir" in fleet else None
    hosts: list[HostSpec] = []
    for i, entry in enumerate(doc.get("host", [])):
        hosts += _hosts(entry, f"{path}: host #{i + 1}", base, shared, state_dir)
    names = [h.name for h in hosts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"{path}: host name(s) used twice: {', '.join(twice)}")
    if not hosts:
        raise UsageError(f"{path}: no [[host]]")
    return hosts


def _hosts(entry: Any, where: str, base: Path, shared: Path | None,
           state_dir: Path | None) -> list[HostSpec]:
    if not isinstance(entry, dict) or set(entry) - _HOST_KEYS:
        raise UsageError(f"{where}: keys are {', '.join(sorted(_HOST_KEYS))}")
    count = entry.get("count")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool)
                              or not 1 <= count <= 10000):
        raise UsageError(f"{where}: 'count' must be a whole number from 1 to 10000")
    pattern = entry.get("name")
    if not isinstance(pattern, str):
        raise UsageError(f"{where}: 'name' is required")
    try:
        names = [pattern.format(n=n) for n in range(1, count + 1)] if count else [pattern]
    except (KeyError, IndexError, ValueError) as exc:
        raise UsageError(f"{where}: name {pattern!r}: only {{n}} may be filled in ({exc})") \
            from None
    if count and len(set(names)) != count:
        raise UsageError(f"{where}: name {pattern!r} must hold {{n}} to give {count} names")
    topology = base / entry["topology"] if "topology" in entry else shared
    overrides = {k: entry[k] for k in ("gpus", "options", "kernel") if k in entry}
    text = rewrite(topology, overrides, where) if overrides else None
    hosts = []
    for name in names:
        if not _NAME.fullmatch(name) or name.startswith("."):
            raise UsageError(f"{where}: host name {name!r} must be letters, digits, '_.-', "
                             f"not starting with '.'")
        if name == RECORD:
            raise UsageError(f"{where}: host name {name!r} is the name of the fleet's own "
                             f"record")
        state = (base / entry["state"] if "state" in entry and not count
                 else state_dir / f"{name}.json" if state_dir else None)
        hosts.append(HostSpec(name, topology, text, state))
    return hosts


# --- a shared topology with overrides ----------------------------------------------------

def rewrite(topology: Path | None, overrides: Mapping[str, Any], where: str) -> str:
    """The topology's text with ``options`` merged per driver, ``gpus`` applied and
    ``kernel`` set; checked as a topology file is (TopologyError names ``where``)."""
    if topology is None:
        import importlib.resources

        raw = importlib.resources.files("mdevfs").joinpath("default.toml").read_text()
        base = None
    else:
        raw, base = Path(topology).read_text(), Path(topology).resolve().parent
    doc = tomllib.loads(raw)
    options = overrides.get("options", {})
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise UsageError(f"{where}: 'options' must be tables of options per driver "
                         f"([host.options.DRIVER] …)")
    for kind in ("parent", "gpu"):
        for entry in doc.get(kind, []):
            driver = entry.get("driver", "")
            entry["options"] = {**entry.get("options", {}), **options.get(driver, {})}
            _absolute(entry, base)
    if "kernel" in overrides:
        doc.setdefault("host", {})["kernel"] = overrides["kernel"]
    if "gpus" in overrides:
        gpus = overrides["gpus"]
        if not isinstance(gpus, int) or isinstance(gpus, bool) or not 0 <= gpus <= 64:
            raise UsageError(f"{where}: 'gpus' must be a whole number from 0 to 64")
        _set_gpus(doc, gpus, where)
    text = tomli_w.dumps({k: v for k, v in doc.items() if v != []})
    Topology.from_text(text, where, base)  # refused here, named, before any mount
    return text


def _absolute(entry: dict[str, Any], base: Path | None) -> None:
    """A written topology lives elsewhere: driver files and catalogs become absolute."""
    if base is None:
        return
    driver = entry.get("driver", "")
    if ".py" in driver and not os.path.isabs(driver):
        entry["driver"] = str(base / driver)
    catalog = entry["options"].get("catalog")
    if isinstance(catalog, str) and not os.path.isabs(catalog):
        entry["options"]["catalog"] = str(base / catalog)


def _is_gpu(kind: str, entry: Mapping[str, Any]) -> bool:
    """A ``[[gpu]]``, or a parent whose driver says it is a discrete GPU."""
    if kind == "gpu":
        return True
    from .driver import DriverLoadError, load_factory

    try:
        return bool(getattr(load_factory(entry.get("driver", "")), "discrete_gpu", False))
    except DriverLoadError:
        return False  # the topology check names it


def _set_gpus(doc: dict[str, Any], count: int, where: str) -> None:
    gpus = [(k, e) for k in ("gpu", "parent") for e in doc.get(k, []) if _is_gpu(k, e)]
    if not gpus:
        raise UsageError(f"{where}: 'gpus' but the topology has no [[gpu]] or discrete GPU "
                         f"parent")
    keep = {id(e) for _, e in gpus[:count]}
    for kind in ("gpu", "parent"):
        doc[kind] = [e for e in doc.get(kind, []) if not _is_gpu(kind, e) or id(e) in keep]
    kind, last = gpus[min(count, len(gpus)) - 1]
    used = {int(a.split(":")[1], 16) for a in _addresses(doc)}
    for _ in range(count - len(gpus)):
        bus = max(used) + 1
        used.add(bus)
        doc[kind].append(_moved(kind, last, bus))


def _addresses(doc: Mapping[str, Any]) -> list[str]:
    found = [e.get("address", "") for e in doc.get("gpu", [])]
    found += [_parent_name(e) for e in doc.get("parent", [])]
    return [a for a in found if re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", a)]


def _parent_name(entry: Mapping[str, Any]) -> str:
    if "name" in entry:
        return entry["name"]
    from .driver import load_factory

    return load_factory(entry["driver"])(entry.get("options", {})).default_parent


def _moved(kind: str, entry: dict[str, Any], bus: int) -> dict[str, Any]:
    """A copy of a GPU entry at bus ``bus``: address or name, and its path, follow."""
    copy = json.loads(json.dumps(entry))
    key = "address" if kind == "gpu" else "name"
    old = entry.get(key) or _parent_name(entry)
    new = f"{old[:5]}{bus:02x}{old[7:]}"
    copy[key] = new
    if kind == "parent" and "path" not in copy:
        from .driver import load_factory

        copy["path"] = load_factory(entry["driver"])(entry.get("options", {})).default_path
    if "path" in copy:
        copy["path"] = copy["path"].replace(old, new)
    return copy


# --- up, status, down, run ----------------------------------------------------------------

@frozen
class HostMount:
    """A running host of a fleet. Its paths follow from the fleet's directory and its name
    (``DIR/HOST/sys`` …); ``fleet.json`` adds only its daemon's pid and start time."""

    name: str
    root: Path
    control: Path
    log: Path
    uevents: Path
    pid: int
    start: str | None

    @classmethod
    def of(cls, top: Path, name: str, pid: int = 0, start: str | None = None) -> HostMount:
        root = top / name / "sys"
        return cls(name, root, runtime.default_control(root), top / name / "mdevfs.log",
                   top / name / "uevents.sock", pid, start)

    def client(self) -> Client:
        return Client(self.control, timeout=10.0)

    def daemon(self) -> process.Recorded:
        return process.Recorded(self.pid, self.start)

    def alive(self) -> bool:
        """Whether the recorded daemon runs: this user's mdevfs daemon with that pid and
        start time (a zombie that this process started is reaped here)."""
        return self.daemon().poll() is None


def up(fleet_file: str | os.PathLike[str], directory: str | os.PathLike[str],
       launcher: str = "zygote") -> list[HostMount]:
    """Mount every host of the fleet under ``directory``, which ``up`` makes (mode 0700: a
    directory that exists is refused, since another user may have made it), and return
    once all answer. If one fails, the others are taken down again and its error is
    raised, naming the host. Memory is checked before anything starts (:func:`admit`).
    ``launcher``: "zygote" forks every daemon from one process that imported mdevfs once
    (:func:`mdevfs.process.start_many`); "exec" starts each as ``mdevfs mount`` does
    (:func:`mdevfs.process.start`), several at once."""
    hosts = load(fleet_file)
    top = Path(os.path.abspath(directory))
    admit(len(hosts), launcher)
    try:
        os.mkdir(top, 0o700)
    except FileExistsError:
        hint = (f"a fleet is up there; `mdevfs fleet down {top}` first"
                if (top / RECORD).exists() else "fleet up makes its directory itself")
        raise UsageError(f"{top}: exists ({hint})") from None
    except OSError as exc:
        raise UsageError(f"{top}: cannot make it: {exc.strerror}") from None
    specs = [_prepare(top, host) for host in hosts]
    # recorded before any daemon starts: after a kill -9 of `up`, `down` still unmounts
    # every root, and each daemon exits with its mount
    planned = [HostMount.of(top, h.name) for h in hosts]
    _save(top, planned)
    try:
        if launcher == "zygote":
            results = process.start_many(specs)
        else:
            with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
                results = list(pool.map(_exec, specs))
    except BaseException:
        _down_all(planned)
        (top / RECORD).unlink(missing_ok=True)
        raise
    started = [HostMount.of(top, h.name, pid, process.start_time(pid))
               for h, pid in zip(hosts, results) if isinstance(pid, int)]
    failed = [(h, r) for h, r in zip(hosts, results) if not isinstance(r, int)]
    if failed:
        _down_all(started)
        (top / RECORD).unlink(missing_ok=True)
        host, exc = failed[0]
        more = f" ({len(failed) - 1} more hosts failed too)" if len(failed) > 1 else ""
        raise type(exc)(f"host {host.name}: {exc}{more}")
    _save(top, started)
    return started


#: the memory a host's daemon takes, conservatively (measured: 8.4 MiB of PSS per host of
#: four GPUs with the zygote's pages shared, 7.8 GiB for a thousand hosts of
#: examples/fleet/gpu-host.toml; 19.8 MiB as a separate Python)
HOST_MIB = {"zygote": 16, "exec": 24}


def admit(count: int, launcher: str = "zygote") -> None:
    """Refuse (UsageError) a fleet whose daemons would not fit in the memory this process
    may use: the system's MemAvailable, or what is left below its cgroup's memory.max."""
    need = count * HOST_MIB[launcher] + 64
    free = available_mib()
    if free is not None and need > free:
        raise UsageError(f"a fleet of {count} hosts needs about {need} MiB of memory; "
                         f"{free} MiB is available here (MemAvailable, cgroup memory.max)")


def available_mib() -> int | None:
    """MiB this process may still use: MemAvailable, less if its cgroup (v2) has a limit."""
    found = []
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) // 1024)
    with contextlib.suppress(OSError, ValueError, IndexError):
        group = Path("/proc/self/cgroup").read_text().splitlines()[0].split("::", 1)[1]
        base = Path("/sys/fs/cgroup") / group.lstrip("/")
        limit = (base / "memory.max").read_text().strip()
        if limit != "max":
            used = int((base / "memory.current").read_text())
            found.append((int(limit) - used) // 2**20)
    return min(found) if found else None


def _prepare(top: Path, host: HostSpec) -> dict[str, Any]:
    """The host's directory and written topology; :func:`mdevfs.process.start`'s arguments."""
    hdir = top / host.name
    hdir.mkdir(mode=0o700)
    root = hdir / "sys"
    root.mkdir()
    config = host.topology
    if host.text is not None:
        config = hdir / "topology.toml"
        write_new(config, host.text.encode())
    if host.state is not None:
        host.state.parent.mkdir(parents=True, exist_ok=True)
    return {"root": str(root), "control": str(runtime.default_control(root)),
            "log_file": str(hdir / "mdevfs.log"),
            "config": None if config is None else str(config),
            "state": None if host.state is None else str(host.state),
            "uevents": str(hdir / "uevents.sock"),
            # as in mdevfs run: others may read the tree, the sysfs modes stop their writes
            "allow_other": os.geteuid() == 0}


def _exec(spec: dict[str, Any]) -> int | Exception:
    try:
        return process.start(**{k: Path(v) if k in ("root", "control", "log_file", "uevents")
                                else v for k, v in spec.items()}).proc.pid
    except Exception as exc:  # reported with the host's name by up()
        return exc


def _save(top: Path, mounts: Sequence[HostMount]) -> None:
    record = {m.name: {"pid": m.pid, "start": m.start} for m in mounts}
    write_new(top / RECORD, json.dumps({"hosts": record}, indent=1).encode(), mode=0o600)


def hosts(directory: str | os.PathLike[str]) -> list[HostMount]:
    """The hosts of the fleet that is up in ``directory``; UsageError if none is, or if the
    directory or its record could be anyone's but this user's (a fleet's directory is
    0700, made by ``up``): another user's record would name their choice of pids."""
    top = Path(os.path.abspath(directory))
    try:
        st = os.lstat(top)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise UsageError(f"{top}: not a fleet's directory (fleet up makes it, 0700, as "
                             f"the user who runs it)")
        data = read_regular(top / RECORD, nofollow=True)
        rst = os.lstat(top / RECORD)
        if rst.st_uid != os.geteuid() or rst.st_mode & 0o022:
            raise UsageError(f"{top / RECORD}: not this user's own record")
        record = json.loads(data)["hosts"]
        found = [HostMount.of(top, name, int(r["pid"]), r["start"]) for name, r in record.items()
                 if _NAME.fullmatch(name) and not name.startswith(".")]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"{top}: no fleet is up there ({top / RECORD}: "
                         f"{getattr(exc, 'strerror', None) or exc})") from None
    return found


def host(directory: str | os.PathLike[str], name: str) -> HostMount:
    for mount in hosts(directory):
        if mount.name == name:
            return mount
    raise UsageError(f"no host {name!r} in the fleet at {directory}")


def status(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Per host: name, pid, whether its daemon runs and answers, its parents and devices."""
    rows = []
    for mount in hosts(directory):
        row: dict[str, Any] = {"host": mount.name, "pid": mount.pid, "root": str(mount.root),
                               "alive": mount.alive()}
        try:
            got = mount.client().status() if row["alive"] else None
        except OSError as exc:
            row["error"] = exc.strerror or str(exc)
            got = None
        row["parents"] = len(got["parents"]) if got else None
        row["devices"] = len(got["devices"]) if got else None
        rows.append(row)
    return rows


def render_status(rows: Sequence[Mapping[str, Any]]) -> str:
    width = max([len(r["host"]) for r in rows] + [4])
    lines = [f"{'HOST':<{width}}  {'PID':>7}  STATE    PARENTS  DEVICES  ROOT"]
    for r in rows:
        state = "up" if r["parents"] is not None else "down" if not r["alive"] else "silent"
        lines.append(f"{r['host']:<{width}}  {r['pid']:>7}  {state:<7}  "
                     f"{'-' if r['parents'] is None else r['parents']:>7}  "
                     f"{'-' if r['devices'] is None else r['devices']:>7}  {r['root']}")
    up_count = sum(r["parents"] is not None for r in rows)
    lines.append(f"{up_count} of {len(rows)} hosts up")
    return "\n".join(lines) + "\n"


def down(directory: str | os.PathLike[str], workers: int = WORKERS) -> None:
    """Unmount every host and return once its daemon has exited (a daemon that lingers is
    ended: only the process recorded, by pid and start time), then remove the hosts'
    directories and the record."""
    top = Path(os.path.abspath(directory))
    mounts = hosts(top)
    _down_all(mounts, workers)
    still = [m for m in mounts if str(m.root) in mountpoints()]
    if still:  # never remove a directory holding a mount
        raise MountError(f"still mounted: {', '.join(str(m.root) for m in still)}")
    for m in mounts:
        if m.root.parent.parent == top:
            shutil.rmtree(m.root.parent, ignore_errors=True)
    (top / RECORD).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        top.rmdir()  # only if nothing else is in it


def _down_all(mounts: Sequence[HostMount], workers: int = WORKERS) -> None:
    if mounts:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(_stop, mounts))


def _stop(mount: HostMount) -> None:
    """Unmount; the daemon then exits by itself (:func:`mdevfs.process.stop`)."""
    process.stop(mount.root, mount.daemon())


def run(directory: str | os.PathLike[str], name: str, command: Sequence[str],
        mdevctl_dir: Path | None = None) -> int:
    """``command`` in a namespace showing host ``name``'s tree as /sys (as ``mdevfs run``);
    its exit status."""
    mount = host(directory, name)
    if not mount.alive():
        raise MountError(f"host {name}: its daemon (pid {mount.pid}) is not running")
    proc = subprocess.Popen(namespace.command_line(mount.root, command, mdevctl_dir,
                                                   mount.uevents, parent=os.getpid()))
    return namespace.wait(proc)


@contextlib.contextmanager
def running(fleet_file: str | os.PathLike[str], directory: str | os.PathLike[str]
            ) -> Iterator[list[HostMount]]:
    """:func:`up`, then :func:`down` in every case."""
    mounts = up(fleet_file, directory)
    try:
        yield mounts
    finally:
        down(directory)


def measure(fleet_file: str | os.PathLike[str], directory: str | os.PathLike[str],
            launcher: str = "zygote", report: Callable[[str], None] = print
            ) -> dict[str, float]:
    """Bring a fleet up and down, reporting the time of each and the daemons' memory (the
    sum of their proportional set sizes, /proc/PID/smaps_rollup)."""
    began = time.monotonic()
    mounts = up(fleet_file, directory, launcher)
    t_up = time.monotonic() - began
    try:
        pss = sum(_pss_kib(m.pid) for m in mounts)
    finally:
        began = time.monotonic()
        down(directory)
        t_down = time.monotonic() - began
    figures = {"launcher": launcher, "hosts": len(mounts), "up_s": round(t_up, 2), "down_s": round(t_down, 2),
               "pss_mib": round(pss / 1024, 1),
               "pss_mib_per_host": round(pss / 1024 / max(1, len(mounts)), 1)}
    report(json.dumps(figures))
    return figures


def _pss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0
