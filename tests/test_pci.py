"""The PCI bus through a real mount, as passthrough tools use it: the files Proxmox VE and Incus
read, a function handed to vfio-pci as libvirt's nodedev-detach and KubeVirt do, dynamic ids,
a PF unbound with its VFs, and the PCI core's writable files. (Every file and errno of the
generic PCI core is also compared with real kernels: test_conformance.py.)"""
from __future__ import annotations

import errno
import os
import struct

import pytest
from conftest import errno_of, needs_fuse, write_topology

from mdevfs.pci import ANY_ID, parse_dynamic_id
from mdevfs.testing import mounted

pytestmark = needs_fuse

PCI = "bus/pci/devices"
GPU = f"{PCI}/0000:41:00.0"  # the default topology's nvidia GPU: an mdev parent
PF = f"{PCI}/0000:c1:00.0"  # its L40S: an SR-IOV PF


@pytest.fixture(scope="module")
def mount():
    with mounted() as m:
        yield m


@pytest.fixture
def m(mount):
    mount.reset()  # every function on its own driver, no VF, no dynamic id
    yield mount
    assert mount.alive(), mount.log()


def link(m, rel: str) -> str:
    return os.readlink(m.path(rel))


def test_what_proxmox_reads_to_start_a_vm_on_a_gpu(m):
    """PVE::SysFSTools::pci_device_info reads irq; check_iommu_support needs an IOMMU unit
    in class/iommu; the unit's devices/ links every function behind it."""
    assert m.read(f"{GPU}/irq") == "18\n"  # lines from 16, in bus order
    assert os.listdir(m.path("class/iommu")) == ["dmar0"]
    assert link(m, f"{GPU}/iommu") == "../../../virtual/iommu/dmar0"
    assert sorted(os.listdir(m.path("class/iommu/dmar0/devices"))) == [
        "0000:00:02.0", "0000:41:00.0", "0000:c1:00.0"]
    assert link(m, "class/iommu/dmar0/devices/0000:41:00.0") == \
        "../../../../pci0000:40/0000:40:01.1/0000:41:00.0"


def test_what_incus_reads_for_the_driver_version(m):
    """Incus reads driver/module/version: the vGPU manager release."""
    assert link(m, "bus/pci/drivers/nvidia/module") == "../../../../module/nvidia"
    assert m.read(f"{PF}/driver/module/version") == "550.127.06\n"
    assert not m.path("module/vfio_pci/version").exists()  # an in-tree module has none


def test_a_gpu_handed_to_vfio_pci_as_nodedev_detach_does(m):
    """Driver_override, unbind, drivers_probe: the GPU is vfio-pci's, its mdev parent gone,
    its vfio group named after its IOMMU group; and back again."""
    group = os.path.basename(link(m, f"{GPU}/iommu_group"))
    assert m.write(f"{GPU}/driver_override", "vfio-pci\n") == 9
    assert m.write(f"{GPU}/driver/unbind", "0000:41:00.0") == 12
    assert not m.path("class/mdev_bus/0000:41:00.0").exists()
    assert not m.path(f"{GPU}/driver").exists()
    assert m.write("bus/pci/drivers_probe", "0000:41:00.0") == 12
    assert link(m, f"{GPU}/driver") == "../../../../bus/pci/drivers/vfio-pci"
    assert os.listdir(m.path("class/vfio")) == [group]
    assert m.read(f"class/vfio/{group}/dev") == "246:0\n"
    assert m.read(f"class/vfio/{group}/uevent") == f"MAJOR=246\nMINOR=0\nDEVNAME=vfio/{group}\n"
    assert os.listdir(m.path(f"{GPU}/vfio-dev")) == ["vfio0"]
    # vfio-pci allows runtime PM: idle, the GPU suspends
    assert (m.read(f"{GPU}/power/control"), m.read(f"{GPU}/power/runtime_status"),
            m.read(f"{GPU}/power_state")) == ("auto\n", "suspended\n", "D3hot\n")
    # back: unbind from vfio-pci, clear the override, probe again
    m.write("bus/pci/drivers/vfio-pci/unbind", "0000:41:00.0")
    assert os.listdir(m.path("class/vfio")) == []
    m.write(f"{GPU}/driver_override", "\n")
    assert m.read(f"{GPU}/driver_override") == "(null)\n"
    m.write("bus/pci/drivers_probe", "0000:41:00.0")
    assert link(m, f"{GPU}/driver") == "../../../../bus/pci/drivers/nvidia"
    assert m.path("class/mdev_bus/0000:41:00.0/mdev_supported_types").is_dir()
    assert m.read(f"{GPU}/power/control") == "on\n"


def test_bind_and_unbind_refuse_as_the_driver_core_does(m):
    """bind_store: a driver that does not match is ENODEV before anything else; one that
    does, on a function that has a driver, EBUSY."""
    assert errno_of(m.write, "bus/pci/drivers/nvidia/bind", "0000:41:00.0") == errno.EBUSY
    assert errno_of(m.write, "bus/pci/drivers/vfio-pci/bind", "0000:41:00.0") == errno.ENODEV
    assert errno_of(m.write, "bus/pci/drivers/vfio-pci/unbind", "0000:41:00.0") == errno.ENODEV
    assert errno_of(m.write, "bus/pci/drivers/nvidia/unbind", "0000:99:00.0") == errno.ENODEV
    m.write(f"{GPU}/driver/unbind", "0000:41:00.0")
    # vfio-pci has no id table: without an override or a dynamic id it takes nothing
    assert errno_of(m.write, "bus/pci/drivers/vfio-pci/bind", "0000:41:00.0") == errno.ENODEV
    m.write("bus/pci/drivers/nvidia/bind", "0000:41:00.0")
    assert link(m, f"{GPU}/driver") == "../../../../bus/pci/drivers/nvidia"


P4S = """
[[parent]]
driver = "nvidia"
name = "0000:3b:00.0"
path = "devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0"
[[parent]]
driver = "nvidia"
name = "0000:5e:00.0"
path = "devices/pci0000:5d/0000:5d:00.0/0000:5e:00.0"
"""


def test_each_gpu_parent_is_its_own_once_rebound(tmp_path):
    """Two GPUs of one driver: the second, unbound and bound again through its override,
    registers its own mdev parent, the first keeps its own; a parent plugged while the bus
    did not autoprobe is the one its bind takes over, devices and all."""
    first, second = f"{PCI}/0000:3b:00.0", f"{PCI}/0000:5e:00.0"
    with mounted(write_topology(tmp_path, P4S)) as m:
        kept = m.create("nvidia-63", parent="0000:3b:00.0")
        m.write(f"{second}/driver/unbind", "0000:5e:00.0")
        m.write(f"{second}/driver_override", "nvidia")
        m.write("bus/pci/drivers_probe", "0000:5e:00.0")
        assert link(m, f"{second}/driver") == "../../../../bus/pci/drivers/nvidia"
        assert link(m, "class/mdev_bus/0000:5e:00.0") == \
            "../../devices/pci0000:5d/0000:5d:00.0/0000:5e:00.0"
        assert os.listdir(m.path(f"{first}/mdev_supported_types/nvidia-63/devices")) == [kept]
        # a parent plugged while the bus does not autoprobe, then bound
        m.write("bus/pci/drivers_autoprobe", "0")
        m.control.unplug("0000:5e:00.0")
        m.control.plug("0000:5e:00.0")
        assert not m.path(f"{second}/driver").exists()
        made = m.create("nvidia-63", parent="0000:5e:00.0")
        m.write("bus/pci/drivers/nvidia/bind", "0000:5e:00.0")
        assert os.listdir(m.path(f"{second}/mdev_supported_types/nvidia-63/devices")) == [made]
        assert m.devices() == sorted([kept, made])


def test_the_group_directories_count_pci_and_mdev_groups_made_or_not(m):
    """kernel/iommu_groups and devices/virtual/vfio hold a PCI function's groups (made
    with it) beside an mdev's (made when looked up): st_nlink is 2 + every group, whether
    made or not; an mdev whose group was never looked up, unbound, takes one away."""
    dirs = ("kernel/iommu_groups", "devices/virtual/vfio")

    def nlinks() -> list[int]:
        return [os.stat(m.path(d)).st_nlink for d in dirs]

    m.write(f"{GPU}/driver/unbind", "0000:41:00.0")
    m.write(f"{GPU}/driver_override", "vfio-pci")
    m.write("bus/pci/drivers_probe", "0000:41:00.0")  # a PCI vfio group beside the mdevs'
    seen = m.create("mtty-1", parent="mtty")
    unseen = m.create("mtty-1", parent="mtty")
    assert os.path.isdir(m.path(f"bus/mdev/devices/{seen}/iommu_group"))  # its group made
    before = nlinks()
    m.write("bus/mdev/drivers/mtty/unbind", unseen)  # its group never made
    assert [b - a for a, b in zip(nlinks(), before)] == [1, 1]
    assert nlinks() == [2 + len(os.listdir(m.path(d))) for d in dirs]


def test_a_function_of_no_gpu_of_a_gpu_driver_finds_nothing_to_probe(m):
    """nvidia is one instance per GPU here: the iGPU handed to it (driver_override, then
    drivers_probe or bind) is no GPU of its, so it stays unbound (bind: ENODEV), and no
    GPU's parent is touched."""
    igpu = f"{PCI}/0000:00:02.0"
    m.write(f"{igpu}/driver/unbind", "0000:00:02.0")
    m.write(f"{igpu}/driver_override", "nvidia")
    m.write("bus/pci/drivers_probe", "0000:00:02.0")
    assert not m.path(f"{igpu}/driver").exists()
    assert errno_of(m.write, "bus/pci/drivers/nvidia/bind", "0000:00:02.0") == errno.ENODEV
    assert not m.path(f"{igpu}/driver").exists()
    assert sorted(os.listdir(m.path("bus/pci/drivers/nvidia"))) == sorted(
        ["0000:41:00.0", "0000:c1:00.0", "bind", "module", "new_id", "remove_id", "uevent",
         "unbind"])


@pytest.mark.mdevfs_kernels("5.10")
def test_before_5_14_a_bound_function_is_enodev_to_bind(mdevfs):
    assert errno_of(mdevfs.write, "bus/pci/drivers/nvidia/bind", "0000:41:00.0") == \
        errno.ENODEV


L40S = '[[gpu]]\ndriver = "nvidia-sriov"\naddress = "0000:41:00.0"\n'


def test_the_machine_its_host_table_describes(tmp_path):
    """An AMD IOMMU unit, two NUMA nodes over eight CPUs, only vfio-pci of the generic
    drivers: as class/iommu, numa_node's store, local_cpulist and local_cpus (bitmap_string:
    the first chunk zero-padded to nr_cpu_ids' hex digits), bus/pci/drivers show them."""
    topology = write_topology(tmp_path, '[host]\niommu = "amd"\ncpus = 8\nnuma_nodes = 2\n'
                              'pci_drivers = ["vfio-pci"]\n' + L40S)
    with mounted(topology) as m:
        pf = f"{PCI}/0000:41:00.0"
        assert os.listdir(m.path("class/iommu")) == ["ivhd0"]
        assert link(m, f"{pf}/iommu") == "../0000:00:00.2/iommu/ivhd0"  # an AMD IOMMU's function
        drivers = os.listdir(m.path("bus/pci/drivers"))
        assert "vfio-pci" in drivers and "pci-stub" not in drivers
        assert m.write(f"{pf}/numa_node", "1") == 1
        assert (m.read(f"{pf}/local_cpulist"), m.read(f"{pf}/local_cpus")) == ("4-7\n", "f0\n")
        assert m.write(f"{pf}/numa_node", "0") == 1
        assert (m.read(f"{pf}/local_cpulist"), m.read(f"{pf}/local_cpus")) == ("0-3\n", "0f\n")
        assert errno_of(m.write, f"{pf}/numa_node", "2") == errno.EINVAL


@pytest.mark.parametrize(("kernel", "answer"), [("6.1", errno.EINVAL), ("5.10", errno.ENODEV)])
def test_without_an_iommu_no_function_goes_to_vfio_pci(tmp_path, kernel, answer):
    """No IOMMU unit: no function has a group, and vfio-pci's probe refuses one (EINVAL,
    vfio_iommu_group_get) instead of making a vfio group for it; before 5.14 bind answers a
    failed probe ENODEV."""
    with mounted(write_topology(tmp_path, '[host]\niommu = "none"\n' + L40S),
                 args=("--kernel", kernel)) as m:
        pf = f"{PCI}/0000:41:00.0"
        assert os.listdir(m.path("class/iommu")) == []
        assert not m.path(f"{pf}/iommu_group").exists()
        m.write(f"{pf}/driver_override", "vfio-pci")
        m.write(f"{pf}/driver/unbind", "0000:41:00.0")
        assert errno_of(m.write, "bus/pci/drivers/vfio-pci/bind", "0000:41:00.0") == answer
        assert not m.path(f"{pf}/driver").exists()
        assert os.listdir(m.path("class/vfio")) == []


def test_a_dynamic_id_binds_every_unbound_function_it_matches(m):
    """New_id, as driverctl and older libvirt did: the unbound GPU is probed at once; the same
    id again is EEXIST; remove_id takes it back, a second time ENODEV; fewer than two
    fields EINVAL."""
    m.write(f"{GPU}/driver/unbind", "0000:41:00.0")
    ids = f"{m.read(f'{GPU}/vendor')[2:6]} {m.read(f'{GPU}/device')[2:6]}"
    assert m.write("bus/pci/drivers/vfio-pci/new_id", ids) == len(ids)
    assert link(m, f"{GPU}/driver") == "../../../../bus/pci/drivers/vfio-pci"
    assert errno_of(m.write, "bus/pci/drivers/vfio-pci/new_id", ids) == errno.EEXIST
    assert errno_of(m.write, "bus/pci/drivers/vfio-pci/new_id", "10de") == errno.EINVAL
    assert m.write("bus/pci/drivers/vfio-pci/remove_id", ids) == len(ids)
    assert errno_of(m.write, "bus/pci/drivers/vfio-pci/remove_id", ids) == errno.ENODEV
    assert link(m, f"{GPU}/driver") == "../../../../bus/pci/drivers/vfio-pci"  # stays bound


def test_a_new_id_attaches_its_own_driver_to_a_function_overridden_to_it(m):
    """New_id ends in driver_attach(): every function without a driver that this driver now
    matches is probed by it; a driver_override naming it matches whatever the ids."""
    m.write(f"{GPU}/driver/unbind", "0000:41:00.0")
    m.write(f"{GPU}/driver_override", "vfio-pci")
    assert not os.path.lexists(m.path(f"{GPU}/driver"))  # an override alone binds nothing
    assert m.write("bus/pci/drivers/vfio-pci/new_id", "1234 5678") == 9
    assert link(m, f"{GPU}/driver") == "../../../../bus/pci/drivers/vfio-pci"


def test_a_driver_whose_last_gpu_is_gone_still_takes_a_dynamic_id(tmp_path):
    """A host whose only NVIDIA GPU, a P4, is unplugged: nvidia's directory stays (the
    module is loaded) and new_id adds the id, with nothing to probe."""
    topology = write_topology(tmp_path, '[[parent]]\ndriver = "nvidia"\n')
    with mounted(topology) as host:
        host.control.unplug("0000:41:00.0")
        assert host.write("bus/pci/drivers/nvidia/new_id", "1234 5678") == 9
        assert errno_of(host.write, "bus/pci/drivers/nvidia/new_id", "1234 5678") == \
            errno.EEXIST
        assert host.alive(), host.log()


@pytest.mark.parametrize(("buf", "parsed"), [
    (b"10de 1eb8", (0x10DE, 0x1EB8, ANY_ID, ANY_ID, 0, 0, 0, 2)),
    (b"0x10de\t0X1EB8,rest", (0x10DE, 0x1EB8, ANY_ID, ANY_ID, 0, 0, 0, 2)),
    (b"10de 1eb8xyz 5", (0x10DE, 0x1EB8, ANY_ID, ANY_ID, 0, 0, 0, 2)),
    (b"10de 1eb8 1 2 30000 ff0000 5 9", (0x10DE, 0x1EB8, 1, 2, 0x30000, 0xFF0000, 5, 7)),
    (b"1000010de 1eb8", (0x10DE, 0x1EB8, ANY_ID, ANY_ID, 0, 0, 0, 2)),  # u32: the low bits
    (b"10de 1eb8\x00 5", (0x10DE, 0x1EB8, ANY_ID, ANY_ID, 0, 0, 0, 2)),
    (b"0x 5", (0, 5, ANY_ID, ANY_ID, 0, 0, 0, 2)),  # 0x alone reads 0
    (b"10de 0x 5", (0x10DE, 0, 5, ANY_ID, 0, 0, 0, 3)),
    (b"10de,1eb8", errno.EINVAL), (b"x10de 1eb8", errno.EINVAL), (b"-10de 1eb8", errno.EINVAL)])
def test_new_id_reads_its_fields_as_the_kernels_sscanf(buf, parsed):
    if isinstance(parsed, int):
        assert errno_of(parse_dynamic_id, buf) == parsed
        return
    dyn, fields = parse_dynamic_id(buf)
    assert (dyn.vendor, dyn.device, dyn.subvendor, dyn.subdevice, dyn.klass, dyn.class_mask,
            dyn.driver_data, fields) == parsed


@pytest.mark.parametrize(("kernel", "driver", "data", "answer"), [
    ("5.10", "vfio-pci", 5, None), ("5.10", "pci-stub", 5, None), ("6.1", "pci-stub", 5, None),
    ("6.1", "vfio-pci", 5, errno.EINVAL), ("6.1", "vfio-pci", 0, None),
    ("5.10", "nvidia", 5, errno.EINVAL), ("6.1", "nvidia", 0, None), ("6.1", "i915", 0, errno.EINVAL)])
def test_new_id_takes_driver_data_only_from_a_drivers_id_table(kernel, driver, data, answer):
    """new_id_store: a driver with an id table takes only driver_data an entry has (0 in
    nvidia's; i915's carry pointers, so it takes none); vfio-pci has one from 5.15
    (cc6711b0bf36), pci-stub none."""
    ids = f"1234 5678 ffffffff ffffffff 0 0 {data}"
    with mounted(args=("--kernel", kernel)) as m:
        if answer is None:
            assert m.write(f"bus/pci/drivers/{driver}/new_id", ids) == len(ids)
        else:
            assert errno_of(m.write, f"bus/pci/drivers/{driver}/new_id", ids) == answer


def test_unbinding_a_pf_lets_its_driver_take_the_vfs_down(m):
    """The PF's driver disables SR-IOV as it goes: the VFs and their groups vanish; without a
    driver sriov_numvfs is ENOENT, and the driver's own limit on VFs is lifted."""
    m.write(f"{PF}/sriov_numvfs", "2")
    assert [n for n in os.listdir(m.path(PF)) if n.startswith("virtfn")] == ["virtfn0",
                                                                            "virtfn1"]
    m.write(f"{PF}/driver/unbind", "0000:c1:00.0")
    assert [n for n in os.listdir(m.path(PF)) if n.startswith("virtfn")] == []
    assert not m.path(f"{PCI}/0000:c1:00.4").exists()
    assert m.read(f"{PF}/sriov_numvfs") == "0\n"
    assert errno_of(m.write, f"{PF}/sriov_numvfs", "1") == errno.ENOENT
    m.write("bus/pci/drivers_probe", "0000:c1:00.0")
    assert m.read(f"{PF}/sriov_numvfs") == "0\n"
    m.write(f"{PF}/sriov_numvfs", "1")
    assert m.read(f"{PCI}/0000:c1:00.4/vendor") == "0x10de\n"


def test_a_vf_made_without_autoprobe_goes_to_vfio_pci_through_its_override(m):
    """What KubeVirt and the NVIDIA GPU operator do with a VF of a NIC; an NVIDIA VF is its
    own VFIO device (the nvidia driver is its provider): vfio-pci refuses it (EINVAL from
    its probe, so drivers_probe leaves it driverless)."""
    m.write(f"{PF}/sriov_drivers_autoprobe", "0")
    m.write(f"{PF}/sriov_numvfs", "1")
    vf = f"{PCI}/0000:c1:00.4"
    assert not m.path(f"{vf}/driver").exists()
    assert m.read(f"{vf}/power/runtime_usage") == "1\n"
    m.write(f"{vf}/driver_override", "vfio-pci")
    assert m.write("bus/pci/drivers_probe", "0000:c1:00.4") == 12
    assert not m.path(f"{vf}/driver").exists()
    assert errno_of(m.write, "bus/pci/drivers/vfio-pci/bind", "0000:c1:00.4") == errno.EINVAL
    m.write(f"{vf}/driver_override", "\n")
    m.write("bus/pci/drivers_probe", "0000:c1:00.4")  # autoprobe is off: still nothing
    assert not m.path(f"{vf}/driver").exists()
    m.write(f"{PF}/sriov_drivers_autoprobe", "1")
    m.write("bus/pci/drivers_probe", "0000:c1:00.4")
    assert link(m, f"{vf}/driver") == "../../../../bus/pci/drivers/nvidia"


@pytest.mark.parametrize(("name", "data", "answer"), [
    ("power/control", "auto\n", None), ("power/control", "on", None),
    ("power/control", "Auto", errno.EINVAL), ("power/control", "auto\n\n", errno.EINVAL),
    ("power/async", "disabled", None), ("power/async", "off", errno.EINVAL),
    ("numa_node", "0", None), ("numa_node", "1", errno.EINVAL), ("numa_node", "-2", errno.EINVAL),
    ("numa_node", "x", errno.EINVAL),
    ("reset_method", "bus", None), ("reset_method", "flr", errno.EINVAL),
    ("reset_method", "\n", None), ("reset_method", "default", None),
    ("reset", "1", None), ("reset", "2", errno.EINVAL),
    ("enable", "1", errno.EBUSY),  # a function with a driver
    ("d3cold_allowed", "0", None), ("d3cold_allowed", "y", errno.EINVAL),
    ("broken_parity_status", "1", None), ("msi_bus", "0", None),
    ("remove", "0", None), ("rescan", "0", None), ("remove", "x", errno.EINVAL),
])
def test_the_pci_cores_writable_files_answer_as_pci_sysfs(m, name, data, answer):
    if answer is None:
        assert m.write(f"{GPU}/{name}", data) == len(data)
    else:
        assert errno_of(m.write, f"{GPU}/{name}", data) == answer


def test_runtime_pm_follows_power_control(m):
    """Control_store: auto allows runtime PM (the usage count drops by the forbid's
    reference), on forbids it again."""
    read = lambda name: m.read(f"{GPU}/power/{name}")  # noqa: E731
    assert (read("control"), read("runtime_enabled"), read("runtime_usage")) == \
        ("on\n", "forbidden\n", "2\n")
    m.write(f"{GPU}/power/control", "auto")
    assert (read("control"), read("runtime_enabled"), read("runtime_usage"),
            read("runtime_status")) == ("auto\n", "enabled\n", "1\n", "active\n")
    m.write(f"{GPU}/power/control", "on")
    assert (read("control"), read("runtime_usage")) == ("on\n", "2\n")


def test_reset_method_chooses_among_the_supported_methods(m):
    """The P4 has no FLR (a bus reset only, as Pascal boards); "" turns every method off, and
    then a reset is ENOTTY; "default" brings back what was probed."""
    assert m.read(f"{GPU}/reset_method") == "bus\n"
    assert m.read(f"{PF}/reset_method") == "flr bus\n"
    assert errno_of(m.write, f"{GPU}/reset_method", "flr") == errno.EINVAL
    m.write(f"{PF}/reset_method", "bus")
    assert m.read(f"{PF}/reset_method") == "bus\n"
    m.write(f"{GPU}/reset_method", "\n")  # what echo writes; an empty write reaches no one
    assert m.read(f"{GPU}/reset_method") == ""
    assert errno_of(m.write, f"{GPU}/reset", "1") == errno.ENOTTY
    m.write(f"{GPU}/reset_method", "default")
    assert m.read(f"{GPU}/reset_method") == "bus\n"


def test_remove_then_rescan_finds_the_function_again(m):
    """With its driver, and its interrupt line (the firmware's routing, not a new one)."""
    irqs = [m.read(f"{GPU}/irq"), m.read(f"{PF}/irq")]
    m.write(f"{GPU}/remove", "1")
    m.write(f"{PF}/remove", "1")
    assert not m.path(GPU).exists()
    assert not m.path("class/mdev_bus/0000:41:00.0").exists()
    assert m.write("bus/pci/rescan", "1") == 1
    assert link(m, f"{GPU}/driver") == "../../../../bus/pci/drivers/nvidia"
    assert m.path("class/mdev_bus/0000:41:00.0/mdev_supported_types").is_dir()
    assert [m.read(f"{GPU}/irq"), m.read(f"{PF}/irq")] == irqs


def test_config_is_readable_in_full_only_by_root(m):
    """Pci_read_config: 4096 bytes of a PCI Express function's space for root; the first 64
    (the header) for anyone else (tested as nobody in test_permissions)."""
    with open(m.path(f"{GPU}/config"), "rb") as f:
        data = f.read()
    ids = [int(m.read(f"{GPU}/{name}"), 16) for name in ("vendor", "device")]
    assert len(data) == 4096 and data[:4] == b"".join(i.to_bytes(2, "little") for i in ids)
    assert ids[0] == 0x10DE
    assert data[6] & 0x10 and data[0x34] >= 0x40  # status: a capability list, past the header


@pytest.mark.parametrize("kernel", ["6.1", "7.3"])
def test_power_state_is_unknown_once_a_driver_lets_go(kernel):
    """pci_device_remove: a function its driver left in D0 is "unknown" to the next one, in
    every era (6.16 changed only enumeration); the driver's pci_enable_device makes it D0;
    pci-stub enables nothing."""
    with mounted(args=("--kernel", kernel)) as m:
        assert m.read(f"{GPU}/power_state") == "D0\n"
        m.write(f"{GPU}/driver/unbind", "0000:41:00.0")
        assert m.read(f"{GPU}/power_state") == "unknown\n"
        m.write(f"{GPU}/driver_override", "pci-stub")
        m.write("bus/pci/drivers_probe", "0000:41:00.0")
        assert link(m, f"{GPU}/driver") == "../../../../bus/pci/drivers/pci-stub"
        assert m.read(f"{GPU}/power_state") == "unknown\n"
        m.write(f"{GPU}/driver/unbind", "0000:41:00.0")
        m.write(f"{GPU}/driver_override", "\n")
        m.write("bus/pci/drivers_probe", "0000:41:00.0")
        assert m.read(f"{GPU}/power_state") == "D0\n"


def test_the_sriov_capability_in_config_says_what_the_sriov_files_and_resource_say(m):
    """The extended capability list from 0x100 reaches SR-IOV; its NumVFs, First VF Offset,
    VF Stride and VF Device ID are the sriov_* files', and VF BAR0 holds where VF0's BAR0
    starts (resource line 7, as VF0's own resource line 0)."""
    m.write(f"{PF}/sriov_numvfs", "2")
    with open(m.path(f"{PF}/config"), "rb") as f:
        cfg = f.read()
    at = 0x100
    while at:
        header = struct.unpack_from("<I", cfg, at)[0]
        if header & 0xFFFF == 0x0010:
            break
        at = header >> 20
    assert at, "no SR-IOV capability"
    num, offset, stride = struct.unpack_from("<HHH", cfg, at + 0x10)[0], \
        *struct.unpack_from("<HH", cfg, at + 0x14)
    vf_device = struct.unpack_from("<H", cfg, at + 0x1A)[0]
    assert (num, offset, stride, vf_device) == (
        2, int(m.read(f"{PF}/sriov_offset")), int(m.read(f"{PF}/sriov_stride")),
        int(m.read(f"{PF}/sriov_vf_device"), 16))
    low, high = struct.unpack_from("<II", cfg, at + 0x24)
    base = (high << 32 if low & 0x4 else 0) | low & ~0xF  # a 64-bit BAR takes two registers
    iov0 = int(m.read(f"{PF}/resource").splitlines()[7].split()[0], 16)
    vf0 = os.path.basename(os.readlink(m.path(f"{PF}/virtfn0")))
    assert base == iov0 == int(m.read(f"{PCI}/{vf0}/resource").splitlines()[0].split()[0], 16)
    assert 0 < iov0 < 1 << 32 or low & 0x4  # a 32-bit BAR lies below 4 GiB


@pytest.mark.parametrize("kernel,idle,in_use", [
    ("5.10", ("on\n", "active\n", "2\n", "D3hot\n"), ("on\n", "active\n", "2\n", "D0\n")),
    ("6.1", ("auto\n", "suspended\n", "0\n", "D3hot\n"),
     ("auto\n", "active\n", "1\n", "D0\n"))])
def test_vfio_pci_idles_a_function_as_its_kernel_does(kernel, idle, in_use):
    """From 5.19 (7ab5e10eda02) through runtime PM; before, its probe put the function in
    D3hot itself with runtime PM forbidden. A VM's open brings it to D0 either way."""
    files = ("power/control", "power/runtime_status", "power/runtime_usage", "power_state")
    with mounted(args=("--kernel", kernel)) as m:
        m.write(f"{GPU}/driver/unbind", "0000:41:00.0")
        m.write(f"{GPU}/driver_override", "vfio-pci")
        m.write("bus/pci/drivers_probe", "0000:41:00.0")
        assert link(m, f"{GPU}/driver") == "../../../../bus/pci/drivers/vfio-pci"
        assert tuple(m.read(f"{GPU}/{name}") for name in files) == idle
        m.control.open("0000:41:00.0")
        assert tuple(m.read(f"{GPU}/{name}") for name in files) == in_use
        m.control.open("0000:41:00.0", False)
        assert tuple(m.read(f"{GPU}/{name}") for name in files) == idle
        m.write(f"{GPU}/driver/unbind", "0000:41:00.0")
        assert m.read(f"{GPU}/power_state") == "unknown\n"


def test_an_unknown_kernel_is_refused_by_mount(tmp_path):
    from mdevfs.config import TopologyError

    with pytest.raises(TopologyError, match="^kernel 4.19: mdevfs emulates 5.10 to 7.3$"):
        with mounted(args=("--kernel", "4.19")):
            pass


@pytest.mark.parametrize(("kernel", "file", "answer"), [
    ("5.10", "numa_node", errno.ERANGE), ("5.10", "enable", errno.ERANGE),
    ("5.10", "reset", errno.ERANGE), ("5.10", "msi_bus", errno.EINVAL),
    ("5.10", "d3cold_allowed", errno.EINVAL), ("5.16", "numa_node", errno.EINVAL),
    ("5.16", "enable", errno.EINVAL), ("6.1", "reset", errno.EINVAL)])
def test_a_number_past_its_type_is_erange_before_5_16_only_where_36f354ec7bf9_changed_it(
        kernel, file, answer):
    """enable, reset, numa_node passed kstrto*'s ERANGE on until 5.16; the flags' stores
    were EINVAL for every failure already."""
    big = "99999999999999999999999"  # past ULONG_MAX and INT_MAX
    with mounted(args=("--kernel", kernel)) as m:
        assert errno_of(m.write, f"{PF}/{file}", big) == answer


@pytest.mark.parametrize(("kernel", "answer"), [
    ("5.13", errno.ERANGE), ("5.15", errno.ERANGE), ("5.16", errno.EINVAL)])
def test_a_vfs_msix_count_past_int_is_erange_until_5_16(kernel, answer):
    """sriov_vf_msix_count (from 5.13) passed kstrtoint's ERANGE on until 36f354ec7bf9;
    a negative count is EINVAL and a count the PF driver cannot set EOPNOTSUPP in every
    era."""
    with mounted(args=("--kernel", kernel)) as m:
        m.write(f"{PF}/sriov_numvfs", "1")
        count = f"{PF}/virtfn0/sriov_vf_msix_count"
        assert errno_of(m.write, count, "99999999999999999999999") == answer
        assert errno_of(m.write, count, "-1") == errno.EINVAL
        assert errno_of(m.write, count, "5") == errno.EOPNOTSUPP


@pytest.mark.parametrize(("kernel", "word", "answer"), [
    ("5.10", "true", errno.EINVAL), ("5.19", "true", "1\n"), ("6.12", "disabled", errno.EINVAL),
    ("6.16", "disabled", "0\n"), ("7.3", "enabled", "1\n")])
def test_sriov_drivers_autoprobe_takes_the_words_of_its_kernels_kstrtobool(kernel, word, answer):
    """Kstrtobool: t/f from 5.19 (0d6ea3ac94ca), e/d from 6.16 (ae5b3500856f)."""
    with mounted(args=("--kernel", kernel)) as m:
        m.write(f"{PF}/sriov_drivers_autoprobe", "0" if answer == "1\n" else "1")
        if isinstance(answer, int):
            assert errno_of(m.write, f"{PF}/sriov_drivers_autoprobe", word) == answer
        else:
            m.write(f"{PF}/sriov_drivers_autoprobe", word)
            assert m.read(f"{PF}/sriov_drivers_autoprobe") == answer
