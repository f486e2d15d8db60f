"""PCI functions, their drivers and SR-IOV: the kernel objects a GPU is made of, pure and synchronous.

A :class:`PciFunction` is one ``/sys/bus/pci/devices/<bdf>``: its identity (the ids of its
configuration header), its capabilities (:class:`Caps`: PCI Express link, power management,
reset methods), its BARs, NUMA node, the PCI driver bound to it, its IOMMU group and, when the
driver registers it with VFIO, its ``vfio-dev/vfio<N>`` (:class:`~mdevfs.model.Binding`). A
physical function (PF) that has the SR-IOV capability carries :class:`Sriov`; enabling virtual
functions (VFs) creates them as functions of their own, each with ``physfn``, its own IOMMU
group, and BARs carved from the PF's SR-IOV BARs (drivers/pci/iov.c).

A PCI driver (:class:`PciDriver`) decides which functions it takes (its id table), what its
probe and remove do, what ``sriov_configure`` does and which attributes a bound function has
beyond the PCI core's (NVIDIA's ``nvidia/`` group on a VF). :class:`GenericDriver` is a driver
with no id table of its own (``vfio-pci``, ``pci-stub``): it binds only what ``driver_override``
or ``new_id`` hands it. The binding rules of ``drivers/base`` and ``pci-driver.c`` live in
:class:`mdevfs.model.Host`; the sysfs view in :mod:`mdevfs.pci_sysfs` and :mod:`mdevfs.tree`.
"""
from __future__ import annotations

import errno
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from attrs import Factory, define, frozen

from .errors import fail

if TYPE_CHECKING:
    from .driver import Attribute
    from .model import Binding, Host

#: PCI_ANY_ID: a dynamic id's field that matches anything
ANY_ID = 0xFFFFFFFF
#: the reset methods pci_init_reset_methods tries, in its order
RESET_METHODS = ("device_specific", "acpi", "flr", "af_flr", "pm", "bus")
#: the PCI Express link speeds, by the code of LnkCap/LnkSta (pcie_link_speed[])
LINK_SPEEDS = {1: "2.5 GT/s PCIe", 2: "5.0 GT/s PCIe", 3: "8.0 GT/s PCIe", 4: "16.0 GT/s PCIe",
               5: "32.0 GT/s PCIe", 6: "64.0 GT/s PCIe"}


@frozen
class PciIds:
    """The identity a function's configuration header gives it."""

    vendor: int
    device: int
    subsystem_vendor: int = 0
    subsystem_device: int = 0
    klass: int = 0
    revision: int = 0xA1


#: IORESOURCE_* flags of a BAR as resource_show prints them (include/linux/ioport.h, with the
#: BAR's own low bits): 32-bit memory, 64-bit memory, 64-bit prefetchable memory
MEM32, MEM64, MEM64_PREFETCH = 0x40200, 0x140204, 0x14220C


@frozen
class Bar:
    """One resource of a function: start, size and IORESOURCE flags."""

    start: int
    size: int
    flags: int

    @property
    def end(self) -> int:
        return self.start + self.size - 1 if self.size else 0

    @property
    def prefetchable(self) -> bool:
        return bool(self.flags & 0x2000)

    @property
    def wide(self) -> bool:
        """A 64-bit BAR: it takes two BAR registers."""
        return bool(self.flags & 0x100000)


@frozen
class Caps:
    """The capabilities of a function that its sysfs files show: a PCI Express capability with
    its link (None: a conventional PCI function), a PM capability, MSI-X, ARI, and the reset
    methods pci_init_reset_methods finds."""

    #: (max speed code, max width, current speed code, current width), None: not PCI Express
    link: tuple[int, int, int, int] | None = (4, 16, 4, 16)
    pm: bool = True
    msix: bool = True
    ari: bool = False
    resets: tuple[str, ...] = ("flr", "bus")


class PciDriver(Protocol):
    """A driver on the PCI bus (``bus/pci/drivers/<name>``); one object may be one of several
    instances of a name (one ``nvidia`` per GPU), each taking its own functions."""

    #: the driver's name, as the ``driver`` link and DRIVER= show it
    name: str
    #: the module it is in (``module/<name>``), and that module's version file, if it has one
    module: str
    module_version: str | None
    #: whether it has ``sriov_configure`` (without it a write to sriov_numvfs is ENOENT)
    configures_sriov: bool
    #: whether its probe enables the function (pci_enable_device, a 64-bit DMA mask): a device
    #: driver does; vfio-pci and pci-stub leave that to whoever opens it
    enables: bool
    #: power/runtime_usage of a function it has bound while runtime PM is forbidden (2: the
    #: probe's reference is kept, 1: dropped)
    runtime_usage: int
    #: the driver_data its static id table's entries carry, the only values new_id takes
    #: (None: it has no table, and new_id takes any)
    id_table_data: frozenset[int] | None
    #: whether it probes a function its id table does not take, given through
    #: driver_override or new_id (a generic driver does; a GPU driver's instance serves its
    #: own GPU alone, so for any other function its driver has nothing to probe: ENODEV)
    takes_others: bool
    #: whether it puts what it registers with VFIO in D3hot itself while no VM has it open
    #: (vfio-pci before 5.19), where a driver that idles through runtime PM does not
    idles_d3hot: bool

    def matches(self, fn: PciFunction) -> bool:
        """Whether its id table takes ``fn`` (driver_override and new_id aside)."""

    def probe(self, fn: PciFunction) -> None:
        """Take a function being bound, or refuse with OSError (its errno is bind's)."""

    def remove(self, fn: PciFunction) -> None:
        """Let go of a function being unbound (it cannot refuse): tear down what it built."""

    def registers_vfio(self, fn: PciFunction) -> bool:
        """Whether binding registers ``fn`` with VFIO (vfio-dev, a vfio group)."""

    def sriov_configure(self, pf: PciFunction, num_vfs: int) -> None:
        """Before the host makes ``num_vfs`` VFs, or (with 0) before it takes them all away:
        refuse with OSError, or tear down what the driver built on them."""

    def function_attributes(self, fn: PciFunction) -> Sequence[Attribute]:
        """Attributes the driver adds to a function it is bound to (e.g. ``nvidia/…``)."""

    def restore_function(self, fn: PciFunction, vendor: Mapping[str, Any]) -> None:
        """Take back a function's state from a state file (``fn.vendor`` is set after);
        raise ValueError, naming the problem, if this driver cannot hold it."""


class BasePciDriver:
    """Defaults for every part of :class:`PciDriver`; a driver that takes no function of its
    own accord."""

    name = "base"
    module = "base"
    module_version: str | None = None
    configures_sriov = False
    enables = True
    runtime_usage = 2
    id_table_data: frozenset[int] | None = frozenset({0})
    takes_others = False
    idles_d3hot = False

    def matches(self, fn: PciFunction) -> bool:
        return False

    def probe(self, fn: PciFunction) -> None:
        return None

    def remove(self, fn: PciFunction) -> None:
        return None

    def registers_vfio(self, fn: PciFunction) -> bool:
        return False

    def sriov_configure(self, pf: PciFunction, num_vfs: int) -> None:
        fail(errno.ENOENT)

    def function_attributes(self, fn: PciFunction) -> Sequence[Attribute]:
        return ()

    def restore_function(self, fn: PciFunction, vendor: Mapping[str, Any]) -> None:
        if vendor:
            raise ValueError(f"driver {self.name} keeps no state of its own")


class GenericDriver(BasePciDriver):
    """A driver that takes no function by its ids, bound through ``driver_override`` or
    ``new_id``: ``vfio-pci`` (which registers what it binds with VFIO) or ``pci-stub``.
    Neither has an id table, but vfio-pci from 5.15 (``id_table``): one override-only entry,
    driver_data 0."""

    enables = False
    takes_others = True

    def __init__(self, name: str, module: str, vfio: bool, id_table: bool = False,
                 runtime_pm: bool = True) -> None:
        self.name, self.module, self.vfio = name, module, vfio
        self.id_table_data = frozenset({0}) if id_table else None
        #: vfio-pci idles what it binds through runtime PM (from 5.19), else puts it in D3hot
        self.idles_d3hot = vfio and not runtime_pm
        #: vfio-pci drops the probe's reference (and allows runtime PM: usage 0), from 5.19
        self.runtime_usage = 1 if vfio and runtime_pm else 2

    def probe(self, fn: PciFunction) -> None:
        if not self.vfio:
            return
        # vfio_pci_core_register_device: a PF with VFs enabled is EBUSY (no IOMMU group is
        # the bus's EINVAL, before any probe); a function whose own driver is its VFIO
        # provider (an NVIDIA VF) is refused by its driver's rules
        if fn.sriov is not None and fn.sriov.vfs:
            fail(errno.EBUSY)
        if fn.vfio_pci_refused is not None:
            fail(fn.vfio_pci_refused)

    def registers_vfio(self, fn: PciFunction) -> bool:
        return self.vfio


#: the generic drivers a host has unless its topology says otherwise
GENERIC_DRIVERS = {"vfio-pci": ("vfio_pci", True), "pci-stub": ("pci_stub", False)}


@frozen
class DynamicId:
    """An id given to a driver through ``new_id`` (``struct pci_dynid``)."""

    vendor: int
    device: int
    subvendor: int = ANY_ID
    subdevice: int = ANY_ID
    klass: int = 0
    class_mask: int = 0
    #: what the driver's probe gets with the id (new_id: one of its id table's, if it has one)
    driver_data: int = 0

    def matches(self, fn: PciFunction) -> bool:
        ids = fn.ids
        return ((self.vendor in (ANY_ID, ids.vendor)) and (self.device in (ANY_ID, ids.device))
                and self.subvendor in (ANY_ID, ids.subsystem_vendor)
                and self.subdevice in (ANY_ID, ids.subsystem_device)
                and not (self.klass ^ ids.klass) & self.class_mask)


@define(eq=False)
class DriverEntry:
    """A driver name on the bus: its instances, in registration order, and its dynamic ids."""

    name: str
    module: str
    #: the module's version as it was when the driver registered (None: no version file)
    registered_version: str | None
    #: its id table's driver_data values (:attr:`PciDriver.id_table_data`), kept while no
    #: instance is registered
    id_table_data: frozenset[int] | None = frozenset({0})
    instances: list[PciDriver] = Factory(list)
    dynamic_ids: list[DynamicId] = Factory(list)

    @property
    def module_version(self) -> str | None:
        """module/<name>/version: the first instance's, as it is now (a vGPU manager
        upgraded at run time), while one is registered."""
        if self.instances:
            return self.instances[0].module_version
        return self.registered_version


@define(eq=False)
class Sriov:
    """The SR-IOV capability of a PF (``pci_sriov``)."""

    total_vfs: int
    offset: int
    stride: int
    vf_device: int
    drivers_autoprobe: bool = True
    #: the VF BARs the capability declares, each the size of one VF's (VF BAR0 … VF BAR5)
    vf_bars: tuple[Bar | None, ...] = ()
    #: the errno with which vfio-pci refuses its VFs (the PF's driver is their VFIO provider)
    vf_vfio_pci_refused: int | None = None
    vfs: list[PciFunction] = Factory(list)
    #: the most VFs the bound driver allows (pci_sriov_set_totalvfs), until it unbinds
    driver_max: int | None = None

    @property
    def num_vfs(self) -> int:
        return len(self.vfs)

    @property
    def limit(self) -> int:
        """``sriov_totalvfs``: pci_sriov_get_totalvfs, the driver's limit or the capability's."""
        return self.total_vfs if self.driver_max is None else self.driver_max


@define(eq=False)
class PciFunction:
    """One PCI function, physical or virtual."""

    bdf: str
    path: str
    ids: PciIds
    driver: PciDriver | None = None
    numa_node: int = -1
    #: BAR0 … BAR5 as the resource file's first six lines (a 64-bit BAR leaves its upper
    #: half's line empty); a VF's are slices of its PF's SR-IOV BARs
    bars: tuple[Bar | None, ...] = ()
    caps: Caps = Caps()
    physfn: PciFunction | None = None
    sriov: Sriov | None = None
    iommu_group: int | None = None
    #: its legacy interrupt line, as the firmware routed it (0 on a PF: the next free line
    #: from 16; every VF has none)
    irq: int = 0
    #: set while the driver has it registered with VFIO
    vfio: Binding | None = None
    #: whether its VFIO device is open (a VM uses it): ``mdevfs ctl DIR open <bdf>``
    vfio_open: bool = False
    #: the errno with which vfio-pci's probe refuses it (None: it may take it)
    vfio_pci_refused: int | None = None
    #: the driver's own per-function state (JSON values: the state file keeps it), e.g.
    #: the vGPU type an NVIDIA VF holds
    vendor: dict[str, Any] = Factory(dict)
    # --- what the PCI core keeps of it (pci-sysfs.c) ---
    driver_override: str | None = None
    enable_cnt: int = 0
    broken_parity: bool = False
    d3cold_allowed: bool = True
    no_msi: bool = False
    #: the reset methods in force (reset_method); ``caps.resets`` are those it supports
    resets: tuple[str, ...] | None = None
    #: whether it was ever enabled (its power state known: D0)
    powered: bool = False
    #: power/control: ``auto`` (pm_runtime_allow) or ``on`` (forbidden, as pci_pm_init leaves
    #: it); power/async: asynchronous suspend (pci_pm_init enables it)
    runtime_allowed: bool = False
    async_suspend: bool = True
    #: the DMA mask its driver set (32 bits until a driver sets one)
    dma_bits: int = 32
    #: when it appeared (time.monotonic), for power/runtime_active_time
    born: float = Factory(time.monotonic)
    #: the host it is on, once added (its kernel, CPUs and NUMA nodes; its stores)
    host: Host | None = None

    @property
    def domain_bus(self) -> tuple[int, int]:
        domain, bus, _ = self.bdf.split(":")
        return int(domain, 16), int(bus, 16)

    @property
    def devfn(self) -> int:
        slot, fn = self.bdf.rsplit(":", 1)[1].split(".")
        return int(slot, 16) << 3 | int(fn)

    @property
    def is_vf(self) -> bool:
        return self.physfn is not None

    @property
    def runtime_usage(self) -> int:
        """power/runtime_usage: the reference a forbidden runtime PM holds, the driver's own
        (its probe's, unless it dropped it), and an open VFIO device's (a VM uses it)."""
        held = 1 if self.driver is None else self.driver.runtime_usage
        return held - self.runtime_allowed + (self.vfio_open and not self.idles_d3hot)

    @property
    def suspended(self) -> bool:
        """Runtime-suspended (D3hot): allowed, and nothing holds it."""
        return self.caps.pm and self.runtime_allowed and self.runtime_usage == 0

    @property
    def reset_methods(self) -> tuple[str, ...]:
        """The methods in force: those probed at boot until reset_method changed them."""
        return self.caps.resets if self.resets is None else self.resets

    def vf_bdf(self, index: int) -> str:
        """The routing id of VF ``index``: PF + offset + index × stride (iov.c virtfn_bus,
        virtfn_devfn)."""
        assert self.sriov is not None
        domain, bus = self.domain_bus
        rid = self.devfn + self.sriov.offset + self.sriov.stride * index
        devfn = rid & 0xFF
        return f"{domain:04x}:{bus + (rid >> 8):02x}:{devfn >> 3:02x}.{devfn & 7}"

    def vf_path(self, index: int) -> str:
        """A VF sits beside its PF, under the same bridge."""
        return f"{self.path.rpartition('/')[0]}/{self.vf_bdf(index)}"

    def iov_bars(self) -> list[Bar | None]:
        """The PF's SR-IOV BARs (resource lines 7 to 12): each VF BAR times TotalVFs, placed
        after the PF's own BARs."""
        if self.sriov is None:
            return []
        own = [b for b in self.bars if b is not None]
        top = max((b.start + b.size for b in own), default=0xF0000000)
        bottom = min((b.start for b in own if not b.wide), default=0xF0000000)
        out: list[Bar | None] = []
        for bar in self.sriov.vf_bars:
            if bar is None or not bar.size:
                out.append(None)
                continue
            span = bar.size * self.sriov.total_vfs
            # where the firmware placed the span (a VF BAR given with a start); else a
            # 64-bit one after the PF's own BARs and a 32-bit one, which must stay below
            # 4 GiB, below the PF's 32-bit BARs; aligned to the VF BAR's size
            if bar.start:
                start = bar.start
            elif bar.wide:
                start = top = -(-top // bar.size) * bar.size
                top += span
            else:
                start = bottom = (bottom - span) // bar.size * bar.size
            out.append(Bar(start, span, bar.flags))
        return out

    def vf_bars(self, index: int) -> tuple[Bar | None, ...]:
        """VF ``index``'s BARs: slices of the PF's SR-IOV BARs (iov.c pci_iov_add_virtfn)."""
        assert self.sriov is not None
        return tuple(None if span is None else
                     Bar(span.start + index * bar.size, bar.size, bar.flags)  # type: ignore[union-attr]
                     for span, bar in zip(self.iov_bars(), self.sriov.vf_bars))

    def link_state(self) -> tuple[int, int, int, int] | None:
        """The PCI Express link it is on; a VF shares its PF's."""
        fn = self.physfn or self
        return fn.caps.link if self.caps.link is not None else None

    @property
    def idles_d3hot(self) -> bool:
        """Registered with VFIO by a driver that puts it in D3hot itself while no VM has it
        open (vfio-pci before 5.19)."""
        return self.vfio is not None and self.driver is not None and self.driver.idles_d3hot

    def power_state(self) -> str:
        """``current_state``: D3hot while runtime-suspended, D0 once powered, else unknown."""
        if self.suspended or (self.idles_d3hot and not self.vfio_open):
            return "D3hot"
        return "D0" if self.powered else "unknown"


#: the kernel's isspace(): the C locale's six and Latin-1's no-break space (lib/ctype.c)
_SPACE = " \t\n\v\f\r\xa0"
_HEX_DIGITS = "0123456789abcdefABCDEF"


def parse_dynamic_id(buf: bytes) -> tuple[DynamicId, int]:
    """``new_id``/``remove_id``'s ``sscanf("%x %x %x %x %x %x %lx")``: the id and how many
    fields were read; fewer than two is EINVAL. As vsscanf reads: before each field, any
    whitespace; a field must start with a hex digit; ``_parse_integer_fixup_radix`` then
    skips a 0x whatever follows it (``0x`` alone reads 0, and the next field starts after
    the x); then as many hex digits as there are (a field ends at the first other
    character, where the next one must start); u32 fields keep their low 32 bits."""
    text = buf.split(b"\0", 1)[0].decode("latin-1")
    values: list[int] = []
    at = 0
    while len(values) < 7:
        while at < len(text) and text[at] in _SPACE:
            at += 1
        if at == len(text) or text[at] not in _HEX_DIGITS:
            break
        if text[at:at + 2] in ("0x", "0X"):
            at += 2
        end = at
        while end < len(text) and text[end] in _HEX_DIGITS:
            end += 1
        values.append(int(text[at:end] or "0", 16) & (0xFFFFFFFF if len(values) < 6
                                                       else 2**64 - 1))
        at = end
    if len(values) < 2:
        fail(errno.EINVAL)
    fields = len(values)
    defaults = [ANY_ID, ANY_ID, 0, 0, 0]  # subvendor, subdevice, class, class_mask, data
    return DynamicId(*values, *defaults[fields - 2:]), fields
