"""`mdevfs check SOURCE TARGET` through real mounts of the two example hosts.

Host A runs the ACME example driver 2.1, host B 2.3 without migration for
``acme-large``; both have mtty, which has no migration_version (examples/README.md).
The conditions are the proposal's (v5 1/4 and 3/4), restated in ABI §5.2.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import needs_fuse

from mdevfs.cli import main
from mdevfs.migration import check

pytestmark = needs_fuse
ACME = "0000:81:00.0"


@pytest.fixture
def devices(hosts):
    """``devices(mount, type_id)`` creates a device, gives its bus/mdev path; all go at the end."""
    made = []

    def create(mount, type_id):
        uuid = mount.create(type_id)
        made.append((mount, uuid))
        return mount.root / "bus/mdev/devices" / uuid

    yield create
    for mount, uuid in made:
        mount.remove(uuid)


def run_check(capsys, source, target) -> tuple[int, str, str]:
    code = main(["check", str(source), str(target)])
    out = capsys.readouterr()
    return code, out.out, out.err


def types(mount, type_id):
    return mount.type_dir(type_id)


def test_compatible_type_pair(hosts, capsys):
    """§5.2 / the proposal: "compatible when ALL ... met": same type, read and write succeed → exit 0."""
    a, b = hosts
    src, tgt = types(a, "acme-small"), types(b, "acme-small")
    assert run_check(capsys, src, tgt) == (
        0, f"compatible: {tgt} accepted 'acme-2.1-small' from {src}\n", "")


def test_type_compatible_with_itself(hosts, capsys):
    """§5.2: a type node's own string is accepted by itself (read OK, write OK)."""
    a, _ = hosts
    assert run_check(capsys, types(a, "acme-large"), types(a, "acme-large"))[0] == 0


def test_different_types(hosts, capsys):
    """Seed 1/4, §5.2: for type nodes userspace checks the mdev types match first (condition 2)."""
    a, b = hosts
    src, tgt = types(a, "acme-small"), types(b, "acme-large")
    assert run_check(capsys, src, tgt) == (
        1, f"incompatible: the types differ: acme-small ({src}) and acme-large ({tgt})\n", "")


def test_type_without_the_attribute(hosts, capsys):
    """Seed condition (1), §5.2 "absent attribute means no migration support": mtty has none."""
    a, b = hosts
    src, tgt = types(a, "mtty-1"), types(b, "mtty-1")
    assert run_check(capsys, src, tgt) == (
        1, f"incompatible: {src} has no migration_version attribute (no migration support)\n", "")


def test_missing_attribute_is_checked_before_the_types(hosts, capsys):
    """Seed order: condition (1), the attribute, comes before (2), the types; target side too."""
    a, _ = hosts
    src, tgt = types(a, "acme-small"), types(a, "mtty-2")
    assert run_check(capsys, src, tgt) == (
        1, f"incompatible: {tgt} has no migration_version attribute (no migration support)\n", "")


def test_failed_read_names_the_drivers_errno(hosts, capsys):
    """Seed "(2) error when reading", §5.2 read(2) fails with the vendor's errno (ENODEV)."""
    a, b = hosts
    src, tgt = types(b, "acme-large"), types(a, "acme-large")
    assert run_check(capsys, src, tgt) == (
        1, f"incompatible: reading the migration_version of {src} failed: "
        "No such device (ENODEV)\n"
        "the driver says: migration not supported on type large\n", "")


def test_failed_write_incompatible_version(hosts, capsys):
    """Seed "(3) error when writing", §5.2 write(2) fails with the vendor's errno: 2.3 → 2.1
    is a newer minor, EINVAL."""
    a, b = hosts
    src, tgt = types(b, "acme-small"), types(a, "acme-small")
    assert run_check(capsys, src, tgt) == (
        1, f"incompatible: writing the source's migration_version to {tgt} failed: "
        "Invalid argument (EINVAL)\n"
        "the driver says: refusing 'acme-2.3-small': source minor 3 is newer than ours, 1\n", "")


def test_failed_write_target_unsupported(hosts, capsys):
    """Seed 3/4 Errno: "an errno on write(2) indicates ... the target doesn't support migration"."""
    a, b = hosts
    src, tgt = types(a, "acme-large"), types(b, "acme-large")
    assert run_check(capsys, src, tgt) == (
        1, f"incompatible: writing the source's migration_version to {tgt} failed: "
        "No such device (ENODEV)\n"
        "the driver says: migration not supported on type large\n", "")


def test_device_nodes(hosts, devices, capsys):
    """Seed 3/4, §5.2(b): device nodes after creation, through the /sys/bus/mdev/devices links."""
    a, b = hosts
    dev_a, dev_b = devices(a, "acme-small"), devices(b, "acme-small")
    assert run_check(capsys, dev_a, dev_b) == (
        0, f"compatible: {dev_b} accepted 'acme-2.1-small' from {dev_a}\n", "")
    assert run_check(capsys, dev_b, dev_a) == (
        1, f"incompatible: writing the source's migration_version to {dev_a} failed: "
        "Invalid argument (EINVAL)\n"
        "the driver says: refusing 'acme-2.3-small': source minor 3 is newer than ours, 1\n", "")


def test_device_nodes_need_no_type_check(hosts, devices, capsys):
    """Seed 3/4: at device nodes userspace does not check the types; the driver folds the type
    into its string and refuses it itself (condition 4, not 2)."""
    a, _ = hosts
    small, large = devices(a, "acme-small"), devices(a, "acme-large")
    assert run_check(capsys, small, large) == (
        1, f"incompatible: writing the source's migration_version to {large} failed: "
        "Invalid argument (EINVAL)\n"
        "the driver says: refusing 'acme-2.1-small': type not matched: small is not large\n",
        "")


def test_device_without_the_attribute(hosts, devices, capsys):
    """Seed condition (1) at device nodes: an mtty device has no migration_version."""
    a, b = hosts
    src, tgt = devices(a, "mtty-1"), devices(b, "mtty-1")
    assert run_check(capsys, src, tgt) == (
        1, f"incompatible: {src} has no migration_version attribute (no migration support)\n", "")


def test_mixed_pair_is_checked_at_the_type_nodes(hosts, devices, capsys):
    """§5.2 usage `cat .../mdev_type/migration_version`: a device paired with a type stands
    for its mdev_type; the type check (condition 2) then applies."""
    a, b = hosts
    dev = devices(a, "acme-small")
    note = (f"note: {dev} is a device and the other a type; "
            "the device's mdev_type (acme-small) stands for it\n")
    tgt = types(b, "acme-small")
    assert run_check(capsys, dev, tgt) == (
        0, note + f"compatible: {tgt} accepted 'acme-2.1-small' from {dev}\n", "")
    tgt = types(b, "acme-large")
    assert run_check(capsys, dev, tgt) == (
        1, note + f"incompatible: the types differ: acme-small ({dev}) and acme-large ({tgt})\n",
        "")


@pytest.mark.parametrize("rel, problem", [
    ("class/mdev_bus", "neither an mdev type directory (in mdev_supported_types/) "
     "nor an mdev device directory (with an mdev_type link)"),
    ("class/mdev_bus/mtty/mdev_supported_types/mtty-9", "no such directory"),
    ("class/mdev_bus/0000:81:00.0/mdev_supported_types/acme-small/name", "not a directory"),
])
def test_usage_error_for_a_path_of_neither_kind(hosts, capsys, rel, problem):
    """A path that is neither an mdev type nor an mdev device directory: exit 2, nothing checked."""
    a, _ = hosts
    bad = a.root / rel
    assert run_check(capsys, bad, types(a, "acme-small")) == (2, "", f"mdevfs: {bad}: {problem}\n")


def test_as_a_program(hosts):
    """`python -m mdevfs check` exits with the verdict: 0, 1, and 2 for a missing argument."""
    a, b = hosts
    cmd = [sys.executable, "-m", "mdevfs", "check"]
    ok = subprocess.run(cmd + [str(types(a, "acme-small")), str(types(b, "acme-small"))],
                        capture_output=True, text=True, timeout=30)
    no = subprocess.run(cmd + [str(types(b, "acme-small")), str(types(a, "acme-small"))],
                        capture_output=True, text=True, timeout=30)
    usage = subprocess.run(cmd + [str(types(a, "acme-small"))], capture_output=True, text=True,
                           timeout=30)
    assert (ok.returncode, no.returncode, usage.returncode) == (0, 1, 2)
    assert no.stdout.endswith("failed: Invalid argument (EINVAL)\nthe driver says: refusing "
                              "'acme-2.3-small': source minor 3 is newer than ours, 1\n")
    assert "the following arguments are required: TARGET" in usage.stderr


def test_plain_files_suffice(tmp_path):
    """Plain open/read/write only: any tree shaped like sysfs is checked the same way (a real
    /sys included); here regular files stand in for the attributes."""
    for host in ("a", "b"):
        node = tmp_path / host / "mdev_supported_types" / "foo-1"
        node.mkdir(parents=True)
        (node / "migration_version").write_text(f"v-{host}\n")
    verdict = check(tmp_path / "a/mdev_supported_types/foo-1",
                    tmp_path / "b/mdev_supported_types/foo-1")
    assert verdict.compatible and verdict.condition == 0
    assert (tmp_path / "b/mdev_supported_types/foo-1/migration_version").read_text() == "v-a\n"
    assert os.listdir(tmp_path / "b/mdev_supported_types/foo-1") == ["migration_version"]
