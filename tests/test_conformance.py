"""mdevfs against real kernels: the probe's dump of a mount of the kernel samples' parents must
equal the dumps recorded on Debian 12's 6.1 and 6.12 kernels (tests/conformance/golden, made by
tests/conformance/record --golden), path by path and errno by errno. `make conformance` records
the kernels afresh."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_fuse

from mdevfs.testing import mounted

HERE = Path(__file__).parent / "conformance"
GOLDEN = sorted((HERE / "golden").glob("kernel-*.txt"))

pytestmark = needs_fuse


def compare(kernel: Path, mdevfs: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HERE / "compare.py"), str(kernel), str(mdevfs)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def dump(tmp_path_factory) -> Path:
    """The probe run against a fresh mount, as mdevfs-dump.sh does (POSIX sh, not busybox)."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is missing: make install installs it")
    work = tmp_path_factory.mktemp("conformance")
    mdevop = work / "mdevop"
    subprocess.run(["gcc", "-O2", "-o", str(mdevop), str(HERE / "mdevop.c")], check=True)
    with mounted(HERE / "samples.toml") as m:
        probe = subprocess.run(["sh", str(HERE / "probe.sh"), str(m.root), str(mdevop)],
                               capture_output=True, text=True, timeout=300)
        assert m.alive(), m.log()
    assert probe.returncode == 0 and probe.stderr == "", probe.stderr
    path = work / "mdevfs.txt"
    path.write_text(probe.stdout)
    return path


def test_golden_dumps_of_both_kernels_are_there():
    assert [p.name for p in GOLDEN] == ["kernel-6.1.0-57-amd64.txt",
                                        "kernel-6.12.117+deb12-amd64.txt"]
    for golden in GOLDEN:
        lines = golden.read_text().splitlines()
        assert lines[0].startswith("# kernel ") and len(lines) > 1000


@pytest.mark.parametrize("golden", GOLDEN, ids=lambda p: p.stem.removeprefix("kernel-"))
def test_mdevfs_answers_as_the_recorded_kernel(dump, golden):
    result = compare(golden, dump)
    assert result.returncode == 0, result.stdout


def test_the_comparison_sees_a_single_difference(dump, tmp_path):
    """The comparison cannot pass vacuously: one changed errno is one mismatch."""
    changed = tmp_path / "changed.txt"
    changed.write_text(dump.read_text().replace("|!ENODEV@write\n", "|!EBUSY@write\n", 1))
    result = compare(GOLDEN[0], changed)
    assert result.returncode == 1 and "mismatches: 1\n" in result.stdout, result.stdout
