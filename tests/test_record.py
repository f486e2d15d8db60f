"""Hosts captured and replayed. `mdevfs record` of a mount (and of the real 6.1
kernel's tree, rebuilt from the golden dump) mounts again and reads back the same; a broken
tree is reported, never a traceback; `mdevfs import` of a umockdev-record file; `mdevfs
export` as a plain tree and as a .umockdev file that umockdev-run replays to mdevctl."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import needs_fuse

from mdevfs.export import walk_mount, write_tree
from mdevfs.testing import mounted

pytestmark = needs_fuse
pytest_plugins = ["pytester"]

MDEVFS = [sys.executable, "-m", "mdevfs"]
CONFORMANCE = Path(__file__).parent / "conformance"
GOLDEN_61 = CONFORMANCE / "golden/kernel-6.1.0-57-amd64.txt"
GOLDEN_510 = CONFORMANCE / "golden/kernel-5.10.0-46-amd64.txt"
UA, UB = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"


def mdevfs(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MDEVFS, *args], capture_output=True, text=True, timeout=120,
                          **kwargs)


#: files whose value is a clock (a PCI function's runtime-PM times, in ms since it appeared)
CLOCKS = ("/power/runtime_active_time", "/power/runtime_suspended_time")


def lines(root: Path) -> list[str]:
    return [e.line().rsplit("|", 1)[0] if e.path.endswith(CLOCKS) else e.line()
            for e in walk_mount(root)]


def populate(m) -> None:
    """A device on every parent of the default topology; the last one unbound."""
    m.create("mtty-2", UA)
    m.create("mdpy-xga")
    m.create("mbochs-medium")
    m.create("i915-GVTg_V5_4")
    uuid = m.create("nvidia-64")
    m.write(f"bus/mdev/devices/{uuid}/nvidia/vgpu_params", "frame_rate_limiter=0")
    m.create("mtty-1", UB)
    m.write(f"bus/mdev/devices/{UB}/driver/unbind", UB)


def test_a_recorded_mount_of_every_default_parent_mounts_identically(tmp_path):
    host = tmp_path / "host.toml"
    with mounted() as m:
        populate(m)
        started = time.monotonic()
        done = mdevfs("record", "--root", str(m.root), "-o", str(host))
        took = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        before = lines(m.root)
    text = host.read_text()
    for driver in ("mtty", "mdpy", "mbochs", "gvt", "nvidia"):
        assert f'driver = "{driver}"\n' in text
    assert 'driver = "recorded"' not in text and "Not reproduced" not in text, text
    assert "[[gpu]]" in text and 'model = "L40S"' in text
    assert done.stderr == ("mdevfs: recorded 5 parent(s) (mbochs, mdpy, mtty, 0000:00:02.0, "
                           f"0000:41:00.0), 6 device(s), 1 [[gpu]] device(s); wrote {host}\n")
    with mounted(host) as replay:
        after = lines(replay.root)
        assert replay.read(f"bus/mdev/devices/{UA}/vendor/sample_mdev_dev") == f"This is MDEV {UA}\n"
        replay.remove(UA)  # a replay is live: kernel behaviour, not a copy
        assert replay.read("class/mdev_bus/mtty/mdev_supported_types/mtty-1/available_instances") == "24\n"
    assert len(before) > 600
    assert [x for x in before if x not in after] == [] and [x for x in after if x not in before] == []
    print(f"\nrecord of the default topology with 6 devices: {took:.2f} s, {len(before)} paths, "
          f"0 differences")


def test_a_parent_no_driver_reproduces_is_replayed_by_the_recorded_driver(tmp_path):
    """Counts that no mtty can show (5 and 3 ports: not one pool of ports) fall back to the
    recorded driver, which replays them and counts creates as inferred."""
    tree = tmp_path / "tree"
    with mounted() as m:
        m.create("mtty-1", UA)
        write_tree(walk_mount(m.root), tree)  # a static copy, as root may write it
    types = tree / "devices/virtual/mtty/mtty/mdev_supported_types"
    (types / "mtty-1/available_instances").write_text("5\n")
    (types / "mtty-2/available_instances").write_text("3\n")
    (types / "mtty-2/extra_info").write_text("vendor text\n")
    done = mdevfs("record", "--root", str(tree), "-o", str(tmp_path / "h.toml"))
    text = (tmp_path / "h.toml").read_text()
    assert done.returncode == 0 and 'driver = "recorded"' in text, done.stderr
    assert "the mtty driver does not reproduce it: mtty-2/available_instances would be 2" in text
    assert "Counts per type inferred" in text
    with mounted(tmp_path / "h.toml") as r:
        t2 = "class/mdev_bus/mtty/mdev_supported_types/mtty-2/"
        assert r.read(t2 + "name") == "Dual port serial\n"
        assert r.read(t2 + "extra_info") == "vendor text\n"
        assert not (r.root / t2 / "description").exists()
        uuids = [r.create("mtty-2") for _ in range(3)]
        with pytest.raises(OSError) as exc:
            r.create("mtty-2")
        assert exc.value.errno == 28  # ENOSPC
        assert r.read(t2 + "available_instances") == "0\n"
        assert not (r.root / f"bus/mdev/devices/{uuids[0]}/vendor").exists()  # none recorded
        made = r.create("mtty-1")  # from the template of the recorded mtty-1 device
        assert r.read(f"bus/mdev/devices/{made}/vendor/sample_mdev_dev") == f"This is MDEV {made}\n"
        assert r.read(f"bus/mdev/devices/{UA}/vendor/sample_mdev_dev") == f"This is MDEV {UA}\n"


def test_types_whose_counts_move_together_are_replayed_as_one_pool(tmp_path):
    """An mbochs whose description no mbochs driver shows: the recorded driver, with the pool
    inferred from one device (63/15/3 free: costs 1, 4 and 16 of 64), counts as mbochs does."""
    tree = tmp_path / "tree"
    with mounted() as m:
        m.create("mbochs-small", UA)
        write_tree(walk_mount(m.root), tree)
    types = tree / "devices/virtual/mbochs/mbochs/mdev_supported_types"
    (types / "mbochs-large/description").write_text("a vendor's own words\n")
    done = mdevfs("record", "--root", str(tree), "-o", str(tmp_path / "h.toml"))
    text = (tmp_path / "h.toml").read_text()
    assert done.returncode == 0 and 'driver = "recorded"' in text, done.stderr
    assert ("#     Pool inferred: the types' available_instances fit one pool of 64 units (63 free "
            "+ the bound devices' costs), each type taking mbochs-large 16, mbochs-medium 4, "
            "mbochs-small 1.\n") in text
    with mounted(tmp_path / "h.toml") as r:
        r.create("mbochs-large")
        counts = [r.read(f"class/mdev_bus/mbochs/mdev_supported_types/mbochs-{t}/available_instances")
                  for t in ("small", "medium", "large")]
        assert counts == ["47\n", "11\n", "2\n"]  # as mbochs: 256 - 4 - 64 MB left
        r.remove(UA)
        assert r.read("class/mdev_bus/mbochs/mdev_supported_types/mbochs-small/available_instances") == "48\n"


def test_a_state_file_records_the_topologys_devices_once(tmp_path):
    """With --state, [[device]] entries go into a new state file; after that the file says
    which devices exist, so that one removed stays removed across mounts."""
    host = tmp_path / "h.toml"
    host.write_text(f'[[parent]]\ndriver = "mtty"\n[[device]]\nuuid = "{UA}"\nparent = "mtty"\n'
                    f'type = "mtty-2"\niommu_group = 7\n')
    state = tmp_path / "state"
    with mounted(host, state=state) as m:
        assert m.devices() == [UA] and os.readlink(m.root / f"bus/mdev/devices/{UA}/iommu_group") \
            .endswith("/7")
        m.remove(UA)
    with mounted(host, state=state) as m:
        assert m.devices() == []
        m.create("mtty-1", UB)
    with mounted(host, state=state) as m:
        assert m.devices() == [UB]


# --- the real 6.1 kernel, from its golden dump's tree lines ---------------------------------

def golden_tree(state: str, dest: Path, golden: Path = GOLDEN_61) -> list[str]:
    """The tree of ``state`` as the kernel showed it (plain files, links, modes), and its
    T lines. A file whose read failed is an empty file; a hashed one is empty too."""
    walked = [line for line in golden.read_text().splitlines()
              if line.startswith(f"T|{state}|")]
    for line in walked:
        if line.split("|")[3].startswith("!"):
            continue  # a walked root the kernel does not have
        _, _, path, kind, mode, _size, _nlink, _owner, target, content = line.split("|", 9)
        where = dest / path
        where.parent.mkdir(parents=True, exist_ok=True)
        if kind == "dir":
            where.mkdir(exist_ok=True)
        elif kind == "link":
            where.symlink_to(target)
        else:
            text = content[1:] if content.startswith("=") and not content.startswith("=#len") else ""
            raw = re.sub(r"\\(n|t|\\|x7c)", lambda m: {"n": "\n", "t": "\t", "\\": "\\",
                                                        "x7c": "|"}[m[1]], text)
            where.write_text(raw)
            where.chmod(int(mode, 8))
    return walked


def probe_walk(root: Path, state: str, mdevop: Path) -> list[str]:
    """Probe.sh's walk_all for one state, against ``root``."""
    def op(*args: str) -> str:
        return subprocess.run([str(mdevop), *args], capture_output=True, text=True,
                              env={**os.environ, "SYSROOT": str(root)}, check=True).stdout

    out = op("walk", state, "class/mdev_bus")
    for parent in op("ls", "class/mdev_bus").removeprefix("OK").split():
        path = op("realpath", f"class/mdev_bus/{parent}").strip()
        out += op("walk", state, path.rsplit("/", 1)[0])
        out += op("walk", state, op("realpath", f"{path}/subsystem").strip())
    out += op("walk", state, "bus/mdev", "kernel/iommu_groups", "class/vfio-dev", "class/vfio")
    return out.splitlines()


@pytest.fixture(scope="module")
def mdevop(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is missing: make install installs it")
    built = tmp_path_factory.mktemp("mdevop") / "mdevop"
    subprocess.run(["gcc", "-O2", "-o", str(built), str(CONFORMANCE / "mdevop.c")], check=True)
    return built


@pytest.mark.parametrize(("golden", "state", "era"), [
    (GOLDEN_61, "s0-empty", None), (GOLDEN_61, "s1-populated", "7.3"),
    (GOLDEN_61, "s9-final", None), (GOLDEN_510, "s1-populated", "5.10")],
    ids=["6.1-s0-empty", "6.1-s1-populated", "6.1-s9-final", "5.10-s1-populated"])
def test_the_real_kernels_tree_recorded_mounts_and_reads_back_as_the_kernel(
        tmp_path, mdevop, golden, state, era):
    """Every path the conformance probe walks in that state: type, mode, size, link count,
    owner, link target and contents or errno, as the kernel answered; the era read from the
    tree (a 5.10 host's devices are bound to vfio_mdev and have no vfio-dev; a 6.1 host's
    could be any kernel since: the newest is replayed)."""
    kernel = golden_tree(state, tmp_path / "sys", golden)
    done = mdevfs("record", "--root", str(tmp_path / "sys"), "-o", str(tmp_path / "k.toml"))
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "k.toml").read_text()
    assert 'driver = "recorded"' not in text and "Not reproduced" not in text, text
    assert (f'kernel = "{era}"\n' in text) if era else "\nkernel = " not in text, text
    with mounted(tmp_path / "k.toml") as m:
        replayed = probe_walk(m.root, state, mdevop)
    assert len(kernel) > 130
    assert [x for x in kernel if x not in replayed] == []
    assert [x for x in replayed if x not in kernel] == []


# --- broken trees: a report, never a traceback ----------------------------------------------

def test_record_of_a_broken_tree_reports_what_it_could_not_read(tmp_path):
    with mounted() as m:
        write_tree(walk_mount(m.root), tmp_path / "sys")
    t = tmp_path / "sys/devices/virtual/mtty/mtty/mdev_supported_types/mtty-1"
    t.chmod(0o755)
    (t / "name").unlink()
    (t / "name").mkdir()                                     # unreadable: EISDIR
    (t / "available_instances").unlink()                     # missing
    (t / "device_api").unlink()
    os.mkfifo(t / "device_api")                              # would block a plain open
    bus = tmp_path / "sys/class/mdev_bus"
    bus.chmod(0o755)
    (bus / "mdpy").unlink()
    (bus / "mdpy").symlink_to("/etc")                        # leaves the root
    done = mdevfs("record", "--root", str(tmp_path / "sys"), "-o", str(tmp_path / "h.toml"))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "4 read problem(s), listed in the file" in done.stderr
    text = (tmp_path / "h.toml").read_text()
    rel = "devices/virtual/mtty/mtty/mdev_supported_types/mtty-1"
    assert f"#   {rel}/name: cannot read: EISDIR (Is a directory)\n" in text
    assert f"#   {rel}/available_instances: cannot read: ENOENT (No such file or directory)\n" in text
    assert f"#   {rel}/device_api: cannot read: EINVAL (not a regular file)\n" in text
    assert ("#   class/mdev_bus/mdpy: a link that cannot be followed ('/etc'): it leads outside "
            "the root\n") in text
    with mounted(tmp_path / "h.toml") as r:  # what was readable still mounts
        assert sorted(os.listdir(r.root / "class/mdev_bus")) == \
            ["0000:00:02.0", "0000:41:00.0", "mbochs", "mtty"]


def test_record_of_a_root_without_mdev_says_so(tmp_path):
    done = mdevfs("record", "--root", str(tmp_path))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"mdevfs: record: no mdev parent and no SR-IOV PCI function under "
                           f"{tmp_path} (class/mdev_bus: missing (no mdev parent, or not a "
                           f"sysfs root))\n")


def test_anonymize_replaces_every_uuid(tmp_path):
    with mounted() as m:
        populate(m)
        done = mdevfs("record", "--anonymize", "--root", str(m.root), "-o", str(tmp_path / "a.toml"))
        assert done.returncode == 0, done.stderr
        real = m.devices()
    text = (tmp_path / "a.toml").read_text()
    assert not any(u in text for u in real)
    with mounted(tmp_path / "a.toml") as r:
        fake = r.devices()
        assert len(fake) == 6 and "00000001-0000-4000-8000-000000000001" in fake
        mtty = next(u for u in fake if (r.root / "bus/mdev/devices" / u / "vendor").exists()
                    and "mtty" in os.readlink(r.root / "bus/mdev/devices" / u))
        assert r.read(f"bus/mdev/devices/{mtty}/vendor/sample_mdev_dev") == f"This is MDEV {mtty}\n"


# --- umockdev ---------------------------------------------------------------------------------

needs_umockdev = pytest.mark.skipif(shutil.which("umockdev-run") is None,
                                    reason="umockdev is missing (Debian: apt-get install umockdev)")


@needs_umockdev
def test_umockdev_run_over_an_export_shows_what_mdevctl_shows_live(tmp_path):
    with mounted() as m:
        m.create("mtty-2", UA)
        m.create("mdpy-hd", UB)
        live = {cmd: m.run(["mdevctl", cmd]) for cmd in ("list", "types")}
        started = time.monotonic()
        done = mdevfs("export", "--mount", str(m.root), "--umockdev", str(tmp_path / "h.umockdev"),
                      "--tree", str(tmp_path / "tree"))
        took = time.monotonic() - started
        assert done.returncode == 0, done.stderr
    for cmd, shown in live.items():
        assert shown.returncode == 0 and UA in live["list"].stdout
        replayed = subprocess.run(["umockdev-run", "-d", str(tmp_path / "h.umockdev"), "--",
                                   "mdevctl", cmd], capture_output=True, text=True, timeout=60)
        assert (replayed.returncode, replayed.stdout) == (0, shown.stdout), replayed.stderr
    print(f"\nexport of a mount (tree and .umockdev): {took:.2f} s")


@needs_umockdev
def test_a_umockdev_recording_of_an_mdev_host_imports(tmp_path):
    """Umockdev-record keeps no mdev_supported_types/: the types come from the devices'
    mdev_type links, and the file says what is unknown."""
    record = (f"echo {UA} > /sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2/create && "
              f"umockdev-record /sys/devices/virtual/mtty/mtty /sys/bus/mdev/devices/{UA}")
    with mounted() as m:
        captured = m.run(["sh", "-c", record])
    assert captured.returncode == 0, captured.stderr
    (tmp_path / "host.umockdev").write_text(captured.stdout)
    done = mdevfs("import", str(tmp_path / "host.umockdev"), "-o", str(tmp_path / "h.toml"))
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "h.toml").read_text()
    assert "umockdev-record does not keep mdev_supported_types/" in text
    with mounted(tmp_path / "h.toml") as r:
        assert r.devices() == [UA]
        assert r.read(f"bus/mdev/devices/{UA}/vendor/sample_mdev_dev") == f"This is MDEV {UA}\n"
        assert os.readlink(r.root / f"bus/mdev/devices/{UA}/mdev_type") == \
            "../mdev_supported_types/mtty-2"
        assert r.read("class/mdev_bus/mtty/mdev_supported_types/mtty-2/name") == "2\n"


def test_import_of_a_malformed_file_names_the_line(tmp_path):
    bad = tmp_path / "bad.umockdev"
    bad.write_text("P: /devices/virtual/mtty/mtty\nA: ../../../../../etc/x=1\n")
    done = mdevfs("import", str(bad))
    assert done.returncode == 2
    assert done.stderr == f"mdevfs: import: {bad}: line 2: '../../../../../etc/x' leaves the sysfs root\n"


# --- the pytest plugin on a static tree ------------------------------------------------------

def test_a_readonly_test_runs_on_an_exported_tree_where_fuse_is_unavailable(pytester):
    pytester.makeconftest('''
        import mdevfs.testing
        mdevfs.testing.FUSE_DEVICE = "/nonexistent/fuse"   # as in a container without it
    ''')
    pytester.makepyfile('''
        import os, pytest

        @pytest.mark.mdevfs_readonly
        def test_reads(mdevfs):
            assert mdevfs.read("class/mdev_bus/mtty/mdev_supported_types/mtty-1/name") == \\
                "Single port serial\\n"
            assert os.readlink(mdevfs.root / "class/mdev_bus/mtty") == \\
                "../../devices/virtual/mtty/mtty"
            assert mdevfs.devices() == []

        @pytest.mark.mdevfs_readonly
        def test_writes(mdevfs):
            mdevfs.create("mtty-1")

        def test_unmarked(mdevfs):
            pass
    ''')
    result = pytester.runpytest_subprocess("-rs", "-p", "pytester")
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*mdevfs: create needs a mount; this test is marked "
                                 "mdevfs_readonly and runs on a static tree here*",
                                 "*SKIPPED*mdevfs: /nonexistent/fuse is missing*"])


def test_devices_made_before_vfs_keep_their_groups_in_the_replay(tmp_path):
    """Devices made, then VFs enabled, then another device: every device comes back with its
    IOMMU group (the VFs, made after boot, take the lowest groups the devices leave), and the
    summary counts what the file kept."""
    host = tmp_path / "host.toml"
    with mounted() as m:
        for type_id in ("mtty-1", "mdpy-vga", "mbochs-small"):
            m.create(type_id)
        m.write("bus/pci/devices/0000:c1:00.0/sriov_numvfs", "2")
        m.create("mtty-2")
        groups = {u: os.readlink(m.root / f"bus/mdev/devices/{u}/iommu_group")
                  for u in m.devices()}
        done = mdevfs("record", "--root", str(m.root), "-o", str(host))
    assert done.returncode == 0 and ", 4 device(s), 1 [[gpu]]" in done.stderr, done.stderr
    assert "left out" not in host.read_text()
    with mounted(host) as replay:
        assert {u: os.readlink(replay.root / f"bus/mdev/devices/{u}/iommu_group")
                for u in replay.devices()} == groups
        assert replay.read("bus/pci/devices/0000:c1:00.0/sriov_numvfs") == "2\n"
