"""NVIDIA vGPU on SR-IOV virtual functions (``docs/sriov.md``): one GPU, PF and VFs.

The GPU is a PCI physical function bound to ``nvidia`` with the SR-IOV capability of its
card model; writing N to its ``sriov_numvfs`` (what ``sriov-manage -e`` does) makes N VFs,
each bound to ``nvidia`` with an IOMMU group of its own. Then, by architecture:

* **Ada, Hopper, Blackwell** (L4, L40S, H100, H200; vGPU 17+ on kernels from 6.8): the
  "vendor-specific VFIO framework". No mdev at all: each VF is a VFIO device
  (``vfio-dev/vfio<N>``) with an ``nvidia/`` group, and becomes a vGPU when a type id is
  written to its ``nvidia/current_vgpu_type`` (ABI §3):

  - read: the id and a newline, ``0`` when the VF holds no vGPU;
  - write, checked in this order: ``kstrtoul(buf, 10)`` (EINVAL, ERANGE); the VF's VFIO
    device is open → EBUSY; ``0`` destroys the VF's vGPU; an id not in the card's catalog →
    ENODEV; a VF that already holds a vGPU → EBUSY (mdevfs's choice: the RFC leaves it
    open; destroy first); in homogeneous mode another type than the card runs → EINVAL;
    the card holds ``max_instance`` of the type → ENOSPC; in heterogeneous mode also
    ENOSPC when the type's frame buffer no longer fits beside the others' (the card's
    capacity is the most any type takes: framebuffer × max_instance);
  - ``creatable_vgpu_types``: empty on a VF that holds a vGPU; else the header
    ``ID    : vGPU Name`` and a ``%-5d : %s`` line per type that can still be made here:
    every type while the card is empty, then (homogeneous) only the running type while
    instances remain, and nothing but the header once the card is full;
  - ``gpu_instance_id``, ``placement_id`` and ``vgpu_params`` read ENODEV until a type is
    set (the spec says they are readable only then; the errno is mdevfs's choice); then
    ``-1`` (no MIG instance: time-sliced types), the VF's slot on the card, and the
    parameters as written (empty at first).

* **Ampere** (A100, A10, A16): each VF becomes an mdev parent (``class/mdev_bus/<VF>``) with
  the card's types as ``nvidia-<id>``: one vGPU per VF, and the card's capacity per type
  shared across its VFs; a type that cannot be made on the card (another type runs, in
  homogeneous mode) shows available_instances 0, and a create of it fails with EBUSY, one
  past the capacity or on a VF that holds a vGPU with ENOSPC (the errnos of the ``nvidia``
  driver on older GPUs).

Disabling the VFs (``sriov_numvfs`` 0) destroys their vGPUs first, unless a VF's VFIO
device is open (EBUSY: a VM uses it). Whether a VF's VFIO device is open is a state a test
sets with ``mdevfs ctl DIR open <VF>`` (as a VM would).

Catalogs: ``nvidia_catalogs.toml`` beside this file, card by card, with each value's source;
the L40S and Ampere type ids are documented, those of L4, H100 and H200 are placeholders
(see that file). Options: ``model`` (a catalog key, default ``L40S``), ``vfs`` (enabled at
start, default 0), ``mode`` (``homogeneous`` or ``heterogeneous``), ``catalog`` (a TOML
file of the same format, relative to the topology, whose cards replace or add to the
shipped ones), ``numa_node`` (default -1).
"""
from __future__ import annotations

import errno
import functools
import importlib.resources
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from attrs import frozen

from mdevfs.driver import Attribute, BaseDriver, MdevTypeSpec, Option
from mdevfs.errors import fail
from mdevfs.kparse import kstrtoul
from mdevfs.model import Host, MdevDevice, MdevType
from mdevfs.pci import MEM32, MEM64_PREFETCH, Bar, Caps, PciFunction, PciIds, Sriov

from ._options import flag, text, whole
from .nvidia import parse_manager

NVIDIA = 0x10DE
HEADER = "ID    : vGPU Name"
#: BAR0 (16 MiB registers), BAR1 (the frame buffer aperture), BAR3 (32 MiB), as lspci shows
#: a data-centre GPU; flags are IORESOURCE_MEM (| 64-bit | prefetch). The addresses are
#: illustrations.
_BARS = (Bar(0xF2000000, 16 << 20, MEM32), Bar(0x38000000000, 64 << 30, MEM64_PREFETCH),
         None, Bar(0x38800000000, 32 << 20, MEM64_PREFETCH))
#: each VF's BARs, as the SR-IOV capability declares them: registers, a frame buffer window
#: and a 64-bit BAR3 (mdevfs's choice of sizes: no dump of an NVIDIA VF's resources was found)
_VF_BARS = (Bar(0, 16 << 20, MEM32), Bar(0, 128 << 20, MEM64_PREFETCH), None,
            Bar(0, 32 << 20, MEM64_PREFETCH), None, None)
#: the vGPU manager release a GPU runs unless its options name one (vGPU 17, the first with
#: the vendor-specific VFIO framework, is the 550 branch)
DEFAULT_MANAGER = "550.127.06"
#: the name of a MIG-backed type ends in <slices>-<size>C, or CME with the media engines
MIG_TYPE = re.compile(r"-\d+-\d+C(?:ME)?$")


@frozen
class VgpuType:
    id: int
    name: str
    max_instance: int
    framebuffer_mib: int = 0

    @property
    def mig(self) -> bool:
        """A MIG-backed type (``H100-1-10C``: a slice count, then the size), made on a GPU
        instance of a GPU in MIG mode; the others are time-sliced."""
        return MIG_TYPE.search(self.name) is not None


@frozen
class CardModel:
    key: str
    architecture: str
    name: str
    pci_device: int
    subsystem_device: int
    klass: int
    vf_device: int
    sriov_totalvfs: int
    sriov_offset: int
    sriov_stride: int
    framebuffer_mib: int
    types: tuple[VgpuType, ...]
    #: its PCI Express link: (max speed code, max width, current speed code, current width)
    link: tuple[int, int, int, int] = (4, 16, 4, 16)

    @property
    def vendor_vfio(self) -> bool:
        """Ada and later: VFs are VFIO devices of their own; Ampere: VFs are mdev parents."""
        return self.architecture != "ampere"


@functools.cache
def load_catalog(path: Path | None = None) -> dict[str, CardModel]:
    """The shipped catalogs, or those of ``path`` (each read once per process: a reset
    builds every driver again); raises ValueError naming a bad entry. Copy before changing."""
    if path is None:
        text_ = importlib.resources.files(__package__).joinpath("nvidia_catalogs.toml").read_text()
        where = "nvidia_catalogs.toml"
    else:
        text_, where = path.read_text(), str(path)
    try:
        cards = tomllib.loads(text_)["cards"]
        return {key: _card(key, card) for key, card in cards.items()}
    except (KeyError, TypeError, ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"catalog {where}: {type(exc).__name__}: {exc}") from exc


def _card(key: str, c: Mapping[str, Any]) -> CardModel:
    types = tuple(VgpuType(t["id"], t["name"], t["max_instance"], t.get("framebuffer_mib", 0))
                  for t in c["types"])
    if len({t.id for t in types}) != len(types):
        raise ValueError(f"card {key}: a type id is listed twice")
    return CardModel(key, c["architecture"], c["name"], c["pci_device"],
                     c.get("subsystem_device", 0), c.get("class", 0x030200),
                     c.get("vf_device", c["pci_device"]), c["sriov_totalvfs"],
                     c.get("sriov_offset", 4), c.get("sriov_stride", 1),
                     c.get("framebuffer_mib", 0), types)


class NvidiaSriovGpu:
    """The ``nvidia`` PCI driver of one SR-IOV GPU (its PF and its VFs)."""

    kind = "gpu"
    name = "nvidia"
    module = "nvidia"
    configures_sriov = True
    OPTIONS = (Option("model", "str", "L40S", "the card: a key of the catalogs (L40S, L4, H100, "
                      "H200, A100, A100_80GB, A16, A10, …)"),
               Option("vfs", "int", 0, "the VFs enabled at start"),
               Option("mode", "str", "homogeneous", "homogeneous (one type per card) or "
                      "heterogeneous (types share the frame buffer)"),
               Option("catalog", "str", None, "a TOML file of cards in the shipped format, "
                      "relative to the topology, replacing or adding to the shipped ones"),
               Option("numa_node", "int", -1, "the NUMA node of the card"),
               Option("manager", "str", DEFAULT_MANAGER, "the vGPU manager release (nvidia.ko's "
                      "version)"),
               Option("mig", "bool", False, "MIG mode: only MIG-backed types, none else"))
    enables = True
    #: power/runtime_usage of a bound function: the probe's reference kept (mdevfs's choice:
    #: how nvidia.ko leaves runtime PM is not known)
    runtime_usage = 2
    #: nv_pci_table (kernel-open/nvidia/nv-pci-table.c): every entry's driver_data is 0
    id_table_data = frozenset({0})
    #: one instance per card: a function of another card is no GPU it drives
    takes_others = False
    idles_d3hot = False

    @staticmethod
    def from_recording(fn: Any) -> tuple[dict[str, Any], list[str]] | None:
        """An NVIDIA PF whose device id a shipped catalog has: that card, its VFs enabled."""
        if fn.vendor != NVIDIA:
            return None
        models = [key for key, card in load_catalog().items() if card.pci_device == fn.device]
        if not models:
            return None
        options: dict[str, Any] = {"model": models[0], "vfs": fn.num_vfs}
        if fn.numa_node != -1:
            options["numa_node"] = fn.numa_node
        return options, [f"GPU {fn.address}: an NVIDIA {models[0]} (device 10de:{fn.device:04x}) "
                         f"with {fn.num_vfs} VFs enabled.",
                         "Not replayed: the vGPU each VF holds (current_vgpu_type), nor VFs "
                         "opened by VMs."]

    def __init__(self, options: Mapping[str, Any] | None = None,
                 base_dir: Path | None = None) -> None:
        options = dict(options or {})
        catalog = dict(load_catalog())
        if "catalog" in options:
            own = Path(text(options, "catalog", ""))
            catalog.update(load_catalog(own if own.is_absolute() or base_dir is None
                                        else base_dir / own))
        model = text(options, "model", "L40S", allowed=sorted(catalog))
        self.card = catalog[model]
        self.types = {t.id: t for t in self.card.types}
        self.start_vfs = whole(options, "vfs", 0, maximum=self.card.sriov_totalvfs)
        self.homogeneous = text(options, "mode", "homogeneous",
                                allowed=("homogeneous", "heterogeneous")) == "homogeneous"
        self.numa_node = whole(options, "numa_node", -1, minimum=-1)
        #: MIG mode (nvidia-smi -mig 1): only MIG-backed types then, only time-sliced ones
        #: without; a card that has no MIG-backed type cannot have it on
        self.mig = flag(options, "mig", False)
        if self.mig and not any(t.mig for t in self.card.types):
            raise ValueError(f"option 'mig': the {self.card.key} has no MIG-backed type")
        #: the vGPU manager release: nvidia.ko's version (module/nvidia/version)
        self.module_version = text(options, "manager", DEFAULT_MANAGER)
        self.branch, self.minor = parse_manager(self.module_version)
        #: the frame buffer heterogeneous mode shares out: the most the types can take
        #: (nominal sizes: an L40S-48Q is the whole card)
        self.capacity_mib = max((t.framebuffer_mib * t.max_instance for t in self.card.types),
                                default=0)
        self.host: Host | None = None
        self.pf: PciFunction | None = None
        # The vGPU a VF holds (Ada and later) lives in its ``vendor``: {"vgpu_type": id,
        # "vgpu_params": text}, or nothing; the state file keeps it.

    # --- plugging the GPU into a host -----------------------------------------------------

    def plug(self, host: Host, address: str, path: str) -> PciFunction:
        """The PF on the bus, bound to this driver (and the VFs the options ask for)."""
        card = self.card
        self.host = host
        host.register_pci_driver(self)
        pf = self.pf = PciFunction(
            bdf=address, path=path, numa_node=self.numa_node, bars=_BARS,
            caps=Caps(link=card.link, pm=True, msix=True, ari=True, resets=("flr", "bus")),
            ids=PciIds(NVIDIA, card.pci_device, NVIDIA, card.subsystem_device, card.klass),
            sriov=Sriov(card.sriov_totalvfs, card.sriov_offset, card.sriov_stride,
                        card.vf_device, vf_bars=_VF_BARS,
                        # vfio-pci's probe refuses NVIDIA VFs (kubevirt#17642)
                        vf_vfio_pci_refused=errno.EINVAL))
        host.add_pci(pf)  # probed: this driver's table takes it
        return pf

    def after_boot(self, host: Host) -> None:
        """The VFs the options ask for, made once every function is on the bus (as
        sriov-manage does after boot: their IOMMU groups come after the functions')."""
        assert self.pf is not None
        if self.start_vfs and self.pf.driver is self:
            host.set_numvfs(self.pf, str(self.start_vfs).encode())

    # --- the PCI driver (mdevfs.pci.PciDriver) ------------------------------------------

    def matches(self, fn: PciFunction) -> bool:
        """Its own PF, and that PF's VFs."""
        return fn is self.pf or (fn.physfn is not None and fn.physfn is self.pf)

    def probe(self, fn: PciFunction) -> None:
        """An Ampere VF becomes an mdev parent when nvidia takes it."""
        if fn.physfn is not None and not self.card.vendor_vfio:
            assert self.host is not None
            self.host.add_parent(fn.bdf, fn.path, AmpereVf(self, fn))

    def remove(self, fn: PciFunction) -> None:
        """A VF let go loses its vGPU (Ada: its type; Ampere: its mdev parent and devices)."""
        assert self.host is not None
        fn.vendor.clear()
        if fn.bdf in self.host.parents:
            self.host.remove_parent(fn.bdf)

    def registers_vfio(self, fn: PciFunction) -> bool:
        """Ada and later: nvidia is each VF's VFIO provider (vfio-dev, a vfio group)."""
        return fn.physfn is not None and self.card.vendor_vfio

    def sriov_configure(self, pf: PciFunction, num_vfs: int) -> None:
        """Disabling the VFs destroys their vGPUs first; a VF a VM holds open is EBUSY."""
        assert pf.sriov is not None and self.host is not None
        if not num_vfs and any(vf.vfio_open for vf in pf.sriov.vfs):
            fail(errno.EBUSY)

    def restore_function(self, fn: PciFunction, vendor: Mapping[str, Any]) -> None:
        if not vendor:
            return
        if fn.physfn is None or not self.card.vendor_vfio or \
                set(vendor) != {"vgpu_type", "vgpu_params"}:
            raise ValueError(f"{fn.bdf} cannot hold {dict(vendor)!r}")
        if vendor["vgpu_type"] not in self.types or not isinstance(vendor["vgpu_params"], str):
            raise ValueError(f"{fn.bdf}: no type {vendor['vgpu_type']!r} in the "
                             f"{self.card.key} catalog")

    def function_attributes(self, fn: PciFunction) -> Sequence[Attribute]:
        if fn.physfn is None or not self.card.vendor_vfio:
            return ()
        return (
            Attribute("nvidia/creatable_vgpu_types", show=lambda: self._creatable(fn)),
            Attribute("nvidia/current_vgpu_type", show=lambda: str(self._current(fn)),
                      store=lambda buf: self._set_type(fn, buf)),
            Attribute("nvidia/gpu_instance_id", show=lambda: self._vgpu(fn) and str(
                self._slot(fn) if self.types[fn.vendor["vgpu_type"]].mig else -1)),
            Attribute("nvidia/placement_id", show=lambda: self._vgpu(fn) and str(self._slot(fn))),
            Attribute("nvidia/vgpu_params", show=lambda: self._vgpu(fn)["vgpu_params"],
                      store=lambda buf: self._set_params(fn, buf)),
        )

    # --- the card's capacity, shared by its VFs ---------------------------------------------

    def vgpus(self) -> list[tuple[PciFunction, VgpuType, MdevDevice | None]]:
        """Every vGPU on the card: its VF, its type and (on an Ampere VF) its mdev."""
        vfs = self.pf.sriov.vfs if self.pf is not None and self.pf.sriov is not None else []
        found: list[tuple[PciFunction, VgpuType, MdevDevice | None]] = []
        for vf in vfs:
            if vf.vendor:  # an Ada VF's type
                found.append((vf, self.types[vf.vendor["vgpu_type"]], None))
            parent = self.host.parents.get(vf.bdf) if self.host is not None else None
            if parent is not None and isinstance(parent.driver, AmpereVf) and \
                    parent.driver.gpu is self:
                found += [(vf, self.types[int(m.mdev_type.spec.sysfs_name)], m)
                          for m in parent.driver.held()]
        return found

    def running(self) -> list[VgpuType]:
        """The type of every vGPU on the card (Ada VFs or Ampere mdevs)."""
        return [vtype for _, vtype, _ in self.vgpus()]

    def refusal(self, vtype: VgpuType, held: list[VgpuType] | None = None) -> int | None:
        """Why one more vGPU of ``vtype`` cannot be made on the card: EINVAL (a type of
        the other MIG mode; homogeneous mode and another type runs), ENOSPC (no room), or
        None. ``held``: :meth:`running`, when the caller has it already."""
        if vtype.mig != self.mig:
            return errno.EINVAL  # a MIG-backed type needs MIG mode, a time-sliced one not
        held = self.running() if held is None else held
        if self.homogeneous and any(t.id != vtype.id for t in held):
            return errno.EINVAL
        if sum(t.id == vtype.id for t in held) >= vtype.max_instance:
            return errno.ENOSPC
        if not self.homogeneous and \
                sum(t.framebuffer_mib for t in held) + vtype.framebuffer_mib > self.capacity_mib:
            return errno.ENOSPC
        return None

    def creatable(self) -> list[VgpuType]:
        """The types one more vGPU could be of: those the card has room for, while a VF is
        free to take it (what a free VF's creatable_vgpu_types or available_instances
        offers; none when every VF holds a vGPU)."""
        vfs = self.pf.sriov.vfs if self.pf is not None and self.pf.sriov is not None else []
        if not any(self._free(vf) for vf in vfs):
            return []
        held = self.running()
        return [t for t in self.card.types if self.refusal(t, held) is None]

    def _free(self, vf: PciFunction) -> bool:
        """Whether ``vf`` could take a vGPU: an Ada VF of this driver with no type set and
        no VM; an Ampere VF that is an mdev parent of this card holding none."""
        if self.card.vendor_vfio:
            return vf.driver is self and not vf.vendor and not vf.vfio_open
        parent = self.host.parents.get(vf.bdf) if self.host is not None else None
        return parent is not None and isinstance(parent.driver, AmpereVf) and \
            parent.driver.gpu is self and not parent.driver.held()

    # --- the nvidia/ group of an Ada-or-later VF ------------------------------------------

    def _current(self, vf: PciFunction) -> int:
        return vf.vendor.get("vgpu_type", 0)

    def _vgpu(self, vf: PciFunction) -> dict[str, Any]:
        if not vf.vendor:
            fail(errno.ENODEV)
        return vf.vendor

    def _slot(self, vf: PciFunction) -> int:
        assert vf.physfn is not None and vf.physfn.sriov is not None
        return vf.physfn.sriov.vfs.index(vf)

    def _creatable(self, vf: PciFunction) -> str | None:
        if vf.vendor:
            return None  # no lines at all: the file reads empty
        held = self.running()
        lines = [f"{t.id:<5d} : {t.name}" for t in self.card.types
                 if self.refusal(t, held) is None]
        return "\n".join([HEADER, *lines])

    def _set_type(self, vf: PciFunction, buf: bytes) -> None:
        type_id = kstrtoul(buf, base=10)
        if vf.vfio_open:
            fail(errno.EBUSY)
        if type_id == 0:
            vf.vendor.clear()
            return
        vtype = self.types.get(type_id)
        if vtype is None:
            fail(errno.ENODEV)
        if vf.vendor:
            fail(errno.EBUSY)
        refused = self.refusal(vtype)
        if refused is not None:
            fail(refused)
        vf.vendor.update(vgpu_type=vtype.id, vgpu_params="")

    def _set_params(self, vf: PciFunction, buf: bytes) -> None:
        self._vgpu(vf)["vgpu_params"] = buf.split(b"\0", 1)[0].decode("latin-1").rstrip("\n")


class AmpereVf(BaseDriver):
    """The mdev side of one Ampere VF: the card's types, one vGPU on this VF."""

    name = "nvidia"
    mdev_driver = "nvidia-vgpu-vfio"
    module = "nvidia_vgpu_vfio"
    subsystem = ("bus", "pci")

    def __init__(self, gpu: NvidiaSriovGpu, vf: PciFunction) -> None:
        super().__init__()
        self.gpu, self.vf = gpu, vf
        self.default_parent, self.default_path = vf.bdf, vf.path

    def types(self) -> Sequence[MdevTypeSpec]:
        return tuple(MdevTypeSpec(str(t.id), pretty_name=t.name,
                                  description=f"framebuffer={t.framebuffer_mib}M, "
                                              f"max_instance={t.max_instance}")
                     for t in self.gpu.card.types)

    def _type(self, mtype: MdevType) -> VgpuType:
        return self.gpu.types[int(mtype.spec.sysfs_name)]

    def held(self) -> list[MdevDevice]:
        """The mdevs of this VF that hold their vGPU: a bound one (its driver's remove gives
        it back at unbind), and before 5.14 every one (made at create, kept until remove)."""
        host = self.gpu.host
        assert host is not None
        return [m for t in self._parent_types() for m in t.devices.values() if host.holds(m)]

    def _holds(self) -> bool:
        return bool(self.held())

    def _parent_types(self) -> list[MdevType]:
        host = self.gpu.host
        assert host is not None
        return list(host.parents[self.vf.bdf].types.values())

    def available_instances(self, mtype: MdevType) -> int:
        return int(not self._holds() and self.gpu.refusal(self._type(mtype)) is None)

    def probe(self, mdev: MdevDevice) -> None:
        if self._holds():
            fail(errno.ENOSPC)
        refused = self.gpu.refusal(self._type(mdev.mdev_type))
        if refused is not None:
            fail(errno.EBUSY if refused == errno.EINVAL else refused)
