"""Docs/kernels.md lists every change of mdevfs/kernel.py's table, with the release and the
behaviour the code has: the document cannot drift from the code."""
from __future__ import annotations

from pathlib import Path

from mdevfs.kernel import CHANGES, Kernel, Version

DOC = Path(__file__).resolve().parent.parent / "docs" / "kernels.md"


def test_the_document_has_every_change_with_its_release_and_behaviour():
    rows = [line.split(" | ") for line in DOC.read_text().splitlines()
            if line.startswith("| ") and line.endswith("` |")]
    found = {row[-1].strip("` |"): (row[0].strip("| "), row[1]) for row in rows}
    assert found == {key: (str(c.since), c.what) for key, c in CHANGES.items()}


def test_a_release_between_two_known_ones_has_what_the_table_says():
    assert not Kernel.parse("5.13").has("per_parent_mdev_driver")
    assert Kernel.parse("5.14").has("per_parent_mdev_driver")
    assert Kernel.parse("7.0").has("unbound_power_d0") and \
        not Kernel.parse("7.0").has("removed_nlink_zero")
    assert Version.parse("6.12.117+deb12-amd64") == Version(6, 12)
