"""Where the time goes: FUSE requests per operation on mdevfs and on the floor.

mdevfs runs under :mod:`bench.counting` (its handlers wrapped with counters,
in that daemon only); the floor counts with its own per-opcode counters. Each
probe runs exactly *k* operations with the syscalls of the driver's op, from the
same directory, between two reads of the counters; so do one ``mdevctl list`` and
one ``mdevctl types`` inside ``mdevfs run``'s namespace.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .suite import (
    DEEP_PATH,
    LIST_SIZES,
    OPS,
    PARENT_LINK,
    Results,
    Side,
    create_devices,
    floor_side,
    mdevfs_side,
    uuids_in,
    write_at,
)
from .tools import BenchError, Floor, daemon


class CountingMount:
    """mdevfs under :mod:`bench.counting`: handler calls and time, on SIGUSR1."""

    def __init__(self, root: Path, proc: subprocess.Popen[bytes], stats: Path) -> None:
        self.root, self.proc, self.stats = root, proc, stats

    def counts(self) -> dict[str, list[int]]:
        with contextlib.suppress(FileNotFoundError):
            self.stats.unlink()
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.stats.exists():
                return json.loads(self.stats.read_text())
            time.sleep(0.002)
        raise BenchError("the counting daemon wrote no counters")


def probe(op: str, side: Side, k: int, entries: int,
          counts: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``k`` operations with the syscalls of the driver's op, from the same directory (exactly
    k, no warm-up), so that the request counters divide evenly; the counters before and
    after."""
    list_cwd, list_name = side.list_dir(entries)
    where = {"write": side.write_dir, "writebad": side.write_dir, "read-deep": side.root,
             "list": list_cwd, "remove": side.devices_dir}
    uuids = uuids_in(side.devices_dir)[:k] if op == "remove" else []
    if len(uuids) < k and op == "remove":
        raise BenchError(f"{side.name}: {len(uuids)} devices to remove, {k} wanted")
    dfd = os.open(where.get(op, side.attr_dir), os.O_RDONLY | os.O_DIRECTORY)
    try:
        before = counts()
        for _ in range(k):
            if op in ("read", "read-deep"):
                fd = os.open(side.read_name if op == "read" else DEEP_PATH, os.O_RDONLY,
                             dir_fd=dfd)
                os.read(fd, 4096)
                os.close(fd)
            elif op in ("write", "writebad"):
                try:
                    write_at(dfd, side.write_name,
                             (side.write_ok if op == "write" else "bogus").encode())
                except OSError as exc:
                    if op == "write" or exc.errno != errno.EINVAL:
                        raise
            elif op in ("stat", "statmiss"):
                try:
                    os.stat(side.read_name if op == "stat" else "no_such_attribute", dir_fd=dfd)
                except FileNotFoundError:
                    if op == "stat":
                        raise
            elif op == "create":
                write_at(dfd, "create", str(uuidlib.uuid4()).encode())
            elif op == "list":
                fd = os.open(list_name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dfd)
                os.listdir(fd)
                os.close(fd)
            elif op == "remove":
                write_at(dfd, f"{uuids.pop()}/remove", b"1")
            else:
                raise ValueError(op)
        time.sleep(0.01)  # let the last asynchronous RELEASE arrive
        return before, counts()
    finally:
        os.close(dfd)


def phase_requests(res: Results, config: Path, floors: dict[str, Floor]) -> None:
    """FUSE requests per operation on both sides, and mdevfs's time inside its handlers.
    As in the timed phase, ``remove`` is compared with the floor whose names are uncached."""
    plan = res.plan
    k = plan.probe_ops
    with tempfile.TemporaryDirectory(prefix="mdevfs-bench-count-") as scratch:
        stats = Path(scratch) / "counts.json"
        cmd = [sys.executable, "-m", "bench.counting", str(stats), "--config", str(config)]
        with daemon(cmd, PARENT_LINK) as (root, proc, _log):
            counting = CountingMount(root, proc, stats)
            mine = mdevfs_side(root)

            def floor_reader(floor: Floor) -> Callable[[], dict[str, Any]]:
                return lambda: {name: [n, 0] for name, n in floor.counts().items()}

            keys: list[tuple[str, int]] = [(op, 0) for op in OPS] + \
                [(f"list-{n}", n) for n in LIST_SIZES]
            for key, n in keys:
                floor = floors["C+plus/uncached" if key == "remove" else "C+plus"]
                sides = [("mdevfs", mine, counting.counts),
                         ("C+plus", floor_side(floor, "C+plus"), floor_reader(floor))]
                for name, side, reader in sides:
                    if key == "read-deep" and name != "mdevfs":
                        continue
                    if name == "mdevfs" and n:
                        set_devices(side, n)
                    ops = k if n == 0 else max(3, k // 20)
                    if key == "remove":
                        have = len(uuids_in(side.devices_dir))
                        create_devices(side.attr_dir, k if name == "mdevfs" else max(k - have, 0))
                    before, after = probe("list" if n else key, side, ops, n, reader)
                    res.requests.setdefault(key, {})[name] = summarize(before, after, ops)
            count_mdevctl(res, counting, mine)
            if proc.poll() is not None:
                raise BenchError("the counting daemon died")


def count_mdevctl(res: Results, counting: CountingMount, side: Side) -> None:
    """Requests of one ``mdevctl list`` and one ``mdevctl types`` (after a warm-up run)
    with the workload's device count, inside ``mdevfs run``'s namespace, where it exists."""
    try:
        from mdevfs import namespace

        reason = namespace.unsupported()
    except (ImportError, AttributeError):
        reason = "no mdevfs run"
    if reason or shutil.which("mdevctl") is None:
        res.notes.append(f"requests of mdevctl not counted: {reason or 'no mdevctl'}")
        return
    set_devices(side, res.plan.mdevctl_devices)
    for key, cmd in (("mdevctl-list", ["mdevctl", "list"]), ("mdevctl-types", ["mdevctl", "types"])):
        namespace.run(side.root, cmd, capture_output=True, check=True)
        before = counting.counts()
        namespace.run(side.root, cmd, capture_output=True, check=True)
        res.requests[key] = {"mdevfs": summarize(before, counting.counts(), 1)}


def set_devices(side: Side, n: int) -> None:
    """Create or remove devices (untimed) until ``n`` exist."""
    have = uuids_in(side.devices_dir)
    if len(have) < n:
        create_devices(side.attr_dir, n - len(have))
    elif len(have) > n:
        probe_removes(side, len(have) - n)


def probe_removes(side: Side, k: int) -> None:
    uuids = uuids_in(side.devices_dir)[:k]
    if len(uuids) < k:
        raise BenchError(f"{side.name}: {len(uuids)} devices to remove, {k} wanted")
    dfd = os.open(side.devices_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for u in uuids:
            write_at(dfd, f"{u}/remove", b"1")
    finally:
        os.close(dfd)


def summarize(before: dict[str, list[int]] | dict[str, Any], after: dict[str, Any],
              ops: int) -> dict[str, Any]:
    def n(d: dict[str, Any], key: str) -> int:
        v = d.get(key, [0, 0])
        return v[0] if isinstance(v, list) else int(v)

    def ns(d: dict[str, Any], key: str) -> int:
        v = d.get(key, [0, 0])
        return v[1] if isinstance(v, list) else 0

    per_op = {key: (n(after, key) - n(before, key)) / ops for key in after
              if n(after, key) - n(before, key)}
    handler_ns = sum(ns(after, key) - ns(before, key) for key in after if key != "forget")
    calls = sum(n(after, key) - n(before, key) for key in after if key != "forget")
    return {"per_op": per_op, "handler_ns": handler_ns, "calls": calls, "ops": ops}
