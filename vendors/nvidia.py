"""NVIDIA vGPU (the out-of-tree nvidia.ko vGPU manager) on a pre-Ampere GPU (ABI §4.2).

The parent is the physical GPU, a Tesla P4 by default, at ``0000:41:00.0``
under ``devices/pci0000:40/0000:40:01.1/0000:41:00.0`` (a GPU behind a root
port; the path is an illustration, not a capture), subsystem bus ``pci``. The
type-id prefix is the PCI driver's name, ``nvidia``; devices bind to
``nvidia-vgpu-vfio`` (the spec tags that name [rec]).

Types ``nvidia-63`` … ``nvidia-71`` = ``GRID P4-1Q`` … ``GRID P4-1B`` (option
``prefix = "NVIDIA"`` gives the newer drivers' names). Ids 63 and 64 and the
P4-2Q description are documented captures; the rest of the table is [rec]. The
description reads ``num_heads=…, frl_config=…, framebuffer=…M,
max_resolution=…x…, max_instance=…``; B profiles use frl_config=45.

Time-sliced vGPU is homogeneous: while any vGPU of one type lives on the GPU,
every other type shows available_instances 0, and a create of another type
fails with **EBUSY** (the GPU is busy with that type); a create past the type's
max_instance fails with **ENOSPC**. Both errnos are mdevfs's choice: the spec
lists NVIDIA's own as a gap.

migration_version, a scheme of mdevfs's design modelled on vGPU manager
branches: ``NVIDIA-vGPU:<branch>.<minor>:<profile>``, e.g.
``NVIDIA-vGPU:535.129:P4-2Q`` for manager 535.129.03 and type GRID P4-2Q (the
profile without its GRID/NVIDIA prefix, so the two namings stay compatible).
The same string at type and device nodes. A source string is compatible when
its profile is the target's, its branch is the target's and its minor is not
newer than the target's (a guest may move to the same or a later release of
the same branch, never back). Errnos on write: EINVAL when the string is not of
this form or names another profile; EPROTONOSUPPORT when the branch differs or
the source is newer. The reason is logged. ``migration = false`` removes the
attribute (no migration support).

**Graded answers (mdevfs's model, beside the proposal's yes/no).** NVML answers a migration
question with a grade (``nvmlVgpuVmCompatibility_t``: none, cold, … live) and the
component that limits it (``nvmlVgpuPgpuCompatibilityLimitCode_t``: host driver, guest
driver, GPU). No sysfs file carries them, so mdevfs gives them through the control socket
(``grade``, :meth:`NvidiaMigration.grade`), by these rules of its own: another profile
is ``none``, limited by the ``gpu``; the same branch and a release no newer than the
target's is ``live``; the same branch and a newer release is ``cold``, limited by the
``host_driver`` (the VM restarts under the older manager of its branch); an older source
branch is ``cold``, limited by the ``host_driver`` (a newer manager runs the older guest
driver, but not live across branches); a newer source branch is ``none``, limited by the
``guest_driver`` (the guest's driver is newer than the target's manager supports). The
real rules live in NVIDIA's release notes per release pair and are not reproduced.

Each device has ``nvidia/vgpu_params`` (read-write text holding the plugin
parameters, e.g. ``frame_rate_limiter=0``; kept as written, not interpreted).

Options: ``prefix`` ("GRID"), ``manager`` ("535.129.03"), ``migration`` (true).
``manager`` changes at run time too, through ``set_option`` (``mdevfs ctl DIR
set-option PARENT manager 550.54.14``), as an upgrade of the host would.
"""
from __future__ import annotations

import errno
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from attrs import frozen

from mdevfs.driver import Attribute, BaseDriver, MdevTypeSpec, Migration, Option
from mdevfs.errors import fail
from mdevfs.model import MdevDevice, MdevType
from mdevfs.pci import MEM32, MEM64_PREFETCH, Bar, Caps

from ._options import flag, text

log = logging.getLogger(__name__)


@frozen
class Profile:
    type_id: int
    name: str  # without the GRID/NVIDIA prefix
    framebuffer_mb: int
    num_heads: int
    frl_config: int
    max_resolution: str
    max_instance: int

    def description(self) -> str:
        return (f"num_heads={self.num_heads}, frl_config={self.frl_config}, "
                f"framebuffer={self.framebuffer_mb}M, max_resolution={self.max_resolution}, "
                f"max_instance={self.max_instance}")


#: Tesla P4, 8 GB of framebuffer
TESLA_P4 = (
    Profile(63, "P4-1Q", 1024, 4, 60, "5120x2880", 8),
    Profile(64, "P4-2Q", 2048, 4, 60, "7680x4320", 4),
    Profile(65, "P4-4Q", 4096, 4, 60, "7680x4320", 2),
    Profile(66, "P4-8Q", 8192, 4, 60, "7680x4320", 1),
    Profile(67, "P4-1A", 1024, 1, 60, "1280x1024", 8),
    Profile(68, "P4-2A", 2048, 1, 60, "1280x1024", 4),
    Profile(69, "P4-4A", 4096, 1, 60, "1280x1024", 2),
    Profile(70, "P4-8A", 8192, 1, 60, "1280x1024", 1),
    Profile(71, "P4-1B", 1024, 4, 45, "5120x2880", 8),
)

_MANAGER = re.compile(r"(\d+)\.(\d+)(?:\.\d+)?")
_VERSION = re.compile(r"NVIDIA-vGPU:(\d+)\.(\d+):(\S+)")


class NvidiaVgpu(BaseDriver):
    """One physical GPU with the vGPU manager loaded."""

    name = "nvidia"
    mdev_driver = "nvidia-vgpu-vfio"
    subsystem = ("bus", "pci")
    default_parent = "0000:41:00.0"
    default_path = "devices/pci0000:40/0000:40:01.1/0000:41:00.0"
    #: the GPU as a PCI function: a Tesla P4 is PCIe Gen3 x16 with registers, frame buffer
    #: and BAR3 windows (sizes as lspci shows a P4)
    pci_caps = Caps(link=(3, 16, 3, 16), resets=("bus",))
    #: nv_pci_table (kernel-open/nvidia/nv-pci-table.c): every entry's driver_data is 0
    pci_driver_data = frozenset({0})
    #: the board as NVML names it, and its frame buffer
    card_name, framebuffer_mib = "Tesla P4", 8192
    pci_bars = (Bar(0xF8000000, 16 << 20, MEM32), Bar(0x38400000000, 256 << 20, MEM64_PREFETCH),
                None, Bar(0x38410000000, 32 << 20, MEM64_PREFETCH))

    OPTIONS = (Option("prefix", "str", "GRID", "the type names' prefix: GRID or NVIDIA"),
               Option("manager", "str", "535.129.03", "the vGPU manager release (its "
                      "migration_version and module version); also at run time"),
               Option("migration", "bool", True, "whether the types have migration_version"))
    discrete_gpu = True

    @staticmethod
    def from_recording(parent: Any) -> dict[str, Any] | None:
        """nvidia-<id> types on a PCI function: the prefix of their names and the manager
        release their migration_version strings carry (none: migration off)."""
        ids = parent.type_ids()
        if not ids or not all(i.startswith("nvidia-") for i in ids) or \
                parent.subsystem != ("bus", "pci"):
            return None
        options: dict[str, Any] = {}
        names = [t.name or "" for t in parent.types]
        if names and all(n.startswith("NVIDIA ") for n in names):
            options["prefix"] = "NVIDIA"
        versions = [t.migration for t in parent.types if t.migration]
        match = re.fullmatch(r"NVIDIA-vGPU:(\d+\.\d+):.*", versions[0]) if versions else None
        if match:
            options["manager"] = match[1]
        elif not versions:
            options["migration"] = False
        return options

    def __init__(self, options: Mapping[str, object] | None = None) -> None:
        super().__init__(options)
        self.prefix = text(self.options, "prefix", "GRID", allowed=("GRID", "NVIDIA"))
        #: how many times a release was loaded (a change at run time is a reload)
        self.loads = 0
        self.set_manager(text(self.options, "manager", "535.129.03"))
        self.migratable = flag(self.options, "migration", True)
        self.profiles = {str(p.type_id): p for p in TESLA_P4}

    def set_manager(self, version: str) -> None:
        """Change the vGPU manager version ("<branch>.<minor>[.<patch>]")."""
        self.branch, self.minor = parse_manager(version)
        #: nvidia.ko's version (module/nvidia/version): the manager release
        self.module_version = version
        self.loads += 1

    def set_option(self, key: str, value: object) -> None:
        """Run-time options (``mdevfs ctl DIR set-option``): only ``manager``."""
        if key != "manager":
            return super().set_option(key, value)  # EINVAL: no such run-time option
        if not isinstance(value, str):
            raise ValueError(f"manager must be a version string, not {value!r}")
        self.set_manager(value)

    def types(self) -> Sequence[MdevTypeSpec]:
        return tuple(MdevTypeSpec(key, pretty_name=f"{self.prefix} {p.name}",
                                  description=p.description())
                     for key, p in self.profiles.items())

    def available_instances(self, mtype: MdevType) -> int:
        if any(t is not mtype and _held(t) for t in mtype.parent.types.values()):
            return 0  # the GPU runs another type
        return self.profiles[mtype.spec.sysfs_name].max_instance - len(_held(mtype))

    def probe(self, mdev: MdevDevice) -> None:
        mtype = mdev.mdev_type
        if any(t is not mtype and _held(t) for t in mtype.parent.types.values()):
            fail(errno.EBUSY)
        if self.available_instances(mtype) <= 0:
            fail(errno.ENOSPC)
        mdev.vendor.setdefault("vgpu_params", "")

    def device_attributes(self, mdev: MdevDevice) -> Sequence[Attribute]:
        def store(buf: bytes) -> None:
            mdev.vendor["vgpu_params"] = buf.decode("latin-1").split("\0", 1)[0].strip()

        return (Attribute("nvidia/vgpu_params", show=lambda: mdev.vendor["vgpu_params"],
                          store=store),)

    def parent_uevent(self) -> Mapping[str, str]:
        # the Tesla P4's subsystem id is [rec]
        return {"DRIVER": "nvidia", "PCI_CLASS": "30200", "PCI_ID": "10DE:1BB3",
                "PCI_SUBSYS_ID": "10DE:11D8"}

    def migration(self, target: MdevType | MdevDevice) -> Migration | None:
        if not self.migratable:
            return None
        mtype = target.mdev_type if isinstance(target, MdevDevice) else target
        return NvidiaMigration(self, self.profiles[mtype.spec.sysfs_name].name)


class NvidiaMigration:
    """``NVIDIA-vGPU:<branch>.<minor>:<profile>`` and its compatibility rule."""

    def __init__(self, gpu: NvidiaVgpu, profile: str) -> None:
        self.gpu = gpu
        self.profile = profile

    def version(self) -> str:
        return _version(self.gpu.branch, self.gpu.minor, self.profile)

    def check(self, source: str) -> None:
        match = _VERSION.fullmatch(source)
        if match is None:
            self._refuse(errno.EINVAL, "not an NVIDIA vGPU migration version", source)
        branch, minor, profile = int(match[1]), int(match[2]), match[3]
        if profile != self.profile:
            self._refuse(errno.EINVAL, f"vGPU type {profile} is not {self.profile}", source)
        if branch != self.gpu.branch:
            self._refuse(errno.EPROTONOSUPPORT,
                         f"branch R{branch} is not this manager's R{self.gpu.branch}", source)
        if minor > self.gpu.minor:
            self._refuse(errno.EPROTONOSUPPORT,
                         f"source release {branch}.{minor} is newer than this "
                         f"{self.gpu.branch}.{self.gpu.minor}", source)

    def grade(self, source: str) -> dict[str, str]:
        """``{"result": none|cold|live, "limit": none|host_driver|guest_driver|gpu,
        "reason"}``: how ``source`` may come here, by the rules in the module's docstring."""
        return grade(source, self.gpu.branch, self.gpu.minor, self.profile)

    def _refuse(self, code: int, reason: str, source: str) -> NoReturn:
        log.error("vGPU migration from %r refused: %s", source, reason)
        fail(code)


def _held(mtype: MdevType) -> list[MdevDevice]:
    """The devices of ``mtype`` that hold a vGPU (:meth:`mdevfs.model.Host.holds`)."""
    host = mtype.parent.host
    return [m for m in mtype.devices.values() if host.holds(m)]


def parse_manager(version: str) -> tuple[int, int]:
    """A vGPU manager release ("<branch>.<minor>[.<patch>]", the ``manager`` option) as
    its branch and minor."""
    match = _MANAGER.fullmatch(version)
    if match is None:
        raise ValueError(f"option 'manager' must look like 535.129.03, not {version!r}")
    return int(match[1]), int(match[2])


def version_string(manager: str, profile: str) -> str:
    """The migration_version of a vGPU of ``profile`` under vGPU manager ``manager``."""
    return _version(*parse_manager(manager), profile)


def _version(branch: int, minor: int, profile: str) -> str:
    return f"NVIDIA-vGPU:{branch}.{minor}:{profile}"


def grade(source: str, branch: int, minor: int, profile: str) -> dict[str, str]:
    """The graded answer of the module's docstring: how a vGPU whose migration_version is
    ``source`` may come to a GPU of manager ``branch``.``minor`` that offers ``profile``
    (every NVIDIA driver of mdevfs's, and NVML's compatibility, answer by it)."""
    match = _VERSION.fullmatch(source)
    if match is None:
        return _grade("none", "other", "not an NVIDIA vGPU migration version")
    src_branch, src_minor, src_profile = int(match[1]), int(match[2]), match[3]
    here = f"{branch}.{minor}"
    if src_profile != profile:
        return _grade("none", "gpu", f"vGPU type {src_profile} is not {profile}")
    if src_branch == branch and src_minor <= minor:
        return _grade("live", "none", f"release {src_branch}.{src_minor} may go live to {here}")
    if src_branch == branch:
        return _grade("cold", "host_driver", f"source release {src_branch}.{src_minor} is newer "
                      f"than this {here}: live is refused, a restart here is not")
    if src_branch < branch:
        return _grade("cold", "host_driver", f"branch R{src_branch} is older than this "
                      f"manager's R{branch}: no live migration across branches")
    return _grade("none", "guest_driver", f"the guest's branch R{src_branch} is newer than this "
                  f"manager's R{branch}")


def _grade(result: str, limit: str, reason: str) -> dict[str, str]:
    return {"result": result, "limit": limit, "reason": reason}
