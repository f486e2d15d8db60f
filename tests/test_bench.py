"""``make bench`` : the benchmark's machinery on a tiny budget.

No timing is asserted: figures on a shared 2-core machine say little on their
own. The smoke run checks that every phase runs, every row of the report is
printed with its target, the report and the plot are written, and nothing is
left mounted.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench import report, tools
from conftest import needs_fuse

pytestmark = needs_fuse


def mounts() -> set[str]:
    """The benchmark's own mount points (the floors and the counting mount; the mdevfs
    mounts come from mdevfs.testing.mounted, whose teardown has its own tests)."""
    with open("/proc/self/mounts") as f:
        return {line.split()[1] for line in f if "mdevfs-bench-" in line}


def test_the_instruments_build_from_the_repository(tmp_path):
    """The driver and the floor are the project's own sources, in tests/bench/c."""
    assert tools.C_SOURCES.is_relative_to(tools.REPO_ROOT)
    built = tools.build(tmp_path)
    assert os.access(built.driver, os.X_OK) and os.access(built.floor, os.X_OK)


def test_quick_run_prints_every_row(tmp_path):
    before = mounts()
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=180,
                          check=False, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| `")]
    keys = {line.split("`")[1] for line in table}
    assert set(report.ROW_KEYS) <= keys, set(report.ROW_KEYS) - keys
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 7, line  # key, what, mdevfs, floor, ratio, target, met
        assert "failed" not in cells[2], line
    for key in ("read", "write", "stat", "statmiss", "create", "remove", "list-10000", "mount",
                "run", "reset", "suite", "state-write", "state-restore", "rss-10000", "mdevctl-list",
                "mdevctl-types"):
        row = next(line for line in table if line.startswith(f"| `{key}`"))
        assert "≤" in row, row  # the target is printed beside the figure
    assert "## Where the time goes" in done.stdout
    written = {p.name for p in tmp_path.iterdir()}
    assert "latest.md" in written
    assert any(name.endswith(".svg") for name in written)
    svg = next(p for p in tmp_path.iterdir() if p.suffix == ".svg").read_text()
    assert svg.startswith("<svg") and "polyline" in svg
    assert mounts() <= before  # every mount of the run is gone
