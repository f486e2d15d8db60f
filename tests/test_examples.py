"""The examples as programs: the shell script against real mounts, the custom driver's scheme,
the two-host topologies (examples/README.md)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TWO_HOSTS, needs_fuse

from mdevfs.config import Topology

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPT = EXAMPLES / "migration_check.sh"


def script(source: Path, target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), str(source), str(target)], capture_output=True, text=True,
                          timeout=30)


def real(mount, type_id: str) -> str:
    return os.path.realpath(mount.type_dir(type_id))


# --- migration_check.sh --------------------------------------------------------------------

@needs_fuse
def test_script_compatible_types(hosts):
    """Seed "Example Usage" (1) cat the source's string, (2) echo it to the target: both succeed."""
    a, b = hosts
    src, tgt = real(a, "acme-small"), real(b, "acme-small")
    out = script(a.type_dir("acme-small"), b.type_dir("acme-small"))
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout == (f"# basename {src}; basename {tgt}\n"
                          f"# cat {src}/migration_version\n"
                          "acme-2.1-small\n"
                          f"# echo acme-2.1-small > {tgt}/migration_version\n"
                          "compatible\n")


@needs_fuse
def test_script_refused_write(hosts):
    """Seed: "If this write fails, the source and target migration versions are not compatible";
    echo reports the driver's errno (EINVAL: 2.3 → 2.1)."""
    a, b = hosts
    out = script(b.type_dir("acme-small"), a.type_dir("acme-small"))
    assert out.returncode == 1
    assert out.stdout.endswith("\nincompatible: the target refused the source's "
                               "migration_version\n")
    assert out.stderr.endswith("echo: write error: Invalid argument\n")


@needs_fuse
def test_script_failed_read(hosts):
    """Seed: "If reading the source migration_version generates an error, migration is not
    possible"; cat reports the driver's errno (ENODEV)."""
    a, b = hosts
    src = real(b, "acme-large")
    out = script(b.type_dir("acme-large"), a.type_dir("acme-large"))
    assert out.returncode == 1
    assert out.stdout.endswith(f"# cat {src}/migration_version\n"
                               "incompatible: reading the source's migration_version failed\n")
    assert out.stderr == f"cat: '{src}/migration_version': No such device\n"


@needs_fuse
def test_script_no_attribute_and_different_types(hosts):
    """Seed conditions (1) no attribute (mtty) and, for type nodes, (2) different types."""
    a, b = hosts
    out = script(a.type_dir("mtty-1"), b.type_dir("mtty-1"))
    assert (out.returncode, out.stdout) == (
        1, f"incompatible: {real(a, 'mtty-1')} has no migration_version\n")
    out = script(a.type_dir("acme-small"), b.type_dir("acme-large"))
    assert out.returncode == 1
    assert out.stdout.endswith("incompatible: the types differ: acme-small and acme-large\n")


@needs_fuse
def test_script_device_nodes(hosts):
    """Seed 3/4 "Example Usage" with /sys/bus/mdev/devices/$UUID paths: no type check."""
    a, b = hosts
    uuid_a, uuid_b = a.create("acme-small"), b.create("acme-small")
    try:
        dev_a = a.root / "bus/mdev/devices" / uuid_a
        dev_b = b.root / "bus/mdev/devices" / uuid_b
        out = script(dev_a, dev_b)
        assert (out.returncode, out.stdout) == (
            0, f"# cat {os.path.realpath(dev_a)}/migration_version\nacme-2.1-small\n"
            f"# echo acme-2.1-small > {os.path.realpath(dev_b)}/migration_version\ncompatible\n")
        out = script(dev_b, dev_a)
        assert out.returncode == 1
        assert out.stderr.endswith("echo: write error: Invalid argument\n")
    finally:
        a.remove(uuid_a)
        b.remove(uuid_b)


@needs_fuse
def test_script_usage(hosts):
    """Exit 2 for a wrong argument count or a path that is neither an mdev type nor a device."""
    a, _ = hosts
    assert subprocess.run([str(SCRIPT)], capture_output=True).returncode == 2
    out = script(a.root / "class/mdev_bus", a.type_dir("acme-small"))
    assert out.returncode == 2
    assert out.stderr == (f"{SCRIPT}: {a.root}/class/mdev_bus: "
                          "not an mdev type or device directory\n")


# --- custom_driver.py and two_hosts/ ----------------------------------------------------------

def acme(topology: str, type_id: str, tmp_path: Path, monkeypatch):
    """The example driver's Migration for a type, loaded by file path from another directory."""
    monkeypatch.chdir(tmp_path)  # the driver path is relative to the topology file, not to cwd
    host = Topology.from_toml(TWO_HOSTS / topology).build()
    mtype = host.parents["0000:81:00.0"].types[type_id]
    return mtype.parent.driver.migration(mtype)


@pytest.mark.parametrize("source, err", [
    ("acme-2.1-small", None), ("acme-2.0-small", None),
    ("acme-2.2-small", errno.EINVAL),   # a newer minor than the target's
    ("acme-1.1-small", errno.EINVAL),   # another major
    ("acme-3.0-small", errno.EINVAL),
    ("acme-2.1-large", errno.EINVAL),   # another type
    ("acme-2.1", errno.EINVAL),         # wrong string format
    ("8086-1912-GVTg_V5_4-00000001", errno.EINVAL),
])
def test_custom_driver_scheme(tmp_path, monkeypatch, source, err):
    """The example scheme: same type, same major, target minor ≥ source minor; else EINVAL."""
    migration = acme("host_a.toml", "acme-small", tmp_path, monkeypatch)
    assert migration.version() == "acme-2.1-small"
    if err is None:
        migration.check(source)
    else:
        with pytest.raises(OSError) as exc:
            migration.check(source)
        assert exc.value.errno == err


def test_custom_driver_unsupported_type(tmp_path, monkeypatch):
    """Option ``unsupported``: the attribute exists but read and write fail with ENODEV."""
    migration = acme("host_b.toml", "acme-large", tmp_path, monkeypatch)
    for call in (migration.version, lambda: migration.check("acme-2.3-large")):
        with pytest.raises(OSError) as exc:
            call()
        assert exc.value.errno == errno.ENODEV


@needs_fuse
def test_custom_driver_through_a_mount(hosts):
    """§5.2: the attribute (0644) at the type and the device node reads as the string + newline."""
    a, _ = hosts
    uuid = a.create("acme-large")
    try:
        for node in (a.type_dir("acme-large"), a.root / "bus/mdev/devices" / uuid):
            assert (node / "migration_version").stat().st_mode & 0o777 == 0o644
            assert (node / "migration_version").read_text() == "acme-2.1-large\n"
    finally:
        a.remove(uuid)


def test_every_example_is_documented():
    readme = (EXAMPLES / "README.md").read_text()
    for path in EXAMPLES.rglob("*"):
        if path.is_file() and path.name != "README.md" and "__pycache__" not in path.parts:
            assert f"`{path.relative_to(EXAMPLES)}`" in readme or f"`{path.parent.name}/`" in readme


def test_sriov_vgpu_lifecycle_script():
    """Examples/sriov: the script runs unchanged in mdevfs run, as on a real L40S host."""
    examples = EXAMPLES / "sriov"
    done = subprocess.run([sys.executable, "-m", "mdevfs", "run", "--config",
                           str(examples / "l40s.toml"), "--", "sh",
                           str(examples / "vgpu-lifecycle.sh")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "enabled 32 of 32 VFs on 0000:41:00.0\n"
        "0000:41:00.4 is a NVIDIA L40S-8Q (type 1152), IOMMU group 1\n"
        "0000:41:00.5 offers: 1152  : NVIDIA L40S-8Q;\n"
        "0000:41:00.4 is free again: 23 types offered\n"
        "VFs disabled: 0 left\n")
