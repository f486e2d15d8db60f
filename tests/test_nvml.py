"""The same host through NVML: NVIDIA's own Python bindings (nvidia-ml-py) load mdevfs's
libnvidia-ml.so.1, which asks the daemon, and every answer agrees with sysfs at that moment:
GPUs and their PCI ids, creatable types while cards fill and empty, vGPU instances as mdevs
and VF types come and go, and migration compatibility as `mdevfs ctl grade` grades it."""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pynvml as nv
import pytest
from conftest import needs_fuse, write_topology
from mdevfs_vendors.nvml import library

from mdevfs import fleet
from mdevfs.control import Client
from mdevfs.testing import mounted

pytestmark = needs_fuse

HOST = """
[[parent]]
driver = "nvidia"
name = "0000:41:00.0"
path = "devices/pci0000:40/0000:40:01.1/0000:41:00.0"
[parent.options]
manager = "550.127.06"

[[gpu]]
driver = "nvidia-sriov"
address = "0000:81:00.0"
options = { model = "L40S", vfs = 3 }

[[gpu]]
driver = "nvidia-sriov"
address = "0000:a1:00.0"
options = { model = "A100", vfs = 2 }

[[gpu]]
driver = "nvidia-sriov"
address = "0000:c1:00.0"
options = { model = "H100", mig = true }
"""
PCI = "bus/pci/devices"
L40S, A100 = f"{PCI}/0000:81:00.0", f"{PCI}/0000:a1:00.0"


@pytest.fixture(scope="module")
def lib() -> Path:
    """The library, loaded into this process once, as pynvml will find it."""
    path = library() / "libnvidia-ml.so.1"
    nv.nvmlLib = ctypes.CDLL(str(path))
    return path


@pytest.fixture(scope="module")
def mount(tmp_path_factory, lib):
    with mounted(write_topology(tmp_path_factory.mktemp("nvml"), HOST)) as m:
        yield m


@contextlib.contextmanager
def nvml_session(control: str | os.PathLike[str], monkeypatch) -> Iterator[None]:
    """NVML initialised against the daemon whose control socket is ``control``, shut down
    after."""
    monkeypatch.setenv("MDEVFS_CONTROL", os.fspath(control))
    nv.nvmlInit()
    try:
        yield
    finally:
        nv.nvmlShutdown()


@pytest.fixture
def m(mount, monkeypatch):
    """The host in its initial state, NVML initialised against it."""
    mount.reset()
    with nvml_session(mount.control.path, monkeypatch):
        yield mount
    assert mount.alive(), mount.log()


def handle(bdf: str):
    return nv.nvmlDeviceGetHandleByPciBusId(bdf)


def active_mdevs(bdf: str) -> list[str]:
    """The mdev UUIDs of the vGPU instances NVML counts on the GPU at ``bdf``."""
    return [nv.nvmlVgpuInstanceGetMdevUUID(v) for v in nv.nvmlDeviceGetActiveVgpus(handle(bdf))]


def sysfs_creatable(m, vf: str) -> list[int] | None:
    """A free VF's creatable_vgpu_types as ids (None: the VF holds a vGPU, the file is empty)."""
    text = m.read(f"{PCI}/{vf}/nvidia/creatable_vgpu_types")
    if not text:
        return None
    lines = text.splitlines()
    assert lines[0] == "ID    : vGPU Name"
    return [int(line.split(":")[0]) for line in lines[1:]]


# --- the system and its GPUs ---------------------------------------------------------------

def test_the_system_as_the_vgpu_manager_gives_it(m):
    assert nv.nvmlSystemGetDriverVersion() == m.read("module/nvidia/version").strip()
    assert nv.nvmlSystemGetNVMLVersion() == "12.550.127.06"
    assert nv.nvmlSystemGetCudaDriverVersion() == 12040  # CUDA 12.4, the 550 branch
    assert nv.nvmlSystemGetCudaDriverVersion_v2() == 12040


def test_every_gpu_the_nvidia_driver_holds_in_pci_order_with_the_sysfs_ids(m):
    assert nv.nvmlDeviceGetCount() == 4
    uuids = set()
    for index, bdf in enumerate(["0000:41:00.0", "0000:81:00.0", "0000:a1:00.0",
                                 "0000:c1:00.0"]):
        h = nv.nvmlDeviceGetHandleByIndex(index)
        pci = nv.nvmlDeviceGetPciInfo_v3(h)
        ids = {k: int(m.read(f"{PCI}/{bdf}/{k}"), 16)
               for k in ("vendor", "device", "subsystem_vendor", "subsystem_device")}
        assert pci.busId == f"0000{bdf.upper()}" and pci.busIdLegacy == bdf.upper()
        assert (pci.domain, pci.bus, pci.device) == (0, int(bdf[5:7], 16), 0)
        assert pci.pciDeviceId == ids["device"] << 16 | ids["vendor"]
        assert pci.pciSubSystemId == ids["subsystem_device"] << 16 | ids["subsystem_vendor"]
        assert nv.nvmlDeviceGetMinorNumber(h) == index
        uuid = nv.nvmlDeviceGetUUID(h)
        assert re.fullmatch(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                            uuid)
        assert ctypes.addressof(nv.nvmlDeviceGetHandleByUUID(uuid).contents) == \
            ctypes.addressof(h.contents)
        uuids.add(uuid)
        assert nv.nvmlDeviceGetVirtualizationMode(h) == nv.NVML_GPU_VIRTUALIZATION_MODE_HOST_VGPU
    assert len(uuids) == 4
    names = [nv.nvmlDeviceGetName(nv.nvmlDeviceGetHandleByIndex(i)) for i in range(4)]
    assert names == ["Tesla P4", "NVIDIA L40S", "NVIDIA A100-PCIE-40GB", "NVIDIA H100 PCIe"]
    modes = [nv.nvmlDeviceGetHostVgpuMode(nv.nvmlDeviceGetHandleByIndex(i)) for i in range(4)]
    assert modes == [nv.NVML_HOST_VGPU_MODE_NON_SRIOV] + [nv.NVML_HOST_VGPU_MODE_SRIOV] * 3
    assert nv.nvmlDeviceGetMigMode(handle("0000:c1:00.0")) == [1, 1]
    assert nv.nvmlDeviceGetMigMode(handle("0000:a1:00.0")) == [0, 0]
    with pytest.raises(nv.NVMLError_NotSupported):
        nv.nvmlDeviceGetMigMode(handle("0000:81:00.0"))  # an L40S has no MIG
    total = nv.nvmlDeviceGetMemoryInfo(handle("0000:81:00.0"))
    assert (total.total, total.used) == (46068 << 20, 0)


class LegacyPciInfo(ctypes.Structure):
    """nvmlPciInfo_t as _v1 and _v2 fill it (52 bytes: no 32-byte busId)."""

    _fields_ = [("busId", ctypes.c_char * 16), ("domain", ctypes.c_uint), ("bus", ctypes.c_uint),
                ("device", ctypes.c_uint), ("pciDeviceId", ctypes.c_uint),
                ("pciSubSystemId", ctypes.c_uint), ("reserved", ctypes.c_uint * 4)]


@pytest.mark.parametrize("function", ["nvmlDeviceGetPciInfo", "nvmlDeviceGetPciInfo_v2"])
def test_the_legacy_pci_info_layouts_carry_the_sysfs_ids(m, lib, function):
    """Older clients call _v1/_v2 with the 52-byte layout: the same ids, a 16-byte bus id."""
    info = LegacyPciInfo()
    assert getattr(nv.nvmlLib, function)(handle("0000:41:00.0"), ctypes.byref(info)) == 0
    fn = f"{PCI}/0000:41:00.0"
    ids = [int(m.read(f"{fn}/{name}"), 16) for name in
           ("vendor", "device", "subsystem_vendor", "subsystem_device")]
    assert (info.busId, info.domain, info.bus, info.device) == (b"0000:41:00.0", 0, 0x41, 0)
    assert (info.pciDeviceId, info.pciSubSystemId) == (ids[1] << 16 | ids[0], ids[3] << 16 | ids[2])
    assert info.reserved[:] == [0, 0, 0, 0]


def test_events_never_come_and_a_wait_lasts_its_timeout(m):
    """A health checker's loop: register, wait, time out (it must not spin), free."""
    events = nv.nvmlEventSetCreate()
    h = handle("0000:81:00.0")
    types = nv.nvmlDeviceGetSupportedEventTypes(h)
    assert types & nv.nvmlEventTypeXidCriticalError
    nv.nvmlDeviceRegisterEvents(h, types, events)
    before = time.monotonic()
    with pytest.raises(nv.NVMLError_Timeout):
        nv.nvmlEventSetWait_v2(events, 50)
    assert time.monotonic() - before >= 0.05  # a lower bound: load cannot break it
    nv.nvmlEventSetFree(events)


def test_lookups_that_find_nothing_answer_as_nvml_documents(m):
    for bus_id in ("41:00.0", "00000000:41:00.0", "0000:41:00"):
        assert nv.nvmlDeviceGetPciInfo_v3(nv.nvmlDeviceGetHandleByPciBusId(bus_id)).bus == 0x41
    with pytest.raises(nv.NVMLError_NotFound):
        nv.nvmlDeviceGetHandleByPciBusId("0000:42:00.0")
    with pytest.raises(nv.NVMLError_InvalidArgument):
        nv.nvmlDeviceGetHandleByIndex(4)
    with pytest.raises(nv.NVMLError_NotFound):
        nv.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000")
    with pytest.raises(nv.NVMLError_InvalidArgument):
        nv.nvmlVgpuInstanceGetUUID(0)
    with pytest.raises(nv.NVMLError_NotFound):
        nv.nvmlVgpuInstanceGetUUID(12345)
    with pytest.raises(nv.NVMLError_NotSupported):
        nv.nvmlDeviceGetTemperature(handle("0000:41:00.0"), 0)  # not emulated: a stub


def test_a_gpu_given_to_vfio_pci_leaves_nvml(m):
    m.write(f"{PCI}/0000:41:00.0/driver_override", "vfio-pci")
    m.write(f"{PCI}/0000:41:00.0/driver/unbind", "0000:41:00.0")
    m.write("bus/pci/drivers_probe", "0000:41:00.0")
    assert nv.nvmlDeviceGetCount() == 3
    with pytest.raises(nv.NVMLError_NotFound):
        handle("0000:41:00.0")


# --- types: what sysfs offers, NVML offers -------------------------------------------------

def test_creatable_types_follow_an_sriov_card_filled_and_emptied(m):
    """At every step, the L40S's creatable types are exactly the ids a free VF's
    creatable_vgpu_types lists, and a card whose free VFs show the header alone has none."""
    h = handle("0000:81:00.0")
    vfs = ["0000:81:00.4", "0000:81:00.5", "0000:81:00.6"]

    def agree() -> list[int]:
        creatable = sorted(nv.nvmlDeviceGetCreatableVgpus(h))
        for vf in vfs:
            listed = sysfs_creatable(m, vf)
            assert listed is None or sorted(listed) == creatable, vf
        return creatable

    assert len(agree()) == 23 and sorted(nv.nvmlDeviceGetSupportedVgpus(h)) == agree()
    m.write(f"{PCI}/{vfs[0]}/nvidia/current_vgpu_type", "1154")  # L40S-16Q: 3 per card
    assert agree() == [1154]  # homogeneous: only the running type
    m.write(f"{PCI}/{vfs[1]}/nvidia/current_vgpu_type", "1154")
    m.write(f"{PCI}/{vfs[2]}/nvidia/current_vgpu_type", "1154")
    assert agree() == [] and nv.nvmlDeviceGetCreatableVgpus(h) == []
    for vf in vfs:
        m.write(f"{PCI}/{vf}/nvidia/current_vgpu_type", "0")
    assert len(agree()) == 23
    for vf in vfs:  # every VF holds an L40S-4Q; the card has room for 9 more, no VF for them
        m.write(f"{PCI}/{vf}/nvidia/current_vgpu_type", "1150")
    assert [sysfs_creatable(m, vf) for vf in vfs] == [None] * 3
    assert nv.nvmlDeviceGetCreatableVgpus(h) == []
    m.write(f"{PCI}/0000:81:00.0/sriov_numvfs", "0")  # no VF at all: none either
    assert nv.nvmlDeviceGetCreatableVgpus(h) == []


def test_creatable_types_follow_an_ampere_vfs_available_instances(m):
    h = handle("0000:a1:00.0")
    types = m.path("class/mdev_bus/0000:a1:00.4/mdev_supported_types")

    def offered() -> list[int]:
        return sorted(int(t.name.split("-")[1]) for t in types.iterdir()
                      if int((t / "available_instances").read_text()) > 0)

    assert sorted(nv.nvmlDeviceGetCreatableVgpus(h)) == offered() and 472 in offered()
    uuid = m.create("nvidia-472", parent="0000:a1:00.5")  # A100-20C: two per card
    types = m.path("class/mdev_bus/0000:a1:00.4/mdev_supported_types")
    assert sorted(nv.nvmlDeviceGetCreatableVgpus(h)) == offered() == [472]
    m.remove(uuid)
    assert sorted(nv.nvmlDeviceGetCreatableVgpus(h)) == offered()


def test_a_types_properties_are_the_drivers(m):
    """The P4's types: name, frame buffer, heads, resolution and instances as the mdev type
    directory's name and description say; MIG-backed H100 types carry a GPU-instance
    profile, time-sliced ones none."""
    h = handle("0000:41:00.0")
    types = m.path("class/mdev_bus/0000:41:00.0/mdev_supported_types")
    assert sorted(nv.nvmlDeviceGetSupportedVgpus(h)) == sorted(
        int(t.name.split("-")[1]) for t in types.iterdir())
    for t in types.iterdir():
        type_id = int(t.name.split("-")[1])
        desc = dict(kv.split("=") for kv in (t / "description").read_text().strip().split(", "))
        assert nv.nvmlVgpuTypeGetName(type_id) == (t / "name").read_text().strip()
        assert nv.nvmlVgpuTypeGetFramebufferSize(type_id) == \
            int(desc["framebuffer"].rstrip("M")) << 20
        assert nv.nvmlVgpuTypeGetNumDisplayHeads(type_id) == int(desc["num_heads"])
        assert "x".join(map(str, nv.nvmlVgpuTypeGetResolution(type_id))) == \
            desc["max_resolution"]
        assert nv.nvmlVgpuTypeGetMaxInstances(h, type_id) == int(desc["max_instance"]) == \
            int((t / "available_instances").read_text())
        assert nv.nvmlVgpuTypeGetGpuInstanceProfileId(type_id) == 0xFFFFFFFF
    assert nv.nvmlVgpuTypeGetClass(64) == "Quadro" and nv.nvmlVgpuTypeGetClass(71) == "NVS"
    assert nv.nvmlVgpuTypeGetLicense(67) == "GRID-Virtual-Apps,3.0"
    assert nv.nvmlVgpuTypeGetMaxInstancesPerVm(67) == 1  # an A profile: one per VM
    device_id, subsystem = nv.nvmlVgpuTypeGetDeviceID(64)
    assert device_id == 0x1BB310DE and subsystem & 0xFFFF == 0x10DE
    with pytest.raises(nv.NVMLError_InvalidArgument):
        nv.nvmlVgpuTypeGetMaxInstances(h, 1145)  # an L40S type, not the P4's
    h100 = handle("0000:c1:00.0")
    assert nv.nvmlDeviceGetCreatableVgpus(h100) == []  # no VF enabled: none can be made
    m.write(f"{PCI}/0000:c1:00.0/sriov_numvfs", "2")
    mig = [t for t in nv.nvmlDeviceGetCreatableVgpus(h100)]
    assert mig and all(re.search(r"-\d+-\d+C(ME)?$", nv.nvmlVgpuTypeGetName(t)) for t in mig)
    assert {nv.nvmlVgpuTypeGetGpuInstanceProfileId(t) for t in mig} <= set(range(8))


# --- instances -----------------------------------------------------------------------------

def test_every_vgpu_is_an_instance_while_it_exists(m):
    """An mdev on the P4 and a type on an L40S VF are instances with their UUIDs, types and
    (for the mdev) its UUID as GetMdevUUID; removed, they are gone."""
    p4, l40s = handle("0000:41:00.0"), handle("0000:81:00.0")
    assert nv.nvmlDeviceGetActiveVgpus(p4) == nv.nvmlDeviceGetActiveVgpus(l40s) == []
    mdev = m.create("nvidia-64")
    m.write(f"{PCI}/0000:81:00.5/nvidia/current_vgpu_type", "1150")
    [on_p4], [on_l40s] = nv.nvmlDeviceGetActiveVgpus(p4), nv.nvmlDeviceGetActiveVgpus(l40s)
    assert on_p4 != 0 and on_l40s != 0
    assert nv.nvmlVgpuInstanceGetMdevUUID(on_p4) == mdev
    assert nv.nvmlVgpuInstanceGetType(on_p4) == 64 and nv.nvmlVgpuInstanceGetType(on_l40s) == 1150
    assert nv.nvmlVgpuInstanceGetUUID(on_p4) != mdev
    with pytest.raises(nv.NVMLError_NotSupported):
        nv.nvmlVgpuInstanceGetMdevUUID(on_l40s)  # a VF's vGPU is no mdev
    assert nv.nvmlVgpuInstanceGetFbUsage(on_p4) == 0
    assert nv.nvmlVgpuInstanceGetVmID(on_p4) == (mdev.encode(), nv.NVML_VGPU_VM_ID_UUID)
    assert nv.nvmlDeviceGetMemoryInfo(l40s).used == 4096 << 20  # an L40S-4Q
    v2 = nv.nvmlDeviceGetMemoryInfo(l40s, version=nv.nvmlMemory_v2)
    assert (v2.total, v2.used, v2.free) == (46068 << 20, 4096 << 20, (46068 - 4096) << 20)
    m.remove(mdev)
    m.write(f"{PCI}/0000:81:00.5/nvidia/current_vgpu_type", "0")
    assert nv.nvmlDeviceGetActiveVgpus(p4) == nv.nvmlDeviceGetActiveVgpus(l40s) == []
    with pytest.raises(nv.NVMLError_NotFound):
        nv.nvmlVgpuInstanceGetUUID(on_p4)


P4_ONLY = '[[parent]]\ndriver = "nvidia"\n'


@pytest.mark.parametrize("kernel,held", [("5.10", True), ("6.1", False)])
def test_an_unbound_p4_mdev_holds_its_vgpu_only_before_5_14(tmp_path, monkeypatch, lib, kernel,
                                                            held):
    """The P4 as the Ampere VF: its available_instances and NVML's instances agree."""
    with mounted(write_topology(tmp_path, P4_ONLY), args=("--kernel", kernel)) as m:
        u = m.create("nvidia-66")  # P4-8Q: one per GPU
        m.write(f"bus/mdev/devices/{u}/driver/unbind", u)
        with nvml_session(m.control.path, monkeypatch):
            assert active_mdevs("0000:41:00.0") == ([u] if held else [])
        types = "class/mdev_bus/0000:41:00.0/mdev_supported_types"
        assert m.read(f"{types}/nvidia-66/available_instances") == ("0\n" if held else "1\n")
        assert m.read(f"{types}/nvidia-63/available_instances") == ("0\n" if held else "8\n")


@pytest.mark.parametrize("kernel,held", [("5.10", True), ("6.1", False)])
def test_an_unbound_mdev_holds_its_vgpu_only_before_5_14(tmp_path, monkeypatch, lib, kernel,
                                                         held):
    """Before 5.14 an mdev holds its vGPU from create to remove, bound or not; from 5.14 its
    driver's probe takes it and its remove (at unbind) gives it back. NVML's instances and
    sysfs's available_instances agree."""
    topology = write_topology(tmp_path, '[[gpu]]\ndriver = "nvidia-sriov"\n'
                              'address = "0000:a1:00.0"\n'
                              'options = { model = "A100", vfs = 2 }\n')
    with mounted(topology, args=("--kernel", kernel)) as m:
        u = m.create("nvidia-472", parent="0000:a1:00.4")  # A100-20C: two per card
        m.write(f"bus/mdev/devices/{u}/driver/unbind", u)
        assert not os.path.lexists(m.path(f"bus/mdev/devices/{u}/driver"))
        with nvml_session(m.control.path, monkeypatch):
            assert active_mdevs("0000:a1:00.0") == ([u] if held else [])
        avail = m.read("class/mdev_bus/0000:a1:00.4/mdev_supported_types/nvidia-472/"
                       "available_instances")
        assert avail == ("0\n" if held else "1\n")


def test_the_count_protocol_of_every_client(m, lib):
    """Decided by *count, never by the array: pynvml's NULL array, Rust's dangling pointer
    with count 0 (INSUFFICIENT_SIZE, the count needed, nothing written), Go's count of 1."""
    h = handle("0000:81:00.0")
    count = ctypes.c_uint(0)
    dangling = ctypes.cast(ctypes.c_void_p(8), ctypes.POINTER(ctypes.c_uint))
    assert nv.nvmlLib.nvmlDeviceGetCreatableVgpus(h, ctypes.byref(count), dangling) == 7
    assert count.value == 23
    one = (ctypes.c_uint * 1)()
    count.value = 1
    assert nv.nvmlLib.nvmlDeviceGetCreatableVgpus(h, ctypes.byref(count), one) == 7
    assert count.value == 23 and one[0] == 0
    many = (ctypes.c_uint * 23)()
    assert nv.nvmlLib.nvmlDeviceGetCreatableVgpus(h, ctypes.byref(count), many) == 0
    assert list(many)[:2] == [1145, 1146]


def test_every_name_of_nvidias_library_is_exported(lib):
    names = (Path(__file__).parent.parent / "vendors/nvml_symbols.txt").read_text().split()
    exported = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True,
                              text=True, check=True).stdout
    assert len(names) == 439 and {line.split()[-1] for line in exported.splitlines()} >= \
        set(names)


def test_error_strings_are_nvmls(lib):
    assert [nv.nvmlErrorString(code) for code in (nv.NVML_SUCCESS, nv.NVML_ERROR_NOT_FOUND,
                                                  nv.NVML_ERROR_INSUFFICIENT_SIZE)] == \
        ["Success", "Not Found", "Insufficient Size"]


def test_before_init_and_without_a_daemon(lib, monkeypatch, tmp_path):
    """Before nvmlInit every call is UNINITIALIZED; without a daemon (no MDEVFS_CONTROL, or
    nobody there) init is DRIVER_NOT_LOADED, as NVIDIA's library answers without its driver."""
    with pytest.raises(nv.NVMLError_Uninitialized):
        nv.nvmlDeviceGetCount()
    monkeypatch.delenv("MDEVFS_CONTROL", raising=False)
    with pytest.raises(nv.NVMLError_DriverNotLoaded):
        nv.nvmlInit()
    monkeypatch.setenv("MDEVFS_CONTROL", str(tmp_path / "nobody.sock"))
    with pytest.raises(nv.NVMLError_DriverNotLoaded):
        nv.nvmlInit()
    assert nv.nvmlLib.nvmlInit_v2() == nv.NVML_ERROR_DRIVER_NOT_LOADED  # C clients' name


class FakeDaemon:
    """A control socket that answers init, then every call with the next of ``replies`` (each
    sent as it is, then the connection closed): what a broken or dying daemon could send."""

    def __init__(self, path: Path, replies: list[bytes]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        self.replies = [b'{"ok": true, "result": [0]}\n', *replies]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        for reply in self.replies:
            conn, _ = self.sock.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(reply)


@pytest.mark.parametrize("reply", [
    b'{"ok": true, "result": [0, "550.\\u0\n',  # an escape cut short: never read past it
    b'{"ok": true, "result": [0, "550.127.06"]}',  # no newline: the daemon died mid-reply
    b'{"ok": true, "result": [0, 55\n',  # a number cut short
    b'{"ok": true, "result": [0' + b', 1' * 600 + b']}\n',  # more fields than any answer
])
def test_a_reply_cut_short_or_malformed_is_unknown_and_writes_nothing(lib, monkeypatch,
                                                                     tmp_path, reply):
    FakeDaemon(tmp_path / "control.sock", [reply])
    monkeypatch.setenv("MDEVFS_CONTROL", str(tmp_path / "control.sock"))
    assert nv.nvmlLib.nvmlInit_v2() == nv.NVML_SUCCESS
    try:
        version = ctypes.create_string_buffer(b"untouched", 80)
        assert nv.nvmlLib.nvmlSystemGetDriverVersion(version, 80) == nv.NVML_ERROR_UNKNOWN
        assert version.value == b"untouched"
    finally:
        nv.nvmlShutdown()


def test_the_vgpu_version_range_is_set_within_the_supported_one(m):
    (low, high), current = nv.nvmlGetVgpuVersion()
    assert (low, high) == current == (0x70001, 0x140001)  # the 550 branch, as its logs say
    wanted = nv.c_nvmlVgpuVersion_t(0x90001, 0x120001)
    nv.nvmlSetVgpuVersion(wanted)
    assert nv.nvmlGetVgpuVersion()[1] == (0x90001, 0x120001)
    with pytest.raises(nv.NVMLError_InvalidArgument):
        nv.nvmlSetVgpuVersion(nv.c_nvmlVgpuVersion_t(0x60001, 0x120001))
    m.write(f"{L40S}/sriov_numvfs", "0")
    m.write(f"{L40S}/sriov_numvfs", "1")
    m.control.open("0000:81:00.4")  # a VM runs
    with pytest.raises(nv.NVMLError_InUse):
        nv.nvmlSetVgpuVersion(wanted)


def test_the_vgpu_version_range_starts_afresh_after_a_reset_or_another_manager(
        m, tmp_path, monkeypatch):
    """What nvmlSetVgpuVersion set lives as long as the manager release it was set under;
    a reset, or an upgrade (set-option manager, a reload), gives back the supported range."""
    wanted = nv.c_nvmlVgpuVersion_t(0x90001, 0x120001)
    nv.nvmlSetVgpuVersion(wanted)
    m.reset()
    assert nv.nvmlGetVgpuVersion()[1] == (0x70001, 0x140001)
    nv.nvmlShutdown()
    p4 = HOST.split("[[gpu]]")[0]  # the P4 alone: its manager is the system's
    with mounted(write_topology(tmp_path, p4)) as host:
        monkeypatch.setenv("MDEVFS_CONTROL", os.fspath(host.control.path))
        nv.nvmlInit()
        nv.nvmlSetVgpuVersion(wanted)
        host.control.set_option("0000:41:00.0", "manager", "550.144.02")
        assert nv.nvmlSystemGetDriverVersion() == "550.144.02"
        assert nv.nvmlGetVgpuVersion()[1] == (0x70001, 0x140001)
        nv.nvmlSetVgpuVersion(wanted)
        host.control.set_option("0000:41:00.0", "manager", "550.127.06")
        host.control.set_option("0000:41:00.0", "manager", "550.144.02")  # and back: a reload
        assert nv.nvmlGetVgpuVersion()[1] == (0x70001, 0x140001)


def test_an_argument_that_is_no_number_or_no_gpu_is_invalid_and_a_bug_is_unknown(lib):
    """Through the service itself: INVALID_ARGUMENT for what the caller got wrong, and a
    driver's own exception is not passed off as the caller's fault."""
    from mdevfs_vendors.nvml import INVALID_ARGUMENT, NOT_SUPPORTED, Nvml

    from mdevfs.config import Topology

    nvml = Nvml(Topology.from_text(HOST, "<test>").build(), "test")
    assert nvml.answer("device", ["x"]) == [INVALID_ARGUMENT]
    assert nvml.answer("device", ["99"]) == [INVALID_ARGUMENT]
    assert nvml.answer("device", []) == [INVALID_ARGUMENT]
    assert nvml.answer("nothing", []) == [NOT_SUPPORTED]

    def broken() -> list:
        raise KeyError("a driver's bug")

    nvml._gpus = broken  # type: ignore[method-assign]
    with pytest.raises(KeyError):
        nvml.answer("device", ["0"])


# --- migration: NVML's compatibility is the driver's grade -----------------------------------

def test_compatibility_agrees_with_mdevfs_ctl_grade_on_every_pair_of_the_skew_fleet(
        lib, tmp_path, monkeypatch):
    """The skew example: three hosts on the vGPU manager 535.54, three on 535.161. A P4-1Q
    vGPU on each host's first GPU; for every ordered pair, NVML's compatibility of its
    metadata with the target GPU's is the grade mdevfs ctl gives the source's string at the
    target's type: live is every state bit, cold the cold bit alone, none nothing; the limit
    is NVML's code of the same component."""
    example = Path(__file__).parent.parent / "examples/fleet/skew.toml"
    bits = {"live": 0xF, "cold": 0x1, "none": 0x0}
    limits = {"none": 0, "host_driver": 1, "guest_driver": 2, "gpu": 4, "other": 0x80000000}
    with fleet.running(example, tmp_path / "f") as hosts:
        metadata, strings = {}, {}
        for host in hosts:
            uuid = "11111111-2222-4333-8444-555555555555"
            types = host.root / "class/mdev_bus/0000:41:00.0/mdev_supported_types"
            (types / "nvidia-63/create").write_text(uuid)
            strings[host.name] = (host.root / f"bus/mdev/devices/{uuid}/migration_version"
                                  ).read_text().strip()
            with nvml_session(host.control, monkeypatch):
                [instance] = nv.nvmlDeviceGetActiveVgpus(handle("0000:41:00.0"))
                metadata[host.name] = (nv.nvmlVgpuInstanceGetMetadata(instance),
                                       nv.nvmlDeviceGetVgpuMetadata(handle("0000:41:00.0")))
        graded = set()
        for source in hosts:
            for target in hosts:
                answer = Client(target.control).grade(
                    "class/mdev_bus/0000:41:00.0/mdev_supported_types/nvidia-63/"
                    "migration_version", strings[source.name])
                compat = nv.nvmlGetVgpuCompatibility(metadata[source.name][0],
                                                     metadata[target.name][1])
                assert (compat.vgpuVmCompatibility, compat.compatibilityLimitCode) == \
                    (bits[answer["result"]], limits[answer["limit"]]), (source.name, target.name)
                graded.add(answer["result"])
    assert graded == {"live", "cold"}  # both answers are met


def test_an_sriov_vgpus_compatibility_is_its_drivers_grade(m):
    """An L40S-4Q on a VF (no migration_version in sysfs: its metadata carries the string
    the driver's version_string makes): live to its own card, every state bit and no limit;
    to the A100, which has no such type, none, limited by the GPU."""
    m.write(f"{PCI}/0000:81:00.4/nvidia/current_vgpu_type", "1150")
    [instance] = nv.nvmlDeviceGetActiveVgpus(handle("0000:81:00.0"))
    vgpu = nv.nvmlVgpuInstanceGetMetadata(instance)
    answers = []
    for target in ("0000:81:00.0", "0000:a1:00.0"):
        compat = nv.nvmlGetVgpuCompatibility(vgpu, nv.nvmlDeviceGetVgpuMetadata(handle(target)))
        answers.append((compat.vgpuVmCompatibility, compat.compatibilityLimitCode))
    assert answers == [(0xF, 0), (0x0, 4)]


def test_inside_mdevfs_run_nvml_needs_no_setting(tmp_path):
    """Inside mdevfs run: the library is found where clients load it from, the daemon without a
    variable set by hand; /proc/driver/nvidia says what NVML says."""
    script = tmp_path / "ask.py"
    script.write_text(
        "import pynvml as n\n"
        "n.nvmlInit()\n"
        "h = n.nvmlDeviceGetHandleByIndex(0)\n"
        "print(n.nvmlSystemGetDriverVersion(), n.nvmlDeviceGetUUID(h))\n"
        "print(open('/proc/driver/nvidia/version').read().split()[7])\n"
        "info = open('/proc/driver/nvidia/gpus/0000:41:00.0/information').read()\n"
        "print(info.split('GPU UUID: \\t ')[1].split()[0])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "MDEVFS_CONTROL")}
    done = subprocess.run([sys.executable, "-m", "mdevfs", "run", "--", sys.executable,
                           str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    version, uuid, proc_version, proc_uuid = done.stdout.split()
    assert (proc_version, proc_uuid) == (version, uuid) and version == "550.127.06"
