"""The CLI and the daemon's life: mount/umount, readiness, bad input, dead mounts, crashes."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import needs_fuse, write_topology

from mdevfs import mounts
from mdevfs.testing import mounted

pytestmark = needs_fuse
MDEVFS = [sys.executable, "-m", "mdevfs"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(MDEVFS + list(args), capture_output=True, text=True, timeout=30)


def test_help_for_every_command():
    for cmd in ("mount", "umount"):
        out = run(cmd, "--help")
        assert out.returncode == 0 and f"usage: mdevfs {cmd}" in out.stdout


def test_detached_mount_answers_when_it_returns_and_umount_ends_it(tmp_path):
    """`mdevfs mount DIR` returns only once the mount answers; `mdevfs umount` ends it."""
    root = tmp_path / "sys"
    root.mkdir()
    log = tmp_path / "daemon.log"
    try:
        out = run("mount", "--log-file", str(log), str(root))
        assert out.returncode == 0, out.stderr
        assert f"log {log}" in out.stdout
        assert os.path.ismount(root)
        assert (root / "class/mdev_bus/mtty/mdev_supported_types/mtty-1/name").read_text() == \
            "Single port serial\n"
    finally:
        out = run("umount", str(root))
    assert out.returncode == 0, out.stderr
    assert not os.path.ismount(root)


@pytest.mark.parametrize("lazy", [[], ["--lazy"]])
def test_umount_unmounts_only_mdevfs(tmp_path, lazy):
    other = tmp_path / "tmpfs"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(other)], check=True)
    try:
        out = run("umount", *lazy, str(other))
        assert (out.returncode, out.stderr) == (2, f"mdevfs: {other}: no mdevfs mount is "
                                                   "there\n")
        assert os.path.ismount(other)
    finally:
        subprocess.run(["umount", str(other)], check=True)


def test_bad_topology_mounts_nothing(tmp_path):
    """A bad file gets a clear error naming the file, the entry and the problem."""
    root = tmp_path / "sys"
    root.mkdir()
    config = write_topology(tmp_path, '[[parent]]\ndriver = "mtty"\nfoo = 1\n')
    out = run("mount", "--config", str(config), str(root))
    assert out.returncode == 2
    assert out.stderr == f"mdevfs: {config}: parent #1: unknown key(s) foo\n"
    assert not os.path.ismount(root)


@pytest.mark.parametrize("setup,message", [
    (lambda d: None, "no such directory"),
    (lambda d: (d.mkdir(), (d / "x").write_text("")), "not empty"),
])
def test_mountpoint_must_be_an_empty_directory(tmp_path, setup, message):
    root = tmp_path / "sys"
    setup(root)
    out = run("mount", "--foreground", str(root))
    assert out.returncode == 2 and message in out.stderr
    assert not os.path.ismount(root)


def test_a_mountpoint_left_by_a_killed_daemon_is_recovered(tmp_path):
    """Kill -9 leaves "Transport endpoint is not connected"; the next mount cleans it."""
    root = tmp_path / "sys"
    root.mkdir()
    proc = subprocess.Popen(MDEVFS + ["mount", "--foreground", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (root / "class").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        with pytest.raises(OSError) as info:
            os.listdir(root)  # a readdir always reaches the (dead) daemon
        assert info.value.errno == errno.ENOTCONN
        out = run("mount", "--log-file", str(tmp_path / "daemon.log"), str(root))
        assert out.returncode == 0, out.stderr
        assert (root / "class/mdev_bus").is_dir()
    finally:
        run("umount", str(root))
        subprocess.run(["fusermount3", "-u", "-z", str(root)], capture_output=True)
    assert not os.path.ismount(root)


OTHER_FUSE = """
import sys, pyfuse3, trio
pyfuse3.init(pyfuse3.Operations(), sys.argv[1], {"fsname=other", "subtype=other"})
print("up", flush=True)
trio.run(pyfuse3.main)
"""


def test_a_dead_mount_of_another_filesystem_is_left_alone(tmp_path):
    """Only a dead mdevfs mount is cleaned up: another filesystem's, dead too, is refused
    and stays mounted (mdevfs runs as root; the directory is the user's choice)."""
    root = tmp_path / "sys"
    root.mkdir()
    other = subprocess.Popen([sys.executable, "-c", OTHER_FUSE, str(root)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "up\n"
        other.kill()
        other.wait()
        out = run("mount", "--foreground", str(root))
        assert out.returncode == 2
        assert out.stderr == (f"mdevfs: {root}: a dead mount of fuse.other is there; "
                              "mdevfs unmounts only its own\n")
        assert str(root) in mounts.mountpoints()
    finally:
        other.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(root)], capture_output=True)


def test_sigterm_unmounts_cleanly(tmp_path):
    root = tmp_path / "sys"
    root.mkdir()
    proc = subprocess.Popen(MDEVFS + ["mount", "--foreground", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not (root / "class").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert not os.path.ismount(root)
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(root)], capture_output=True)


CRASHY = '''
from mdevfs.driver import Attribute, BaseDriver, MdevTypeSpec

class Driver(BaseDriver):
    name = "crashy"
    def types(self):
        return (MdevTypeSpec("t"),)
    def max_instances(self):
        return 4
    def device_attributes(self, mdev):
        def boom(buf=None):
            raise RuntimeError("a driver bug")
        return (Attribute("bug", show=boom, store=boom),)
'''


def test_a_driver_bug_is_eio_and_the_mount_stays_up(tmp_path):
    """No exception escapes a handler: an unexpected one is logged and answered with EIO."""
    (tmp_path / "crashy.py").write_text(CRASHY)
    config = write_topology(tmp_path, '[[parent]]\ndriver = "crashy.py"\nname = "c0"\n'
                            'path = "devices/virtual/crashy/c0"\n')
    with mounted(config) as m:
        uuid = m.create("crashy-t")
        bug = m.root / "bus/mdev/devices" / uuid / "bug"
        for action in (lambda: bug.read_bytes(), lambda: m.write(str(bug), "x")):
            with pytest.raises(OSError) as info:
                action()
            assert info.value.errno == errno.EIO
        assert m.alive()
        assert "RuntimeError: a driver bug" in m.log()
        m.remove(uuid)
        assert os.listdir(m.root / "bus/mdev/devices") == []


def test_a_detached_mount_builds_the_topology_and_reads_the_state_once(tmp_path):
    """Only the daemon builds the topology and reads the state file; the
    command that starts it waits for its report."""
    builds = tmp_path / "builds"
    (tmp_path / "counted.py").write_text(
        "from mdevfs_vendors.samples import Mtty\n\n\n"
        "def Driver(options):\n"
        f"    with open({str(builds)!r}, 'a') as f:\n"
        "        f.write('built\\n')\n"
        "    return Mtty(options)\n")
    config = write_topology(tmp_path, '[[parent]]\ndriver = "counted.py"\n')
    root = tmp_path / "sys"
    root.mkdir()
    out = run("mount", "--config", str(config), "--state", str(tmp_path / "state.json"),
              "--log-file", str(tmp_path / "daemon.log"), str(root))
    try:
        assert out.returncode == 0, out.stderr
        assert builds.read_text() == "built\n"
    finally:
        run("umount", str(root))
