"""State that survives, signals and leftovers , through real mounts.

Devices are recorded in the ``--state`` file before ``create`` or ``remove``
returns; a restart (clean, by signal or after ``kill -9``) restores exactly
those devices with their IOMMU groups and vendor state; a file that is corrupt
or does not fit the topology is refused with a message naming what is wrong,
and nothing is mounted.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import fill, keeper, needs_fuse, small_disk, write_topology

from mdevfs.journal import read_devices
from mdevfs.runtime import default_control
from mdevfs.testing import mounted

pytestmark = needs_fuse
MDEVFS = [sys.executable, "-m", "mdevfs"]
U1 = "11111111-2222-3333-4444-555555555555"
U2 = "22222222-3333-4444-5555-666666666666"
U3 = "33333333-4444-5555-6666-777777777777"
UA = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"

TOPOLOGY = ('[[parent]]\ndriver = "mtty"\n'
            '[[parent]]\ndriver = "keeper.py"\nname = "k0"\npath = "devices/virtual/keeper/k0"\n')
MTTY_TYPES = "class/mdev_bus/mtty/mdev_supported_types"


@pytest.fixture
def topology(tmp_path):
    (tmp_path / "keeper.py").write_text(keeper())
    return write_topology(tmp_path, TOPOLOGY)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(MDEVFS + list(args), capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def foreground(topology: Path, state: Path, root: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A daemon in the foreground with ``--state``, for a test to kill; whatever serves
    ``root`` at the end (it, or a remount) is unmounted, and the directory removed."""
    root.mkdir()
    proc = subprocess.Popen(MDEVFS + ["mount", "-f", "--config", str(topology), "--state",
                                      str(state), str(root)], stderr=subprocess.DEVNULL)
    try:
        wait_mounted(root, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        run("umount", str(root))
        cleanup(root)
    assert not os.path.ismount(root)


def remount(topology: Path, state: Path, root: Path) -> None:
    """`mdevfs mount` again on ``root`` (left dead by a kill -9) with the same state file."""
    out = run("mount", "--log-file", str(root.parent / "daemon.log"), "--config", str(topology),
              "--state", str(state), str(root))
    assert out.returncode == 0, out.stderr


def groups(root: Path) -> dict[str, str]:
    """Each device's IOMMU group, read from its iommu_group link."""
    devices = root / "bus/mdev/devices"
    return {u: os.path.basename(os.readlink(devices / u / "iommu_group"))
            for u in sorted(os.listdir(devices))}


def recorded(state: Path) -> list[tuple[str, str, str, int, dict]]:
    return [(d["uuid"], d["parent"], d["type"], d["iommu_group"], d["vendor"])
            for d in read_devices(state)]


def wait_mounted(root: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 10
    while not (root / "class/mdev_bus").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, "the daemon did not mount"
        time.sleep(0.01)


def cleanup(root: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(root)], capture_output=True)


# --- recorded before the write returns; restored exactly ---------------------------

def test_every_create_and_remove_is_on_disk_before_the_write_returns(topology, tmp_path):
    """The state file holds each change as soon as write(2) returns."""
    state = tmp_path / "state.json"
    with mounted(topology, state=state) as m:
        assert recorded(state) == []  # created at start, so a restart finds it
        m.create("mtty-2", U1)
        assert recorded(state) == [(U1, "mtty", "mtty-2", 0, {})]
        m.create("keeper-t", U2)
        assert recorded(state) == [(U1, "mtty", "mtty-2", 0, {}),
                                   (U2, "k0", "keeper-t", 1, {"label": "none"})]
        m.write(f"bus/mdev/devices/{U2}/label", "blue\n")
        assert recorded(state)[1][4] == {"label": "blue"}  # a vendor attribute store
        m.remove(U1)
        assert recorded(state) == [(U2, "k0", "keeper-t", 1, {"label": "blue"})]
        assert not list(tmp_path.glob(".state.json.*"))  # no temporary file left behind


def test_a_restart_restores_exactly_the_devices_with_their_groups(topology, tmp_path):
    """Same UUIDs, parents, types, IOMMU groups (holes kept) and vendor
    values; the pools count them; the next new device takes the lowest free group."""
    state = tmp_path / "state.json"
    with mounted(topology, state=state) as m:
        for u, t in ((U1, "mtty-1"), (U2, "mtty-2"), (U3, "keeper-t")):
            m.create(t, u)
        m.write(f"bus/mdev/devices/{U3}/label", "green")
        m.remove(U1)  # group 0 becomes a hole
        before = groups(m.root)
    assert before == {U2: "1", U3: "2"}
    with mounted(topology, state=state) as m:
        assert groups(m.root) == before
        assert os.readlink(m.root / "bus/mdev/devices" / U2 / "mdev_type") == \
            "../mdev_supported_types/mtty-2"
        assert m.read(f"bus/mdev/devices/{U3}/label") == "green\n"
        assert m.read(f"{MTTY_TYPES}/mtty-1/available_instances") == "22\n"
        assert m.read("class/mdev_bus/k0/mdev_supported_types/keeper-t/available_instances") \
            == "1\n"
        new = m.create("mtty-1")
        assert groups(m.root)[new] == "0"
        assert [r[0] for r in recorded(state)] == [U2, U3, new]


def record(uuid: str, parent: str = "mtty", type_id: str = "mtty-1", group: int = 0) -> dict:
    return {"uuid": uuid, "parent": parent, "type": type_id, "iommu_group": group, "vendor": {}}


def doc(*devices: dict) -> str:
    return json.dumps({"format": "mdevfs-state", "version": 1, "devices": list(devices)})


@pytest.mark.parametrize("text,problem", [
    ("{not json", "corrupt (not JSON: "),
    ('{"devices": []}', 'corrupt (not an mdevfs state file: no "format": "mdevfs-state")'),
    (doc(record(U1), record(U2, parent="0000:00:02.0")),
     f"device #2 ({U2}): parent '0000:00:02.0' is not in the topology (parents: mtty, k0)"),
    (doc(record(U1, type_id="mtty-3")),
     f"device #1 ({U1}): parent 'mtty' offers no type 'mtty-3' (types: mtty-1, mtty-2)"),
    (doc(record(U1), record(U1, group=1)), f"device #2 ({U1}): duplicate UUID"),
    (doc(record(U1, group=4), record(U2, group=4)),
     f"device #2 ({U2}): IOMMU group 4 is also recorded for device {U1}"),
    (doc(record(UA.upper())), f"device #1: '{UA.upper()}' is not a lower-case UUID"),
    (doc({**record(U1), "extra": 1}), f"device #1 ({U1}): corrupt (unknown extra)"),
    (doc(*[record(f"{i:08x}-2222-3333-4444-555555555555", "k0", "keeper-t", i)
           for i in range(3)]),
     "device #3 (00000002-2222-3333-4444-555555555555): parent 'k0' has no room for it"),
    (doc(*[record(f"{i:08x}-2222-3333-4444-555555555555", type_id="mtty-2", group=i)
           for i in range(13)]),
     ("device #13 (0000000c-2222-3333-4444-555555555555): driver 'mtty' refused it: "
      "No space left on device")),
])
def test_a_state_file_that_does_not_fit_is_refused_and_nothing_mounts(topology, tmp_path,
                                                                     text, problem):
    """Corrupt, unknown parent or type, duplicate UUID, group clash, more
    devices than the pool holds: a clear error, exit 2, no mount, the file untouched."""
    state = tmp_path / "state.json"
    state.write_text(text)
    root = tmp_path / "sys"
    root.mkdir()
    try:
        for foreground in ([], ["--foreground"]):
            out = run("mount", *foreground, "--config", str(topology), "--state", str(state),
                      str(root))
            assert out.returncode == 2
            assert out.stderr.startswith(f"mdevfs: state file {state}: {problem}"), out.stderr
            assert not os.path.ismount(root)
        assert state.read_text() == text
    finally:
        run("umount", str(root))


# --- signals and leftovers ---------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_unmounts_cleanly_with_the_state_saved(topology, tmp_path, signum):
    """SIGTERM and SIGINT unmount, exit 0, remove the control socket;
    the next mount with the same state file has the devices back."""
    root, state = tmp_path / "sys", tmp_path / "state.json"
    root.mkdir()
    control = default_control(root)
    proc = subprocess.Popen(MDEVFS + ["mount", "-f", "--config", str(topology), "--state",
                                      str(state), str(root)], stderr=subprocess.PIPE)
    try:
        wait_mounted(root, proc)
        assert control.is_socket()
        (root / MTTY_TYPES / "mtty-1/create").write_text(U1)
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
        assert not os.path.ismount(root) and not control.exists()
        assert [r[0] for r in recorded(state)] == [U1]
        out = run("mount", "--log-file", str(tmp_path / "daemon.log"), "--config", str(topology),
                  "--state", str(state), str(root))
        assert out.returncode == 0, out.stderr
        assert groups(root) == {U1: "0"}
    finally:
        if proc.poll() is None:
            proc.kill()
        run("umount", str(root))
        cleanup(root)


def test_after_kill_9_the_next_mount_recovers_the_mountpoint_and_the_devices(topology,
                                                                              tmp_path):
    """Kill -9 leaves a dead mount (ENOTCONN) and a stale control
    socket; `mdevfs mount` on the same directory recovers both and restores the devices."""
    root, state = tmp_path / "sys", tmp_path / "state.json"
    with foreground(topology, state, root) as proc:
        (root / MTTY_TYPES / "mtty-2/create").write_text(U1)
        (root / MTTY_TYPES / "mtty-1/create").write_text(U2)
        (root / f"bus/mdev/devices/{U1}/remove").write_text("1")
        (root / MTTY_TYPES / "mtty-1/create").write_text(U3)
        before = groups(root)
        proc.kill()
        proc.wait()
        with pytest.raises(OSError) as info:
            os.listdir(root)
        assert info.value.errno == errno.ENOTCONN
        remount(topology, state, root)
        assert groups(root) == before == {U2: "1", U3: "0"}
        assert run("ctl", str(root), "status").returncode == 0  # the new socket answers


def test_without_dev_fuse_the_mount_fails_with_a_clear_message(tmp_path):
    """In a private mount namespace whose /dev lacks fuse, mount refuses."""
    root = tmp_path / "sys"
    root.mkdir()
    script = f"mount -t tmpfs none /dev || exit 99; exec {' '.join(MDEVFS)} mount {root}"
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=30)
    if out.returncode == 99 or out.stderr.startswith("unshare:"):
        pytest.skip(f"no private mount namespace with its own /dev here: {out.stderr.strip()}")
    assert out.returncode == 2
    assert out.stderr == ("mdevfs: /dev/fuse is missing: load the fuse module or give the "
                          "container --device /dev/fuse\n")
    assert not os.path.ismount(root)


def test_an_unbound_device_is_restored_unbound(topology, tmp_path):
    """An unbind is a journal record; the device comes back driverless,
    without an IOMMU group, and its group number is free for the next device."""
    state = tmp_path / "state.json"
    with mounted(topology, state=state) as m:
        m.create("mtty-1", U1)
        m.create("mtty-1", U2)
        m.write("bus/mdev/drivers/mtty/unbind", U1)
        assert not (m.root / "bus/mdev/devices" / U1 / "iommu_group").exists()
    assert [(r[0], r[3]) for r in recorded(state)] == [(U1, None), (U2, 1)]
    with mounted(topology, state=state) as m:
        assert m.devices() == [U1, U2]
        assert not (m.root / "bus/mdev/devices" / U1 / "driver").exists()
        devices = m.root / "bus/mdev/devices"
        assert os.path.basename(os.readlink(devices / U2 / "iommu_group")) == "1"
        new = m.create("mtty-1")
        assert os.path.basename(os.readlink(devices / new / "iommu_group")) == "0"


def test_a_510_device_bound_after_its_create_is_restored_bound(tmp_path):
    """Before 5.14 a device created while bus/mdev does not autoprobe is bound later through
    vfio_mdev's bind file: a journal record, so the restart brings it back bound in its
    group; a bind the disk refuses is undone (the device unbound again) and is EIO."""
    topology = write_topology(tmp_path, '[host]\nkernel = "5.10"\n[[parent]]\n'
                              'driver = "mtty"\n[parent.options]\nports = 200\n')
    devices = "bus/mdev/devices"
    with small_disk(tmp_path / "disk", "1m") as disk:
        state = disk / "state.json"
        with mounted(topology, state=state) as m:
            m.write("bus/mdev/drivers_autoprobe", "0")
            m.create("mtty-1", U1)
            m.create("mtty-1", U2)
            m.write("bus/mdev/drivers/vfio_mdev/bind", U1)
            assert [(r[0], r[3]) for r in recorded(state)] == [(U1, 0), (U2, None)]
            filler = fill(disk)
            for i in range(100):  # creates fill the file's last page, then the disk refuses
                try:
                    m.create("mtty-1", f"{i:08x}-0000-4000-8000-000000000000")
                except OSError as exc:
                    assert exc.errno == errno.EIO
                    break
            with pytest.raises(OSError) as refused:
                m.write("bus/mdev/drivers/vfio_mdev/bind", U2)
            assert refused.value.errno == errno.EIO
            assert not (m.root / devices / U2 / "driver").exists()
            filler.unlink()
        with mounted(topology, state=state) as m:
            assert os.readlink(m.root / devices / U1 / "iommu_group").endswith("/0")
            assert os.readlink(m.root / devices / U1 / "driver").endswith("/vfio_mdev")
            assert not (m.root / devices / U2 / "driver").exists()


GPUS = """
[[gpu]]
driver = "nvidia-sriov"
address = "0000:41:00.0"
[gpu.options]
model = "L40S"

[[gpu]]
driver = "nvidia-sriov"
address = "0000:81:00.0"
[gpu.options]
model = "A100"
vfs = 2
"""


def test_vfs_and_their_vgpus_survive_kill_9(tmp_path):
    """Nothing lost on SR-IOV GPUs either: the VFs a write to sriov_numvfs made, with their
    IOMMU groups, the vGPU type and parameters an L40S VF holds, the VFs an A100 had
    disabled and enabled again, and an mdev on an A100 VF, all back after kill -9."""
    topology = write_topology(tmp_path, GPUS)
    root, state = tmp_path / "sys", tmp_path / "state.json"
    pci = root / "bus/pci/devices"
    with foreground(topology, state, root) as proc:
        (pci / "0000:41:00.0/sriov_numvfs").write_text("3")
        (pci / "0000:41:00.5/nvidia/current_vgpu_type").write_text("1152")
        (pci / "0000:41:00.5/nvidia/vgpu_params").write_text("frame_rate_limiter=0")
        (pci / "0000:81:00.0/sriov_numvfs").write_text("0")
        (pci / "0000:81:00.0/sriov_numvfs").write_text("3")
        (root / "class/mdev_bus/0000:81:00.6/mdev_supported_types/nvidia-472/create").write_text(U1)
        links = {vf: os.readlink(pci / vf / "iommu_group") for vf in os.listdir(pci)}
        proc.kill()
        proc.wait()
        remount(topology, state, root)
        assert (pci / "0000:41:00.0/sriov_numvfs").read_text() == "3\n"
        assert (pci / "0000:41:00.5/nvidia/current_vgpu_type").read_text() == "1152\n"
        assert (pci / "0000:41:00.5/nvidia/vgpu_params").read_text() == "frame_rate_limiter=0\n"
        assert (pci / "0000:41:00.4/nvidia/current_vgpu_type").read_text() == "0\n"
        assert (pci / "0000:81:00.0/sriov_numvfs").read_text() == "3\n"
        assert {vf: os.readlink(pci / vf / "iommu_group") for vf in os.listdir(pci)} == links
        assert os.readlink(root / f"bus/mdev/devices/{U1}") == \
            f"../../../devices/pci0000:00/0000:81:00.6/{U1}"
        assert os.readlink(root / f"bus/mdev/devices/{U1}/mdev_type") == \
            "../mdev_supported_types/nvidia-472"
