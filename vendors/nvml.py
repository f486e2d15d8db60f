"""NVML (NVIDIA's management library) answered from the emulated host, never apart from sysfs.

``libnvidia-ml.so.1`` (``nvml_shim.c``, built on first use by :func:`library`) is what
clients load: pynvml, go-nvml, Proxmox's nvml-wrapper. Each of its calls asks the daemon
over the mount's control socket (``MDEVFS_CONTROL``; ``mdevfs run`` sets it, and
``LD_LIBRARY_PATH``), as the ``service`` command ``{"name": "nvml", "call", "args"}``, and
:class:`Nvml` answers from the host the mount shows at that moment: the answer is a list,
the NVML return code first.

What NVML shows, from what mdevfs models:

* **devices**: the PCI functions NVIDIA's ``nvidia`` driver holds that are not VFs (a GPU
  given to vfio-pci is gone from NVML, as on a host), in PCI order; index = minor number
  (``/dev/nvidia<N>``, ``Device Minor``). UUIDs are derived from the mount's control socket
  and the address: stable for a host, distinct across a fleet's hosts. Names, frame buffer,
  SR-IOV or not (``GetHostVgpuMode``), MIG mode from the driver: an SR-IOV card's catalog, a
  Tesla P4's profiles. Memory used: the frame buffer of the vGPUs the GPU holds.
* **types**: the card's; creatable now exactly when sysfs offers them (a free VF's
  ``creatable_vgpu_types``, an Ampere VF's or a P4's ``available_instances``; none while no
  VF is free): the driver's own ``creatable``/``available_instances`` decide both. Per
  type: name and framebuffer as the driver has them; class, heads, resolution, licence,
  instances per VM, guest PCI ids and MIG GPU-instance profile by the type's kind (Q, B, A,
  C, MIG-backed C): **mdevfs's choices** (the table below), no public per-type source
  having been found.
* **instances**: every vGPU the host holds (an mdev of an NVIDIA parent while it holds its
  vGPU: bound, or before 5.14 from create to remove; an Ada-or-later VF
  with ``current_vgpu_type``); its id is a CRC-32 of the mdev's UUID or the VF's address
  (never 0); its UUID is derived the same way; an mdev gives its UUID to ``GetMdevUUID``, a
  VF (no mdev) answers NOT_SUPPORTED. Without a VM mdevfs knows of, the VM id is the
  device's own UUID (type UUID) and the frame buffer usage 0: **mdevfs's choices**.
* **migration**: a vGPU's metadata carries its ``migration_version`` string and type; a
  GPU's, the control socket of its host and its address; ``GetVgpuCompatibility`` asks the
  target's host, whose driver grades the string as ``mdevfs ctl grade`` does (live: every
  VM state bit, 0xF; cold: 0x1; none: 0; limits as NVML's codes). The supported vGPU
  version range by manager branch: 470 (0x70001, 0xb0001) and 550 (0x70001, 0x140001) as
  public vgpu-mgr logs show; others mdevfs's choice.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import inspect
import os
import re
import shutil
import stat
import subprocess
import tempfile
import uuid as uuidlib
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from attrs import frozen

from mdevfs.model import Host
from mdevfs.pci import PciFunction

from .nvidia import NvidiaVgpu, grade, parse_manager, version_string
from .nvidia_sriov import NvidiaSriovGpu

NVIDIA = 0x10DE
# nvmlReturn_t
SUCCESS, UNINITIALIZED, INVALID_ARGUMENT, NOT_SUPPORTED = 0, 1, 2, 3
NOT_FOUND, DRIVER_NOT_LOADED, IN_USE = 6, 9, 19
#: nvmlGpuVirtualizationMode_t HOST_VGPU, nvmlHostVgpuMode_t NON_SRIOV / SRIOV
HOST_VGPU, NON_SRIOV, SRIOV = 3, 0, 1
#: nvmlVgpuVmCompatibility_t for each grade, nvmlVgpuPgpuCompatibilityLimitCode_t by limit
VM_COMPATIBILITY = {"live": 0xF, "cold": 0x1, "none": 0x0}
LIMIT_CODES = {"none": 0x0, "host_driver": 0x1, "guest_driver": 0x2, "gpu": 0x4,
               "other": 0x80000000}
NO_GPU_INSTANCE_PROFILE = 0xFFFFFFFF
#: CUDA driver API version of each vGPU manager branch (1000 × major + 10 × minor)
CUDA = {470: 11040, 535: 12020, 550: 12040, 570: 12080, 580: 13000}
#: the vGPU versions (major << 16 | minor) each branch supports: 470 and 550 as public
#: vgpu-mgr logs print them, 535 between the two (mdevfs's choice)
VGPU_RANGE = {470: (0x70001, 0xB0001), 535: (0x70001, 0x120001), 550: (0x70001, 0x140001)}
#: what a type's kind shows (mdevfs's choices): class, display heads, resolution, instances
#: per VM, licence
KINDS = {
    "Q": ("Quadro", 4, (7680, 4320), 16,
          "Quadro-Virtual-DWS,5.0;GRID-Virtual-WS,2.0;GRID-Virtual-WS-Ext,2.0"),
    "B": ("NVS", 4, (5120, 2880), 1,
          "GRID-Virtual-PC,2.0;Quadro-Virtual-DWS,5.0;GRID-Virtual-WS,2.0;GRID-Virtual-WS-Ext,2.0"),
    "A": ("GRID", 1, (1280, 1024), 1, "GRID-Virtual-Apps,3.0"),
    "C": ("Compute", 1, (4096, 2160), 16, "NVIDIA-vComputeServer,9.0"),
}
#: NVML_GPU_INSTANCE_PROFILE_* by slice count; a media-engine (ME) 1-slice profile is REV1
MIG_PROFILES = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4, 8: 5, 6: 6}
_KIND = re.compile(r"-(?:(\d+)-)?\d+([QABC])(ME)?$")


@frozen
class TypeInfo:
    """One vGPU type as NVML shows it."""

    id: int
    name: str
    profile: str  # the name without its GRID/NVIDIA prefix, as migration strings carry it
    fb_mib: int
    max_per_gpu: int
    klass: str
    heads: int
    resolution: tuple[int, int]
    per_vm: int
    license: str
    gpu_instance_profile: int


@frozen
class Instance:
    """One vGPU the host holds."""

    id: int
    uuid: str
    mdev: str  # "" for a VF's vGPU (no mdev)
    type_id: int
    migration: str | None  # its migration_version string, None: no migration support


@frozen
class Gpu:
    """One physical GPU as NVML shows it, and how to ask its driver."""

    fn: PciFunction
    name: str
    fb_mib: int
    sriov: bool
    mig: bool | None  # None: the GPU cannot do MIG
    manager: str
    types: dict[int, TypeInfo]
    creatable: Callable[[], list[int]]
    instances: Callable[[], list[Instance]]
    grade: Callable[[TypeInfo, str], dict[str, str]]


def type_info(type_id: int, name: str, fb_mib: int, max_per_gpu: int,
              heads: int | None = None, resolution: tuple[int, int] | None = None) -> TypeInfo:
    profile = name.split(" ", 1)[1] if " " in name else name
    kind = _KIND.search(profile)
    klass, k_heads, k_res, per_vm, lic = KINDS[kind[2] if kind else "Q"]
    mig = bool(kind and kind[1])
    slices = int(kind[1]) if mig else 0  # type: ignore[index]
    profile_id = (7 if kind[3] and slices == 1 else MIG_PROFILES.get(slices, 0)) if mig \
        else NO_GPU_INSTANCE_PROFILE  # type: ignore[index]
    return TypeInfo(type_id, name, profile, fb_mib, max_per_gpu, klass, heads or k_heads,
                    resolution or k_res, 1 if mig else per_vm, lic, profile_id)


def _key_id(key: str) -> int:
    return zlib.crc32(key.encode()) or 1


def _sriov_gpu(host: Host, identity: str, gpu: NvidiaSriovGpu) -> Gpu:
    card = gpu.card
    types = {t.id: type_info(t.id, t.name, t.framebuffer_mib, t.max_instance)
             for t in card.types}
    manager = gpu.module_version

    def instances() -> list[Instance]:
        found = []
        for vf, vtype, mdev in gpu.vgpus():
            key = vf.bdf if mdev is None else mdev.uuid
            found.append(Instance(_key_id(key), _uuid(identity, key),
                                  "" if mdev is None else mdev.uuid, vtype.id,
                                  version_string(gpu.module_version, types[vtype.id].profile)))
        return found

    def creatable() -> list[int]:
        return [t.id for t in gpu.creatable()]

    def graded(info: TypeInfo, source: str) -> dict[str, str]:
        return grade(source, gpu.branch, gpu.minor, info.profile)

    mig = gpu.mig if any(t.mig for t in card.types) else None
    assert gpu.pf is not None
    return Gpu(gpu.pf, card.name, card.framebuffer_mib, True, mig, manager, types, creatable,
               instances, graded)


def _mdev_gpu(host: Host, identity: str, fn: PciFunction, driver: NvidiaVgpu) -> Gpu:
    parent = host.parents[fn.bdf]
    types = {}
    for key, p in driver.profiles.items():
        x, y = (int(v) for v in p.max_resolution.split("x"))
        types[int(key)] = type_info(int(key), f"{driver.prefix} {p.name}", p.framebuffer_mb,
                                    p.max_instance, p.num_heads, (x, y))

    def by_id(type_id: int) -> Any:
        return next(t for t in parent.types.values() if t.spec.sysfs_name == str(type_id))

    def creatable() -> list[int]:
        return [t for t in types if parent.available(by_id(t)) > 0]

    def instances() -> list[Instance]:
        found = []
        for mdev in parent.devices():
            if not host.holds(mdev):
                continue
            migration = driver.migration(mdev)
            found.append(Instance(_key_id(mdev.uuid), _uuid(identity, mdev.uuid), mdev.uuid,
                                  int(mdev.mdev_type.spec.sysfs_name),
                                  migration.version() if migration is not None else None))
        return found

    def graded(info: TypeInfo, source: str) -> dict[str, str]:
        migration = driver.migration(by_id(info.id))
        if migration is None:
            return {"result": "none", "limit": "other", "reason": "no migration support"}
        return migration.grade(source)  # type: ignore[attr-defined]

    return Gpu(fn, driver.card_name, driver.framebuffer_mib, False, None, driver.module_version,
               types, creatable, instances, graded)


def gpus(host: Host, identity: str) -> list[Gpu]:
    """The physical GPUs NVIDIA's driver holds, in PCI order (``identity``: the host's, for
    the UUIDs)."""
    found = []
    for bdf in sorted(host.pci):
        fn = host.pci[bdf]
        if fn.is_vf or fn.ids.vendor != NVIDIA or fn.driver is None:
            continue
        if isinstance(fn.driver, NvidiaSriovGpu):
            found.append(_sriov_gpu(host, identity, fn.driver))
        elif isinstance(getattr(fn.driver, "vendor", None), NvidiaVgpu) and bdf in host.parents:
            found.append(_mdev_gpu(host, identity, fn, fn.driver.vendor))  # type: ignore[attr-defined]
    return found


class _BadArgument(Exception):
    """An argument of a call that is no number, or no GPU's index: INVALID_ARGUMENT."""


def _number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _BadArgument(text) from None


def _uuid(identity: str, key: str) -> str:
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"mdevfs:{identity}/{key}"))


def _branch(manager: str) -> int:
    return parse_manager(manager)[0]


class Nvml:
    """The ``nvml`` service of one daemon: every call of the shim, answered from ``host``;
    ``identity`` (the control socket's path) tells hosts apart and routes compatibility."""

    name = "nvml"

    def __init__(self, host: Host, identity: str) -> None:
        self.host, self.identity = host, identity
        #: the vGPU version range set with nvmlSetVgpuVersion, and the load of the manager it
        #: was set under (:meth:`_load`: another load, as an upgrade's, starts afresh)
        self.range: tuple[Any, int, int] | None = None

    def answer(self, call: str, args: Sequence[str]) -> list[Any]:
        """The reply to one call: an argument that is no number or names no GPU is
        INVALID_ARGUMENT; anything else a call raises is a bug, for the daemon to log."""
        method = getattr(self, "call_" + call, None)
        if method is None:
            return [NOT_SUPPORTED]
        try:
            inspect.signature(method).bind(*args)
        except TypeError:
            return [INVALID_ARGUMENT]  # the shim sent too few or too many arguments
        try:
            return method(*args)
        except _BadArgument:
            return [INVALID_ARGUMENT]

    # --- system ---------------------------------------------------------------------------

    def _load(self) -> tuple[str | None, int]:
        """The manager release loaded, and which load of it this is (set-option manager
        reloads): what the vGPU version range is kept with."""
        entry = self.host.pci_drivers.get("nvidia")
        first = entry.instances[0] if entry is not None and entry.instances else None
        vendor = getattr(first, "vendor", first)  # a P4's parent driver: its NvidiaVgpu
        return self._manager(), getattr(vendor, "loads", 0)

    def _manager(self) -> str | None:
        entry = self.host.pci_drivers.get("nvidia")
        return entry.module_version if entry is not None and entry.instances else None

    def call_init(self) -> list[Any]:
        return [DRIVER_NOT_LOADED] if self._manager() is None else [SUCCESS]

    def call_driver_version(self) -> list[Any]:
        return [SUCCESS, self._manager() or ""]

    def call_cuda_version(self) -> list[Any]:
        return [SUCCESS, CUDA.get(_branch(self._manager() or "550"), 12040)]

    def call_nvml_version(self) -> list[Any]:
        cuda = CUDA.get(_branch(self._manager() or "550"), 12040)
        return [SUCCESS, f"{cuda // 1000}.{self._manager() or ''}"]

    # --- devices --------------------------------------------------------------------------

    def _gpus(self) -> list[Gpu]:
        return gpus(self.host, self.identity)

    def _gpu(self, index: str) -> Gpu:
        found = self._gpus()
        number = _number(index)
        if not 0 <= number < len(found):
            raise _BadArgument(index)
        return found[number]

    def call_count(self) -> list[Any]:
        return [SUCCESS, len(self._gpus())]

    def call_by_bus_id(self, text: str) -> list[Any]:
        match = re.fullmatch(r"(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})"
                             r"(?:\.([0-7]))?", text.strip())
        if match is None:
            return [INVALID_ARGUMENT]
        domain, bus, slot = int(match[1] or "0", 16), int(match[2], 16), int(match[3], 16)
        function = int(match[4] or "0")
        for i, gpu in enumerate(self._gpus()):
            if gpu.fn.bdf == f"{domain:04x}:{bus:02x}:{slot:02x}.{function}":
                return [SUCCESS, i]
        return [NOT_FOUND]

    def call_by_uuid(self, text: str) -> list[Any]:
        for i, gpu in enumerate(self._gpus()):
            if self._gpu_uuid(gpu) == text.strip():
                return [SUCCESS, i]
        return [NOT_FOUND]

    def _gpu_uuid(self, gpu: Gpu) -> str:
        return "GPU-" + _uuid(self.identity, gpu.fn.bdf)

    def call_device(self, index: str) -> list[Any]:
        """Every fact of one GPU: name, UUID, minor, PCI ids and place, memory, modes."""
        gpu = self._gpu(index)
        domain, bus = gpu.fn.domain_bus
        ids = gpu.fn.ids
        used = sum(gpu.types[i.type_id].fb_mib for i in gpu.instances()) << 20
        mig = -1 if gpu.mig is None else int(gpu.mig)
        return [SUCCESS, gpu.name, self._gpu_uuid(gpu), _number(index), domain, bus,
                gpu.fn.devfn >> 3, ids.vendor, ids.device, ids.subsystem_vendor,
                ids.subsystem_device, gpu.fb_mib << 20, used, HOST_VGPU,
                SRIOV if gpu.sriov else NON_SRIOV, mig, mig]

    def call_supported(self, index: str) -> list[Any]:
        return [SUCCESS, *self._gpu(index).types]

    def call_creatable(self, index: str) -> list[Any]:
        return [SUCCESS, *self._gpu(index).creatable()]

    def call_max_instances(self, index: str, type_id: str) -> list[Any]:
        info = self._gpu(index).types.get(_number(type_id))
        return [INVALID_ARGUMENT] if info is None else [SUCCESS, info.max_per_gpu]

    def call_type(self, type_id: str) -> list[Any]:
        for gpu in self._gpus():
            info = gpu.types.get(_number(type_id))
            if info is not None:
                ids = gpu.fn.ids
                return [SUCCESS, info.name, info.klass, info.fb_mib << 20, info.per_vm,
                        info.heads, *info.resolution, info.license,
                        ids.device << 16 | NVIDIA, (0x1000 + info.id % 0x1000) << 16 | NVIDIA,
                        info.gpu_instance_profile]
        return [INVALID_ARGUMENT]

    # --- instances ------------------------------------------------------------------------

    def call_active(self, index: str) -> list[Any]:
        return [SUCCESS, *(i.id for i in self._gpu(index).instances())]

    def _instance(self, text: str) -> tuple[Gpu, Instance] | None:
        wanted = _number(text)
        for gpu in self._gpus():
            for instance in gpu.instances():
                if instance.id == wanted:
                    return gpu, instance
        return None

    def call_instance(self, text: str) -> list[Any]:
        found = self._instance(text)
        if found is None:
            return [NOT_FOUND]
        gpu, i = found
        return [SUCCESS, i.uuid, i.mdev, i.type_id, i.mdev or i.uuid, 1, 0]

    def call_instance_metadata(self, text: str) -> list[Any]:
        found = self._instance(text)
        if found is None:
            return [NOT_FOUND]
        gpu, i = found
        opaque = f"mdevfs1\n{i.type_id}\n{i.migration or ''}"
        return [SUCCESS, gpu.manager, int(i.migration is not None), opaque]

    def _supported_range(self, manager: str | None) -> tuple[int, int]:
        return VGPU_RANGE.get(_branch(manager or "550"), (0x70001, 0x140001))

    def call_pgpu_metadata(self, index: str) -> list[Any]:
        gpu = self._gpu(index)
        low, high = self._supported_range(gpu.manager)
        return [SUCCESS, gpu.manager, 1, low, high, f"mdevfs1\n{self.identity}\n{gpu.fn.bdf}"]

    def call_compatibility(self, bdf: str, type_id: str, source: str) -> list[Any]:
        """A vGPU whose migration_version is ``source``, of type ``type_id``, coming to this
        host's GPU ``bdf``: the grade its driver gives, as NVML's two codes."""
        gpu = next((g for g in self._gpus() if g.fn.bdf == bdf), None)
        if gpu is None:
            return [NOT_FOUND]
        info = gpu.types.get(_number(type_id))
        answer = ({"result": "none", "limit": "gpu"} if info is None
                  else gpu.grade(info, source) if source else
                  {"result": "none", "limit": "other"})
        return [SUCCESS, VM_COMPATIBILITY[answer["result"]], LIMIT_CODES[answer["limit"]]]

    def call_migration_types(self) -> list[Any]:
        """For the migration planner: each type of each SR-IOV GPU (whose vGPUs have no
        migration_version in sysfs) as ``label\ttype\taddress\tversion``: the string a vGPU
        of it carries (its metadata's), graded by :meth:`call_grade`."""
        return [SUCCESS, *(f"nvidia-{t.id}\t{t.id}\t{gpu.fn.bdf}\t"
                           f"{version_string(gpu.manager, t.profile)}"
                           for gpu in self._gpus() if gpu.sriov for t in gpu.types.values())]

    def call_grade(self, bdf: str, type_id: str, source: str) -> list[Any]:
        """The driver's graded answer in words: result, limit, reason."""
        gpu = next((g for g in self._gpus() if g.fn.bdf == bdf), None)
        info = gpu.types.get(_number(type_id)) if gpu is not None else None
        if gpu is None or info is None:
            return [NOT_FOUND]
        answer = gpu.grade(info, source)
        return [SUCCESS, answer["result"], answer["limit"], answer.get("reason", "")]

    def call_vgpu_version(self) -> list[Any]:
        manager = self._manager()
        low, high = self._supported_range(manager)
        current = self.range[1:] if self.range and self.range[0] == self._load() else (low, high)
        return [SUCCESS, low, high, *current]

    def call_set_vgpu_version(self, low: str, high: str) -> list[Any]:
        manager = self._manager()
        supported = self._supported_range(manager)
        wanted = (_number(low), _number(high))
        if not supported[0] <= wanted[0] <= wanted[1] <= supported[1]:
            return [INVALID_ARGUMENT]
        if any(fn.vfio_open for fn in self.host.pci.values()):
            return [IN_USE]  # a VM runs
        self.range = (self._load(), *wanted)
        return [SUCCESS]

    # --- what a namespace shows beside the library ------------------------------------------

    def files(self) -> dict[str, str]:
        """``/proc/driver/nvidia/…`` as nvidia.ko writes it (nv-procfs.c formats)."""
        manager = self._manager()
        if manager is None:
            return {}
        found = {"driver/nvidia/version":
                 f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {manager}  "
                 f"Thu Sep 12 00:00:00 UTC 2024\nGCC version:  gcc version 12.2.0 "
                 f"(Debian 12.2.0-14)\n"}
        for minor, gpu in enumerate(self._gpus()):
            found[f"driver/nvidia/gpus/{gpu.fn.bdf}/information"] = (
                f"Model: \t\t {gpu.name}\nIRQ:   \t\t {gpu.fn.irq}\n"
                f"GPU UUID: \t {self._gpu_uuid(gpu)}\nVideo BIOS: \t ??.??.??.??.??\n"
                f"Bus Type: \t PCIe\nDMA Size: \t 47 bits\nDMA Mask: \t 0x7fffffffffff\n"
                f"Bus Location: \t {gpu.fn.bdf}\nDevice Minor: \t {minor}\n"
                f"GPU Excluded:\t No\n")
        return found


def service(host: Host, identity: str) -> Nvml:
    """The ``mdevfs.services`` entry point."""
    return Nvml(host, identity)


# --- the library clients load -----------------------------------------------------------------

def _sources() -> tuple[str, str]:
    here = importlib.resources.files(__package__)
    return (here.joinpath("nvml_shim.c").read_text(),
            here.joinpath("nvml_symbols.txt").read_text())


def stubs(symbols: str, implemented: set[str]) -> str:
    """A C function for every NVML name not implemented, answering NOT_SUPPORTED."""
    names = [n for n in symbols.split() if n.startswith("nvml") and n not in implemented]
    return "".join(f"int {n}(void) {{ return 3; }}\n" for n in names)


def _owned(path: Path) -> bool:
    """Whether *path* is a real file or directory of this user that no one else may write:
    the only kind of cache whose library this process will load."""
    info = path.lstat()
    return (not stat.S_ISLNK(info.st_mode) and info.st_uid == os.geteuid()
            and not info.st_mode & 0o022)


def library() -> Path:
    """The directory holding ``libnvidia-ml.so.1`` (and ``libnvidia-ml.so``) built from the
    shim's source, once per source in the user's cache (``$XDG_CACHE_HOME/mdevfs``); raises
    OSError naming why it could not be built (no C compiler) or why the cache is not to be
    trusted (a link, another owner, writable by others): a library planted there would run
    inside every client."""
    source, symbols = _sources()
    digest = hashlib.sha256((source + symbols).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mdevfs"
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    done = cache / f"nvml-{digest}"
    wanted = (cache, done, done / "libnvidia-ml.so.1")
    if done.exists() or done.is_symlink():
        if not all(_owned(path) for path in wanted):
            raise OSError(f"refusing the NVML library cache {done}: it must be this user's, "
                          "not a link, and writable by no one else")
        return done
    if not _owned(cache):
        raise OSError(f"refusing the NVML library cache {cache}: it must be this user's "
                      "directory, not a link, and writable by no one else")
    implemented = set(re.findall(r"^NVML_API\b[^(]*?\b(nvml\w+)\(", source, re.M))
    work = Path(tempfile.mkdtemp(prefix="nvml-", dir=cache))
    (work / "shim.c").write_text(source)
    (work / "stubs.c").write_text(stubs(symbols, implemented))
    built = subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Wl,-soname,libnvidia-ml.so.1",
         "-o", str(work / "libnvidia-ml.so.1"), str(work / "shim.c"), str(work / "stubs.c"),
         "-lpthread"], capture_output=True, text=True)
    if built.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise OSError(f"cannot build the NVML library: {built.stderr.strip()[-2000:]}")
    (work / "libnvidia-ml.so").symlink_to("libnvidia-ml.so.1")
    work.chmod(0o755)
    try:
        work.rename(done)
    except OSError:  # another process built it meanwhile
        shutil.rmtree(work, ignore_errors=True)
    return done


def environment(control: str) -> Mapping[str, str]:
    """What a process needs to load the library and reach the daemon."""
    path = os.environ.get("LD_LIBRARY_PATH")
    return {"LD_LIBRARY_PATH": str(library()) + (f":{path}" if path else ""),
            "MDEVFS_CONTROL": control}

