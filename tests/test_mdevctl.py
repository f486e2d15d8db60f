"""Debian's mdevctl 1.2.0, unmodified, as the acceptance client .

Every command runs inside an ``mdevfs run`` namespace, where the emulated tree is
/sys, and must print what it prints on a real kernel (the texts below) with
the same exit status. mdevctl ends every listing with an empty line (it prints
its text with println!), on a real kernel too.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import MTTY_ONLY, needs_fuse, write_topology

from mdevfs import namespace
from mdevfs.testing import mounted

needs_namespace = pytest.mark.skipif(namespace.unsupported() is not None,
                                     reason=namespace.unsupported() or "")
pytestmark = [needs_fuse, needs_namespace]

U1 = "11111111-2222-3333-4444-555555555555"
U2 = "22222222-3333-4444-5555-666666666666"
UUID_V4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

# "mdevctl types" as mdevctl 1.2.0 prints it on a kernel with the mtty sample loaded
TYPES_TEXT = """\
mtty
  mtty-1
    Available instances: 24
    Device API: vfio-pci
    Name: Single port serial
  mtty-2
    Available instances: 12
    Device API: vfio-pci
    Name: Dual port serial

"""

# mtty with 2 ports (mtty-2 fits once), a driver whose probe refuses every create
# although it shows room, and one whose devices have a read-write attribute.
LAB = """
[[parent]]
driver = "mtty"
[parent.options]
ports = 2

[[parent]]
driver = "lab_drivers.py:Liar"

[[parent]]
driver = "lab_drivers.py:Knob"
"""

LAB_DRIVERS = '''
import errno
from mdevfs.driver import Attribute, BaseDriver, MdevTypeSpec
from mdevfs.errors import fail


class Liar(BaseDriver):
    """Available_instances says 1, and probe refuses every create with ENOSPC."""
    name = mdev_driver = default_parent = "liar"
    subsystem = ("class", "liar")
    default_path = "devices/virtual/liar/liar"

    def types(self):
        return (MdevTypeSpec("1"),)

    def available_instances(self, mtype):
        return 1

    def probe(self, mdev):
        fail(errno.ENOSPC)


class Knob(BaseDriver):
    """Each device has a read-write "level": low (at first) or high; else EINVAL."""
    name = mdev_driver = default_parent = "knob"
    subsystem = ("class", "knob")
    default_path = "devices/virtual/knob/knob"

    def types(self):
        return (MdevTypeSpec("1"),)

    def max_instances(self):
        return 4

    def device_attributes(self, mdev):
        def store(buf):
            value = buf.decode().strip()
            if value not in ("low", "high"):
                fail(errno.EINVAL)
            mdev.vendor["level"] = value
        return (Attribute("level", show=lambda: mdev.vendor.get("level", "low"), store=store),)
'''


def caused(error: str, cause: str) -> str:
    """How mdevctl (anyhow) prints an error with its OS-level cause."""
    return f"Error: {error}\n\nCaused by:\n    {cause}\n"


def mdevctl(m, *args: str) -> tuple[int, str, str]:
    done = m.run(["mdevctl", *args])
    return done.returncode, done.stdout, done.stderr


@pytest.fixture
def m(mtty, tmp_path):
    """The shared mtty-only mount (conftest), with this test's own /etc/mdevctl.d."""
    mtty.mdevctl_dir = tmp_path / "mdevctl.d"
    mtty.mdevctl_dir.mkdir()
    yield mtty
    mtty.mdevctl_dir = None


@pytest.fixture(scope="module")
def lab_mount(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lab")
    write_topology(directory, LAB_DRIVERS, "lab_drivers.py")
    with mounted(write_topology(directory, LAB)) as mount:
        yield mount
        assert mount.alive(), mount.log()


@pytest.fixture
def lab(lab_mount, tmp_path):
    lab_mount.reset()
    lab_mount.mdevctl_dir = tmp_path / "mdevctl.d"
    lab_mount.mdevctl_dir.mkdir()
    return lab_mount


# --- types ---------------------------------------------------------------------------------

def test_types_text(m):
    assert mdevctl(m, "types") == (0, TYPES_TEXT, "")
    assert mdevctl(m, "types", "-p", "mtty") == (0, TYPES_TEXT, "")


def test_types_dumpjson(m):
    rc, out, err = mdevctl(m, "types", "--dumpjson")
    assert (rc, err) == (0, "")
    assert json.loads(out) == [{"mtty": [
        {"mtty-1": {"available_instances": 24, "device_api": "vfio-pci",
                    "name": "Single port serial"}},
        {"mtty-2": {"available_instances": 12, "device_api": "vfio-pci",
                    "name": "Dual port serial"}}]}]
    assert out == json.dumps(json.loads(out), indent=2) + "\n"  # serde's pretty printer


def test_types_through_the_mdevfs_run_command(tmp_path):
    config = write_topology(tmp_path, MTTY_ONLY)
    done = subprocess.run([sys.executable, "-m", "mdevfs", "run", "--config", str(config), "--",
                           "mdevctl", "types"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, TYPES_TEXT, "")


# --- start, list, stop ---------------------------------------------------------------------

def test_start_with_a_uuid_creates_the_device(m):
    assert mdevctl(m, "start", "-p", "mtty", "-t", "mtty-1", "-u", U1) == (0, "", "")
    assert m.devices() == [U1]
    assert m.read("class/mdev_bus/mtty/mdev_supported_types/mtty-1/available_instances") == "23\n"


def test_start_without_a_uuid_prints_the_one_it_made(m):
    rc, out, err = mdevctl(m, "start", "-p", "mtty", "-t", "mtty-2")
    assert (rc, err) == (0, "")
    assert UUID_V4.fullmatch(out.removesuffix("\n"))
    assert m.devices() == [out.strip()]


def test_list_right_after_start(m):
    assert mdevctl(m, "start", "-p", "mtty", "-t", "mtty-1", "-u", U1)[0] == 0
    assert mdevctl(m, "start", "-p", "mtty", "-t", "mtty-2", "-u", U2)[0] == 0
    assert mdevctl(m, "list") == (
        0, f"{U1} mtty mtty-1 manual\n{U2} mtty mtty-2 manual\n\n", "")
    assert mdevctl(m, "list", "-u", U2) == (0, f"{U2} mtty mtty-2 manual\n\n", "")


def test_stop_removes_the_device(m):
    assert mdevctl(m, "start", "-p", "mtty", "-t", "mtty-1", "-u", U1)[0] == 0
    assert mdevctl(m, "stop", "-u", U1) == (0, "", "")
    assert m.devices() == []
    assert mdevctl(m, "list") == (0, "\n", "")
    assert mdevctl(m, "stop", "-u", U1) == (
        1, "", caused(f"Error removing device {U1}", "No such file or directory (os error 2)"))


def test_start_list_stop_list_in_one_run(tmp_path):
    """The issue's "done when" scenario, through the `mdevfs run` command."""
    config = write_topology(tmp_path, MTTY_ONLY)
    script = (f"mdevctl start -p mtty -t mtty-1 -u {U1} && mdevctl list && "
              f"mdevctl stop -u {U1} && mdevctl list")
    done = subprocess.run([sys.executable, "-m", "mdevfs", "run", "--config", str(config), "--",
                           "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (
        0, f"{U1} mtty mtty-1 manual\n\n" + "\n", "")


# --- definitions ---------------------------------------------------------------------------

def test_define_then_list_d_and_start(m):
    assert mdevctl(m, "define", "-u", U2, "-p", "mtty", "-t", "mtty-2") == (0, "", "")
    assert json.loads((m.mdevctl_dir / "mtty" / U2).read_text()) == {
        "mdev_type": "mtty-2", "start": "manual", "attrs": []}
    assert mdevctl(m, "list", "-d") == (0, f"{U2} mtty mtty-2 manual\n\n", "")
    assert mdevctl(m, "list") == (0, "\n", "")
    assert mdevctl(m, "start", "-u", U2) == (0, "", "")
    assert m.devices() == [U2]
    assert mdevctl(m, "list", "-d") == (0, f"{U2} mtty mtty-2 manual (active)\n\n", "")
    assert mdevctl(m, "list") == (0, f"{U2} mtty mtty-2 manual (defined)\n\n", "")


def test_define_a_running_device_reads_parent_and_type_from_sysfs(m):
    assert mdevctl(m, "start", "-p", "mtty", "-t", "mtty-1", "-u", U1)[0] == 0
    assert mdevctl(m, "define", "-u", U1) == (0, "", "")
    assert json.loads((m.mdevctl_dir / "mtty" / U1).read_text()) == {
        "mdev_type": "mtty-1", "start": "manual", "attrs": []}


def test_start_parent_mdevs_starts_the_auto_definitions(m):
    assert mdevctl(m, "define", "-u", U1, "-p", "mtty", "-t", "mtty-1", "--auto")[0] == 0
    assert mdevctl(m, "define", "-u", U2, "-p", "mtty", "-t", "mtty-2")[0] == 0
    assert mdevctl(m, "start-parent-mdevs", "mtty") == (0, "", "")
    assert m.devices() == [U1]
    assert mdevctl(m, "list") == (0, f"{U1} mtty mtty-1 auto (defined)\n\n", "")


# --- error paths ---------------------------------------------------------------------------

def test_an_already_running_uuid(m):
    assert mdevctl(m, "start", "-p", "mtty", "-t", "mtty-1", "-u", U1)[0] == 0
    assert mdevctl(m, "start", "-p", "mtty", "-t", "mtty-1", "-u", U1) == (
        1, "", "Error: Device already exists\n")
    # mdevctl compares the type it reads through the device's mdev_type link
    assert mdevctl(m, "start", "-p", "mtty", "-t", "mtty-2", "-u", U1) == (
        1, "", "Error: Device exists with different type\n")
    assert m.devices() == [U1]


def test_an_unknown_parent(m):
    assert mdevctl(m, "start", "-p", "nope", "-t", "mtty-1") == (
        1, "", "Error: Unable to find parent device 'nope'\n")
    assert mdevctl(m, "start", "-p", "MTTY", "-t", "mtty-1") == (
        1, "", "Error: Unable to find parent device 'MTTY'. Did you mean 'mtty'?\n")


def test_an_unknown_type(m):
    assert mdevctl(m, "start", "-p", "mtty", "-t", "mtty-9") == (
        1, "", "Error: Parent mtty does not support mdev type mtty-9\n")
    assert m.devices() == []


def test_no_available_instances(lab):
    rc, out, _ = mdevctl(lab, "start", "-p", "mtty", "-t", "mtty-2")
    assert (rc, bool(UUID_V4.fullmatch(out.strip()))) == (0, True)
    assert mdevctl(lab, "start", "-p", "mtty", "-t", "mtty-2") == (
        1, "", "Error: No available instances of mtty-2 on mtty\n")
    assert mdevctl(lab, "start", "-p", "mtty", "-t", "mtty-1") == (
        1, "", "Error: No available instances of mtty-1 on mtty\n")


def test_a_create_the_driver_refuses(lab):
    assert mdevctl(lab, "start", "-p", "liar", "-t", "liar-1", "-u", U1) == (
        1, "", caused(f"Failed to create mdev {U1}, type liar-1 on liar",
                      "No space left on device (os error 28)"))
    assert lab.devices() == []


# --- per-device attributes, written right after create -------------------------------------

def test_attributes_are_written_after_create(lab):
    assert mdevctl(lab, "define", "-u", U1, "-p", "knob", "-t", "knob-1") == (0, "", "")
    assert mdevctl(lab, "modify", "-u", U1, "--addattr", "level", "--value", "high") == (0, "", "")
    assert mdevctl(lab, "start", "-u", U1) == (0, "", "")
    assert lab.read(f"bus/mdev/devices/{U1}/level") == "high\n"
    assert mdevctl(lab, "list", "-v") == (
        0, f'{U1} knob knob-1 manual (defined)\n  Attrs:\n    @{{0}}: {{"level":"high"}}\n\n', "")


def test_a_refused_attribute_stops_the_device(lab):
    assert mdevctl(lab, "define", "-u", U1, "-p", "knob", "-t", "knob-1")[0] == 0
    assert mdevctl(lab, "modify", "-u", U1, "--addattr", "level", "--value", "max")[0] == 0
    assert mdevctl(lab, "start", "-u", U1) == (
        1, "", caused("Failed to write max to attribute level", "Invalid argument (os error 22)"))
    assert lab.devices() == []  # mdevctl stopped it again
