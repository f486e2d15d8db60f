"""Mdevfs against real kernels: the probes' dump of a mount of the kernel samples' parents, with
the kernel set to each recorded one, must equal the dumps recorded on Debian's 5.10, 6.1, 6.12
and 7.3 kernels (tests/conformance/golden, made by tests/conformance/record --golden), path by
path and errno by errno; the SR-IOV probe likewise on the igb PF of sriov.toml (igb.py: the
SR-IOV VM's machine) against the kernels' igb in QEMU (record-sriov --golden). `make
conformance` records the kernels afresh."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_fuse

from mdevfs.testing import mounted

HERE = Path(__file__).parent / "conformance"
GOLDEN = sorted((HERE / "golden").glob("kernel-*.txt"))
SRIOV_GOLDEN = sorted((HERE / "golden").glob("sriov-*.txt"))
PROBES = ("probe.sh", "probe-extra.sh")

pytestmark = needs_fuse


def compare(kernel: Path, mdevfs: Path, script: str = "compare.py"
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HERE / script), str(kernel), str(mdevfs)],
                          capture_output=True, text=True, timeout=60)


def release(golden: Path) -> str:
    """``"6.1"`` of ``kernel-6.1.0-57-amd64.txt``."""
    return re.search(r"-(\d+\.\d+)", golden.name)[1]  # type: ignore[index]


@pytest.fixture(scope="module")
def mdevop(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is missing: make install installs it")
    built = tmp_path_factory.mktemp("conformance") / "mdevop"
    subprocess.run(["gcc", "-O2", "-o", str(built), str(HERE / "mdevop.c")], check=True)
    return built


def probe(topology: Path | None, mdevop: Path, out: Path, kernel: str,
          probes: tuple[str, ...] = PROBES, args: tuple[str, ...] = ()) -> Path:
    """The probes run against a fresh mount of ``topology`` (None: the default one) on
    ``kernel``, as mdevfs-dump.sh does (POSIX sh, not busybox)."""
    with mounted(topology, args=("--kernel", kernel)) as m:
        text = ""
        for script in probes:
            done = subprocess.run(["sh", str(HERE / script), str(m.root), str(mdevop), *args],
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0 and done.stderr == "", done.stderr
            text += done.stdout
        assert m.alive(), m.log()
    out.write_text(text)
    return out


@pytest.fixture(scope="module")
def dumps(mdevop, tmp_path_factory) -> dict[str, Path]:
    """Mdevfs's dump with the kernel set to each recorded release."""
    work = tmp_path_factory.mktemp("dumps")
    return {release(g): probe(HERE / "samples.toml", mdevop, work / f"mdevfs-{release(g)}.txt",
                              release(g)) for g in GOLDEN}


@pytest.fixture(scope="module")
def sriov_dumps(mdevop, tmp_path_factory) -> dict[str, Path]:
    """Sriov-probe.sh's dump of the igb PF of sriov.toml (the SR-IOV VM's machine) on each
    recorded release."""
    work = tmp_path_factory.mktemp("sriov")
    return {release(g): probe(HERE / "sriov.toml", mdevop, work / f"sriov-{release(g)}.txt",
                              release(g), ("sriov-probe.sh",), ("0000:02:00.0", "igb"))
            for g in SRIOV_GOLDEN}


def test_golden_dumps_of_every_kernel_are_there():
    assert [p.name for p in GOLDEN] == [
        "kernel-5.10.0-46-amd64.txt", "kernel-6.1.0-57-amd64.txt",
        "kernel-6.12.117+deb12-amd64.txt", "kernel-7.3.4+deb13-amd64.txt"]
    assert [p.name for p in SRIOV_GOLDEN] == [
        "sriov-5.10.0-46-amd64.txt", "sriov-6.1.0-57-amd64.txt", "sriov-7.3.4+deb13-amd64.txt"]
    for golden in GOLDEN:
        lines = golden.read_text().splitlines()
        assert lines[0].startswith("# kernel ") and "probe-extra.sh" in lines[0]
        assert len(lines) > 1200
    for golden in SRIOV_GOLDEN:
        lines = golden.read_text().splitlines()
        assert lines[0].startswith("# sriov ") and "igb PF" in lines[0]
        assert len(lines) > 480


@pytest.mark.parametrize("golden", GOLDEN, ids=lambda p: p.stem.removeprefix("kernel-"))
def test_mdevfs_answers_as_the_recorded_kernel(dumps, golden):
    result = compare(golden, dumps[release(golden)])
    assert result.returncode == 0, result.stdout


def test_the_comparison_sees_a_single_difference(dumps, tmp_path):
    """The comparison cannot pass vacuously: one changed errno is one mismatch."""
    changed = tmp_path / "changed.txt"
    changed.write_text(dumps["6.1"].read_text().replace("|!ENODEV@write\n", "|!EBUSY@write\n", 1))
    result = compare(GOLDEN[1], changed)
    assert result.returncode == 1 and "mismatches: 1\n" in result.stdout, result.stdout


@pytest.mark.parametrize("golden", SRIOV_GOLDEN, ids=lambda p: p.stem.removeprefix("sriov-"))
def test_the_pci_core_answers_as_the_recorded_kernel(sriov_dumps, golden):
    """Every file of the igb PF and its VFs, every sriov_numvfs, autoprobe, bind, unbind,
    driver_override and drivers_probe operation, every IOMMU group and vfio number, as the
    kernel's, the NIC's own parts aside (compare-sriov.py says which)."""
    result = compare(golden, sriov_dumps[release(golden)], "compare-sriov.py")
    assert result.returncode == 0 and result.stdout.endswith(": 0 differ\n"), result.stdout


def test_the_sriov_comparison_sees_a_single_difference(sriov_dumps, tmp_path):
    changed = tmp_path / "changed.txt"
    text = sriov_dumps["6.1"].read_text()
    assert "|write <PF>/sriov_numvfs 3|!EBUSY@write\n" in text
    changed.write_text(text.replace("|write <PF>/sriov_numvfs 3|!EBUSY@write\n",
                                    "|write <PF>/sriov_numvfs 3|!EINVAL@write\n"))
    result = compare(SRIOV_GOLDEN[1], changed, "compare-sriov.py")
    assert result.returncode == 1 and result.stdout.endswith(": 1 differ\n"), result.stdout


def _paths(dump: Path, state: str) -> set[str]:
    """The generic PCI paths of a state of a sriov-probe.sh dump: the NIC's own parts, the
    BAR files (resourceN, resourceN_wc: a device's own BARs) and NVIDIA's nvidia/ aside."""
    nic_own = re.compile(r"^<(?:PF|VF\d+)>/(?:net|ptp|msi_irqs|wakeup|link|firmware_node|"
                         r"waiting_for_supplier|aer|aer_dev_[a-z]+|power/wakeup[a-z_]*)(?:/|$)")
    device_own = re.compile(r"/resource\d+(?:_wc)?$|/nvidia(?:/|$)")
    return {line.split("|")[2] for line in dump.read_text().splitlines()
            if line.startswith(f"T|{state}|") and not nic_own.match(line.split("|")[2])
            and not device_own.search(line.split("|")[2])}


@pytest.mark.parametrize("kernel", ["5.10", "6.1", "7.3"])
def test_an_nvidia_pf_has_every_generic_pci_file_of_the_kernel(mdevop, tmp_path, kernel):
    """The default topology's L40S PF, probed as the kernel's igb PF was: the same generic
    files, at boot, at the end, and on a VF made without autoprobe."""
    golden = next(g for g in SRIOV_GOLDEN if release(g) == kernel)
    l40s = probe(None, mdevop, tmp_path / "l40s.txt", kernel, ("sriov-probe.sh",),
                 ("0000:c1:00.0", "gpu"))
    for state in ("s0-boot", "s9-end", "s2-noauto"):
        assert _paths(l40s, state) == _paths(golden, state), state
