"""Libvirt 9.0's node-device driver against the default topology .

libvirtd runs with only the node-device driver inside an ``mdevfs run`` namespace,
as a test host needs it: tmpfs on /run, /var/lib/libvirt,
/var/cache/libvirt and /var/log/libvirt, its sockets in /run/lv, no auth. It
enumerates /sys at start (coldplug) and learns of every later change from the
udev messages mdevfs sends into the namespace (mdevfs.uevent). Each test runs
virsh and mdevctl in that namespace with nsenter.

Of the default topology's parents libvirt lists mtty and the two PCI GPUs. It
never lists mdpy or mbochs, on a real kernel either: udevGetDeviceType knows a
class device with mdev types only by ``SUBSYSTEM=mtty`` (libvirtd logs "Could
not determine device type for device with sysfs name 'mdpy'").
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import needs_fuse

from mdevfs import namespace
from mdevfs.testing import mounted

NODEDEV_SO = sorted(glob.glob("/usr/lib/*/libvirt/connection-driver/libvirt_driver_nodedev.so"))
pytestmark = [
    needs_fuse,
    pytest.mark.skipif(namespace.unsupported() is not None, reason=namespace.unsupported() or ""),
    pytest.mark.skipif(not (NODEDEV_SO and shutil.which("libvirtd") and shutil.which("virsh")),
                       reason="needs libvirt-daemon and libvirt-clients (make install)"),
]

URI = "nodedev:///system?socket=/run/lv/libvirt-sock"
U1 = "11111111-2222-3333-4444-555555555555"
U2 = "22222222-3333-4444-5555-666666666666"
GVT, NVIDIA = "0000:00:02.0", "0000:41:00.0"

# Inside the namespace: private state directories, libvirtd with the nodedev driver only.
# /run/udev/control tells libudev a udev daemon is there (systemd >= 248 disables udev
# monitors otherwise, unless /dev is a devtmpfs). Then wait for EOF on stdin and stop it.
SETUP = r"""
set -e
for d in /run /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do
    mount -t tmpfs tmpfs "$d"    # all exist where libvirt-daemon is installed
done
mkdir -p /run/lv/drivers /run/udev
touch /run/udev/control
ln -s "$1" /run/lv/drivers/
cat > /run/lv/libvirtd.conf <<EOF
unix_sock_dir = "/run/lv"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:/run/lv/libvirtd.log"
EOF
LIBVIRT_DRIVER_DIR=/run/lv/drivers /usr/sbin/libvirtd --config /run/lv/libvirtd.conf \
    --pid-file /run/lv/libvirtd.pid &
lv=$!
echo "$lv"
until virsh -q -c '""" + URI + r"""' nodedev-list >/dev/null 2>&1; do
    kill -0 "$lv"    # ends the script if libvirtd died
    sleep 0.05
done
echo ready
read -r _ || true
kill "$lv"
wait "$lv" || true
"""


class Libvirt:
    """Libvirtd in a namespace; :meth:`sh` runs a command there."""

    def __init__(self, mount, proc: subprocess.Popen[str], pid: int) -> None:
        self.mount, self.proc, self.pid = mount, proc, pid

    def sh(self, *argv: str, check: bool = True, **kwargs) -> str:
        done = subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", "-n", "--", *argv],
                              capture_output=True, text=True, timeout=90, **kwargs)
        if check:
            assert done.returncode == 0, f"{argv}: {done.stderr}\n{self.log()}"
        return done.stdout

    def virsh(self, *args: str, **kwargs) -> str:
        return self.sh("virsh", "-c", URI, *args, **kwargs)

    def listed(self, cap: str) -> list[str]:
        return sorted(self.virsh("nodedev-list", "--cap", cap).split())

    def xml(self, name: str) -> ET.Element:
        return ET.fromstring(self.virsh("nodedev-dumpxml", name))

    def wait_until(self, cap: str, test, timeout: float = 10.0) -> float:
        """Seconds until ``test(names listed under cap)`` holds."""
        start = time.monotonic()
        while not test(self.listed(cap)):
            assert time.monotonic() - start < timeout, f"{cap}: {self.listed(cap)}\n{self.log()}"
            time.sleep(0.01)
        return time.monotonic() - start

    def log(self) -> str:
        return self.sh("cat", "/run/lv/libvirtd.log", check=False)[-3000:]


@pytest.fixture(scope="module")
def libvirt():
    with mounted() as m:
        argv = namespace.command_line(m.root, ["bash", "-c", SETUP, "setup", NODEDEV_SO[0]],
                                      uevents=m.uevents)
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        pid = int(proc.stdout.readline())
        try:
            assert proc.stdout.readline() == "ready\n"
            yield Libvirt(m, proc, pid)
        finally:
            proc.stdin.close()  # the script stops libvirtd and ends
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            with contextlib.suppress(OSError):  # only if it outlived the script
                if b"libvirtd" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def clean(libvirt):
    yield libvirt
    for uuid in libvirt.mount.devices():
        libvirt.mount.remove(uuid)
    libvirt.wait_until("mdev", lambda names: names == [])


def test_each_parent_that_libvirt_knows_is_listed_with_its_types(libvirt):
    """Coldplug: the parent's uevent and subsystem; for a PCI parent also vendor,
    device, class and config (udevProcessPCI)."""
    assert libvirt.listed("mdev_types") == ["mtty_mtty", "pci_0000_00_02_0", "pci_0000_41_00_0"]
    root = libvirt.mount.root
    for name, parent in (("mtty_mtty", "mtty"), ("pci_0000_00_02_0", GVT),
                         ("pci_0000_41_00_0", NVIDIA)):
        types = root / "class/mdev_bus" / parent / "mdev_supported_types"
        shown = {t.get("id"): (t.findtext("name"), t.findtext("deviceAPI"),
                               t.findtext("availableInstances"))
                 for t in libvirt.xml(name).iter("type")}
        assert shown == {t.name: ((t / "name").read_text().strip(),
                                  (t / "device_api").read_text().strip(),
                                  (t / "available_instances").read_text().strip())
                         for t in types.iterdir()}
    gpu = libvirt.xml("pci_0000_00_02_0").find("capability")
    assert (gpu.findtext("class"), gpu.find("vendor").get("id"),
            gpu.find("product").get("id")) == ("0x030000", "0x8086", "0x1912")


def test_a_device_made_by_mdevctl_appears_and_goes(clean):
    libvirt = clean
    start = time.monotonic()
    libvirt.sh("mdevctl", "start", "-u", U1, "-p", GVT, "-t", "i915-GVTg_V5_4")
    name = f"mdev_{U1.replace('-', '_')}_0000_00_02_0"
    libvirt.wait_until("mdev", lambda names: names == [name])
    seen = time.monotonic() - start
    mdev = libvirt.xml(name)
    cap = mdev.find("capability")
    assert mdev.findtext("parent") == "pci_0000_00_02_0"
    assert cap.find("type").get("id") == "i915-GVTg_V5_4"
    assert cap.findtext("parent_addr") == GVT
    group = os.path.basename(os.readlink(libvirt.mount.root / "bus/mdev/devices" / U1
                                         / "iommu_group"))
    assert cap.find("iommuGroup").get("number") == group
    # the type's count follows the tree on every dumpxml
    available = {t.get("id"): t.findtext("availableInstances")
                 for t in libvirt.xml("pci_0000_00_02_0").iter("type")}
    assert available["i915-GVTg_V5_4"] == libvirt.mount.read(
        f"class/mdev_bus/{GVT}/mdev_supported_types/i915-GVTg_V5_4/available_instances").strip()
    start = time.monotonic()
    libvirt.sh("mdevctl", "stop", "-u", U1)
    libvirt.wait_until("mdev", lambda names: names == [])
    gone = time.monotonic() - start
    print(f"libvirt saw the device {seen * 1000:.0f} ms after mdevctl start began, "
          f"lost it {gone * 1000:.0f} ms after mdevctl stop began (virsh polls included)")


def test_nodedev_create_and_destroy_work_end_to_end(clean, tmp_path):
    """Nodedev-create runs mdevctl, then looks the device up every 5 s until the udev add
    has been handled (the event arrives during mdevctl's write, but libvirt's lookup may
    still beat its handler thread: 2 creates in 8 took 5 s, the rest about 30 ms).
    nodedev-destroy opens /dev/vfio/<group> (the namespace's: absent or empty), runs
    mdevctl stop and drops the device when the remove event comes."""
    libvirt = clean
    spec = tmp_path / "mdev.xml"
    spec.write_text(f"<device><parent>mtty_mtty</parent><capability type='mdev'>"
                    f"<type id='mtty-2'/><uuid>{U2}</uuid></capability></device>")
    name = f"mdev_{U2.replace('-', '_')}_mtty"
    start = time.monotonic()
    assert name in libvirt.virsh("nodedev-create", str(spec))
    created = time.monotonic() - start
    assert libvirt.mount.devices() == [U2]
    assert libvirt.listed("mdev") == [name]
    assert libvirt.xml(name).find("capability/type").get("id") == "mtty-2"
    libvirt.virsh("nodedev-destroy", name)
    assert libvirt.mount.devices() == []
    libvirt.wait_until("mdev", lambda names: names == [])
    print(f"nodedev-create took {created:.2f} s")  # 10 s or more: it missed the add event


def test_an_unplugged_parent_goes_and_comes_back(libvirt):
    """MDEV_STATE=unregistered then remove; add then MDEV_STATE=registered."""
    libvirt.mount.control.unplug("mtty")
    try:
        libvirt.wait_until("mdev_types", lambda names: "mtty_mtty" not in names)
    finally:
        libvirt.mount.control.plug("mtty")
    libvirt.wait_until("mdev_types", lambda names: "mtty_mtty" in names)
