""""Nothing lost, nobody let in": each attack of the issue, re-run through the
real CLI and mount (as nobody where it is about privilege), gets the safe behaviour.

Items 14 and 15 (listings, mmap, chmod, EPERM) are checked with the ABI tests.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MTTY_ONLY, NOBODY, fill, needs_fuse, needs_nobody, small_disk, write_topology

from mdevfs import namespace
from mdevfs.journal import read_devices
from mdevfs.mounts import mountpoints
from mdevfs.runtime import default_control, default_log, runtime_dir
from mdevfs.testing import mounted

pytestmark = needs_fuse
#: the installed entry point: unlike `python -m mdevfs`, it does not import from the cwd
MDEVFS_BIN = str(Path(sys.executable).parent / "mdevfs")
U1 = "11111111-2222-3333-4444-555555555555"
U2 = "22222222-3333-4444-5555-666666666666"
MTTY1 = "class/mdev_bus/mtty/mdev_supported_types/mtty-1"


def cli(*args: str, cwd: Path | str = "/", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([MDEVFS_BIN, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def as_nobody_sh(script: str, cwd: Path | str = "/") -> None:
    """Run a shell ``script`` as uid/gid 65534 (planting links and FIFOs)."""
    done = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", "sh", "-c", script], capture_output=True,
                          text=True, cwd=cwd, timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def shared(tmp_path):
    """A world-writable sticky directory, like /tmp, where nobody may plant names."""
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(d, 0o1777)
    return d


@pytest.fixture
def root(tmp_path):
    """An empty mountpoint, unmounted in teardown whatever a test left there."""
    r = tmp_path / "sys"
    r.mkdir()
    yield r
    for _ in range(3):
        if str(r) in mountpoints():
            subprocess.run(["fusermount3", "-u", "-z", str(r)], capture_output=True)


# --- the current directory is never imported ---------------------------------------

PLANTED = "import pathlib; pathlib.Path({marker!r}).write_text('ran'); raise SystemExit(99)\n"


@pytest.fixture
def planted(tmp_path):
    """A directory holding an `attrs.py` and a `mdevfs/` package that leave a marker."""
    d = tmp_path / "clone"
    (d / "mdevfs").mkdir(parents=True)
    marker = tmp_path / "marker"
    for f in (d / "attrs.py", d / "mdevfs/__init__.py", d / "mdevfs/__main__.py"):
        f.write_text(PLANTED.format(marker=str(marker)))
    return d, marker


def test_mount_from_a_directory_with_a_planted_attrs_and_mdevfs_imports_neither(planted, root):
    """`mdevfs mount` (the daemon is `python -P -m
    mdevfs` in /) from a directory holding attrs.py and a mdevfs/ folder."""
    clone, marker = planted
    out = cli("mount", str(root), cwd=clone)
    try:
        assert out.returncode == 0, out.stderr
        assert (root / MTTY1 / "name").read_text() == "Single port serial\n"
    finally:
        cli("umount", str(root))
    assert not marker.exists()


def test_mounted_and_run_from_a_planted_directory_import_nothing_of_it(planted, monkeypatch):
    """The test helper `mounted()` and `mdevfs run` (whose namespace
    helper runs isolated, -I) in such a directory."""
    clone, marker = planted
    monkeypatch.chdir(clone)
    with mounted() as m:
        assert m.devices() == []
    if namespace.unsupported() is None:
        out = cli("run", "--", "true", cwd=clone)
        assert out.returncode == 0, out.stderr
    assert not marker.exists()


# --- files of root in shared directories ----------------------------------

def test_default_log_and_socket_are_in_the_private_runtime_directory(root):
    """Not /tmp/mdevfs-<pid>.log, not .DIR.mdevfs-ctl beside DIR
    (anyone may plant or squat those names), but a 0700 directory of the user's."""
    out = cli("mount", str(root))
    try:
        assert out.returncode == 0, out.stderr
        log, ctl = default_log(root), default_control(root)
        assert f"log {log}, control {ctl})" in out.stdout
        assert log.parent == ctl.parent == runtime_dir()
        st = os.lstat(runtime_dir())
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o700)
        assert stat.S_IMODE(os.lstat(log).st_mode) == 0o600
        assert cli("ctl", str(root), "status").returncode == 0
    finally:
        cli("umount", str(root))


@needs_nobody
def test_a_squatted_socket_name_beside_the_mount_blocks_nothing(tmp_path, shared):
    """Nobody squats `.sys.mdevfs-ctl` beside the mountpoint in a shared
    directory; the mount still works (its socket is elsewhere) and nobody cannot reach
    the runtime directory."""
    mnt = shared / "sys"
    mnt.mkdir()
    as_nobody_sh("touch .sys.mdevfs-ctl && mkfifo .sys.mdevfs-ctl.fifo", cwd=shared)
    try:
        out = cli("mount", str(mnt))
        assert out.returncode == 0, out.stderr
        assert cli("ctl", str(mnt), "status").returncode == 0
        with pytest.raises(subprocess.CalledProcessError):
            subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                            "--clear-groups", "ls", str(runtime_dir())], check=True,
                           capture_output=True)
    finally:
        cli("umount", str(mnt))


@needs_nobody
def test_a_planted_log_link_or_fifo_is_refused_not_followed(tmp_path, shared, root):
    """A --log-file in a shared directory that nobody made a
    symlink to a root-only file, or a FIFO: refused at once, the target untouched."""
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    as_nobody_sh(f"ln -s {secret} link.log && mkfifo fifo.log", cwd=shared)
    for name, why in (("link.log", "it is a symbolic link; give the file itself"),
                      ("fifo.log", "it is a FIFO without a reader")):
        out = cli("mount", "--log-file", str(shared / name), str(root), timeout=20)
        assert (out.returncode, out.stderr) == (2, f"mdevfs: log file {shared / name}: {why}\n")
    assert secret.read_text() == "root only\n"
    assert not os.path.ismount(root)


@needs_nobody
def test_a_planted_state_temporary_is_never_followed(tmp_path, shared, root):
    """Nobody plants the state file's temporary as a link to a root-only
    file; root's rewrite (here of a version 1 file) neither writes through it nor makes
    the state file nobody's link."""
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    state = shared / "state.json"
    state.write_text(json.dumps({"format": "mdevfs-state", "version": 1, "devices": []}))
    as_nobody_sh(f"ln -s {secret} .state.json.mdevfs-tmp", cwd=shared)
    out = cli("mount", "--state", str(state), str(root))
    try:
        assert out.returncode == 0, out.stderr
        (root / MTTY1 / "create").write_text(U1)
    finally:
        cli("umount", str(root))
    assert secret.read_text() == "root only\n"
    st = os.lstat(state)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == 0
    assert [d["uuid"] for d in read_devices(state)] == [U1]


# --- the state file -------------------------------------------------------

def test_a_second_daemon_on_the_same_state_file_is_refused(tmp_path, root):
    """One daemon per state file; the second is told who holds it and
    mounts nothing; the first one's devices survive a restart."""
    state, other = tmp_path / "state.json", tmp_path / "other"
    other.mkdir()
    out = cli("mount", "--state", str(state), str(root))
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split("(pid ")[1].split(",")[0])
    try:
        (root / MTTY1 / "create").write_text(U1)
        second = cli("mount", "--state", str(state), str(other))
        assert (second.returncode, second.stderr) == (2, (
            f"mdevfs: state file {state}: in use by another mdevfs daemon (pid {pid}); one "
            f"daemon per state file\n"))
        assert not os.path.ismount(other)
        (root / MTTY1 / "create").write_text(U2)
    finally:
        cli("umount", str(root))
    with mounted(state=state) as m:
        assert m.devices() == sorted([U1, U2])


@pytest.fixture
def small(tmp_path):
    with small_disk(tmp_path / "disk", "1m") as d:
        yield d


def test_a_create_whose_state_cannot_be_saved_fails_with_eio_and_creates_nothing(tmp_path, small):
    """On a full disk a create fails with EIO (not ENOSPC, "pool full"),
    the device does not exist, the pool is unchanged, the log names the file and the
    cause; with room again creates work, and a restart restores exactly what was saved."""
    config = write_topology(tmp_path, '[[parent]]\ndriver = "mtty"\n[parent.options]\n'
                                      'ports = 200\n')
    state = small / "state.json"
    with mounted(config, state=state) as m:
        m.create("mtty-1", U1)
        filler = fill(small)
        created = [U1]
        for i in range(100):  # appends fill the file's last page, then the disk refuses
            uuid = f"{i:08x}-0000-4000-8000-000000000000"
            avail = m.read(f"{MTTY1}/available_instances")
            try:
                m.create("mtty-1", uuid)
            except OSError as exc:
                assert exc.errno == errno.EIO
                break
            created.append(uuid)
        else:
            pytest.fail("the disk never filled up")
        assert m.devices() == sorted(created)
        assert m.read(f"{MTTY1}/available_instances") == avail
        assert not (m.root / "bus/mdev/devices" / uuid).exists()
        assert (f"state file {state}: cannot record the change: No space left on device "
                f"(add {uuid}); undone, the write fails with EIO") in m.log()
        for gone in list(created):  # a remove is undone the same way, once it cannot fit
            try:
                m.remove(gone)
            except OSError as exc:
                assert exc.errno == errno.EIO
                break
            created.remove(gone)
        assert gone in created and m.devices() == sorted(created)
        filler.unlink()
        m.create("mtty-1", uuid)
        created.append(uuid)
        assert m.devices() == sorted(created)
    with mounted(config, state=state) as m:
        assert m.devices() == sorted(created)


@needs_nobody
def test_a_symlinked_state_path_is_refused_and_never_replaced(tmp_path, shared, root):
    """A --state that is a symlink (here nobody's, to a root-only file)
    is refused, not followed and not replaced by a regular file."""
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    as_nobody_sh(f"ln -s {secret} state.json", cwd=shared)
    out = cli("mount", "--state", str(shared / "state.json"), str(root))
    assert (out.returncode, out.stderr) == (2, (
        f"mdevfs: state file {shared / 'state.json'}: it is a symbolic link; mdevfs neither "
        f"follows nor replaces one: give the file itself\n"))
    assert os.path.islink(shared / "state.json") and secret.read_text() == "root only\n"


def test_rewriting_the_state_file_keeps_its_mode_and_unknown_keys(tmp_path):
    """The rewrite at mount (a version 1 file becomes a journal) and
    compactions keep the file's mode and top-level keys mdevfs does not know."""
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"format": "mdevfs-state", "version": 1, "devices": [],
                                 "site": {"rack": 7}}, indent=1))
    state.chmod(0o640)
    with mounted(state=state) as m:
        m.create("mtty-1", U1)
    header = json.loads(state.read_text().split("\n")[0])
    assert header["site"] == {"rack": 7} and header["version"] == 2
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o640
    assert [d["uuid"] for d in read_devices(state)] == [U1]


def test_a_torn_last_record_is_dropped_and_the_rest_restored(tmp_path):
    """A crash mid-append leaves a last line without its newline; the
    mount drops it with a warning, restores the rest and appends after a whole record."""
    state = tmp_path / "state.json"
    with mounted(state=state) as m:
        m.create("mtty-1", U1)
    with open(state, "a") as f:
        f.write('{"op":"add","uuid":"' + U2 + '","par')
    with mounted(state=state) as m:
        assert m.devices() == [U1]
        assert "dropped a torn last record" in m.log()
        m.create("mtty-2", U2)
    assert [d["uuid"] for d in read_devices(state)] == [U1, U2]


# --- the journal's cost does not grow with the devices ----------------------------

def test_a_create_appends_one_line_at_10_and_at_10000_devices(tmp_path):
    """One append per change, whatever the number of devices: a create adds exactly its own
    line to the journal, which is neither rewritten nor replaced (its inode and every earlier
    byte stay); an unplug of 10,000 devices leaves none recorded. How long each takes is
    make bench's to measure, not a test's."""
    config = write_topology(tmp_path, '[[parent]]\ndriver = "mtty"\n[parent.options]\n'
                                      'ports = 20100\n')
    for n in (10, 10_000):
        state = tmp_path / f"state-{n}.json"
        devices = [{"uuid": f"ffff{i:04x}-0000-4000-8000-{i:012x}", "parent": "mtty",
                    "type": "mtty-1", "iommu_group": i, "vendor": {}} for i in range(n)]
        state.write_text(json.dumps({"format": "mdevfs-state", "version": 2,
                                     "devices": devices}) + "\n")
        with mounted(config, state=state, timeout=60) as m:
            for i in range(3):
                before, inode = state.read_bytes(), state.stat().st_ino
                m.create("mtty-1", f"{i:08x}-0000-4000-8000-000000000000")
                after = state.read_bytes()
                assert state.stat().st_ino == inode and after.startswith(before)
                line = json.loads(after[len(before):])
                assert after[len(before):].count(b"\n") == 1 and line["op"] == "add"
            m.control.unplug("mtty")
            assert read_devices(state) == []


# --- no unkillable hangs --------------------------------------------------

def test_ctl_fail_refuses_errnos_the_kernel_would_reject(root):
    """512..999 made the kernel reject the reply and the reader hang;
    only 1..511 with a name are taken, others refused with a reason (exit 1)."""
    out = cli("mount", str(root))
    assert out.returncode == 0, out.stderr
    try:
        path = f"{MTTY1}/name"
        for bad, why in (("600", "errno 600 cannot be injected: only 1 to 511 reach a caller "
                                 "through FUSE unchanged"),
                         ("0", "errno 0 cannot be injected: only 1 to 511 reach a caller "
                               "through FUSE unchanged"),
                         ("99999999999999999999", "errno 99999999999999999999 cannot be "
                                                  "injected: only 1 to 511 reach a caller "
                                                  "through FUSE unchanged")):
            done = cli("ctl", str(root), "fail", path, "read", bad)
            assert (done.returncode, done.stderr) == (1, f"mdevfs: fail: {why} (EINVAL)\n")
        assert cli("ctl", str(root), "fail", path, "read", "511").returncode == 1  # no name
        assert cli("ctl", str(root), "fail", path, "read", "ERFKILL").returncode == 0
        with pytest.raises(OSError) as info:
            (root / path).read_text()
        assert info.value.errno == errno.ERFKILL
    finally:
        cli("umount", str(root))


def test_mount_on_the_directory_of_a_stopped_daemon_fails_in_seconds(root):
    """A SIGSTOPped daemon's mount never answers; `mdevfs mount` there
    says so within a few seconds instead of hanging, and touches nothing."""
    out = cli("mount", str(root))
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split("(pid ")[1].split(",")[0])
    os.kill(pid, signal.SIGSTOP)
    try:
        again = cli("mount", str(root), timeout=30)  # a hang would be this timeout
        assert again.returncode == 3
        assert "does not answer within 3 s (is its daemon stopped?)" in again.stderr
    finally:
        os.kill(pid, signal.SIGCONT)
        cli("umount", str(root))


def test_fifos_as_state_or_topology_are_refused_at_once(tmp_path, root):
    """A FIFO where a file is expected would block the open forever."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for option, message in (("--state", f"state file {fifo}: not a regular file (a FIFO, "
                                         f"device or directory); give a file"),
                            ("--config", f"{fifo}: not a regular file")):
        out = cli("mount", option, str(fifo), str(root), timeout=20)
        assert (out.returncode, out.stderr) == (2, f"mdevfs: {message}\n")
    assert not os.path.ismount(root)


# --- malformed files get a message, never a traceback -----------------------------

def _header(devices) -> str:
    return json.dumps({"format": "mdevfs-state", "version": 2, "devices": devices}) + "\n"


L40S = "0000:c1:00.0"  # the default host's SR-IOV GPU
REC = {"uuid": U1, "parent": "mtty", "type": "mtty-1", "iommu_group": 0, "vendor": {}}


@pytest.mark.parametrize("text,problem", [
    ("[" * 100_000 + "]" * 100_000, "corrupt (not JSON: nested too deeply)"),
    (_header([dict(REC, parent=["mtty"])]), f"device #1 ({U1}): parent ['mtty'] is not a string"),
    (_header([dict(REC, type={"a": 1})]), f"device #1 ({U1}): type {{'a': 1}} is not a string"),
    (_header([dict(REC, iommu_group=2**70)]),
     f"device #1 ({U1}): iommu_group {2**70} is not a whole number from 0 to 2^31-1"),
    (_header([dict(REC, vendor=[])]), f"device #1 ({U1}): vendor is not an object"),
    (json.dumps({"format": "mdevfs-state", "version": 2, "devices": {}}) + "\n",
     'corrupt ("devices" is not a list)'),
    (_header([]) + '{"op": "remove", "uuid": 5}\n', 'line 2: corrupt ("uuid" is not a string)'),
    (_header([]) + "[1]\n", "line 2: corrupt (not a change: an object with \"op\" add, remove, "
                            "vendor, bind, unbind, pci)"),
    (_header([]) + "{]\n{}\n", "line 2: corrupt (not JSON: "),
    (_header([]) + f'{{"op": "remove", "uuid": "{U1}"}}\n',
     f"line 2: remove of {U1}, which is not recorded"),
    (b"\xff\xfe".decode("latin-1"), "corrupt (not UTF-8 text: "),
    (json.dumps({"format": "mdevfs-state", "version": 2, "devices": [],
                 "pci": {L40S: {"driver": ["nvidia"], "override": None}}}) + "\n",
     f"PCI function {L40S}: {L40S}: driver ['nvidia'] is not a string"),
    (json.dumps({"format": "mdevfs-state", "version": 2, "devices": [],
                 "pci": {L40S: {"driver": "nvidia", "override": 7}}}) + "\n",
     f"PCI function {L40S}: {L40S}: override 7 is not a string"),
])
def test_a_malformed_state_file_is_named_with_its_problem(tmp_path, root, text, problem):
    """Wrong JSON types, deep nesting, bad journal lines."""
    state = tmp_path / "state.json"
    state.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    out = cli("mount", "--state", str(state), str(root))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith(f"mdevfs: state file {state}: {problem}"), out.stderr
    assert not os.path.ismount(root)


@pytest.mark.parametrize("text,problem", [
    ("a = " + "[" * 50_000 + "]" * 50_000, "not usable TOML: nested too deeply"),
    ("parent = [1]", "parent #1: must be a table ([[parent]])"),
    ('host = 5\n[[parent]]\ndriver = "mtty"', "host: must be a table ([host])"),
    ('[host]\niommu_group_base = true\n[[parent]]\ndriver = "mtty"',
     "[host] iommu_group_base: must be a whole number from 0 to 2^31-1"),
    ('[[parent]]\ndriver = 5', "parent #1: 'driver' is required"),
    ('[[parent]]\ndriver = "mtty"\noptions = 3', "parent #1: 'options' must be a table"),
    # item 13: paths that would point outside the mount, or at nothing
    *[(f'[[parent]]\ndriver = "mtty"\npath = "{p}"',
       f"parent #1: 'path' '{p}' must be plain names between single slashes (no '', '.' or "
       f"'..' part, no control characters)")
      for p in ("devices/../../etc", "devices/virtual/..", "devices//x", "devices/./x",
                "devices/x/.")],
    ('[[parent]]\ndriver = "mtty"\npath = "devices/a\\u0000b"',
     "parent #1: 'path' 'devices/a\\x00b' must be plain names between single slashes"),
    *[(f'[[parent]]\ndriver = "mtty"\nname = "{n}"',
       f"parent #1: 'name' '{n}' must be a file name: not '.' or '..', without '/' or "
       f"control characters")
      for n in (".", "..", "a/b")],
    # a line break in a name would break every line-oriented file it reaches (.umockdev)
    ('[[parent]]\ndriver = "mtty"\nname = "a\\nb"',
     "parent #1: 'name' 'a\\nb' must be a file name: not '.' or '..', without '/' or control "
     "characters"),
])
def test_a_malformed_topology_is_named_with_its_problem(tmp_path, root, text, problem):
    """A topology with wrong types, bad names or unknown keys is refused by name, exit 2, no
    traceback, nothing mounted."""
    config = write_topology(tmp_path, text)
    out = cli("mount", "--config", str(config), str(root))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith(f"mdevfs: {config}: {problem}"), out.stderr
    assert not os.path.ismount(root)


# --- a killed `mdevfs run` leaves nothing behind ---------------------------------

@pytest.mark.skipif(namespace.unsupported() is not None, reason=namespace.unsupported() or "")
def test_kill_9_of_mdevfs_run_takes_the_mount_daemon_and_command_with_it(tmp_path):
    """The daemon sees its client's end of the socket pair close and
    unmounts; the command dies with its parent (PR_SET_PDEATHSIG); the next run removes
    the temporary directory and says so."""
    config = write_topology(tmp_path, MTTY_ONLY)
    pidfile = tmp_path / "command.pid"
    run = subprocess.Popen([MDEVFS_BIN, "run", "--config", str(config), "--", "sh", "-c",
                            f'echo $$ > {pidfile}; echo "$MDEVFS_ROOT"; exec sleep 300'],
                           stdout=subprocess.PIPE, text=True, cwd="/")
    mnt = run.stdout.readline().strip()
    command = int(pidfile.read_text())
    note = json.loads((runtime_dir() / "runs" / f"{run.pid}.json").read_text())
    daemon = note["daemon"]
    assert mnt in mountpoints() and note["workdir"] == str(Path(mnt).parent)
    run.kill()
    run.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (mnt in mountpoints() or _alive(daemon)
                                           or _alive(command)):
        time.sleep(0.05)
    assert mnt not in mountpoints()
    assert not _alive(daemon) and not _alive(command)
    assert os.path.isdir(note["workdir"])  # the leftover, for the next run
    out = cli("run", "--config", str(config), "--", "true")
    assert out.returncode == 0, out.stderr
    assert (f"mdevfs run: removed the leftovers of a killed mdevfs run (pid {run.pid}): "
            f"{note['workdir']}\n") in out.stderr
    assert not os.path.exists(note["workdir"])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
