"""`mdevfs matrix TOPOLOGY...` on the two example hosts: the table, the SVG, the mounts' end."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import TWO_HOSTS, needs_fuse, write_topology

pytestmark = needs_fuse
LABELS = [f"{host}:{parent}:{type_id}" for host in ("host_a", "host_b")
          for parent, type_id in (("0000:81:00.0", "acme-large"), ("0000:81:00.0", "acme-small"),
                                  ("mtty", "mtty-1"), ("mtty", "mtty-2"))]
# rows: source, columns: target, in the order of LABELS
EXPECTED = """
✓✗✗✗✗✗✗✗
✗✓✗✗✗✓✗✗
✗✗✗✗✗✗✗✗
✗✗✗✗✗✗✗✗
✗✗✗✗✗✗✗✗
✗✗✗✗✗✓✗✗
✗✗✗✗✗✗✗✗
✗✗✗✗✗✗✗✗
""".split()
ROW = re.compile(r"(\d+) (\S+) +((?:[✓✗] )*[✓✗])")


def matrix(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs the command with its temporary mounts in tmp_path/tmp, so that leftovers show."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    return subprocess.run([sys.executable, "-m", "mdevfs", "matrix", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def assert_nothing_left(tmp_path: Path) -> None:
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f]
    assert not [m for m in mounts if m.startswith(str(tmp_path))]
    assert os.listdir(tmp_path / "tmp") == []


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("matrix")
    out = matrix(tmp, str(TWO_HOSTS / "host_a.toml"), str(TWO_HOSTS / "host_b.toml"),
                 "--svg", str(tmp / "m.svg"), "--why", "--all")
    return tmp, out


def test_by_default_only_same_type_pairs(tmp_path):
    """Without --all, a table per type id: a pair of different types is incompatible by
    condition 2 and said once, not in most cells of the full table."""
    out = matrix(tmp_path, str(TWO_HOSTS / "host_a.toml"), str(TWO_HOSTS / "host_b.toml"), "--why")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:9] == [
        "migration_version compatibility of same-type pairs (row: source, column: target); "
        "--all compares every pair",
        "acme-large:",
        "                         1 2",
        "  1 host_a:0000:81:00.0  ✓ ✗",
        "  2 host_b:0000:81:00.0  ✗ ✗",
        "acme-small:",
        "                         1 2",
        "  1 host_a:0000:81:00.0  ✓ ✓",
        "  2 host_b:0000:81:00.0  ✗ ✓"]
    assert lines[9:11] == ["mtty-1:", " " * 17 + "1 2"]
    assert ("host_b:0000:81:00.0:acme-small → host_a:0000:81:00.0:acme-small: incompatible: "
            "writing the source's migration_version to host_a:0000:81:00.0:acme-small failed: "
            "Invalid argument (EINVAL) (driver: refusing 'acme-2.3-small': source minor 3 is "
            "newer than ours, 1)") in lines
    assert not [line for line in lines if "the types differ" in line]
    assert sum(" → " in line for line in lines) == 4 * 4 - 4  # 16 same-type pairs, 4 ✓
    assert_nothing_left(tmp_path)


def test_table_cells(run):
    """The proposal (v5) conditions per ordered pair of types (type-node variant, ABI §5.2(a)): A's
    acme-small (2.1) → B's (2.3) only; each ACME type to itself on its host except B's
    acme-large (read ENODEV); mtty (no attribute) nowhere."""
    tmp, out = run
    assert out.returncode == 0, out.stderr
    rows = [ROW.fullmatch(line) for line in out.stdout.splitlines()]
    rows = [m for m in rows if m]
    assert [int(m[1]) for m in rows] == list(range(1, 9))
    assert [m[2] for m in rows] == LABELS
    assert [m[3].replace(" ", "") for m in rows] == EXPECTED
    lines = out.stdout.splitlines()
    assert lines[0] == "migration_version compatibility (row: source type, column: target type)"
    assert lines[1].split() == ["source", "\\", "target", *map(str, range(1, 9))]
    assert lines[10] == ("legend: ✓ compatible (the target accepted the source's string), "
                         "✗ incompatible (as `mdevfs check` would say)")
    assert lines[-1] == f"wrote {tmp / 'm.svg'}"


def test_why_names_the_failed_condition_and_errno(run):
    """--why gives `mdevfs check`'s reason per ✗: proposal's conditions (1)–(4), driver errnos."""
    _, out = run
    a_large, a_small, a_mtty1 = LABELS[0], LABELS[1], LABELS[2]
    b_large, b_small = LABELS[4], LABELS[5]
    for line in (
        f"6 → 2: incompatible: writing the source's migration_version to {a_small} failed: "
        "Invalid argument (EINVAL) (driver: refusing 'acme-2.3-small': source minor 3 is newer "
        "than ours, 1)",
        f"1 → 5: incompatible: writing the source's migration_version to {b_large} failed: "
        "No such device (ENODEV) (driver: migration not supported on type large)",
        f"5 → 1: incompatible: reading the migration_version of {b_large} failed: "
        "No such device (ENODEV) (driver: migration not supported on type large)",
        f"2 → 1: incompatible: the types differ: acme-small ({a_small}) and "
        f"acme-large ({a_large})",
        f"2 → 3: incompatible: {a_mtty1} has no migration_version attribute "
        "(no migration support)",
    ):
        assert line in out.stdout.splitlines()
    assert "2 → 6:" not in out.stdout and b_small in out.stdout
    assert sum(line.startswith(tuple("12345678")) and " → " in line
               for line in out.stdout.splitlines()) == 64 - 4


def test_svg_is_valid_and_names_the_types(run):
    """The image: well-formed SVG, every type named, one cell per pair with its verdict as title."""
    tmp, _ = run
    root = ET.parse(tmp / "m.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    texts = [t.text for t in root.iter(f"{ns}text")]
    for label in LABELS:
        assert texts.count(label) == 2  # row and column
    titles = [t.text for t in root.iter(f"{ns}title")]
    assert len(titles) == 64
    assert titles[5 * 8 + 1] == (
        f"{LABELS[5]} → {LABELS[1]}: incompatible: writing the source's migration_version to "
        f"{LABELS[1]} failed: Invalid argument (EINVAL) (driver: refusing 'acme-2.3-small': "
        "source minor 3 is newer than ours, 1)")
    assert titles[1 * 8 + 5].startswith(f"{LABELS[1]} → {LABELS[5]}: compatible")


def test_mounts_are_gone_afterwards(run):
    """Mount only under temporary directories and always unmount."""
    tmp, _ = run
    assert_nothing_left(tmp)


def test_a_host_that_fails_to_mount_unmounts_the_others(tmp_path):
    """A daemon that dies: exit 2 naming the problem, and host A, already mounted, is unmounted."""
    (tmp_path / "dies.py").write_text(
        "import sys\nfrom mdevfs.driver import BaseDriver\n\n\n"
        "class Driver(BaseDriver):\n"
        "    def __init__(self, options=None):\n"
        "        super().__init__(options)\n"
        "        if '--ready-fd' in sys.argv:\n"
        "            raise RuntimeError('no serving today')\n")
    dies = write_topology(tmp_path, '[[parent]]\ndriver = "dies.py"\n', "dies.toml")
    out = matrix(tmp_path, str(TWO_HOSTS / "host_a.toml"), str(dies))
    assert out.returncode == 2
    assert out.stderr == (f"mdevfs: a host did not mount: {dies}: parent #1 (driver 'dies.py'): "
                          f"the driver refused its options: RuntimeError: no serving today\n")
    assert_nothing_left(tmp_path)


def test_bad_topology_mounts_nothing(tmp_path):
    """A bad file is refused (exit 2, file and problem named) before any host is mounted."""
    bad = write_topology(tmp_path, '[[parent]]\ndriver = "mtty"\nfoo = 1\n', "bad.toml")
    out = matrix(tmp_path, str(TWO_HOSTS / "host_a.toml"), str(bad))
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == f"mdevfs: {bad}: parent #1: unknown key(s) foo\n"
    assert_nothing_left(tmp_path)


def test_same_stem_twice_gets_distinct_host_names(tmp_path):
    """Labels stay unique when two topology files share a stem: host_a, host_a#2."""
    out = matrix(tmp_path, str(TWO_HOSTS / "host_a.toml"), str(TWO_HOSTS / "host_a.toml"), "--all")
    assert out.returncode == 0, out.stderr
    labels = [m[2] for m in map(ROW.fullmatch, out.stdout.splitlines()) if m]
    assert labels == LABELS[:4] + [label.replace("host_a", "host_a#2") for label in LABELS[:4]]
    # same driver version on both: each ACME type migrates across, mtty never
    cells = [m[3].replace(" ", "") for m in map(ROW.fullmatch, out.stdout.splitlines()) if m]
    assert cells[0] == "✓✗✗✗✓✗✗✗" and cells[5] == "✗✓✗✗✗✓✗✗"
    assert_nothing_left(tmp_path)
