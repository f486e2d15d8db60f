"""NVIDIA vGPU (ABI §4.2) and the driver's own migration_version scheme."""
from __future__ import annotations

import errno
import os
import stat

import pytest
from conftest import errno_of, shared_mount
from hypothesis import given
from hypothesis import strategies as st
from mdevfs_vendors.nvidia import TESLA_P4, NvidiaMigration, NvidiaVgpu

from mdevfs.config import Topology, TopologyError

HOSTS = """
[[parent]]
driver = "nvidia"
[parent.options]
manager = "535.129.03"

[[parent]]
driver = "nvidia"
name = "0000:42:00.0"
path = "devices/pci0000:40/0000:40:03.1/0000:42:00.0"
options = { prefix = "NVIDIA", migration = false }
"""
GPU = "0000:41:00.0"
TYPES = f"class/mdev_bus/{GPU}/mdev_supported_types"
IDS = [f"nvidia-{n}" for n in range(63, 72)]



mount, m = shared_mount(HOSTS, "nvidia")


def avail(m, gpu: str = GPU) -> dict[str, int]:
    base = m.path(f"class/mdev_bus/{gpu}/mdev_supported_types")
    return {t: int((base / t / "available_instances").read_text()) for t in os.listdir(base)}


def test_parent_is_the_physical_gpu(m):
    """ABI §4.2: pre-Ampere, the parent is the physical GPU's PCI device (bus pci)."""
    assert os.readlink(m.path(f"class/mdev_bus/{GPU}")) == \
        f"../../devices/pci0000:40/0000:40:01.1/{GPU}"
    assert os.readlink(m.path(f"devices/pci0000:40/0000:40:01.1/{GPU}/subsystem")) == \
        "../../../../bus/pci"
    gpu = f"devices/pci0000:40/0000:40:01.1/{GPU}"
    assert m.read(f"{gpu}/uevent") == (
        "DRIVER=nvidia\nPCI_CLASS=30200\nPCI_ID=10DE:1BB3\nPCI_SUBSYS_ID=10DE:11D8\n"
        f"PCI_SLOT_NAME={GPU}\nMODALIAS=pci:v000010DEd00001BB3sv000010DEsd000011D8bc03sc02i00\n")
    # what NVIDIA's go-nvlib and device plugin read besides
    assert (m.read(f"{gpu}/vendor"), m.read(f"{gpu}/device"), m.read(f"{gpu}/class")) == \
        ("0x10de\n", "0x1bb3\n", "0x030200\n")
    assert (m.read(f"{gpu}/subsystem_vendor"), m.read(f"{gpu}/subsystem_device")) == \
        ("0x10de\n", "0x11d8\n")
    assert m.read(f"{gpu}/numa_node") == "-1\n"
    assert len(m.read(f"{gpu}/resource").splitlines()) == 13
    assert os.readlink(m.path(f"{gpu}/driver")) == "../../../../bus/pci/drivers/nvidia"
    assert os.readlink(m.path(f"bus/pci/drivers/nvidia/{GPU}")) == f"../../../../{gpu}"
    group = os.readlink(m.path(f"{gpu}/iommu_group"))
    assert os.listdir(m.path(f"{gpu}/iommu_group/devices")) == [GPU]
    assert group.startswith("../../../../kernel/iommu_groups/")


def test_type_ids_names_and_descriptions(m):
    """ABI §4.2: nvidia-NNN ids, 'GRID …' names, and the documented description format."""
    assert sorted(os.listdir(m.path(TYPES)), key=lambda t: int(t[7:])) == IDS
    assert m.path(f"{TYPES}/nvidia-63/name").read_bytes() == b"GRID P4-1Q\n"
    assert m.path(f"{TYPES}/nvidia-64/name").read_bytes() == b"GRID P4-2Q\n"
    assert m.path(f"{TYPES}/nvidia-64/description").read_bytes() == (
        b"num_heads=4, frl_config=60, framebuffer=2048M, max_resolution=7680x4320, "
        b"max_instance=4\n")
    assert m.path(f"{TYPES}/nvidia-71/description").read_bytes() == (
        b"num_heads=4, frl_config=45, framebuffer=1024M, max_resolution=5120x2880, "
        b"max_instance=8\n")
    assert m.path(f"{TYPES}/nvidia-64/device_api").read_bytes() == b"vfio-pci\n"


def test_newer_drivers_say_nvidia(m):
    """ABI §4.2: newer drivers name their types 'NVIDIA …' instead of 'GRID …'."""
    assert m.read("class/mdev_bus/0000:42:00.0/mdev_supported_types/nvidia-64/name") == \
        "NVIDIA P4-2Q\n"


def test_one_type_per_gpu_at_a_time(m):
    """ABI §4.2: while one type is in use the others show 0; creating one is EBUSY."""
    assert avail(m) == {f"nvidia-{p.type_id}": p.max_instance for p in TESLA_P4}
    first = m.create("nvidia-64", parent=GPU)
    assert avail(m) == {t: (3 if t == "nvidia-64" else 0) for t in IDS}
    assert errno_of(m.create, "nvidia-63", None, GPU) == errno.EBUSY
    assert avail(m, "0000:42:00.0")["nvidia-63"] == 8  # another GPU is free
    m.remove(first)
    assert avail(m)["nvidia-63"] == 8


def test_max_instance_then_enospc(m):
    """ABI §4.2: a type takes max_instance vGPUs (P4-4Q: 2); one more is ENOSPC."""
    m.create("nvidia-65", parent=GPU)
    m.create("nvidia-65", parent=GPU)
    assert avail(m)["nvidia-65"] == 0
    assert errno_of(m.create, "nvidia-65", None, GPU) == errno.ENOSPC


def test_vgpu_params_is_read_write(m):
    """ABI §4.2 ([rec]): nvidia/vgpu_params holds the plugin parameters as written."""
    uuid = m.create("nvidia-64", parent=GPU)
    path = f"bus/mdev/devices/{uuid}/nvidia/vgpu_params"
    assert stat.S_IMODE(os.stat(m.path(path)).st_mode) == 0o644
    assert m.read(path) == "\n"
    assert m.write(path, "frame_rate_limiter=0\n") == 21
    assert m.read(path) == "frame_rate_limiter=0\n"


# --- migration_version: the driver's branch scheme ----------------------------------------

def test_version_string_at_type_and_device(m):
    """ABI §5.2 + nvidia.py: 'NVIDIA-vGPU:<branch>.<minor>:<profile>' at both nodes, 0644."""
    uuid = m.create("nvidia-64", parent=GPU)
    for where in (f"{TYPES}/nvidia-64", f"bus/mdev/devices/{uuid}"):
        path = m.path(f"{where}/migration_version")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
        assert path.read_bytes() == b"NVIDIA-vGPU:535.129:P4-2Q\n"


@pytest.mark.parametrize("source, code", [
    ("NVIDIA-vGPU:535.129:P4-2Q", 0),
    ("NVIDIA-vGPU:535.104:P4-2Q", 0),                    # an older release of the branch
    ("NVIDIA-vGPU:535.0:P4-2Q", 0),
    ("NVIDIA-vGPU:535.154:P4-2Q", errno.EPROTONOSUPPORT),  # newer than the target
    ("NVIDIA-vGPU:550.54:P4-2Q", errno.EPROTONOSUPPORT),   # another branch
    ("NVIDIA-vGPU:470.129:P4-2Q", errno.EPROTONOSUPPORT),
    ("NVIDIA-vGPU:535.129:P4-1Q", errno.EINVAL),            # another profile
    ("NVIDIA-vGPU:535.129:P40-2Q", errno.EINVAL),
    ("NVIDIA-vGPU:535.129:P4-2Q ", errno.EINVAL),
    ("nvidia-64", errno.EINVAL),
    ("8086-1912-GVTg_V5_4-00000001", errno.EINVAL),
])
def test_branch_compatibility(m, source, code):
    """The scheme of vendors/nvidia.py: same profile, same branch, source minor ≤ target minor; errnos."""
    uuid = m.create("nvidia-64", parent=GPU)
    for where in (f"{TYPES}/nvidia-64", f"bus/mdev/devices/{uuid}"):
        path = f"{where}/migration_version"
        if code == 0:
            assert m.write(path, source + "\n") == len(source) + 1
        else:
            mark = len(m.log())
            assert errno_of(m.write, path, source + "\n") == code
            assert "vGPU migration from" in m.log()[mark:]


def test_no_migration_support_means_no_attribute(m):
    """ABI §5.2: migration = false: no migration_version at the type or the device."""
    base = "class/mdev_bus/0000:42:00.0/mdev_supported_types/nvidia-64"
    uuid = m.create("nvidia-64", parent="0000:42:00.0")
    assert "migration_version" not in os.listdir(m.path(base))
    assert "migration_version" not in os.listdir(m.path(f"bus/mdev/devices/{uuid}"))
    assert errno_of(m.read, f"{base}/migration_version") == errno.ENOENT


def test_manager_upgrade_through_the_control_socket(m):
    """The scheme of vendors/nvidia.py: after a host upgrade (ctl set-option manager) old sources still go,
    while the upgraded string no longer fits an older host (here: this one, downgraded)."""
    path = f"{TYPES}/nvidia-64/migration_version"
    try:
        m.control.set_option(GPU, "manager", "535.154.05")
        assert m.read(path) == "NVIDIA-vGPU:535.154:P4-2Q\n"
        assert m.write(path, "NVIDIA-vGPU:535.129:P4-2Q") == 25
        m.control.set_option(GPU, "manager", "535.104.05")
        assert errno_of(m.write, path, "NVIDIA-vGPU:535.154:P4-2Q") == errno.EPROTONOSUPPORT
        assert errno_of(m.control.set_option, GPU, "manager", "R535") == errno.EINVAL
        assert errno_of(m.control.set_option, GPU, "prefix", "NVIDIA") == errno.EINVAL
    finally:
        m.control.set_option(GPU, "manager", "535.129.03")
    assert m.read(path) == "NVIDIA-vGPU:535.129:P4-2Q\n"


@pytest.mark.parametrize("options, named", [
    ("{ prefix = \"Tesla\" }", "'prefix'"),
    ("{ manager = \"R535\" }", "'manager'"),
    ("{ migration = \"yes\" }", "'migration'"),
    ("{ gpu = \"T4\" }", "'gpu'"),
])
def test_bad_options_name_the_option(options, named):
    """Topology files: a bad NVIDIA option is refused, naming the parent and the option."""
    with pytest.raises(TopologyError) as info:
        Topology.from_text(f'[[parent]]\ndriver = "nvidia"\noptions = {options}\n', "t").build()
    assert "parent #1" in str(info.value) and named in str(info.value)


@given(source=st.tuples(st.integers(0, 999), st.integers(0, 999)),
       target=st.tuples(st.integers(0, 999), st.integers(0, 999)),
       profile=st.sampled_from([p.name for p in TESLA_P4]))
def test_rule_is_same_branch_and_no_newer_minor(source, target, profile):
    """The scheme of vendors/nvidia.py: compatible iff same profile and branch and source minor ≤ target's."""
    gpu = NvidiaVgpu({"manager": f"{target[0]}.{target[1]}.01"})
    migration = NvidiaMigration(gpu, "P4-2Q")
    text = f"NVIDIA-vGPU:{source[0]}.{source[1]}:{profile}"
    if profile == "P4-2Q" and source[0] == target[0] and source[1] <= target[1]:
        migration.check(text)
    else:
        with pytest.raises(OSError) as info:
            migration.check(text)
        assert info.value.errno == (errno.EINVAL if profile != "P4-2Q"
                                    else errno.EPROTONOSUPPORT)


def test_manager_version_changes_at_run_time():
    """The scheme of vendors/nvidia.py: set_manager() moves the string; an older target then refuses."""
    gpu = NvidiaVgpu({})
    migration = NvidiaMigration(gpu, "P4-2Q")
    source = migration.version()
    gpu.set_manager("535.104.05")
    assert migration.version() == "NVIDIA-vGPU:535.104:P4-2Q"
    with pytest.raises(OSError) as info:
        migration.check(source)
    assert info.value.errno == errno.EPROTONOSUPPORT
