"""NVIDIA vGPU on SR-IOV VFs (``docs/sriov.md``) through a real mount: an L40S (Ada,
vendor-specific VFIO: the nvidia/ group on each VF) and an A100 (Ampere: each VF an mdev
parent), with the SR-IOV files of drivers/pci/iov.c."""
from __future__ import annotations

import errno
import os
import re
import subprocess
import sys

import pytest
from conftest import errno_of, needs_fuse, write_topology

from mdevfs.testing import mounted

pytestmark = needs_fuse

TOPOLOGY = """
[[gpu]]
driver = "nvidia-sriov"
address = "0000:41:00.0"
path = "devices/pci0000:40/0000:40:01.1/0000:41:00.0"
[gpu.options]
model = "L40S"
numa_node = 0

[[gpu]]
driver = "nvidia-sriov"
address = "0000:81:00.0"
path = "devices/pci0000:80/0000:80:01.0/0000:81:00.0"
[gpu.options]
model = "A100"
"""
PF = "bus/pci/devices/0000:41:00.0"
VF = ["bus/pci/devices/0000:41:00.4", "bus/pci/devices/0000:41:00.5",
      "bus/pci/devices/0000:41:00.6"]
HEADER = "ID    : vGPU Name\n"


@pytest.fixture(scope="module")
def mount(tmp_path_factory):
    with mounted(write_topology(tmp_path_factory.mktemp("sriov"), TOPOLOGY)) as m:
        yield m


@pytest.fixture
def m(mount):
    mount.reset()  # no VFs, no vGPUs, nothing open
    yield mount
    assert mount.alive(), mount.log()


def write(m, rel: str, data: str) -> int:
    return m.write(rel, data)


def test_pf_is_a_pci_function_with_the_sriov_capability(m):
    assert (m.read(f"{PF}/vendor"), m.read(f"{PF}/device"), m.read(f"{PF}/class")) == \
        ("0x10de\n", "0x26b9\n", "0x030200\n")
    assert m.read(f"{PF}/numa_node") == "0\n"
    assert (m.read(f"{PF}/sriov_totalvfs"), m.read(f"{PF}/sriov_numvfs"),
            m.read(f"{PF}/sriov_offset"), m.read(f"{PF}/sriov_stride"),
            m.read(f"{PF}/sriov_vf_device")) == ("32\n", "0\n", "4\n", "1\n", "26b9\n")
    assert os.readlink(m.path(f"{PF}/driver")) == "../../../../bus/pci/drivers/nvidia"
    assert os.listdir(m.path("class/mdev_bus")) == []  # Ada: no mdev at all
    assert "PCI_SLOT_NAME=0000:41:00.0\n" in m.read(f"{PF}/uevent")


def test_sriov_numvfs_parses_and_refuses_as_iov_c(m):
    numvfs = f"{PF}/sriov_numvfs"
    for bad in ("abc", "-1", "70000", "1 1"):
        assert errno_of(write, m, numvfs, bad) == errno.EINVAL, bad
    assert errno_of(write, m, numvfs, "33") == errno.ERANGE  # past sriov_totalvfs
    assert write(m, numvfs, "0") == 1  # already 0: nothing to do
    assert write(m, numvfs, "3\n") == 2
    assert m.read(numvfs) == "3\n"
    assert write(m, numvfs, "3") == 1  # the same count: nothing happens
    assert errno_of(write, m, numvfs, "2") == errno.EBUSY  # disable first
    assert write(m, numvfs, "0") == 1
    assert not os.path.lexists(m.path(VF[0]))


def test_vfs_exist_when_the_write_returns_each_with_its_own_group(m):
    write(m, f"{PF}/sriov_numvfs", "3")
    pf_dir = "devices/pci0000:40/0000:40:01.1"
    assert [os.readlink(m.path(f"{PF}/virtfn{i}")) for i in range(3)] == \
        ["../0000:41:00.4", "../0000:41:00.5", "../0000:41:00.6"]
    groups = set()
    for i, vf in enumerate(VF):
        assert os.readlink(m.path(f"{vf}/physfn")) == "../0000:41:00.0"
        assert os.readlink(m.path(vf)) == f"../../../{pf_dir}/0000:41:00.{4 + i}"
        assert os.readlink(m.path(f"{vf}/driver")) == "../../../../bus/pci/drivers/nvidia"
        assert m.read(f"{vf}/device") == "0x26b9\n"
        groups.add(os.readlink(m.path(f"{vf}/iommu_group")))
        vfio = os.listdir(m.path(f"{vf}/vfio-dev"))
        assert len(vfio) == 1 and os.readlink(m.path(f"class/vfio-dev/{vfio[0]}")).endswith(
            f"0000:41:00.{4 + i}/vfio-dev/{vfio[0]}")
    assert len(groups) == 3
    assert sorted(os.listdir(m.path("bus/pci/drivers/nvidia"))) == [
        "0000:41:00.0", "0000:41:00.4", "0000:41:00.5", "0000:41:00.6", "0000:81:00.0", "bind",
        "module", "new_id", "remove_id", "uevent", "unbind"]
    drivers = "bus/pci/drivers/nvidia"
    assert errno_of(write, m, f"{drivers}/bind", "0000:41:00.4") == errno.EBUSY  # bound already
    assert errno_of(write, m, f"{drivers}/bind", "0000:99:00.0") == errno.ENODEV
    # unbind_store: the VF leaves nvidia, and with it its nvidia/ group and VFIO device;
    # bind gives them back
    assert write(m, f"{drivers}/unbind", "0000:41:00.4\n") == 13
    assert sorted(set(os.listdir(m.path(VF[0]))) & {"driver", "nvidia", "vfio-dev"}) == []
    assert errno_of(write, m, f"{drivers}/unbind", "0000:41:00.4") == errno.ENODEV
    assert write(m, f"{drivers}/bind", "0000:41:00.4") == 12
    assert os.readlink(m.path(f"{VF[0]}/driver")) == "../../../../bus/pci/drivers/nvidia"
    assert m.read(f"{VF[0]}/nvidia/current_vgpu_type") == "0\n"


def test_current_vgpu_type_and_the_catalog_shrinking_across_siblings(m):
    write(m, f"{PF}/sriov_numvfs", "3")
    cur = [f"{vf}/nvidia/current_vgpu_type" for vf in VF]
    creatable = [f"{vf}/nvidia/creatable_vgpu_types" for vf in VF]
    assert m.read(cur[0]) == "0\n"
    full = m.read(creatable[0])
    assert full.startswith(HEADER + "1145  : NVIDIA L40S-1B\n1146  : NVIDIA L40S-2B\n")
    assert "1150  : NVIDIA L40S-4Q\n" in full and len(full.splitlines()) == 24
    for bad, err in (("abc", errno.EINVAL), ("0x10", errno.EINVAL),
                     ("99999999999999999999999", errno.ERANGE), ("1", errno.ENODEV)):
        assert errno_of(write, m, cur[0], bad) == err, bad
    assert write(m, cur[0], "1150\n") == 5
    assert m.read(cur[0]) == "1150\n"
    assert m.read(creatable[0]) == ""  # a VF that holds a vGPU creates nothing more
    assert m.read(creatable[1]) == HEADER + "1150  : NVIDIA L40S-4Q\n"
    assert errno_of(write, m, cur[1], "1151") == errno.EINVAL  # homogeneous: 4Q runs here
    assert errno_of(write, m, cur[0], "1150") == errno.EBUSY  # the VF holds one already
    assert write(m, cur[0], "0") == 1
    assert m.read(creatable[1]) == full


def test_a_card_filled_and_emptied(m):
    """L40S-48Q: one per card; then every VF's catalog is the header alone."""
    write(m, f"{PF}/sriov_numvfs", "3")
    cur = [f"{vf}/nvidia/current_vgpu_type" for vf in VF]
    assert write(m, cur[0], "1156") == 4
    assert m.read(f"{VF[0]}/nvidia/current_vgpu_type") == "1156\n"
    assert errno_of(write, m, cur[1], "1156") == errno.ENOSPC
    assert m.read(f"{VF[1]}/nvidia/creatable_vgpu_types") == HEADER
    assert m.read(f"{VF[2]}/nvidia/creatable_vgpu_types") == HEADER
    write(m, cur[0], "0")
    assert write(m, cur[1], "1156") == 4


def test_instance_files_are_readable_once_a_type_is_set(m):
    write(m, f"{PF}/sriov_numvfs", "2")
    vf = VF[1]
    for name in ("gpu_instance_id", "placement_id", "vgpu_params"):
        assert errno_of(m.read, f"{vf}/nvidia/{name}") == errno.ENODEV
    write(m, f"{vf}/nvidia/current_vgpu_type", "1147")
    assert (m.read(f"{vf}/nvidia/gpu_instance_id"), m.read(f"{vf}/nvidia/placement_id"),
            m.read(f"{vf}/nvidia/vgpu_params")) == ("-1\n", "1\n", "\n")
    write(m, f"{vf}/nvidia/vgpu_params", "frame_rate_limiter=0\n")
    assert m.read(f"{vf}/nvidia/vgpu_params") == "frame_rate_limiter=0\n"


def test_an_open_vfio_device_refuses_changes_and_disabling(m):
    write(m, f"{PF}/sriov_numvfs", "2")
    cur = f"{VF[0]}/nvidia/current_vgpu_type"
    write(m, cur, "1148")
    m.control.open("0000:41:00.4")
    assert errno_of(write, m, cur, "0") == errno.EBUSY
    assert errno_of(write, m, f"{PF}/sriov_numvfs", "0") == errno.EBUSY
    m.control.open("0000:41:00.4", on=False)
    assert write(m, cur, "0") == 1


def test_vfs_disabled_while_a_vgpu_is_set(m):
    write(m, f"{PF}/sriov_numvfs", "2")
    write(m, f"{VF[0]}/nvidia/current_vgpu_type", "1148")
    assert write(m, f"{PF}/sriov_numvfs", "0") == 1
    assert not os.path.lexists(m.path(VF[0]))
    write(m, f"{PF}/sriov_numvfs", "2")
    assert m.read(f"{VF[0]}/nvidia/current_vgpu_type") == "0\n"
    assert m.read(f"{VF[1]}/nvidia/creatable_vgpu_types").count("\n") == 24


def test_ampere_vfs_are_mdev_parents_sharing_the_cards_capacity(m):
    apf = "bus/pci/devices/0000:81:00.0"
    assert m.read(f"{apf}/sriov_totalvfs") == "16\n"
    write(m, f"{apf}/sriov_numvfs", "3")
    vfs = ["0000:81:00.4", "0000:81:00.5", "0000:81:00.6"]
    assert sorted(os.listdir(m.path("class/mdev_bus"))) == vfs
    types = m.path(f"class/mdev_bus/{vfs[0]}/mdev_supported_types")
    assert (types / "nvidia-471/name").read_text() == "GRID A100-10C\n"
    assert not os.path.exists(m.path(f"bus/pci/devices/{vfs[0]}/nvidia"))
    avail = lambda vf, t: m.read(f"class/mdev_bus/{vf}/mdev_supported_types/{t}/available_instances")  # noqa: E731
    assert avail(vfs[0], "nvidia-472") == "1\n"
    u = m.create("nvidia-472", parent=vfs[0])  # A100-20C: two per card
    assert avail(vfs[0], "nvidia-472") == "0\n"  # one vGPU per VF
    assert avail(vfs[1], "nvidia-472") == "1\n"
    assert avail(vfs[1], "nvidia-471") == "0\n"  # homogeneous: 20C runs on the card
    assert errno_of(m.create, "nvidia-471", None, vfs[1]) == errno.EBUSY
    assert errno_of(m.create, "nvidia-472", None, vfs[0]) == errno.ENOSPC
    m.create("nvidia-472", parent=vfs[1])
    assert avail(vfs[2], "nvidia-472") == "0\n"  # the card is full
    assert errno_of(m.create, "nvidia-472", None, vfs[2]) == errno.ENOSPC
    write(m, f"{apf}/sriov_numvfs", "0")  # the VFs go, with their mdevs
    assert os.listdir(m.path("class/mdev_bus")) == [] and not os.path.lexists(
        m.path(f"bus/mdev/devices/{u}"))


def test_through_mdevfs_run_as_a_kubevirt_operator_would(tmp_path):
    topology = write_topology(tmp_path, TOPOLOGY)
    script = ("echo 2 > /sys/bus/pci/devices/0000:41:00.0/sriov_numvfs && "
              "echo 1152 > /sys/bus/pci/devices/0000:41:00.5/nvidia/current_vgpu_type && "
              "cat /sys/bus/pci/devices/0000:41:00.5/nvidia/current_vgpu_type && "
              "cat /sys/bus/pci/devices/0000:41:00.4/nvidia/creatable_vgpu_types && "
              "readlink /sys/bus/pci/devices/0000:41:00.5/physfn")
    done = subprocess.run([sys.executable, "-m", "mdevfs", "run", "--config", str(topology), "--",
                           "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1152\n" + HEADER + "1152  : NVIDIA L40S-8Q\n../0000:41:00.0\n"


OWN_CATALOG = """
[cards.TOY]
architecture = "hopper"
name = "Toy GPU"
pci_device = 0x2331
sriov_totalvfs = 4
[[cards.TOY.types]]
id = 10
name = "TOY-2Q"
max_instance = 2
framebuffer_mib = 2048
[[cards.TOY.types]]
id = 11
name = "TOY-1Q"
max_instance = 4
framebuffer_mib = 1024
"""


def test_a_topology_brings_its_own_catalog_and_heterogeneous_mode(tmp_path):
    """Types of different sizes share the card's frame buffer (2 × 2048 MiB here); VFs
    enabled at start (vfs = 3) are there at mount and again after a reset."""
    (tmp_path / "toy.toml").write_text(OWN_CATALOG)
    topology = write_topology(tmp_path, '[[gpu]]\ndriver = "nvidia-sriov"\naddress = "0000:41:00.0"\n'
                              '[gpu.options]\nmodel = "TOY"\ncatalog = "toy.toml"\n'
                              'mode = "heterogeneous"\nvfs = 3\n')
    with mounted(topology) as m:
        vf = [f"bus/pci/devices/0000:41:00.{i}" for i in (4, 5, 6)]
        assert os.readlink(m.path(vf[0])) == "../../../devices/pci0000:00/0000:41:00.4"
        assert m.read(f"{vf[0]}/nvidia/creatable_vgpu_types") == \
            HEADER + "10    : TOY-2Q\n11    : TOY-1Q\n"
        write(m, f"{vf[0]}/nvidia/current_vgpu_type", "10")
        write(m, f"{vf[1]}/nvidia/current_vgpu_type", "11")  # another size: allowed here
        assert m.read(f"{vf[2]}/nvidia/creatable_vgpu_types") == HEADER + "11    : TOY-1Q\n"
        assert errno_of(write, m, f"{vf[2]}/nvidia/current_vgpu_type", "10") == errno.ENOSPC
        write(m, f"{vf[2]}/nvidia/current_vgpu_type", "11")
        assert m.read(f"{vf[1]}/nvidia/current_vgpu_type") == "11\n"
        m.reset()
        assert m.read("bus/pci/devices/0000:41:00.0/sriov_numvfs") == "3\n"
        assert m.read(f"{vf[0]}/nvidia/current_vgpu_type") == "0\n"


def test_sriov_numvfs_without_a_driver_that_configures_sriov_is_enoent():
    """As iov.c has it: no PF driver, or one without sriov_configure: ENOENT (pure core)."""
    from mdevfs.model import Host
    from mdevfs.pci import PciFunction, PciIds, Sriov

    host = Host()
    pf = host.add_pci(PciFunction("0000:41:00.0", "devices/pci0000:40/0000:41:00.0",
                                  PciIds(0x10DE, 0x26B9), sriov=Sriov(8, 4, 1, 0x26B9)))
    assert errno_of(host.set_numvfs, pf, b"2") == errno.ENOENT
    assert host.set_numvfs(pf, b"0") == 1  # the current count: nothing to configure
    assert errno_of(host.set_numvfs, pf, b"9") == errno.ERANGE


def test_a_manager_release_that_is_no_release_is_refused_when_the_gpu_is_built():
    """The release is parsed once, at build: branch and minor, or the option's error."""
    from mdevfs_vendors.nvidia_sriov import NvidiaSriovGpu

    gpu = NvidiaSriovGpu({"model": "L40S", "manager": "550.54.14"})
    assert (gpu.module_version, gpu.branch, gpu.minor) == ("550.54.14", 550, 54)
    with pytest.raises(ValueError, match="option 'manager' must look like 535.129.03, "
                                         "not 'latest'"):
        NvidiaSriovGpu({"model": "L40S", "manager": "latest"})


def test_sriov_manage_stands_in_inside_mdevfs_run(tmp_path):
    """NVIDIA's /usr/lib/nvidia/sriov-manage -e|-d, as management software calls it; the
    host's /usr/lib is untouched."""
    topology = write_topology(tmp_path, TOPOLOGY)
    script = ("/usr/lib/nvidia/sriov-manage -e ALL && "
              "cat /sys/bus/pci/devices/0000:81:00.0/sriov_numvfs && "
              "/usr/lib/nvidia/sriov-manage -d 0000:41:00.0 && "
              "/usr/lib/nvidia/sriov-manage -d 0000:99:00.0 || echo refused $?")
    had = os.path.exists("/usr/lib/nvidia/sriov-manage")
    done = subprocess.run([sys.executable, "-m", "mdevfs", "run", "--config", str(topology), "--",
                           "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("0000:41:00.0: 32 VFs enabled\n0000:81:00.0: 16 VFs enabled\n16\n"
                           "0000:41:00.0: 0 VFs enabled\nrefused 1\n")
    assert done.stderr == "sriov-manage: 0000:99:00.0 is not an SR-IOV GPU bound to nvidia\n"
    assert os.path.exists("/usr/lib/nvidia/sriov-manage") == had


def test_sriov_drivers_autoprobe_is_kstrtobool_and_unbound_vfs_have_no_driver(m):
    autoprobe = f"{PF}/sriov_drivers_autoprobe"
    assert m.read(autoprobe) == "1\n"
    for bad in (" 1", "x", "o"):
        assert errno_of(write, m, autoprobe, bad) == errno.EINVAL, bad
    assert write(m, autoprobe, "off\n") == 4
    assert m.read(autoprobe) == "0\n"
    write(m, f"{PF}/sriov_numvfs", "1")
    assert not os.path.lexists(m.path(f"{VF[0]}/driver"))  # no driver probed it
    assert not os.path.exists(m.path(f"{VF[0]}/nvidia"))
    write(m, f"{PF}/sriov_numvfs", "0")
    assert write(m, autoprobe, "Yes") == 3
    assert m.read(autoprobe) == "1\n"


def test_mig_mode_decides_between_time_sliced_and_mig_backed_types(tmp_path):
    """A GPU in MIG mode offers only MIG-backed types (H100-<slices>-<size>C), one out of it
    only time-sliced ones (NVIDIA's vGPU user guide: a MIG-backed vGPU needs MIG mode); a
    type of the other mode is refused with EINVAL (mdevfs's choice), EBUSY as an Ampere mdev
    create. A MIG-backed vGPU reads its slot as gpu_instance_id, a time-sliced one -1."""
    topology = write_topology(tmp_path, """
[[gpu]]
driver = "nvidia-sriov"
address = "0000:41:00.0"
options = { model = "H100", vfs = 2, mig = true }
[[gpu]]
driver = "nvidia-sriov"
address = "0000:81:00.0"
options = { model = "H100", vfs = 1 }
[[gpu]]
driver = "nvidia-sriov"
address = "0000:a1:00.0"
options = { model = "A100", vfs = 1 }
""")
    with mounted(topology) as m:
        on = m.read("bus/pci/devices/0000:41:00.4/nvidia/creatable_vgpu_types").splitlines()
        off = m.read("bus/pci/devices/0000:81:00.4/nvidia/creatable_vgpu_types").splitlines()
        assert on[0] == off[0] == HEADER.strip()
        assert on[1:] and all(re.search(r"-\d+-\d+C(?:ME)?$", line) for line in on[1:])
        assert off[1:] and not any(re.search(r"-\d+-\d+C(?:ME)?$", line) for line in off[1:])
        mig_id, sliced_id = on[1].split()[0], off[1].split()[0]
        assert errno_of(m.write, "bus/pci/devices/0000:81:00.4/nvidia/current_vgpu_type",
                        mig_id) == errno.EINVAL
        m.write("bus/pci/devices/0000:41:00.5/nvidia/current_vgpu_type", mig_id)
        assert m.read("bus/pci/devices/0000:41:00.5/nvidia/gpu_instance_id") == "1\n"
        m.write("bus/pci/devices/0000:81:00.4/nvidia/current_vgpu_type", sliced_id)
        assert m.read("bus/pci/devices/0000:81:00.4/nvidia/gpu_instance_id") == "-1\n"
        types = "class/mdev_bus/0000:a1:00.4/mdev_supported_types"
        assert m.read(f"{types}/nvidia-474/name") == "GRID A100-1-5C\n"
        assert m.read(f"{types}/nvidia-474/available_instances") == "0\n"
        assert errno_of(m.create, "nvidia-474", None, "0000:a1:00.4") == errno.EBUSY
    bad = write_topology(tmp_path, '[[gpu]]\ndriver = "nvidia-sriov"\naddress = "0000:41:00.0"\n'
                         'options = { model = "L40S", mig = true }\n', "bad.toml")
    from mdevfs.config import TopologyError
    with pytest.raises(TopologyError, match="L40S has no MIG-backed type"):
        with mounted(bad):
            pass
