"""Intel GVT-g (ABI §4.1) and its migration_version (the proposal's series, ABI §5.3)."""
from __future__ import annotations

import errno
import os
import stat

import pytest
from conftest import errno_of, shared_mount
from hypothesis import given
from hypothesis import strategies as st
from mdevfs_vendors.gvt import Gvt, mismatch_reason, scan

from mdevfs.config import Topology, TopologyError
from mdevfs.tree import Tree

# A: a Skylake host as in the default topology; B: a Broadwell with a 256 MB aperture;
# C: a platform GVT cannot migrate (gen 11); D: the software version of v5 as posted
# (INV_SOFTWARE_VERSION); E: few fences, so that fences bind.
HOSTS = """
[[parent]]
driver = "gvt"
[parent.options]
software_version = 1

[[parent]]
driver = "gvt"
name = "0000:01:00.0"
path = "devices/pci0000:00/0000:00:01.0/0000:01:00.0"
options = { gen = 8, aperture_mb = 256 }

[[parent]]
driver = "gvt"
name = "0000:02:00.0"
path = "devices/pci0000:00/0000:00:03.0/0000:02:00.0"
options = { gen = 11 }

[[parent]]
driver = "gvt"
name = "0000:03:00.0"
path = "devices/pci0000:00/0000:00:04.0/0000:03:00.0"
options = { software_version = 0xffffffff }

[[parent]]
driver = "gvt"
name = "0000:04:00.0"
path = "devices/pci0000:00/0000:00:05.0/0000:04:00.0"
options = { fences = 12 }
"""
A = "class/mdev_bus/0000:00:02.0/mdev_supported_types"
V54 = "8086-1912-GVTg_V5_4-00000001"



mount, m = shared_mount(HOSTS, "gvt")


def types_of(parent: str) -> str:
    return f"class/mdev_bus/{parent}/mdev_supported_types"


def avail(m, parent: str = "0000:00:02.0") -> dict[str, int]:
    base = m.path(types_of(parent))
    return {t: int((base / t / "available_instances").read_text())
            for t in sorted(os.listdir(base))}


def log_after(m, mark: int) -> str:
    return m.log()[mark:]


# --- the parent and its types (§4.1) ------------------------------------------------------

def test_parent_is_the_pci_gpu(m):
    """ABI §4.1: the parent is 0000:00:02.0 under pci0000:00, subsystem bus pci, driver i915."""
    assert os.readlink(m.path("class/mdev_bus/0000:00:02.0")) == \
        "../../devices/pci0000:00/0000:00:02.0"
    assert os.readlink(m.path("devices/pci0000:00/0000:00:02.0/subsystem")) == "../../../bus/pci"
    assert os.readlink(m.path("bus/pci/devices/0000:00:02.0")) == \
        "../../../devices/pci0000:00/0000:00:02.0"
    assert m.read("devices/pci0000:00/0000:00:02.0/uevent") == (
        "DRIVER=i915\nPCI_CLASS=30000\nPCI_ID=8086:1912\nPCI_SUBSYS_ID=0000:0000\n"
        "PCI_SLOT_NAME=0000:00:02.0\n"
        "MODALIAS=pci:v00008086d00001912sv00000000sd00000000bc03sc00i00\n")
    assert os.readlink(m.path("devices/pci0000:00/0000:00:02.0/driver")) == \
        "../../../bus/pci/drivers/i915"


def test_gen9_types_descriptions_and_names(m):
    """ABI §4.1: i915-GVTg_V5_{8,4,2,1}, the description format, name = the sysfs name."""
    assert list(avail(m)) == ["i915-GVTg_V5_1", "i915-GVTg_V5_2", "i915-GVTg_V5_4",
                              "i915-GVTg_V5_8"]
    table = {"8": (64, 384, 2, "1024x768"), "4": (128, 512, 4, "1920x1200"),
             "2": (256, 1024, 8, "1920x1200"), "1": (512, 2048, 16, "1920x1200")}
    for n, (low, high, weight, edid) in table.items():
        tdir = m.path(f"{A}/i915-GVTg_V5_{n}")
        assert (tdir / "description").read_bytes() == (
            f"low_gm_size: {low}MB\nhigh_gm_size: {high}MB\nfence: 4\n"
            f"resolution: {edid}\nweight: {weight}\n").encode()
        assert (tdir / "name").read_bytes() == f"GVTg_V5_{n}\n".encode()
        assert (tdir / "device_api").read_bytes() == b"vfio-pci\n"


def test_gen8_small_aperture_registers_fewer_v4_types(m):
    """ABI §4.1: V4 names on gen8; types whose low GM does not fit are not registered."""
    assert avail(m, "0000:01:00.0") == {"i915-GVTg_V4_4": 1, "i915-GVTg_V4_8": 2}


def test_available_instances_is_the_minimum_over_the_shared_pool(m):
    """ABI §4.1: min(low, high, fence) over one pool shared by every type; ENOSPC on create."""
    assert avail(m) == {"i915-GVTg_V5_1": 1, "i915-GVTg_V5_2": 2, "i915-GVTg_V5_4": 5,
                        "i915-GVTg_V5_8": 7}
    uuid = m.create("i915-GVTg_V5_1", parent="0000:00:02.0")
    # low 896-512 = 384, high 2688-2048 = 640, fences 28-4 = 24
    assert avail(m) == {"i915-GVTg_V5_1": 0, "i915-GVTg_V5_2": 0, "i915-GVTg_V5_4": 1,
                        "i915-GVTg_V5_8": 1}
    mark = len(m.log())
    assert errno_of(m.create, "i915-GVTg_V5_2", None, "0000:00:02.0") == errno.ENOSPC
    assert "fail to allocate resource high GM space" in log_after(m, mark)
    m.remove(uuid)
    assert avail(m)["i915-GVTg_V5_1"] == 1


def test_fences_bind_when_they_are_fewest(m):
    """ABI §4.1: the fence term of the minimum (12 fences: 8 for vGPUs, 4 per vGPU)."""
    assert set(avail(m, "0000:04:00.0").values()) == {1, 2}
    m.create("i915-GVTg_V5_8", parent="0000:04:00.0")
    m.create("i915-GVTg_V5_8", parent="0000:04:00.0")
    assert set(avail(m, "0000:04:00.0").values()) == {0}
    assert errno_of(m.create, "i915-GVTg_V5_8", None, "0000:04:00.0") == errno.ENOSPC


def test_vgpu_id_is_the_lowest_free(m):
    """ABI §4.1 (kvmgt.c): each vGPU has intel_vgpu/vgpu_id, ids from 1, lowest free."""
    first = m.create("i915-GVTg_V5_8", parent="0000:00:02.0")
    second = m.create("i915-GVTg_V5_8", parent="0000:00:02.0")
    assert m.read(f"bus/mdev/devices/{first}/intel_vgpu/vgpu_id") == "1\n"
    assert m.read(f"bus/mdev/devices/{second}/intel_vgpu/vgpu_id") == "2\n"
    m.remove(first)
    third = m.create("i915-GVTg_V5_8", parent="0000:00:02.0")
    assert m.read(f"bus/mdev/devices/{third}/intel_vgpu/vgpu_id") == "1\n"
    assert os.path.basename(os.readlink(m.path(f"bus/mdev/devices/{third}/driver"))) == \
        "intel_vgpu_mdev"


# --- migration_version (§5.3) -------------------------------------------------------------

def test_type_node_reads_the_proposals_format(m):
    """ABI §5.3: '%04x-%04x-%s-%08x' (0x8086, device id, type name, version), then a newline."""
    path = m.path(f"{A}/i915-GVTg_V5_4/migration_version")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert path.read_bytes() == f"{V54}\n".encode()
    assert m.path(f"{A}/i915-GVTg_V5_8/migration_version").read_bytes() == \
        b"8086-1912-GVTg_V5_8-00000001\n"
    assert m.read(f"{types_of('0000:01:00.0')}/i915-GVTg_V4_8/migration_version") == \
        "8086-1616-GVTg_V4_8-00000001\n"


def test_device_node_reads_the_same_string(m):
    """ABI §5.3 (v5 4/4): a vGPU's migration_version sits directly in <uuid>/, mode 0644."""
    uuid = m.create("i915-GVTg_V5_4", parent="0000:00:02.0")
    path = m.path(f"bus/mdev/devices/{uuid}/migration_version")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert path.read_bytes() == f"{V54}\n".encode()


def test_exact_string_is_compatible_at_both_nodes(m):
    """ABI §5.3: an exact match (one trailing newline ignored) returns the byte count."""
    uuid = m.create("i915-GVTg_V5_4", parent="0000:00:02.0")
    for where in (f"{A}/i915-GVTg_V5_4", f"bus/mdev/devices/{uuid}"):
        assert m.write(f"{where}/migration_version", V54) == len(V54)
        assert m.write(f"{where}/migration_version", V54 + "\n") == len(V54) + 1


@pytest.mark.parametrize("source, reason", [
    ("8087-1912-GVTg_V5_4-00000001", "physical device not matched"),
    ("8086-191b-GVTg_V5_4-00000001", "physical device not matched"),
    ("8086-1912-GVTg_V5_4-00000002", "migration software version not matched"),
    ("8086-1912-GVTg_V5_2-00000001", "vgpu type not matched"),
    ("i915-GVTg_V5_4", "wrong string format. probably wrong GVT version"),
    ("8086-1912-GVTg_V5_4", "wrong string format. probably wrong GVT version"),
    # the same fields, spelt differently: sysfs_streq still says no
    ("8086-1912-GVTg_V5_4-1", "wrong string format. probably wrong GVT version"),
    ("8086-1912-GVTg_V5_4-00000001\n", "wrong string format. probably wrong GVT version"),
])
def test_mismatch_is_einval_with_the_reason_logged(m, source, reason):
    """ABI §5.3: a mismatch is EINVAL; the log gives the reason found by re-parsing."""
    uuid = m.create("i915-GVTg_V5_4", parent="0000:00:02.0")
    for where in (f"{A}/i915-GVTg_V5_4", f"bus/mdev/devices/{uuid}"):
        mark = len(m.log())
        # a second newline survives sysfs_streq, so "…\n" + "\n" must still fail
        assert errno_of(m.write, f"{where}/migration_version", source + "\n") == errno.EINVAL
        assert f"Possible reason: {reason}." in log_after(m, mark)


def test_unsupported_platform_is_enodev(m):
    """ABI §5.3: a platform other than gen8/gen9: the file exists, read and write give ENODEV."""
    path = f"{types_of('0000:02:00.0')}/i915-GVTg_V5_4/migration_version"
    assert stat.S_IMODE(os.stat(m.path(path)).st_mode) == 0o644
    mark = len(m.log())
    assert errno_of(m.read, path) == errno.ENODEV
    assert errno_of(m.write, path, "8086-1912-GVTg_V5_4-00000001") == errno.ENODEV
    assert "Local hardware does not support migration on 11" in log_after(m, mark)
    assert "Migration not supported on type i915-GVTg_V5_4" in log_after(m, mark)


def test_invalid_software_version_is_enodev_at_both_nodes(m):
    """ABI §5.3: software version INV_SOFTWARE_VERSION (as v5 was posted): ENODEV everywhere."""
    uuid = m.create("i915-GVTg_V5_4", parent="0000:03:00.0")
    mark = len(m.log())
    for where in (f"{types_of('0000:03:00.0')}/i915-GVTg_V5_4", f"bus/mdev/devices/{uuid}"):
        assert errno_of(m.read, f"{where}/migration_version") == errno.ENODEV
        assert errno_of(m.write, f"{where}/migration_version", V54) == errno.ENODEV
    assert "Local GVT does not support migration" in log_after(m, mark)
    assert "Migration not supported on this vgpu" in log_after(m, mark)


def test_gen8_and_gen9_strings_are_incompatible(m):
    """ABI §5.3: a gen8 host's string written to a gen9 type differs in device and type."""
    source = m.read(f"{types_of('0000:01:00.0')}/i915-GVTg_V4_8/migration_version")
    mark = len(m.log())
    assert errno_of(m.write, f"{A}/i915-GVTg_V5_8/migration_version", source) == errno.EINVAL
    assert "physical device not matched" in log_after(m, mark)


def test_software_version_changes_through_the_control_socket(m):
    """ABI §5.3: the strings follow a run-time change of software version (ctl set-option)."""
    gpu = "0000:00:02.0"
    uuid = m.create("i915-GVTg_V5_4", parent=gpu)
    try:
        m.control.set_option(gpu, "software_version", 2)
        for where in (f"{A}/i915-GVTg_V5_4", f"bus/mdev/devices/{uuid}"):
            assert m.read(f"{where}/migration_version") == "8086-1912-GVTg_V5_4-00000002\n"
            mark = len(m.log())
            assert errno_of(m.write, f"{where}/migration_version", V54) == errno.EINVAL
            assert "migration software version not matched" in log_after(m, mark)
        m.control.set_option(gpu, "software_version", 0xFFFFFFFF)
        assert errno_of(m.read, f"{A}/i915-GVTg_V5_4/migration_version") == errno.ENODEV
        assert errno_of(m.control.set_option, gpu, "software_version", "2") == errno.EINVAL
        assert errno_of(m.control.set_option, gpu, "software_version", 2**32) == errno.EINVAL
        assert errno_of(m.control.set_option, gpu, "aperture_mb", 512) == errno.EINVAL
    finally:
        m.control.set_option(gpu, "software_version", 1)
    assert m.read(f"{A}/i915-GVTg_V5_4/migration_version") == f"{V54}\n"


# --- the driver without FUSE --------------------------------------------------------------

def test_software_version_changes_at_run_time():
    """ABI §5.3: the string follows the software version; the old one then mismatches."""
    host = Topology.from_text('[[parent]]\ndriver = "gvt"\n', "t").build()
    tree = Tree(host)
    node = tree.resolve("devices/pci0000:00/0000:00:02.0/mdev_supported_types/"
                        "i915-GVTg_V5_4/migration_version")
    gvt = host.parents["0000:00:02.0"].driver
    assert node.read() == f"{V54}\n".encode()
    gvt.set_software_version(0x20)
    assert node.read() == b"8086-1912-GVTg_V5_4-00000020\n"
    with pytest.raises(OSError) as info:
        node.write(V54.encode())
    assert info.value.errno == errno.EINVAL
    gvt.set_software_version(0xFFFFFFFF)
    with pytest.raises(OSError) as info:
        node.read()
    assert info.value.errno == errno.ENODEV
    with pytest.raises(ValueError):
        gvt.set_software_version(2**32)


@pytest.mark.parametrize("options, named", [
    ("{ software_version = 0x100000000 }", "'software_version'"),
    ("{ device_id = 0x10000 }", "'device_id'"),
    ("{ aperture_mb = 64 }", "'aperture_mb'"),
    ("{ aperture_mb = 4000 }", "'ggtt_mb'"),
    ("{ gen = \"9\" }", "'gen'"),
    ("{ swversion = 1 }", "'swversion'"),
])
def test_bad_options_name_the_option(options, named):
    """Topology files: a bad GVT option is refused, naming the parent and the option."""
    with pytest.raises(TopologyError) as info:
        Topology.from_text(f'[[parent]]\ndriver = "gvt"\noptions = {options}\n', "t").build()
    assert "parent #1" in str(info.value) and named in str(info.value)


def test_scan_follows_kernel_sscanf():
    """ABI §5.3: the re-parse is sscanf "%x-%x-%16[^-]-%x": 0x prefixes, 16-char cap, stops."""
    assert scan("8086-1912-GVTg_V5_4-00000001") == [0x8086, 0x1912, "GVTg_V5_4", 1]
    assert scan("0x8086- 0X1912-a-ff trailing") == [0x8086, 0x1912, "a", 0xFF]
    assert scan("8086-1912-" + "x" * 20) == [0x8086, 0x1912, "x" * 16]
    assert scan("zz-1") == []
    assert scan("8086--x-1") == [0x8086]
    assert scan("1-2-t-123456789") == [1, 2, "t", 0x23456789]


@given(vid=st.integers(0, 0xFFFF), did=st.integers(0, 0xFFFF),
       name=st.text(st.characters(codec="ascii", exclude_characters="-\0"), min_size=1,
                    max_size=16),
       version=st.integers(0, 0xFFFFFFFE))
def test_printed_strings_scan_back(vid, did, name, version):
    """ABI §5.3: every string the driver prints re-parses to its four fields."""
    assert scan(f"{vid:04x}-{did:04x}-{name}-{version:08x}") == [vid, did, name, version]


@given(field=st.sampled_from(["vid", "did", "type", "sw"]), data=st.data())
def test_one_changed_field_gives_its_reason(field, data):
    """ABI §5.3: changing one field of the local string logs that field's reason."""
    parts = {"vid": 0x8086, "did": 0x1912, "type": "GVTg_V5_4", "sw": 1}
    local = "{vid:04x}-{did:04x}-{type}-{sw:08x}".format(**parts)
    if field == "type":
        parts["type"] = data.draw(st.sampled_from(["GVTg_V5_1", "GVTg_V5_2", "GVTg_V5_8"]))
    else:
        parts[field] = data.draw(st.integers(0, 0xFFFF).filter(lambda v: v != parts[field]))
    remote = "{vid:04x}-{did:04x}-{type}-{sw:08x}".format(**parts)
    expected = {"vid": "physical device not matched", "did": "physical device not matched",
                "sw": "migration software version not matched", "type": "vgpu type not matched"}
    assert mismatch_reason(local, remote) == expected[field]


@given(source=st.one_of(st.text(st.characters(codec="ascii"), max_size=40),
                        st.sampled_from([V54, V54 + " ", " " + V54, V54.upper()])))
def test_only_the_exact_string_is_compatible(source):
    """ABI §5.3: compatible iff the (newline-stripped) source equals the local string."""
    host = Topology.from_text('[[parent]]\ndriver = "gvt"\n', "t").build()
    parent = host.parents["0000:00:02.0"]
    assert isinstance(parent.driver, Gvt)
    migration = parent.driver.migration(parent.types["i915-GVTg_V5_4"])
    if source == V54:
        migration.check(source)
    else:
        with pytest.raises(OSError) as info:
            migration.check(source)
        assert info.value.errno == errno.EINVAL
