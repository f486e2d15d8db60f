"""Files from other people: every tree, recording, fleet directory, state file and output path
a user hands mdevfs is hostile until checked. Each test plants one attack (as root, or as
uid 65534 where it is about another user) and checks that mdevfs reads nothing outside,
writes nothing it did not create, runs nothing it was not told to, and says what it refused.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from conftest import NOBODY, fill, needs_fuse, needs_nobody, small_disk, write_topology
from mdevfs_vendors import nvml

from mdevfs import fleet, journal, mounts, process, state
from mdevfs.beneath import Root
from mdevfs.config import Topology, TopologyError
from mdevfs.export import Entry, walk_mount, walk_tree, write_tree
from mdevfs.testing import mounted
from mdevfs.umockdev import UmockdevError, write_umockdev

pytestmark = needs_fuse
MDEVFS_BIN = str(Path(sys.executable).parent / "mdevfs")
UA = "aaaaaaaa-1111-4222-8333-444444444444"
KNOWN_DRIVERS = {"mtty", "mdpy", "mbochs", "gvt", "nvidia", "recorded", "nvidia-sriov"}


def mdevfs(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MDEVFS_BIN, *args], capture_output=True, text=True, timeout=120,
                          cwd="/", **kwargs)


def as_nobody(script: str) -> None:
    done = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", "sh", "-c", script], capture_output=True,
                          text=True, cwd="/", timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def default_tree(tmp_path_factory) -> list[Entry]:
    """What a mount of the default topology shows, with one mtty device."""
    with mounted() as m:
        m.create("mtty-1", UA)
        return walk_mount(m.root)


@pytest.fixture
def tree(tmp_path, default_tree) -> Path:
    """A writable copy of that tree, to plant things in."""
    root = tmp_path / "sys"
    write_tree(default_tree, root)
    for top, dirs, _ in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(top, d), 0o755)
    return root


def drivers_of(text: str) -> set[str]:
    doc = tomllib.loads(text)
    return {e["driver"] for kind in ("parent", "gpu") for e in doc.get(kind, [])}


# --- record: names from the tree never become TOML; nothing outside is read ----------------

def test_a_name_with_line_breaks_cannot_add_a_parent_to_a_recording(tree, tmp_path):
    """A class/mdev_bus entry and a link target holding newlines and a [[parent]] table with
    a driver that would run a command: the recording parses to the drivers record chose, and
    mounts as the host it recorded."""
    evil = 'x\n[[parent]]\ndriver = "subprocess:run"\nname = "e"\n[parent.options]\nargs = 1\n#'
    (tree / "class/mdev_bus" / evil).symlink_to(f"../../nowhere\n{evil}")
    out = tmp_path / "host.toml"
    done = mdevfs("record", "--root", str(tree), "-o", str(out))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    text = out.read_text()
    assert drivers_of(text) <= KNOWN_DRIVERS
    assert '\\n[[parent]]\\ndriver = "subprocess:run"\\n' in text  # in a comment, escaped
    assert "left out: its name or path must be a file name" in text
    with mounted(out) as m:
        assert sorted(os.listdir(m.root / "class/mdev_bus")) == \
            ["0000:00:02.0", "0000:41:00.0", "mbochs", "mdpy", "mtty"]


def test_record_reads_nothing_through_links_that_leave_the_tree(tree, tmp_path):
    """A vendor file linked to a root-only key, a vendor directory linked to /etc, and a
    type directory linked outside: none of their contents reaches the recording."""
    secret = tmp_path / "key"
    secret.write_text("PRIVATE-KEY-1234\n")
    secret.chmod(0o600)
    dev = tree / "devices/virtual/mtty/mtty" / UA
    (dev / "vendor").chmod(0o755)
    (dev / "vendor/stolen").symlink_to(secret)
    (dev / "etc").symlink_to("/etc")
    types = tree / "devices/virtual/mbochs/mbochs/mdev_supported_types"
    types.chmod(0o755)
    (types / "mbochs-huge").symlink_to(tmp_path)
    done = mdevfs("record", "--root", str(tree))
    assert done.returncode == 0, done.stderr
    assert "PRIVATE-KEY" not in done.stdout and "root:" not in done.stdout
    assert "it leads outside the root" in done.stdout


def test_a_tree_read_from_below_its_directories_never_reads_outside_the_root(tmp_path):
    """The reader keeps directories open and resolves names below them: a link that leads
    elsewhere in the tree is still followed, one that leads out is EXDEV, and a directory
    moved out of the tree after it was walked lends no path to what is beside it."""
    root, secret = tmp_path / "root", tmp_path / "secret"
    (root / "a").mkdir(parents=True)
    (root / "c").mkdir()
    (root / "c/f").write_text("inside")
    secret.write_text("PRIVATE")
    (root / "a/up").symlink_to("../c/f")
    (root / "a/out").symlink_to("../../secret")
    (root / "a/abs").symlink_to(secret)
    (root / "a/own").write_text("own")
    with Root(root) as tree:
        assert tree.read("a/own") == b"own" and tree.read("a/up") == b"inside"
        for name in ("a/out", "a/abs"):
            with pytest.raises(OSError) as refused:
                tree.read(name)
            assert refused.value.errno == errno.EXDEV
        os.rename(root / "a", tmp_path / "a")
        (tmp_path / "a/leak").symlink_to("../secret")
        with pytest.raises(OSError) as refused:
            tree.read("a/leak")
        assert refused.value.errno == errno.ENOENT


def test_a_loop_of_links_still_records_a_topology_that_mounts(tree, tmp_path):
    types = tree / "devices/virtual/mdpy/mdpy"
    os.rename(types / "mdev_supported_types", tmp_path / "moved")
    (types / "mdev_supported_types").symlink_to("loop-a")
    (types / "loop-a").symlink_to("loop-b")
    (types / "loop-b").symlink_to("mdev_supported_types")
    out = tmp_path / "host.toml"
    done = mdevfs("record", "--root", str(tree), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "a loop of links" in out.read_text()
    with mounted(out) as m:
        assert "mtty" in os.listdir(m.root / "class/mdev_bus")


def test_anonymize_leaves_no_uuid_of_the_host_anywhere(tree, tmp_path):
    """A problem line names a device's path, which holds its UUID."""
    dev = tree / "devices/virtual/mtty/mtty" / UA
    (dev / "iommu_group").unlink()
    (dev / "iommu_group").symlink_to("/etc")
    done = mdevfs("record", "--root", str(tree), "--anonymize")
    assert done.returncode == 0, done.stderr
    assert "/iommu_group: a link that cannot be followed ('/etc')" in done.stdout
    assert UA not in done.stdout and UA.upper() not in done.stdout


def test_record_is_linear_in_the_devices(tmp_path, monkeypatch):
    """400 devices: each is created a bounded number of times on the way to the file (it was
    once per device per device, 56 s at 800)."""
    from mdevfs import capture
    from mdevfs.model import Host
    from mdevfs.tree import Tree

    topology = Topology.from_text('[[parent]]\ndriver = "mbochs"\n[parent.options]\n'
                                  'count = 100000\n', "big.toml")
    host = topology.empty_host()
    tree = Tree(host)
    topology.populate(host)
    small = host.parents["mbochs"].types["mbochs-small"]
    for i in range(400):
        host.create(small, f"{i:08x}-0000-4000-8000-000000000000".encode())
    write_tree(walk_tree(tree), tmp_path / "sys")
    calls = []
    original = Host.restore
    monkeypatch.setattr(Host, "restore", lambda self, *a, **k: (calls.append(1),
                                                               original(self, *a, **k))[1])
    made = capture.record(tmp_path / "sys")
    assert (made.devices, made.recorded_devices) == (400, 400)
    assert made.text.count("[[device]]") == 400
    assert len(calls) <= 4 * 400


# --- import: a recording cannot write through its own links -------------------------------

def test_import_refuses_attributes_written_through_a_link_of_the_recording(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    (victim / "file").write_text("mine\n")
    (victim / "file").chmod(0o600)
    bad = tmp_path / "bad.umockdev"
    bad.write_text(f"P: /devices/virtual/mtty/mtty\nE: SUBSYSTEM=mtty\n"
                   f"L: out={victim}\nA: out/file=pwned\nA: out/new=planted\n\n")
    done = mdevfs("import", str(bad))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == (f"mdevfs: import: {bad}: line 4: 'out/file' passes through the "
                           f"link 'out' of line 3\n")
    assert (victim / "file").read_text() == "mine\n"
    assert oct((victim / "file").stat().st_mode & 0o777) == oct(0o600)
    assert oct(victim.stat().st_mode & 0o777) == oct(0o700)
    assert sorted(os.listdir(victim)) == ["file"]


@pytest.mark.parametrize("line", ["H: x=zz", "H: x=0", "A: =1", "Q: x", "A: ../../../../../x=1",
                                  "L: x=y\nA: x/z=1"])
def test_a_malformed_recording_is_a_message_with_its_line(tmp_path, line):
    bad = tmp_path / "bad.umockdev"
    bad.write_text(f"P: /devices/virtual/mtty/mtty\n{line}\n")
    done = mdevfs("import", str(bad))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"mdevfs: import: {bad}: line {1 + line.count(chr(10)) + 1}: ")


# --- outputs: created fresh, never through a planted link ----------------------------------

@needs_nobody
@pytest.mark.parametrize("how", ["record", "import", "export-umockdev", "matrix-svg",
                                 "fleet-matrix-json", "fleet-matrix-svg"])
def test_an_output_path_holding_a_planted_link_is_replaced_not_followed(tmp_path, how):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    os.chmod(tmp_path, 0o755)
    os.chmod(shared, 0o1777)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = shared / "out"
    out.symlink_to(victim)  # root's own link: nobody's in a sticky dir could not be replaced
    with mounted() as m:
        if how == "record":
            done = mdevfs("record", "--root", str(m.root), "-o", str(out))
        elif how == "import":
            rec = tmp_path / "h.umockdev"
            assert mdevfs("export", "--mount", str(m.root), "--umockdev", str(rec)).returncode == 0
            done = mdevfs("import", str(rec), "-o", str(out))
        elif how == "export-umockdev":
            done = mdevfs("export", "--mount", str(m.root), "--umockdev", str(out))
        elif how == "matrix-svg":
            host = Path(__file__).parent.parent / "examples/two_hosts/host_a.toml"
            done = mdevfs("matrix", str(host), "--svg", str(out))
        else:
            spec, top = write_topology(tmp_path, FLEET, "fleet.toml"), tmp_path / "fleet"
            assert mdevfs("fleet", "up", str(spec), str(top)).returncode == 0
            try:
                done = mdevfs("fleet", "matrix", str(top), f"--{how.rsplit('-', 1)[1]}", str(out))
            finally:
                assert mdevfs("fleet", "down", str(top)).returncode == 0
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "precious\n"
    assert out.is_file() and not out.is_symlink()


def test_export_reads_only_a_live_mdevfs_mount(tree, tmp_path):
    """export --mount walks what mdevfs serves; a plain tree with a FIFO and a link to a
    root-only file is refused before anything in it is opened."""
    os.mkfifo(tree / "class/mdev_bus/fifo")
    (tree / "class/mdev_bus/key").symlink_to("/etc/shadow")
    done = mdevfs("export", "--mount", str(tree), "--umockdev", str(tmp_path / "out"))
    assert (done.returncode, done.stderr) == (2, f"mdevfs: export: {tree} is not an mdevfs "
                                                 "mount\n")
    assert not (tmp_path / "out").exists()


@needs_nobody
def test_export_refuses_a_tree_directory_of_another_user(tmp_path):
    os.chmod(tmp_path, 0o755)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    done = mdevfs("export", "--tree", str(theirs))
    assert done.returncode == 2
    assert done.stderr == f"mdevfs: export: {theirs} exists and is not an empty directory of yours\n"
    assert os.listdir(theirs) == [] and theirs.stat().st_uid == NOBODY


def test_export_makes_its_tree_fresh_and_in_one_rename(tmp_path):
    dest = tmp_path / "tree"
    done = mdevfs("export", "--tree", str(dest))
    assert done.returncode == 0, done.stderr
    assert (dest / "class/mdev_bus/mtty").is_symlink()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tree.")] == []


def test_a_name_with_a_line_break_cannot_be_written_as_umockdev(tmp_path):
    entries = [Entry("devices/virtual/x/uevent", "file", 0o644, b""),
               Entry("class/x/a\nP: /devices/evil", "link", 0o777, target="../../devices/virtual/x")]
    with pytest.raises(UmockdevError):
        write_umockdev(entries, tmp_path / "out.umockdev")
    assert not (tmp_path / "out.umockdev").exists()


# --- fleets own their directory ------------------------------------------------------------

FLEET = '[[host]]\nname = "h{n}"\ncount = 2\n'


@needs_nobody
def test_fleet_up_refuses_a_directory_it_did_not_make(tmp_path):
    os.chmod(tmp_path, 0o755)
    spec = write_topology(tmp_path, FLEET, "fleet.toml")
    planted = tmp_path / "planted"
    planted.mkdir()
    os.chown(planted, NOBODY, NOBODY)
    done = mdevfs("fleet", "up", str(spec), str(planted))
    assert done.returncode == 2
    assert done.stderr == (f"mdevfs: {planted}: exists (fleet up makes its directory "
                           f"itself)\n")
    assert os.listdir(planted) == []


@needs_nobody
def test_fleet_down_of_another_users_record_signals_and_unmounts_nothing(tmp_path):
    """Nobody's directory, with a fleet.json naming a root process and a host whose root is
    a tmpfs of root's: down refuses, the process lives and the tmpfs stays."""
    os.chmod(tmp_path, 0o755)
    victim = subprocess.Popen(["sleep", "60"])
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "h1/sys").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(fake / "h1/sys")], check=True)
    try:
        record = {"hosts": {"h1": {"pid": victim.pid, "start": process.start_time(victim.pid)}}}
        (fake / "fleet.json").write_text(json.dumps(record))
        os.chown(fake / "fleet.json", NOBODY, NOBODY)
        os.chown(fake, NOBODY, NOBODY)
        done = mdevfs("fleet", "down", str(fake))
        assert done.returncode == 2, done.stderr
        assert "not a fleet's directory" in done.stderr
        assert victim.poll() is None
        assert mounts.fstype(fake / "h1/sys") == "tmpfs"
    finally:
        victim.kill()
        victim.wait()
        subprocess.run(["umount", str(fake / "h1/sys")], check=True)


def test_a_recorded_pid_of_another_program_is_never_signalled(tmp_path):
    """Even in the fleet's own record: a pid and start time of a process that is not an
    mdevfs daemon (a pid reused, an edited record) counts as gone."""
    victim = subprocess.Popen(["sleep", "60"])
    try:
        stopped = process.stop(tmp_path, process.Recorded(victim.pid, process.start_time(victim.pid)))
        assert stopped is False and victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_a_recorded_daemon_that_is_our_zombie_is_reaped_and_gone():
    """A zombie's cmdline is empty: it is still ours (its pid, start time and owner say so),
    so polling it reaps it, and it counts as gone."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    start = process.start_time(pid)
    os.close(write_end)  # the child ends, and stays a zombie until reaped
    for _ in range(1000):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.01)
    assert process.Recorded(pid, start).poll() == 0
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped already


def test_stop_unmounts_only_an_mdevfs_mount(tmp_path):
    (tmp_path / "sys").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tmp_path / "sys")], check=True)
    try:
        process.stop(tmp_path / "sys", process.Recorded(0, None))
        assert mounts.fstype(tmp_path / "sys") == "tmpfs"
    finally:
        subprocess.run(["umount", str(tmp_path / "sys")], check=True)


@pytest.mark.parametrize("launcher,need", [("zygote", 16064), ("exec", 24064)])
def test_a_fleet_that_does_not_fit_in_memory_is_refused_before_anything_starts(
        tmp_path, monkeypatch, launcher, need):
    """Each launcher's own figure: separate Pythons share nothing."""
    monkeypatch.setattr(fleet, "available_mib", lambda: 100)
    spec = write_topology(tmp_path, '[[host]]\nname = "h{n}"\ncount = 1000\n', "fleet.toml")
    with pytest.raises(fleet.UsageError) as refused:
        fleet.up(spec, tmp_path / "f", launcher=launcher)
    assert str(refused.value) == (f"a fleet of 1000 hosts needs about {need} MiB of memory; "
                                  "100 MiB is available here (MemAvailable, cgroup memory.max)")
    assert not (tmp_path / "f").exists()


def test_the_zygote_dies_with_the_process_that_started_it():
    """Its stdin held open (sh gives a background job /dev/null, which would end it on its
    own), the zygote waits for its request: only its death signal ends it."""
    shell = subprocess.Popen(["sh", "-c", f"exec 3<&0; {sys.executable} -P -m mdevfs.zygote "
                              f"<&3 3<&- & echo $!; exec sleep 60 3<&-"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    zygote = int(shell.stdout.readline())
    time.sleep(2)  # it has noted its parent (its first step), if not yet its death signal
    assert Path(f"/proc/{zygote}/stat").read_text().split()[2] != "Z", "it ended on its own"
    shell.kill()
    shell.wait()
    for _ in range(1000):
        if process.start_time(zygote) is None or \
                Path(f"/proc/{zygote}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.01)
    else:
        os.kill(zygote, signal.SIGKILL)
        pytest.fail("the zygote outlived the process that started it")
    shell.stdin.close()


# --- topologies that validate must build, and drivers must be drivers ---------------------

def test_gpus_whose_vfs_would_share_addresses_are_refused(tmp_path):
    """An L40S's 32 VFs take 0000:c1:00.4 to 0000:c1:04.3; a second GPU at 0000:c1:02.0
    lies among them."""
    text = ('[[gpu]]\ndriver = "nvidia-sriov"\naddress = "0000:c1:00.0"\n'
            '[[gpu]]\ndriver = "nvidia-sriov"\naddress = "0000:c1:02.0"\n')
    config = write_topology(tmp_path, text)
    with pytest.raises(TopologyError) as refused:
        Topology.from_toml(config).build()
    assert str(refused.value) == (f"{config}: gpu #2 (driver 'nvidia-sriov'): ValueError: PCI "
                                  f"function 0000:c1:02.0 is the address of a VF of 0000:c1:00.0")


def test_a_parent_at_the_address_of_a_vf_is_refused(tmp_path):
    text = ('[[gpu]]\ndriver = "nvidia-sriov"\naddress = "0000:c1:00.0"\n[[parent]]\ndriver = "nvidia"\n'
            'name = "0000:c1:00.5"\npath = "devices/pci0000:c0/0000:c1:00.5"\n')
    config = write_topology(tmp_path, text)
    with pytest.raises(TopologyError) as refused:
        Topology.from_toml(config).build()
    assert "parent '0000:c1:00.5' has the address of a VF of 0000:c1:00.0" in str(refused.value)


@pytest.mark.parametrize(("source", "kind", "problem"), [
    ("def Driver(options):\n    return 42\n", "parent",
     "its factory returned int, which is not an mdev parent's driver: it has no name, "
     "mdev_driver, subsystem"),
    ("def Driver(options, base_dir):\n    return object()\n", "gpu",
     "driver 'd.py' makes mdev parents ([[parent]]), not [[gpu]] entries"),
])
def test_a_factory_that_makes_no_driver_is_a_message(tmp_path, source, kind, problem):
    (tmp_path / "d.py").write_text(source)
    entry = ('[[parent]]\ndriver = "d.py"\n' if kind == "parent"
             else '[[gpu]]\ndriver = "d.py"\naddress = "0000:05:00.0"\n')
    config = write_topology(tmp_path, entry)
    done = mdevfs("mount", "--config", str(config), str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert problem in done.stderr


def test_a_parent_driver_given_as_a_gpu_is_a_message(tmp_path):
    config = write_topology(tmp_path, '[[gpu]]\ndriver = "mtty"\naddress = "0000:05:00.0"\n')
    with pytest.raises(TopologyError) as refused:
        Topology.from_toml(config).build()
    assert str(refused.value) == (f"{config}: gpu #1 (driver 'mtty'): driver 'mtty' makes mdev "
                                  f"parents ([[parent]]), not [[gpu]] entries")


# --- state files ---------------------------------------------------------------------------

def test_a_pretty_printed_state_file_is_read(tmp_path):
    saved = tmp_path / "state.json"
    saved.write_text(json.dumps({"format": "mdevfs-state", "version": 2, "devices": [
        {"uuid": UA, "parent": "mtty", "type": "mtty-1", "iommu_group": 3, "vendor": {}}]},
        indent=2))
    with mounted(state=saved) as m:
        assert m.devices() == [UA]
        assert os.readlink(m.root / f"bus/mdev/devices/{UA}/iommu_group").endswith("/3")
    assert journal.read_devices(saved)[0]["uuid"] == UA  # a journal again


def test_a_disk_too_full_for_a_snapshot_still_takes_an_append(tmp_path, monkeypatch):
    """When compaction is due and no snapshot fits, the change is appended instead of
    refused; the journal still says every device."""
    from mdevfs.state import StateFile

    monkeypatch.setattr(state, "COMPACT_AFTER", 3)
    host = Topology.default().build()
    with small_disk(tmp_path / "disk", "64k") as disk:
        saved = StateFile.open(disk / "state.json", host)
        mtype = host.parents["mtty"].types["mtty-1"]
        uuids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(8)]
        for uuid in uuids[:3]:
            host.create(mtype, uuid.encode())
            saved.flush()
        fill(disk)
        host.create(mtype, uuids[3].encode())
        saved.flush()  # compaction is due, and fails: the line is appended
        saved.close()
        assert [d["uuid"] for d in journal.read_devices(disk / "state.json")] == uuids[:4]


def test_an_ampere_vf_parent_cannot_be_plugged_back_once_its_vf_is_gone(tmp_path):
    config = write_topology(tmp_path, '[[gpu]]\ndriver = "nvidia-sriov"\naddress = "0000:41:00.0"\n'
                            '[gpu.options]\nmodel = "A100"\nvfs = 2\n')
    saved = tmp_path / "state.json"
    with mounted(config, state=saved) as m:
        vf = "0000:41:00.4"
        m.control.unplug(vf)
        m.write("bus/pci/devices/0000:41:00.0/sriov_numvfs", "0")
        with pytest.raises(OSError) as refused:
            m.control.plug(vf)
        assert refused.value.errno == errno.ENODEV
        assert not (m.root / "class/mdev_bus" / vf).exists()
    with mounted(config, state=saved) as again:  # the state file still mounts
        assert os.listdir(again.root / "class/mdev_bus") == []


# --- the sriov-manage stand-in -------------------------------------------------------------

@pytest.mark.parametrize("argument", ["../../../../tmp", "0000:c1:00.0/../x", "ALL;id"])
def test_sriov_manage_takes_only_a_pci_address(argument):
    with mounted() as m:
        done = m.run(["/usr/lib/nvidia/sriov-manage", "-e", argument])
    assert done.returncode == 2
    assert done.stderr == f"sriov-manage: {argument} is not a PCI address (DDDD:BB:SS.F)\n"


# --- the NVML library cache ----------------------------------------------------------------

def _plant(cache: Path, how: str) -> None:
    """One way for someone else to put their code where `library()` loads it from."""
    built = nvml.library()
    if how == "cache writable by others":
        os.chmod(cache / "mdevfs", 0o777)
    elif how == "cache a link":
        (cache / "mdevfs").rename(cache / "elsewhere")
        (cache / "mdevfs").symlink_to(cache / "elsewhere")
    elif how == "library of another user":
        os.chown(built / "libnvidia-ml.so.1", NOBODY, NOBODY)
    elif how == "library a link":
        (built / "libnvidia-ml.so.1").rename(cache / "planted.so")
        (built / "libnvidia-ml.so.1").symlink_to(cache / "planted.so")
    elif how == "directory writable by others":
        os.chmod(built, 0o777)


@pytest.mark.parametrize("how", ["cache writable by others", "cache a link",
                                 "library of another user", "library a link",
                                 "directory writable by others"])
def test_the_nvml_library_is_loaded_only_from_a_cache_no_one_else_can_write(
        tmp_path, monkeypatch, how):
    """Every client of a mount loads the library mdevfs built: one planted in its cache
    would run inside each of them, so a cache that is not the user's own is refused."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _plant(tmp_path, how)
    with pytest.raises(OSError, match="refusing the NVML library cache"):
        nvml.library()


def test_a_fresh_nvml_cache_is_the_users_own(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    built = nvml.library()
    assert built == nvml.library()  # built once, then reused
    for path in (tmp_path / "mdevfs", built, built / "libnvidia-ml.so.1"):
        info = path.lstat()
        assert info.st_uid == os.geteuid() and not info.st_mode & 0o022, path
    assert (tmp_path / "mdevfs").stat().st_mode & 0o777 == 0o700
