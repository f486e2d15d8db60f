"""Random operations, faults and restarts against a mount with a state file: nothing
acknowledged is lost, nothing refused appears, before and after every restart.

One run draws operations at random: creates (new and duplicate UUIDs, on every
type, pools running out), removes (of devices and of ones already gone), vendor
attribute writes, unbinds, unplug and plug, injected errnos on ``create`` and
``remove``, a disk that fills up and frees again (the state file lives on a 2 MiB
tmpfs), and restarts: SIGTERM, ``kill -9``, and ``kill -9`` with a torn record
appended as a crash mid-write leaves it. A shadow model holds every acknowledged
change. After each operation the mount lists exactly the shadow's devices and a
refused create changed no ``available_instances``; every few operations and at
every restart, each device's type, binding, IOMMU group and vendor value, the
state file's contents and every ``available_instances`` are compared whole.

``make test`` runs it for ``MDEVFS_FUZZ_SECONDS`` (default 15 s). The release soak:

    MDEVFS_FUZZ_SECONDS=1800 .venv/bin/python -m pytest -q -s tests/test_fuzz_state.py

with ``MDEVFS_FUZZ_SEED=N`` to replay a run (the seed is printed with the figures).
"""
from __future__ import annotations

import contextlib
import errno
import os
import random
import time
import uuid as uuidlib
from pathlib import Path

import pytest
from conftest import fill, keeper, needs_fuse, small_disk, write_topology

from mdevfs.journal import read_devices
from mdevfs.testing import mounted

pytestmark = needs_fuse
SECONDS = float(os.environ.get("MDEVFS_FUZZ_SECONDS", "15"))

TOPOLOGY = ('[[parent]]\ndriver = "mtty"\n[parent.options]\nports = 6\n'
            '[[parent]]\ndriver = "mdpy"\n'
            '[[parent]]\ndriver = "keeper.py"\nname = "k0"\npath = "devices/virtual/keeper/k0"\n')
#: errnos a create or remove may give without any fault injected
CREATE_REFUSALS = {errno.EEXIST, errno.ENOSPC, errno.EUSERS, errno.ENODEV}


class Fuzz:
    def __init__(self, rng: random.Random, config: Path, state: Path, disk: Path) -> None:
        self.rng, self.config, self.state, self.disk = rng, config, state, disk
        #: uuid -> [parent, type, bound, label]: every acknowledged change
        self.shadow: dict[str, list] = {}
        self.unplugged: set[str] = set()
        self.full = False
        self.figures = dict(operations=0, refused=0, eio=0, injected=0, restarts=0,
                            kill9=0, torn=0, checks=0, failures=0)
        self.m = None

    # --- the mount ------------------------------------------------------------------------

    def types(self) -> list[tuple[str, str]]:
        return [(p, t.name) for p in ("mtty", "mdpy", "k0") if p not in self.unplugged
                for t in sorted((self.m.root / "class/mdev_bus" / p / "mdev_supported_types")
                                .iterdir())]

    def avail(self) -> dict[str, str]:
        return {f"{p}/{t}": self.m.read(f"class/mdev_bus/{p}/mdev_supported_types/{t}/"
                                        "available_instances") for p, t in self.types()}

    def write(self, rel: str, data: str) -> int:
        """0 on success, else the errno."""
        try:
            self.m.write(rel, data)
            return 0
        except OSError as exc:
            return exc.errno

    # --- operations -----------------------------------------------------------------------

    def op_create(self) -> None:
        types = self.types()
        if not types:  # every parent unplugged
            return
        parent, type_id = self.rng.choice(types)
        uuid = (self.rng.choice(list(self.shadow)) if self.shadow and self.rng.random() < 0.1
                else str(uuidlib.UUID(int=self.rng.getrandbits(128))))
        tdir = f"class/mdev_bus/{parent}/mdev_supported_types/{type_id}"
        before = self.m.read(f"{tdir}/available_instances")
        err = self.write(f"{tdir}/create", uuid)
        if err == 0:
            label = "none" if parent == "k0" else None
            self.shadow[uuid] = [parent, type_id, True, label]
        else:
            self.refused(err, CREATE_REFUSALS)
            assert self.m.read(f"{tdir}/available_instances") == before  # nothing taken

    def op_remove(self) -> None:
        if not self.shadow:
            return
        uuid = self.rng.choice(list(self.shadow))
        err = self.write(f"bus/mdev/devices/{uuid}/remove", "1")
        if err == 0:
            del self.shadow[uuid]
        else:
            self.refused(err, set())

    def op_label(self) -> None:
        bound = [u for u, d in self.shadow.items() if d[0] == "k0" and d[2]]
        if not bound:
            return
        uuid, label = self.rng.choice(bound), self.rng.choice(["red", "green", "blue"])
        err = self.write(f"bus/mdev/devices/{uuid}/label", label)
        if err == 0:
            self.shadow[uuid][3] = label
        else:
            self.refused(err, set())

    def op_unbind(self) -> None:
        bound = [u for u, d in self.shadow.items() if d[2]]
        if not bound or self.full:  # an unbind cannot be undone: not on a full disk
            return
        uuid = self.rng.choice(bound)
        driver = os.path.basename(os.readlink(self.m.root / "bus/mdev/devices" / uuid / "driver"))
        assert self.write(f"bus/mdev/drivers/{driver}/unbind", uuid) == 0
        self.shadow[uuid][2] = False

    def op_plug(self) -> None:
        if self.full:  # an unplug cannot be undone either
            return
        if self.unplugged and self.rng.random() < 0.7:
            parent = self.unplugged.pop()
            self.m.control.plug(parent)
            return
        parent = self.rng.choice(["mtty", "mdpy", "k0"])
        if parent in self.unplugged:
            return
        self.m.control.unplug(parent)
        self.unplugged.add(parent)
        self.shadow = {u: d for u, d in self.shadow.items() if d[0] != parent}

    def op_inject(self) -> None:
        """An errno injected once into the next create or remove; nothing may change."""
        types = self.types()
        if not types:
            return
        parent, type_id = self.rng.choice(types)
        path = f"class/mdev_bus/{parent}/mdev_supported_types/{type_id}/create"
        code = self.rng.choice(["EAGAIN", "ENOMEM", "EIO", "EBUSY"])
        self.m.control.fail(path, "write", code, once=True)
        avail = path.replace("/create", "/available_instances")
        before = self.m.read(avail)
        err = self.write(path, str(uuidlib.UUID(int=self.rng.getrandbits(128))))
        assert err == getattr(errno, code), (path, err)
        assert self.m.read(avail) == before
        self.figures["injected"] += 1

    def op_disk(self) -> None:
        if self.full:
            (self.disk / "filler").unlink()
            self.full = False
            return
        fill(self.disk)
        self.full = True

    def refused(self, err: int, allowed: set[int]) -> None:
        self.figures["refused"] += 1
        if err == errno.EIO:
            assert self.full, "EIO without a full disk"
            self.figures["eio"] += 1
            return
        assert err in allowed, errno.errorcode.get(err, err)

    # --- invariants -----------------------------------------------------------------------

    def quick_check(self) -> None:
        assert self.m.devices() == sorted(self.shadow)
        self.figures["checks"] += 1

    def full_check(self) -> None:
        assert self.m.alive(), self.m.log()
        devices = self.m.root / "bus/mdev/devices"
        assert self.m.devices() == sorted(self.shadow)
        groups = []
        for uuid, (_parent, type_id, bound, label) in self.shadow.items():
            d = devices / uuid
            assert os.path.basename(os.readlink(d / "mdev_type")) == type_id
            assert (d / "driver").exists() == bound, uuid
            if bound:
                groups.append(os.readlink(d / "iommu_group"))
            if bound and label is not None:
                assert self.m.read(f"bus/mdev/devices/{uuid}/label") == label + "\n"
        assert len(groups) == len(set(groups))
        on_disk = {d["uuid"]: d for d in read_devices(self.state)}
        assert set(on_disk) == set(self.shadow)
        for uuid, (parent, type_id, bound, label) in self.shadow.items():
            rec = on_disk[uuid]
            assert (rec["parent"], rec["type"]) == (parent, type_id)
            assert (rec["iommu_group"] is not None) == bound
            if label is not None and bound:
                assert rec["vendor"]["label"] == label
        assert "unexpected error" not in self.m.log()
        self.figures["checks"] += 1

    # --- restarts ---------------------------------------------------------------------------

    def restart(self, how: str) -> None:
        avail = self.avail()
        self.full_check()
        if how == "term":
            self.m.proc.terminate()
        else:
            self.m.proc.kill()
            self.figures["kill9"] += 1
        self.m.proc.wait(timeout=10)
        self.stack.close()
        if how == "torn" and not self.full:
            with open(self.state, "a") as f:  # a crash in the middle of an append
                f.write('{"op":"add","uuid":"' + str(uuidlib.uuid4()) + '","parent":"mt')
            self.figures["torn"] += 1
        self.open()
        self.figures["restarts"] += 1
        self.unplugged.clear()  # a new daemon has every parent of the topology
        self.full_check()
        now = self.avail()  # every recorded device back in its pool, no more, no less
        assert {k: now[k] for k in avail} == avail

    def open(self) -> None:
        self.stack = contextlib.ExitStack()
        self.m = self.stack.enter_context(mounted(self.config, state=self.state))

    def run(self, seconds: float) -> None:
        ops = [(self.op_create, 30), (self.op_remove, 20), (self.op_label, 10),
               (self.op_unbind, 4), (self.op_plug, 3), (self.op_inject, 5), (self.op_disk, 3)]
        funcs, weights = zip(*ops)
        self.open()
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if self.rng.random() < 0.01:
                    self.restart(self.rng.choice(["term", "kill", "torn"]))
                    continue
                self.rng.choices(funcs, weights)[0]()
                self.figures["operations"] += 1
                self.quick_check()
                if self.figures["operations"] % 25 == 0:
                    self.full_check()
            if self.full:
                self.op_disk()
            self.restart("kill")
        except BaseException:
            self.last_log = self.m.log() if self.m is not None else ""
            raise
        finally:
            self.stack.close()


@pytest.fixture
def disk(tmp_path):
    with small_disk(tmp_path / "disk", "2m") as d:
        yield d


def test_random_operations_faults_and_restarts_lose_nothing(tmp_path, disk):
    seed = int(os.environ.get("MDEVFS_FUZZ_SEED", random.randrange(2**32)))
    (tmp_path / "keeper.py").write_text(keeper(3))
    config = write_topology(tmp_path, TOPOLOGY)
    fuzz = Fuzz(random.Random(seed), config, disk / "state.json", disk)
    started = time.monotonic()
    try:
        fuzz.run(SECONDS)
    except BaseException:
        fuzz.figures["failures"] += 1
        print(f"\nfuzz failed; replay with MDEVFS_FUZZ_SEED={seed}: {fuzz.figures}")
        print(getattr(fuzz, "last_log", "")[-3000:])
        raise
    f = fuzz.figures
    print(f"\nstate fuzz (seed {seed}, {time.monotonic() - started:.1f} s): "
          f"{f['operations']} operations ({f['refused']} refused, {f['eio']} EIO on a full "
          f"disk, {f['injected']} injected errnos), {f['restarts']} restarts ({f['kill9']} "
          f"kill -9, {f['torn']} torn records), {f['checks']} invariant checks, "
          f"failures: {f['failures']}")
