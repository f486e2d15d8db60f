"""The mdpy and mbochs samples (ABI §3) through a real mount, plus their option checks."""
from __future__ import annotations

import errno
import os

import pytest
from conftest import errno_of, shared_mount

from mdevfs.config import Topology, TopologyError

SAMPLES = """
[[parent]]
driver = "mdpy"
[[parent]]
driver = "mbochs"
[[parent]]
driver = "mdpy"
name = "mdpy1"
path = "devices/virtual/mdpy/mdpy1"
options = { count = 1 }
[[parent]]
driver = "mbochs"
name = "mbochs20"
path = "devices/virtual/mbochs/mbochs20"
options = { mem = 20 }
"""
TYPES = "devices/virtual/{0}/{0}/mdev_supported_types"



mount, m = shared_mount(SAMPLES, "samples")


def available(m, parent: str, type_id: str) -> int:
    types = f"class/mdev_bus/{parent}/mdev_supported_types"
    return int(m.read(f"{types}/{type_id}/available_instances"))


# --- mdpy ---------------------------------------------------------------------------------

def test_mdpy_parent_is_a_virtual_class_device(m):
    """ABI §3: mdpy's parent is class mdpy, device mdpy → /sys/devices/virtual/mdpy/mdpy."""
    assert os.readlink(m.path("class/mdev_bus/mdpy")) == "../../devices/virtual/mdpy/mdpy"
    assert os.readlink(m.path("class/mdpy/mdpy")) == "../../devices/virtual/mdpy/mdpy"
    assert os.readlink(m.path("devices/virtual/mdpy/mdpy/subsystem")) == "../../../../class/mdpy"


def test_mdpy_types_names_and_descriptions(m):
    """ABI §3: mdpy-vga/-xga/-hd, named after the type id, 'virtual display, WxH framebuffer'."""
    types = m.path(TYPES.format("mdpy"))
    assert sorted(os.listdir(types)) == ["mdpy-hd", "mdpy-vga", "mdpy-xga"]
    for type_id, size in (("mdpy-vga", "640x480"), ("mdpy-xga", "1024x768"),
                          ("mdpy-hd", "1920x1080")):
        assert (types / type_id / "name").read_bytes() == f"{type_id}\n".encode()
        assert (types / type_id / "device_api").read_bytes() == b"vfio-pci\n"
        assert (types / type_id / "description").read_bytes() == \
            f"virtual display, {size} framebuffer\n".encode()


def test_mdpy_core_counter_is_shared_and_exhausts_with_eusers(m):
    """ABI §3 (6.1+): the core's counter, max_instances = count = 4, shared; then EUSERS."""
    assert [available(m, "mdpy", t) for t in ("mdpy-vga", "mdpy-xga", "mdpy-hd")] == [4, 4, 4]
    made = [m.create(t, parent="mdpy") for t in ("mdpy-vga", "mdpy-xga", "mdpy-hd")]
    assert [available(m, "mdpy", t) for t in ("mdpy-vga", "mdpy-xga", "mdpy-hd")] == [1, 1, 1]
    made.append(m.create("mdpy-hd", parent="mdpy"))
    assert available(m, "mdpy", "mdpy-vga") == 0
    assert errno_of(m.create, "mdpy-vga", None, "mdpy") == errno.EUSERS
    m.remove(made.pop())
    assert available(m, "mdpy", "mdpy-xga") == 1


def test_mdpy_count_option_sizes_the_counter(m):
    """ABI §3: module param count sets max_instances (here 1)."""
    assert available(m, "mdpy1", "mdpy-hd") == 1
    m.create("mdpy-hd", parent="mdpy1")
    assert errno_of(m.create, "mdpy-vga", None, "mdpy1") == errno.EUSERS
    assert available(m, "mdpy", "mdpy-vga") == 4  # another parent has its own counter


def test_mdpy_vendor_resolution(m):
    """ABI §3: each mdpy device has vendor/resolution = 'WxH\\n' of its type."""
    for type_id, size in (("mdpy-vga", b"640x480\n"), ("mdpy-hd", b"1920x1080\n")):
        uuid = m.create(type_id, parent="mdpy")
        assert m.path(f"bus/mdev/devices/{uuid}/vendor/resolution").read_bytes() == size
        assert os.path.basename(os.readlink(m.path(f"bus/mdev/devices/{uuid}/driver"))) == "mdpy"


# --- mbochs -------------------------------------------------------------------------------

def test_mbochs_types_names_and_descriptions(m):
    """ABI §3: mbochs-small/-medium/-large, 'virtual display, N MB video memory', N 4/16/64."""
    types = m.path(TYPES.format("mbochs"))
    assert sorted(os.listdir(types)) == ["mbochs-large", "mbochs-medium", "mbochs-small"]
    for size, mbytes in (("small", 4), ("medium", 16), ("large", 64)):
        assert (types / f"mbochs-{size}" / "name").read_bytes() == f"mbochs-{size}\n".encode()
        assert (types / f"mbochs-{size}" / "description").read_bytes() == \
            f"virtual display, {mbytes} MB video memory\n".encode()
    assert os.readlink(m.path("class/mdev_bus/mbochs")) == "../../devices/virtual/mbochs/mbochs"


def test_mbochs_shared_pool_and_enospc(m):
    """ABI §3: avail_mbytes / type_mbytes from one 256 MB pool (64/16/4); ENOSPC when short."""
    names = ("mbochs-small", "mbochs-medium", "mbochs-large")
    assert [available(m, "mbochs", t) for t in names] == [64, 16, 4]
    m.create("mbochs-large", parent="mbochs")
    assert [available(m, "mbochs", t) for t in names] == [48, 12, 3]
    for _ in range(3):
        m.create("mbochs-large", parent="mbochs")
    assert [available(m, "mbochs", t) for t in names] == [0, 0, 0]
    assert errno_of(m.create, "mbochs-small", None, "mbochs") == errno.ENOSPC


def test_mbochs_mem_option_sizes_the_pool(m):
    """ABI §3: the pool size comes from a module param (here mem = 20 MB: 5/1/0)."""
    names = ("mbochs-small", "mbochs-medium", "mbochs-large")
    assert [available(m, "mbochs20", t) for t in names] == [5, 1, 0]
    assert errno_of(m.create, "mbochs-large", None, "mbochs20") == errno.ENOSPC
    m.create("mbochs-medium", parent="mbochs20")
    assert [available(m, "mbochs20", t) for t in names] == [1, 0, 0]


def test_mbochs_vendor_memory(m):
    """ABI §3 ([rec]): each mbochs device has vendor/memory = 'N MB\\n'."""
    uuid = m.create("mbochs-medium", parent="mbochs")
    assert m.path(f"bus/mdev/devices/{uuid}/vendor/memory").read_bytes() == b"16 MB\n"


def test_samples_have_no_migration_version(m):
    """The proposal / ABI §5.2: the samples have no migration support, so no attribute at all."""
    uuid = m.create("mdpy-vga", parent="mdpy")
    assert "migration_version" not in os.listdir(m.path(f"{TYPES.format('mdpy')}/mdpy-vga"))
    assert "migration_version" not in os.listdir(m.path(f"bus/mdev/devices/{uuid}"))
    assert errno_of(m.read, f"bus/mdev/devices/{uuid}/migration_version") == errno.ENOENT


# --- options ------------------------------------------------------------------------------

@pytest.mark.parametrize("driver, options, named", [
    ("mdpy", "{ count = -1 }", "'count'"),
    ("mdpy", "{ count = \"4\" }", "'count'"),
    ("mdpy", "{ cuont = 4 }", "'cuont'"),
    ("mbochs", "{ mem = 1.5 }", "'mem'"),
    ("mbochs", "{ mem = 8, count = 8 }", "'count' or 'mem'"),
    ("mtty", "{ ports = true }", "'ports'"),
])
def test_bad_sample_options_name_the_parent_and_option(driver, options, named):
    """Topology files: a driver refusing its options names the parent entry and the option."""
    text = f'[[parent]]\ndriver = "mtty"\n[[parent]]\ndriver = "{driver}"\n' \
           f'name = "x"\npath = "devices/virtual/x/x"\noptions = {options}\n'
    with pytest.raises(TopologyError) as info:
        Topology.from_text(text, "t.toml").build()
    assert "t.toml: parent #2" in str(info.value)
    assert named in str(info.value)
