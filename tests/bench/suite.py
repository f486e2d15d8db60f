"""The measurements, each against its reference in the same run.

Every phase fills :class:`Results` with raw samples (one per repetition); the
report takes medians. The floor runs in mdevfs's caching mode, read from
:mod:`mdevfs.fuse` at run time (direct_io, the same entry and attribute
timeouts) with READDIRPLUS forced as pyfuse3 forces it (``C+plus``); the plain
readdir floor (``C``) is measured beside it for the listing only.

Attribute operations run with the driver's working directory in the directory
that holds the file and a one-component path, on both filesystems, so each
sees the same FUSE requests per operation; ``read-deep`` shows what the full
path through ``class/mdev_bus`` adds on mdevfs.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attrs import Factory, define, frozen

from mdevfs.config import Topology
from mdevfs.state import StateFile
from mdevfs.testing import Mount, mounted

from .tools import BenchError, Floor, Sample, Tools, drive, floor_mounted, rss_bytes

BENCH_TOPOLOGY = """\
# The benchmark's host: the mtty sample with a pool so big that creates never run out.
[[parent]]
driver = "mtty"
[parent.options]
ports = 1000000
"""
PARENT_LINK = "class/mdev_bus/mtty"
TYPE = "mtty-1"
LIST_SIZES = (10, 1000, 10000)
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: the floor's migration_version, which it accepts back (c/floor.c)
FLOOR_VERSION = "10de:1eb8-v1.0-0001"
OPS = ("read", "write", "writebad", "stat", "statmiss", "create", "remove", "read-deep")
DEEP_PATH = f"{PARENT_LINK}/mdev_supported_types/{TYPE}/available_instances"


@frozen
class Plan:
    reps: int
    budget_ms: float
    spawns: int
    #: device counts at which the daemon's RSS is taken (and listed)
    scale: tuple[int, ...]
    mdevctl_devices: int
    mdevctl_runs: int
    resets: int
    #: operations per request-count probe
    probe_ops: int


FULL = Plan(reps=5, budget_ms=300, spawns=10, scale=(10_000, 100_000), mdevctl_devices=1000,
            mdevctl_runs=5, resets=20, probe_ops=200)
QUICK = Plan(reps=1, budget_ms=20, spawns=2, scale=(10_000,), mdevctl_devices=50,
             mdevctl_runs=1, resets=3, probe_ops=20)


@define
class Results:
    plan: Plan
    #: op → side → p50 µs per repetition
    ops: dict[str, dict[str, list[float]]] = Factory(dict)
    #: entries → side → p50 µs per repetition
    listing: dict[int, dict[str, list[float]]] = Factory(dict)
    #: side → ms per spawn
    mount: dict[str, list[float]] = Factory(dict)
    #: ``--state``: devices → µs per recorded create (its flush alone); and
    #: devices → ms from spawn to ready when a mount restores them
    state_write: dict[int, list[float]] = Factory(dict)
    state_restore: dict[int, list[float]] = Factory(dict)
    #: side ("mdevfs" fixture, "tmpfs" trees by hand) → s per run of a 100-test suite
    suite: dict[str, list[float]] = Factory(dict)
    #: s to remove the largest count of devices (the control socket's reset)
    removed: dict[int, float] = Factory(dict)
    #: ms per ``mdevfs run -- true``, with the forker up; without one (MDEVFS_FORKER=off)
    run: list[float] = Factory(list)
    run_cold: list[float] = Factory(list)
    #: what a mount costs, piece by piece: label → ms per run
    mount_parts: dict[str, list[float]] = Factory(dict)
    #: (devices, RSS bytes, nodes in the tree)
    memory: list[tuple[int, int, int]] = Factory(list)
    nodes_per_device: int = 0
    #: how the reset was done → ms per reset
    reset: dict[str, list[float]] = Factory(dict)
    #: command → side → s per run
    mdevctl: dict[str, dict[str, list[float]]] = Factory(dict)
    mdevctl_info: dict[str, Any] = Factory(dict)
    #: op → side → {"per_op": {request: count}, "handler_ns": ..., "calls": ...}
    requests: dict[str, dict[str, dict[str, Any]]] = Factory(dict)
    #: phase → why it did not run (or failed)
    skipped: dict[str, str] = Factory(dict)
    notes: list[str] = Factory(list)
    #: the CPU every process ran on, or None when not pinned
    pinned: int | None = None

    def add(self, table: dict[Any, dict[str, list[float]]], key: Any, side: str,
            value: float) -> None:
        table.setdefault(key, {}).setdefault(side, []).append(value)


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


#: the floors: name → (READDIRPLUS forced, names uncached). ``C+plus`` is mdevfs's mode
#: (entry_timeout ENTRY_TIMEOUT); ``C+plus/uncached`` looks every name up each time, as a
#: path through a device made a moment ago does on mdevfs: the floor of ``remove``, which
#: cannot remove, so repeats its syscalls on one file.
FLOORS = {"C+plus": (True, False), "C": (False, False), "C+plus/uncached": (True, True)}


def floor_knobs(plus: bool, uncached: bool = False) -> dict[str, str]:
    """The floor's environment for mdevfs's caching mode (read from mdevfs.fuse)."""
    from mdevfs import fuse

    entry = 0.0 if uncached else fuse.ENTRY_TIMEOUT
    return {"DIO": "1", "ET": f"{entry:g}", "AT": f"{fuse.ATTR_TIMEOUT:g}",
            "KEEP": "0", "PLUS": "1" if plus else "0"}


# --- the two sides of an attribute operation ----------------------------------------------

@frozen
class Side:
    """Where each operation happens on one filesystem."""

    name: str
    root: Path
    attr_dir: Path         # holds the read/stat file and `create`
    read_name: str
    write_dir: Path
    write_name: str
    write_ok: str
    devices_dir: Path      # holds <uuid>/remove
    list_dir: Callable[[int], tuple[Path, str]]  # entries → (cwd, name) of that listing
    #: what a listing has besides its entries: "." and "..", as sysfs lists them, on mdevfs;
    #: nothing on the C floor
    dots: int = 0


def mdevfs_side(root: Path, name: str = "mdevfs") -> Side:
    parent = Path(os.path.realpath(root / PARENT_LINK))
    return Side(name=name, root=root, attr_dir=parent / "mdev_supported_types" / TYPE,
                read_name="available_instances", write_dir=parent / "power",
                write_name="control", write_ok="on", devices_dir=parent,
                list_dir=lambda n: (root / "bus/mdev", "devices"), dots=2)


def floor_side(floor: Floor, name: str) -> Side:
    root = floor.root
    return Side(name=name, root=root, attr_dir=root, read_name="available_instances",
                write_dir=root, write_name="migration_version", write_ok=FLOOR_VERSION,
                devices_dir=root / "devices", list_dir=lambda n: (root, f"d{n}"))


def uuids_in(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if UUID_RE.match(n)]


def create_devices(create_dir: Path, count: int) -> None:
    """``count`` creates through the ``create`` file, untimed (a fresh UUID each)."""
    dfd = os.open(create_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(count):
            fd = os.open("create", os.O_WRONLY, dir_fd=dfd)
            try:
                os.write(fd, str(uuidlib.uuid4()).encode())
            finally:
                os.close(fd)
    finally:
        os.close(dfd)


def write_at(dfd: int, rel: str, data: bytes) -> None:
    fd = os.open(rel, os.O_WRONLY, dir_fd=dfd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def time_removes(side: Side, budget_ms: float, want: int) -> float:
    """p50 µs of open(<uuid>/remove) + write("1") + close, in a Python loop for ``budget_ms``.

    The driver has no remove op, so both sides run the same Python loop. The floor's
    ``remove`` accepts the write and keeps the device (it cannot remove), so its
    figure is the floor for the same syscalls and requests.
    """
    uuids = uuids_in(side.devices_dir)
    if len(uuids) < want:
        create_devices(side.attr_dir, want - len(uuids))
        uuids = uuids_in(side.devices_dir)
    dfd = os.open(side.devices_dir, os.O_RDONLY | os.O_DIRECTORY)
    lat: list[float] = []
    try:
        deadline = time.perf_counter() + budget_ms / 1000
        for i, u in enumerate(uuids):
            start = time.perf_counter_ns()
            write_at(dfd, f"{u}/remove", b"1")
            if i >= 3:  # the first few warm up
                lat.append((time.perf_counter_ns() - start) / 1000)
            if time.perf_counter() > deadline and len(lat) >= 5:
                break
    finally:
        os.close(dfd)
    return statistics.median(lat)


def run_op(tools: Tools, op: str, side: Side, budget_ms: float) -> Sample | float:
    if op == "read":
        return drive(tools, "read", budget_ms, side.read_name, cwd=side.attr_dir)
    if op == "read-deep":
        return drive(tools, "read", budget_ms, DEEP_PATH, cwd=side.root)
    if op == "write":
        return drive(tools, "write", budget_ms, side.write_name, side.write_ok, cwd=side.write_dir)
    if op == "writebad":
        return drive(tools, "writebad", budget_ms, side.write_name, "bogus", cwd=side.write_dir)
    if op == "stat":
        return drive(tools, "stat", budget_ms, side.read_name, cwd=side.attr_dir)
    if op == "statmiss":
        return drive(tools, "statmiss", budget_ms, "no_such_attribute", cwd=side.attr_dir)
    if op == "create":
        return drive(tools, "create", budget_ms, "create", secrets.token_hex(4), cwd=side.attr_dir)
    if op == "remove":
        return time_removes(side, budget_ms, want=max(50, int(budget_ms * 15)))
    raise ValueError(op)


def p50(value: Sample | float) -> float:
    return value.p50 if isinstance(value, Sample) else value


# --- phases ---------------------------------------------------------------------------------

def phase_ops(res: Results, tools: Tools, config: Path, floors: dict[str, Floor]) -> None:
    """Attribute read, accepted and rejected write, stat, stat of a missing name, create,
    remove; mdevfs and the floor in turns (for remove, the floor with names uncached)."""
    plan = res.plan
    with mounted(config) as m:
        mine = mdevfs_side(m.root)
        floor = floor_side(floors["C+plus"], "C+plus")
        uncached = floor_side(floors["C+plus/uncached"], "C+plus")
        for rep in range(plan.reps):
            for i, op in enumerate(OPS):
                sides = [mine, uncached if op == "remove" else floor]
                order = sides if (rep + i) % 2 == 0 else sides[::-1]
                for side in order:
                    if op == "read-deep" and side.name != "mdevfs":
                        continue
                    res.add(res.ops, op, side.name, p50(run_op(tools, op, side, plan.budget_ms)))
            log(f"ops: repetition {rep + 1}/{plan.reps} done")
        if not m.alive():
            raise BenchError(f"mdevfs died during the ops phase:\n{m.log()[-2000:]}")


def phase_listing(res: Results, tools: Tools, config: Path, floors: dict[str, Floor]) -> None:
    """Listing bus/mdev/devices at 10, 1,000 and 10,000 devices against the floor's d10,
    d1000 and d10000 (with and without readdirplus); the daemon's RSS at 0 devices and at
    each count of the plan; the largest count mounted and listed."""
    plan = res.plan
    with mounted(config) as m:
        side = mdevfs_side(m.root)
        sides = [side] + [floor_side(f, name) for name, f in floors.items()]
        time.sleep(0.2)
        res.memory.append((0, rss_bytes(m.proc.pid), 0))
        have = 0
        for n in sorted(set(LIST_SIZES) | set(plan.scale)):
            log(f"listing: growing to {n:,} devices")
            create_devices(side.attr_dir, n - have)
            have = n
            if n in plan.scale:
                time.sleep(0.2)
                res.memory.append((n, rss_bytes(m.proc.pid), 0))
            if n in LIST_SIZES:
                for rep in range(plan.reps):
                    k = rep % len(sides)
                    order = sides[k:] + sides[:k]
                    for s in (order[::-1] if rep % 2 else order):
                        cwd, name = s.list_dir(n)
                        sample = drive(tools, "readdir", plan.budget_ms, name, cwd=cwd)
                        if sample.extra != n + s.dots:
                            raise BenchError(f"{s.name}: listing gave {sample.extra} entries, "
                                             f"not {n}")
                        res.add(res.listing, n, s.name, sample.p50)
            else:  # beyond the floor's largest directory: mdevfs alone
                for _ in range(min(plan.reps, 3)):
                    cwd, name = side.list_dir(n)
                    sample = drive(tools, "readdir", 1, name, cwd=cwd)
                    if sample.extra != n + side.dots:
                        raise BenchError(f"listing gave {sample.extra} entries, not {n}")
                    res.add(res.listing, n, "mdevfs", sample.p50)
        start = time.perf_counter()
        m.reset()  # every device removed (the control socket's reset)
        res.removed[have] = time.perf_counter() - start
        if not m.alive() or m.devices():
            raise BenchError(f"mdevfs died during the listing phase:\n{m.log()[-2000:]}")
    res.nodes_per_device, base = count_nodes()
    res.memory = [(d, rss, base + d * res.nodes_per_device) for d, rss, _ in res.memory]


def count_nodes() -> tuple[int, int]:
    """(names per device, nodes with no device) of the bench topology's tree, counted in
    this process with the same Tree the daemon serves. A device's names are its directory
    and every name outside it that leads to it (the bus and type links, its groups), as
    the kernel holds them; the tree makes a node for the directory alone, and one for
    each other name only when it is looked up (a view of the model)."""
    from mdevfs.config import Topology
    from mdevfs.tree import Tree

    host = Topology.from_text(BENCH_TOPOLOGY, "<bench topology>").build()
    tree = Tree(host)
    base = tree.size
    mtype = next(iter(host.parents.values())).types[TYPE]
    uuid = str(uuidlib.uuid4())
    host.create(mtype, uuid.encode())
    return 1 + len(tree._device_views(host.devices[uuid])), base


# --- mount, reset --------------------------------------------------------------------------

def phase_mount(res: Results, tools: Tools) -> None:
    """Spawn to a mount that answers, for the embedded default topology (what a test's
    fixture mounts), against the C floor; and what the Python part of it costs."""
    knobs = floor_knobs(plus=True)
    for i in range(res.plan.spawns):
        for side in (("mdevfs", "C+plus") if i % 2 == 0 else ("C+plus", "mdevfs")):
            start = time.perf_counter()
            with mounted() if side == "mdevfs" else floor_mounted(tools, knobs):
                ms = (time.perf_counter() - start) * 1000
            res.mount.setdefault(side, []).append(ms)
    script = Path(sys.executable).with_name("mdevfs")
    subprocess.run([str(script), "run", "--", "true"], check=True, cwd="/")  # starts the forker
    from mdevfs import forker

    deadline = time.monotonic() + 30
    while not forker.socket_path().is_socket() and time.monotonic() < deadline:
        time.sleep(0.05)
    cold = dict(os.environ, MDEVFS_FORKER="off")
    for _ in range(res.plan.spawns):
        for times, env in ((res.run, None), (res.run_cold, cold)):
            start = time.perf_counter()
            subprocess.run([str(script), "run", "--", "true"], check=True, cwd="/", env=env)
            times.append((time.perf_counter() - start) * 1000)
    parts = {"python -c pass": "pass", "python -c 'import trio'": "import trio",
             "python -c 'import pyfuse3'": "import pyfuse3",
             "python -c 'import mdevfs.fuse, mdevfs.cli'": "import mdevfs.fuse, mdevfs.cli"}
    for _ in range(max(3, res.plan.spawns // 2)):
        for label, code in parts.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            res.mount_parts.setdefault(label, []).append((time.perf_counter() - start) * 1000)


def phase_state(res: Results, config: Path) -> None:
    """``--state``: what recording one create costs (the state file's flush, a
    journal line and an fsync) at 10 devices and at the plan's largest count, and a mount
    that restores that many devices, spawn to ready. The devices are made in the model,
    with the daemon's own StateFile, which a mount then restores."""
    n = max(res.plan.scale)
    topology = Topology.from_text(config.read_text(), str(config))
    host = topology.empty_host()
    topology.populate(host, devices=False)
    mtype = host.parents["mtty"].types[TYPE]
    with tempfile.TemporaryDirectory(prefix="mdevfs-bench-state-") as tmp:
        path = Path(tmp) / "state.json"
        state = StateFile.open(path, host)
        made = 0

        def create(count: int, flush_every: int) -> list[float]:
            nonlocal made
            costs = []
            for i in range(count):
                made += 1
                host.create(mtype, str(uuidlib.UUID(int=made)).encode())
                if (i + 1) % flush_every == 0:
                    start = time.perf_counter_ns()
                    state.flush()
                    costs.append((time.perf_counter_ns() - start) / 1000)
            return costs

        try:
            create(10, 10)
            res.state_write[10] = create(200, 1)
            create(n - made - 200, 1000)
            state.flush()
            res.state_write[len(host.devices) + 100] = create(200, 1)
        finally:
            state.close()
        devices = len(host.devices)
        for _ in range(2 if res.plan is QUICK else 3):
            start = time.perf_counter()
            with mounted(config, state=path, timeout=120) as m:
                ms = (time.perf_counter() - start) * 1000
                if len(os.listdir(m.root / "bus/mdev/devices")) != devices:
                    raise BenchError("the mount restored the wrong number of devices")
            res.state_restore.setdefault(devices, []).append(ms)
    log(f"state: {devices:,} devices recorded and restored")


SUITE_TESTS = 100
#: the same 100 tests twice: on the plugin's fixture, and on a tree each test makes by hand
#: in its tmp_path (what a project without mdevfs writes; no kernel behaviour at all)
SUITE_MDEVFS = """
import pytest

@pytest.mark.parametrize("i", range({n}))
def test_create_read_remove(mdevfs, i):
    uuid = mdevfs.create("mtty-1", parent="mtty")
    assert mdevfs.read(f"bus/mdev/devices/{{uuid}}/mdev_type/name") == "Single port serial\\n"
    assert mdevfs.read("class/mdev_bus/mtty/mdev_supported_types/mtty-1/available_instances") == "23\\n"
    mdevfs.remove(uuid)
"""
SUITE_TMPFS = """
import os, uuid as uuidlib
import pytest

@pytest.fixture
def tree(tmp_path):
    t = tmp_path / "mdev_supported_types/mtty-1"
    (t / "devices").mkdir(parents=True)
    (t / "name").write_text("Single port serial\\n")
    (t / "available_instances").write_text("24\\n")
    (tmp_path / "devices").mkdir()
    return tmp_path

@pytest.mark.parametrize("i", range({n}))
def test_create_read_remove(tree, i):
    uuid = str(uuidlib.uuid4())
    dev = tree / "devices" / uuid
    dev.mkdir()
    os.symlink("../../mdev_supported_types/mtty-1", dev / "mdev_type")
    (tree / "mdev_supported_types/mtty-1/available_instances").write_text("23\\n")
    assert (dev / "mdev_type/name").read_text() == "Single port serial\\n"
    assert (tree / "mdev_supported_types/mtty-1/available_instances").read_text() == "23\\n"
    (dev / "mdev_type").unlink()
    dev.rmdir()
"""


def phase_suite(res: Results) -> None:
    """A 100-test pytest suite on the mdevfs fixture (one mount, reset between
    tests) against the same suite on trees made by hand in tmp_path, each a whole pytest
    run, in turns."""
    with tempfile.TemporaryDirectory(prefix="mdevfs-bench-suite-") as tmp:
        files = {"mdevfs": Path(tmp) / "test_on_mdevfs.py", "tmpfs": Path(tmp) / "test_by_hand.py"}
        files["mdevfs"].write_text(SUITE_MDEVFS.format(n=SUITE_TESTS))
        files["tmpfs"].write_text(SUITE_TMPFS.format(n=SUITE_TESTS))
        for rep in range(2 if res.plan is QUICK else 5):
            for side in (("mdevfs", "tmpfs") if rep % 2 == 0 else ("tmpfs", "mdevfs")):
                start = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p",
                                       "no:cacheprovider", "--basetemp", f"{tmp}/base-{side}",
                                       str(files[side])], cwd=tmp, capture_output=True,
                                      text=True)
                if done.returncode != 0:
                    raise BenchError(f"the {side} suite failed:\n{done.stdout[-2000:]}")
                res.suite.setdefault(side, []).append(time.perf_counter() - start)
    log("suite: done")


def phase_reset(res: Results, config: Path) -> None:
    """The per-test reset with a handful of devices, every way that exists at run time:
    the testing handle's ``Mount.reset()`` (what the pytest fixture calls), the control
    socket's ``reset``, and, as the baseline, removing each device through sysfs."""
    with mounted(config) as m:
        ways: dict[str, Callable[[], None]] = {}
        if callable(getattr(m, "reset", None)):
            ways["Mount.reset() (the pytest fixture's)"] = m.reset  # type: ignore[attr-defined]
        control = getattr(m, "control", None)
        if control is not None and callable(getattr(control, "reset", None)):
            ways["control socket reset"] = control.reset
        ways["remove each device through sysfs"] = lambda: sysfs_reset(m)
        if len(ways) == 1:
            res.notes.append("reset: neither Mount.reset() nor a control socket exists yet; "
                             "measured the sysfs way")
        side = mdevfs_side(m.root)
        for _ in range(res.plan.resets):
            for label, way in ways.items():
                create_devices(side.attr_dir, 5)
                start = time.perf_counter()
                way()
                res.reset.setdefault(label, []).append((time.perf_counter() - start) * 1000)
                left = os.listdir(m.root / "bus/mdev/devices")
                if left:
                    raise BenchError(f"{label} left {len(left)} devices")


def sysfs_reset(m: Mount) -> None:
    for u in os.listdir(m.root / "bus/mdev/devices"):
        m.remove(u)


# --- the mdevctl workload --------------------------------------------------------------

def phase_mdevctl(res: Results, config: Path) -> None:
    """``mdevctl list`` and ``mdevctl types`` with N devices, on mdevfs and on a plain-file
    copy of the same tree on tmpfs, in turns: inside ``mdevfs run`` (``Mount.run``) where
    it exists, else in a private namespace of our own with the tree bound at /sys."""
    plan = res.plan
    if shutil.which("mdevctl") is None:
        res.skipped["mdevctl"] = "mdevctl is not installed (make install installs it)"
        return
    with mounted(config) as m, tempfile.TemporaryDirectory(prefix="mdevfs-bench-ns-") as tmp:
        create_devices(mdevfs_side(m.root).attr_dir, plan.mdevctl_devices)
        out = Path(tmp) / "workload.json"
        args = [sys.executable, "-m", "bench.workload", "--sys", str(m.root),
                "--host-ns", os.readlink("/proc/self/ns/mnt"), "--devices",
                str(plan.mdevctl_devices), "--runs", str(plan.mdevctl_runs), "--out", str(out)]
        if callable(getattr(m, "run", None)):
            done = m.run([*args, "--graft"], timeout=600)
        elif os.geteuid() == 0 and shutil.which("unshare"):
            done = subprocess.run(["unshare", "--mount", "--propagation", "private", *args],
                                  capture_output=True, text=True, timeout=600,
                                  check=False)
        else:
            res.skipped["mdevctl"] = "no mdevfs run here, and no root for unshare(1)"
            return
        if done.returncode != 0:
            raise BenchError(f"the mdevctl workload failed ({done.returncode}):\n"
                             f"{(done.stderr or '')[-3000:]}")
        data = json.loads(out.read_text())
    res.mdevctl = data["runs"]
    res.mdevctl_info = data["info"]
