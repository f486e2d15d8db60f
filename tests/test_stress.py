"""Concurrency : many processes racing on a small pool, through a real mount.

A fixed number of rounds (no clock decides what is tested) of: 8 processes create fresh devices at once on an
mtty pool of 12 ports (exactly 12 succeed, the rest get the driver's ENOSPC);
all 8 create one UUID (1 success, 7 EEXIST, ABI §2.2 row 4); all 8 write
``remove`` of that device through handles opened before any write (1 success,
7 ENODEV: requests are serialised, so the losers find the node removed, spec
§2.1/§2.3); then they remove the rest. Meanwhile 2 reader processes check that
available_instances is never negative nor more than the devices present allow,
and that no bus link exists without its device's ``mdev_type`` link.
"""
from __future__ import annotations

import errno
import multiprocessing
import os
import time
import uuid as uuidlib
from pathlib import Path

import pytest
from conftest import needs_fuse, write_topology

from mdevfs.testing import mounted

pytestmark = needs_fuse

WRITERS, READERS, PORTS, PER_WRITER = 8, 2, 12, 4
ROUNDS = 100
TYPE = "class/mdev_bus/mtty/mdev_supported_types/mtty-1"
TIMEOUT = 30


def write(path: Path, data: str) -> str:
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return write_fd(fd, data)


def write_fd(fd: int, data: str) -> str:
    try:
        os.write(fd, data.encode())
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]
    finally:
        os.close(fd)


def writer(root: Path, orders, results, barrier) -> None:
    """Carry out orders: ("create", uuids) or ("remove", uuids) after the barrier;
    ("remove-held", uuid) opens the remove file before the barrier, writes after it."""
    while (order := orders.get()) is not None:
        kind, arg = order
        if kind == "remove-held":
            fd = os.open(root / "bus/mdev/devices" / arg / "remove", os.O_WRONLY)
            barrier.wait(TIMEOUT)
            results.put([(arg, write_fd(fd, "1"))])
            continue
        barrier.wait(TIMEOUT)
        if kind == "create":
            results.put([(u, write(root / TYPE / "create", u)) for u in arg])
        else:
            results.put([(u, write(root / "bus/mdev/devices" / u / "remove", "1")) for u in arg])


def reader(root: Path, stop, results) -> None:
    """Check the invariants until told to stop (at least once); report (checks,
    violations)."""
    devices = root / "bus/mdev/devices"
    checks, violations = 0, []
    while not checks or not stop.is_set():
        before = set(os.listdir(devices))
        avail = int((root / TYPE / "available_instances").read_text())
        after = set(os.listdir(devices))
        # a UUID seen in both listings existed throughout (UUIDs are never reused)
        if not 0 <= avail <= PORTS - len(before & after):
            violations.append(f"available_instances {avail} with {len(before & after)} devices")
        for u in after:
            try:
                target = os.readlink(devices / u / "mdev_type")
            except FileNotFoundError:
                if os.path.lexists(devices / u):
                    violations.append(f"{u}: bus link without mdev_type link")
                continue
            if target != "../mdev_supported_types/mtty-1":
                violations.append(f"{u}: mdev_type -> {target}")
        checks += 1
    results.put((checks, violations))


def quiet_state(root: Path, expect: set[str]) -> None:
    """With no writer running: exactly these devices, an exact count, one group each."""
    devices = root / "bus/mdev/devices"
    assert set(os.listdir(devices)) == expect
    assert (root / TYPE / "available_instances").read_text() == f"{PORTS - len(expect)}\n"
    groups = {os.readlink(devices / u / "iommu_group") for u in expect}
    assert len(groups) == len(expect)
    assert len(os.listdir(root / "kernel/iommu_groups")) == len(expect)


def test_racing_creates_and_removes_keep_every_invariant(tmp_path):
    """ABI §2.2 and §2.3, with the figures printed (pytest -s)."""
    config = write_topology(tmp_path, f'[[parent]]\ndriver = "mtty"\n'
                            f'[parent.options]\nports = {PORTS}\n')
    ctx = multiprocessing.get_context("fork")
    with mounted(config) as m:
        barrier = ctx.Barrier(WRITERS)
        results, reports, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        orders = [ctx.Queue() for _ in range(WRITERS)]
        procs = [ctx.Process(target=writer, args=(m.root, q, results, barrier)) for q in orders]
        procs += [ctx.Process(target=reader, args=(m.root, stop, reports))
                  for _ in range(READERS)]
        for p in procs:
            p.start()

        def phase(kind: str, args: list) -> dict[str, list[str]]:
            for q, arg in zip(orders, args):
                q.put((kind, arg))
            outcome: dict[str, list[str]] = {}
            for _ in range(WRITERS):
                for u, res in results.get(timeout=TIMEOUT):
                    outcome.setdefault(res, []).append(u)
            return outcome

        rounds = writes = 0
        started = time.monotonic()
        try:
            while rounds < ROUNDS:
                fresh = [[str(uuidlib.uuid4()) for _ in range(PER_WRITER)]
                         for _ in range(WRITERS)]
                made = phase("create", fresh)
                assert sorted(made) == ["ENOSPC", "ok"] and len(made["ok"]) == PORTS
                quiet_state(m.root, set(made["ok"]))

                victim = made["ok"][0]
                same = phase("create", [[victim]] * WRITERS)  # one UUID, 8 at once
                assert same == {"EEXIST": [victim] * WRITERS}
                raced = phase("remove-held", [victim] * WRITERS)
                assert raced == {"ok": [victim], "ENODEV": [victim] * (WRITERS - 1)}

                rest = made["ok"][1:]
                gone = phase("remove", [rest[i::WRITERS] for i in range(WRITERS)])
                assert gone == {"ok": gone["ok"]} and sorted(gone["ok"]) == sorted(rest)
                quiet_state(m.root, set())
                rounds += 1
                writes += WRITERS * PER_WRITER + 2 * WRITERS + len(rest)
        finally:
            stop.set()
            for q in orders:
                q.put(None)
            reported = [reports.get(timeout=TIMEOUT) for _ in range(READERS)]
            for p in procs:
                p.join(TIMEOUT)
                if p.is_alive():
                    p.kill()
        took = time.monotonic() - started
        checks = sum(c for c, _ in reported)
        violations = [v for _, vs in reported for v in vs]
        print(f"\nstress: {WRITERS} writer + {READERS} reader processes, {took:.1f} s, "
              f"{rounds} rounds, {writes} create/remove writes, {checks} reader checks, "
              f"{len(violations)} invariant violations")
        assert violations == []
        assert rounds == ROUNDS and checks > 0
        assert m.alive(), m.log()


@pytest.fixture(autouse=True)
def _no_leftover_processes():
    yield
    assert multiprocessing.active_children() == []
