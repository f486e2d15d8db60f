"""Tests of vgpu_allocator against mdevfs, through the pytest plugin's fixtures.

`mdevfs` is a shared mount of the default topology, emptied before each test;
`mdevfs_factory` mounts a topology of the test's own; `mdevfs.run` runs a command
with the emulated tree at the real /sys paths, as the tool runs in production.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from vgpu_allocator import allocate

ALLOCATOR = str(Path(__file__).with_name("vgpu_allocator.py"))

TWO_SMALL_CARDS = """
[[parent]]
driver = "mtty"
name = "mtty-a"
path = "devices/virtual/mtty/mtty-a"
[parent.options]
ports = 2

[[parent]]
driver = "mtty"
name = "mtty-b"
path = "devices/virtual/mtty/mtty-b"
[parent.options]
ports = 2
"""


def parent_of(root: Path, uuid: str) -> str:
    return os.readlink(root / "bus/mdev/devices" / uuid).split("/")[-2]


def test_creates_a_device_of_the_type(mdevfs):
    uuid = allocate(mdevfs.root, "mtty-2")
    assert mdevfs.devices() == [uuid]
    assert mdevfs.read(f"bus/mdev/devices/{uuid}/mdev_type/name") == "Dual port serial\n"


def test_accepts_the_type_name(mdevfs):
    uuid = allocate(mdevfs.root, "Single port serial")
    assert os.readlink(mdevfs.root / f"bus/mdev/devices/{uuid}/mdev_type").endswith("/mtty-1")


def test_moves_on_when_a_parent_is_full(mdevfs_factory, tmp_path):
    topology = tmp_path / "cards.toml"
    topology.write_text(TWO_SMALL_CARDS)
    m = mdevfs_factory(topology)
    first, second = allocate(m.root, "mtty-2"), allocate(m.root, "mtty-2")
    assert (parent_of(m.root, first), parent_of(m.root, second)) == ("mtty-a", "mtty-b")
    with pytest.raises(LookupError):
        allocate(m.root, "mtty-2")


def test_a_refused_create_leaves_no_device_behind(mdevfs_factory, tmp_path):
    """The first card refuses one create (an injected EIO, once): the allocator moves on to
    the second, and exactly one device exists, on it. (With Path.write_text the allocator
    left two: the buffered file wrote the UUID again when it was closed, and the card,
    whose fault was spent, took it.)"""
    topology = tmp_path / "cards.toml"
    topology.write_text(TWO_SMALL_CARDS)
    m = mdevfs_factory(topology)
    m.control.fail("class/mdev_bus/mtty-a/mdev_supported_types/mtty-2/create", "write", "EIO",
                   once=True)
    uuid = allocate(m.root, "mtty-2")
    assert m.devices() == [uuid] and parent_of(m.root, uuid) == "mtty-b"


def test_runs_unmodified_against_slash_sys(mdevfs):
    done = mdevfs.run([sys.executable, ALLOCATOR, "mtty-1"])
    assert done.returncode == 0, done.stderr
    uuid = done.stdout.strip()
    assert mdevfs.devices() == [uuid]
    listed = mdevfs.run(["mdevctl", "list"])
    assert listed.stdout == f"{uuid} mtty mtty-1 manual\n\n"


def test_says_so_when_nothing_has_room(mdevfs):
    done = mdevfs.run([sys.executable, ALLOCATOR, "no-such-type"])
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "vgpu_allocator: no parent has an available instance of 'no-such-type'\n"
