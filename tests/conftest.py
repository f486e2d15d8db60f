"""Shared fixtures: topologies written to files, and mounts that always unmount."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from mdevfs.testing import mounted

MTTY_ONLY = '[[parent]]\ndriver = "mtty"\n'

needs_fuse = pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                                reason="needs /dev/fuse and root")


def write_topology(directory: Path, text: str, name: str = "topology.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def mtty_mount(tmp_path_factory):
    """One mount of a host with only the mtty sample, shared by a module's tests.

    Tests that create devices remove them again, so each starts from 24 free ports.
    """
    config = write_topology(tmp_path_factory.mktemp("topo"), MTTY_ONLY)
    with mounted(config) as m:
        yield m
        assert m.alive(), m.log()


@pytest.fixture
def mtty(mtty_mount):
    """The shared mtty mount, checked clean before and after each test."""
    assert os.listdir(mtty_mount.root / "bus/mdev/devices") == []
    yield mtty_mount
    for uuid in os.listdir(mtty_mount.root / "bus/mdev/devices"):
        mtty_mount.remove(uuid)
    assert mtty_mount.alive(), mtty_mount.log()
