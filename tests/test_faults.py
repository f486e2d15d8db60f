"""Faults on demand through the control socket , checked through real mounts.

Hot-unplug and plug, injected errnos and latency, a run-time driver option that
changes migration compatibility, EBUSY on ``remove`` (ABI §2.3, OLD 4.10–5.1),
``reset``, and who may use the socket.
"""
from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import threading
import time

import pytest
from conftest import as_nobody, errno_of, needs_fuse, needs_nobody, write_topology

from mdevfs.control import ControlError
from mdevfs.journal import read_devices
from mdevfs.runtime import default_control, runtime_dir
from mdevfs.testing import mounted

pytestmark = needs_fuse
MDEVFS = [sys.executable, "-m", "mdevfs"]
U1 = "11111111-2222-3333-4444-555555555555"
U2 = "22222222-3333-4444-5555-666666666666"
U3 = "33333333-4444-5555-6666-777777777777"
MTTY = "devices/virtual/mtty/mtty"
T1 = "class/mdev_bus/mtty/mdev_supported_types/mtty-1"
VT = "class/mdev_bus/v0/mdev_supported_types/ver-t"

# A driver with a run-time option: the software version its migration_version reports.
VERSIONED = '''
import errno
from mdevfs.driver import BaseDriver, MdevTypeSpec
from mdevfs.errors import fail

class Driver(BaseDriver):
    name = "ver"
    def __init__(self, options=None):
        super().__init__(options)
        self.version = 1
    def types(self):
        return (MdevTypeSpec("t"),)
    def max_instances(self):
        return 4
    def migration(self, target):
        return Migration(self)
    def set_option(self, key, value):
        if key != "version":
            super().set_option(key, value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"version must be a whole number, not {value!r}")
        self.version = value

class Migration:
    def __init__(self, driver):
        self.driver = driver
    def version(self):
        return f"ver-{self.driver.version}"
    def check(self, source):
        if source != self.version():
            fail(errno.EINVAL)
'''


@pytest.fixture
def host(tmp_path):
    """Mtty and the versioned driver (parent v0), with a state file."""
    (tmp_path / "ver.py").write_text(VERSIONED)
    config = write_topology(tmp_path, '[[parent]]\ndriver = "mtty"\n[[parent]]\n'
                            'driver = "ver.py"\nname = "v0"\npath = "devices/virtual/ver/v0"\n')
    with mounted(config, state=tmp_path / "state.json") as m:
        m.state = tmp_path / "state.json"
        yield m
        assert m.alive(), m.log()




def listing(m, rel: str) -> list[str]:
    return sorted(os.listdir(m.root / rel))


def recorded(m) -> list[str]:
    return [d["uuid"] for d in read_devices(m.state)]


# --- hot-unplug ----------------------------------------------------------------------------

def test_unplug_takes_the_parent_and_its_devices_and_plug_brings_back_only_the_types(host):
    """ABI §1.1: after unplug the parent dir, its class links, its
    devices, their bus links and IOMMU groups are gone and the state file forgets them;
    plug gives back the types with full pools and no devices, as after a real unplug."""
    host.create("mtty-1", U1)
    host.create("mtty-2", U2)
    host.create("ver-t", U3)
    inode = os.stat(host.root / T1 / "create").st_ino  # a path the kernel now caches
    host.control.unplug("mtty")
    assert listing(host, "class/mdev_bus") == ["v0"]
    assert errno_of(os.stat, host.root / T1 / "create") == errno.ENOENT  # not served stale
    assert not os.path.lexists(host.root / MTTY)
    assert not os.path.lexists(host.root / "class/mtty/mtty")
    assert listing(host, "bus/mdev/devices") == [U3]
    assert listing(host, "kernel/iommu_groups") == ["2"]
    assert recorded(host) == [U3]
    assert host.control.status()["unplugged"] == ["mtty"]
    host.control.plug("mtty")
    assert listing(host, "class/mdev_bus") == ["mtty", "v0"]
    assert os.stat(host.root / T1 / "create").st_ino != inode  # a new node, looked up anew
    assert host.read(f"{T1}/available_instances") == "24\n"
    assert listing(host, f"{T1}/devices") == []
    assert listing(host, "bus/mdev/devices") == [U3]
    host.create("mtty-1", U1)  # the driver's pool is whole again
    assert host.read(f"{T1}/available_instances") == "23\n"


def test_unplug_and_plug_refuse_unknown_parents(host):
    """A parent that is not there (or not unplugged) is ENOENT, named."""
    with pytest.raises(ControlError) as info:
        host.control.unplug("nope")
    assert (info.value.errno, info.value.strerror) == (
        errno.ENOENT, "no parent 'nope' (parents: mtty, v0)")
    with pytest.raises(ControlError) as info:
        host.control.plug("mtty")
    assert (info.value.errno, info.value.strerror) == (
        errno.ENOENT, "parent 'mtty' is not unplugged (unplugged: none)")


def test_writes_in_flight_during_an_unplug_get_enodev(host):
    """ABI §2.1: a file handle that outlived the unplug gives ENODEV on
    write and read (kernfs_get_active fails); a create held up by latency when the parent
    goes also gets ENODEV, and nothing is created."""
    host.create("mtty-1", U1)
    create = os.open(host.root / T1 / "create", os.O_WRONLY)
    remove = os.open(host.root / "bus/mdev/devices" / U1 / "remove", os.O_WRONLY)
    avail = os.open(host.root / T1 / "available_instances", os.O_RDONLY)
    try:
        host.control.unplug("mtty")
        assert errno_of(os.write, create, U2.encode()) == errno.ENODEV
        assert errno_of(os.write, remove, b"1") == errno.ENODEV
        assert errno_of(os.read, avail, 100) == errno.ENODEV
    finally:
        for fd in (create, remove, avail):
            os.close(fd)
    host.control.plug("mtty")

    host.control.latency(f"{T1}/create", 0.5)
    result = []
    fd = os.open(host.root / T1 / "create", os.O_WRONLY)

    def writer():
        try:
            result.append(os.write(fd, U2.encode()))
        except OSError as exc:
            result.append(exc.errno)
    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.2)  # the write now sleeps in the daemon
    host.control.unplug("mtty")
    thread.join(5)
    os.close(fd)
    assert result == [errno.ENODEV]
    assert listing(host, "bus/mdev/devices") == []


# --- injected errnos and latency -----------------------------------------------------------

def test_a_read_fault_once_fails_one_read(host):
    """`fail PATH read EIO --once` fails the next show only."""
    assert host.control.fail(f"{T1}/name", "read", "EIO", once=True) == \
        f"{MTTY}/mdev_supported_types/mtty-1/name"
    assert errno_of(host.read, f"{T1}/name") == errno.EIO
    assert host.read(f"{T1}/name") == "Single port serial\n"


def test_a_write_fault_lasts_until_cleared_on_every_path_to_the_file(host):
    """A write fault set through one path holds for the file however it is
    reached; the store is never called; `clear PATH` ends it."""
    host.create("mtty-1", U1)
    host.control.fail(f"bus/mdev/devices/{U1}/remove", "write", errno.EPERM)
    for path in (f"bus/mdev/devices/{U1}/remove", f"{MTTY}/{U1}/remove",
                 f"{T1}/devices/{U1}/remove"):
        assert errno_of(host.write, path, "1") == errno.EPERM
    assert listing(host, "bus/mdev/devices") == [U1]
    assert host.control.status()["errors"] == [
        {"path": f"{MTTY}/{U1}/remove", "op": "write", "errno": "EPERM", "once": False}]
    host.control.clear(f"bus/mdev/devices/{U1}/remove")
    host.remove(U1)
    assert listing(host, "bus/mdev/devices") == []


def test_an_injected_create_failure_creates_nothing(host):
    """E.g. ENOSPC from a full GPU, on demand; clear() ends every fault."""
    host.control.fail(f"{T1}/create", "write", "ENOSPC")
    assert errno_of(host.create, "mtty-1", U1) == errno.ENOSPC
    assert listing(host, "bus/mdev/devices") == [] and recorded(host) == []
    host.control.clear()
    host.create("mtty-1", U1)


@pytest.mark.parametrize("request_,reply", [
    ({"command": "fail", "path": "nope/name", "op": "read", "error": "EIO"},
     (errno.ENOENT, "no attribute file 'nope/name'")),
    ({"command": "fail", "path": f"{T1}/create", "op": "read", "error": "EIO"},
     (errno.EINVAL, f"{MTTY}/mdev_supported_types/mtty-1/create cannot be read")),
    ({"command": "fail", "path": f"{T1}/name", "op": "read", "error": "EWHAT"},
     (errno.EINVAL, "unknown errno 'EWHAT': give a name such as EIO or a number from 1 to 511")),
    # only what the kernel takes back from FUSE (1..511, with a name)
    *[({"command": "fail", "path": f"{T1}/name", "op": "read", "error": bad},
       (errno.EINVAL, f"errno {int(bad)} cannot be injected: only 1 to 511 reach a caller "
                      f"through FUSE unchanged")) for bad in (0, 512, 999, 1000, 10**30, "600")],
    ({"command": "fail", "path": f"{T1}/name", "op": "read", "error": 41},
     (errno.EINVAL, "errno 41 has no name on this system (errno.errorcode)")),
    ({"command": "fail", "path": f"{T1}/name", "op": "read", "error": True},
     (errno.EINVAL, "errno must be a name or a number, not True")),
    ({"command": "latency", "path": f"{T1}/name", "seconds": -1},
     (errno.EINVAL, "seconds must be a number from 0 to 3600, not -1")),
    ({"command": "explode"}, (errno.EINVAL, "unknown command 'explode'")),
    ({"command": "unplug"}, (errno.EINVAL, "unplug: missing a required argument: 'parent'")),
])
def test_bad_requests_are_refused_with_a_reason(host, request_, reply):
    """The daemon answers a bad request with an errno and a message."""
    with pytest.raises(ControlError) as info:
        host.control.request(request_.pop("command"), **request_)
    assert (info.value.errno, info.value.strerror) == reply
    assert host.alive()


def test_latency_delays_only_its_attribute(host):
    """`latency PATH SECONDS` sleeps before each show or store of PATH; other requests are
    served meanwhile; 0 clears it and lets a request sleeping on it go on."""
    host.control.latency(f"{T1}/available_instances", 0.4)
    started = time.monotonic()
    assert host.read(f"{T1}/available_instances") == "24\n"
    assert time.monotonic() - started >= 0.4  # a lower bound: load cannot break it
    where = host.control.latency(f"{T1}/available_instances", 3600)  # its canonical path
    answer: list[str] = []
    slow = threading.Thread(target=lambda: answer.append(host.read(f"{T1}/available_instances")),
                            daemon=True)
    slow.start()
    for _ in range(3000):  # until the daemon has it asleep
        if host.control.status()["sleeping"]:
            break
        time.sleep(0.01)
    assert host.control.status()["sleeping"] == [where]
    assert host.read(f"{T1}/name") == "Single port serial\n"
    assert slow.is_alive() and answer == []  # the other read was answered while it sleeps
    host.control.latency(f"{T1}/available_instances", 0)
    slow.join(30)  # released: not the hour
    assert not slow.is_alive() and answer == ["24\n"]
    assert host.control.status()["latency"] == {} and host.control.status()["sleeping"] == []


# --- run-time driver options ---------------------------------------------------------------

def test_set_option_changes_migration_compatibility(host):
    """ABI §5.2: a new software version changes migration_version, so the
    old string is refused (EINVAL); drivers without the option answer EINVAL."""
    mig = f"{VT}/migration_version"
    assert host.read(mig) == "ver-1\n"
    host.control.set_option("v0", "version", 2)
    assert host.read(mig) == "ver-2\n"
    assert errno_of(host.write, mig, "ver-1\n") == errno.EINVAL
    assert host.write(mig, "ver-2\n") == 6
    for parent, key, value, text in (
            ("v0", "version", "3", "version must be a whole number, not '3'"),
            ("v0", "speed", 1, "driver ver has no run-time option 'speed'"),
            ("mtty", "ports", 4, "driver mtty has no run-time option 'ports'")):
        with pytest.raises(ControlError) as info:
            host.control.set_option(parent, key, value)
        assert (info.value.errno, info.value.strerror) == (errno.EINVAL, text)


# --- EBUSY on remove -----------------------------------------------------------------------

def test_a_busy_device_refuses_remove_with_ebusy_until_cleared(host):
    """ABI §2.3 (OLD 4.10–5.1, GVT in use): remove_store still parses
    first (EINVAL, 0 is a no-op), then the vendor refusal is EBUSY and the device stays."""
    host.create("mtty-1", U1)
    host.control.busy(U1)
    remove = f"bus/mdev/devices/{U1}/remove"
    assert errno_of(host.write, remove, "1") == errno.EBUSY
    assert errno_of(host.write, remove, "x") == errno.EINVAL
    assert host.write(remove, "0") == 1
    assert listing(host, "bus/mdev/devices") == [U1] and recorded(host) == [U1]
    host.control.busy(U1, on=False)
    host.remove(U1)
    assert listing(host, "bus/mdev/devices") == []


# --- reset ---------------------------------------------------------------------------------

def test_reset_returns_to_the_topologys_initial_state(host):
    """No devices, every parent plugged, no faults, fresh driver options."""
    host.create("mtty-1", U1)
    host.create("ver-t", U2)
    host.control.busy(U1)
    host.control.fail(f"{T1}/name", "read", "EIO")
    host.control.latency(f"{VT}/name", 1)
    host.control.set_option("v0", "version", 7)
    host.control.unplug("v0")
    host.control.reset()
    assert host.control.status() == {"pid": host.proc.pid, "kernel": "7.3", "modules": {},
                                     "parents": ["mtty", "v0"],
                                     "unplugged": [], "devices": [], "errors": [],
                                     "latency": {}, "sleeping": [], "busy": []}
    assert listing(host, "class/mdev_bus") == ["mtty", "v0"]
    assert listing(host, "bus/mdev/devices") == [] and recorded(host) == []
    assert host.read(f"{T1}/name") == "Single port serial\n"
    assert host.read(f"{VT}/migration_version") == "ver-1\n"
    assert host.read(f"{T1}/available_instances") == "24\n"


# --- the socket and `mdevfs ctl` ------------------------------------------------------------

def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(MDEVFS + ["ctl", *args], capture_output=True, text=True, timeout=30)


def test_mdevfs_ctl_finds_the_socket_in_the_runtime_directory(tmp_path):
    """`mdevfs mount DIR` prints its socket, in the
    user's private runtime directory (not beside DIR, where anyone may squat the name),
    mode 0600 and owned by the mounting user; `mdevfs ctl DIR ...` drives it; exit 1 when
    refused, 2 when no daemon answers; umount removes the socket."""
    root = tmp_path / "sys"
    root.mkdir()
    sock = default_control(root)
    assert sock.parent == runtime_dir() and stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700
    config = write_topology(tmp_path, '[[parent]]\ndriver = "mtty"\n[[parent]]\ndriver = "mdpy"\n')
    out = subprocess.run(MDEVFS + ["mount", "--log-file", str(tmp_path / "daemon.log"), "--config",
                                   str(config), str(root)],
                         capture_output=True, text=True)
    try:
        assert out.returncode == 0, out.stderr
        assert out.stdout.rstrip().endswith(f"control {sock})")
        st = os.lstat(sock)
        assert (stat.S_ISSOCK(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid) == \
            (True, 0o600, os.getuid())
        assert ctl(str(root), "unplug", "mdpy").returncode == 0
        assert not (root / "class/mdev_bus/mdpy").exists()
        path = root / "class/mdev_bus/mtty/mdev_supported_types/mtty-1/name"
        assert ctl(str(root), "fail", str(path), "read", "EIO").returncode == 0
        assert errno_of(path.read_text) == errno.EIO
        status = json.loads(ctl(str(root), "status").stdout)
        assert status["unplugged"] == ["mdpy"] and len(status["errors"]) == 1
        out = ctl(str(root), "plug", "nope")
        assert (out.returncode, out.stderr) == (
            1, "mdevfs: plug: parent 'nope' is not unplugged (unplugged: mdpy) (ENOENT)\n")
        assert ctl(str(root), "reset").returncode == 0
        assert path.read_text() == "Single port serial\n"
    finally:
        subprocess.run(MDEVFS + ["umount", str(root)], capture_output=True)
    assert not os.path.ismount(root) and not sock.exists()
    out = ctl(str(root), "status")
    assert out.returncode == 2
    assert out.stderr.startswith(f"mdevfs: no mdevfs control socket answers at {sock}")


@needs_nobody
def test_only_the_mounting_user_may_use_the_socket(host):
    """Another user cannot connect (mode 0600); and were the mode opened,
    the daemon still refuses a peer of another uid (SO_PEERCRED) with EPERM."""
    workdir = host.root.parent
    sock = host.control.path
    os.chmod(workdir, 0o711)  # let uid 65534 reach the socket, to show the mode stops it
    request = json.dumps({"command": "reset"})
    assert as_nobody(("request", sock, request)) == ["EACCES"]
    os.chmod(sock, 0o666)
    assert as_nobody(("request", sock, request)) == [
        {"ok": False, "errno": errno.EPERM, "error": "uid 65534 is not the mounting user"}]
    assert host.control.status()["parents"] == ["mtty", "v0"]
