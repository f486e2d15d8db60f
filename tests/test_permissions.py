"""Who may enter the mount , checked by running file I/O as uid 65534.

Without ``--allow-other`` FUSE lets only the mounting user in. With it, the
kernel enforces the sysfs modes (default_permissions; files owned by the
mounting user): others read 0444/0644 attributes but get EACCES on ``create``
and ``remove`` (0200) and on ``migration_version`` writes (0644).
"""
from __future__ import annotations

import os

import pytest
from conftest import as_nobody, needs_fuse, needs_nobody, write_topology

from mdevfs.testing import mounted

pytestmark = [needs_fuse, needs_nobody]
U1 = "11111111-2222-3333-4444-555555555555"
U2 = "22222222-3333-4444-5555-666666666666"
T1 = "class/mdev_bus/mtty/mdev_supported_types/mtty-1"
VT = "class/mdev_bus/v0/mdev_supported_types/ver-t"

VERSIONED = '''
from mdevfs.driver import BaseDriver, MdevTypeSpec

class Driver(BaseDriver):
    name = "ver"
    def types(self):
        return (MdevTypeSpec("t"),)
    def max_instances(self):
        return 4
    def migration(self, target):
        return Migration()

class Migration:
    def version(self):
        return "ver-1"
    def check(self, source):
        pass
'''


@pytest.fixture
def config(tmp_path):
    (tmp_path / "ver.py").write_text(VERSIONED)
    return write_topology(tmp_path, '[[parent]]\ndriver = "mtty"\n[[parent]]\n'
                          'driver = "ver.py"\nname = "v0"\npath = "devices/virtual/ver/v0"\n')


def reachable(m) -> None:
    """Mounted() makes a 0700 work directory; open it so only the mount itself decides."""
    os.chmod(m.root.parent, 0o755)


def test_by_default_only_the_mounting_user_enters(config):
    """FUSE without allow_other refuses every other user (EACCES)."""
    with mounted(config) as m:
        reachable(m)
        assert as_nobody(("listdir", m.root), ("read", m.root / T1 / "name"),
                         ("write", m.root / T1 / "create", U1)) == ["EACCES"] * 3
        assert os.listdir(m.root / "bus/mdev/devices") == []
        assert m.read(f"{T1}/name") == "Single port serial\n"


def test_with_allow_other_others_read_but_cannot_change_anything(config):
    """ABI §1.1 modes: others read attributes and follow links, and get
    EACCES on create, remove, migration_version (type and device) and power/control."""
    with mounted(config, args=("--allow-other",)) as m:
        reachable(m)
        m.create("mtty-1", U1)
        m.create("ver-t", U2)
        dev = m.root / "bus/mdev/devices"
        assert as_nobody(
            ("listdir", dev),
            ("read", m.root / T1 / "name"),
            ("read", m.root / T1 / "available_instances"),
            ("read", dev / U1 / "mdev_type/name"),
            ("read", m.root / VT / "migration_version"),
            ("read", dev / U1 / "power/control"),
        ) == [[U1, U2], "Single port serial\n", "23\n", "Single port serial\n", "ver-1\n",
              "auto\n"]
        assert as_nobody(
            ("write", m.root / T1 / "create", "33333333-4444-5555-6666-777777777777"),
            ("write", dev / U1 / "remove", "1"),
            ("write", m.root / VT / "migration_version", "ver-1"),
            ("write", dev / U2 / "migration_version", "ver-1"),
            ("write", dev / U1 / "power/control", "on"),
        ) == ["EACCES"] * 5
        assert sorted(os.listdir(dev)) == [U1, U2]
        assert m.read(f"bus/mdev/devices/{U1}/power/control") == "auto\n"
        # the mounting user keeps every right
        assert m.write(f"{VT}/migration_version", "ver-1") == 5
        m.remove(U1)
        assert os.listdir(dev) == [U2]
