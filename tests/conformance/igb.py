"""The machine of the SR-IOV VM (run-sriov.sh) as mdevfs PCI devices, for sriov.toml: QEMU's
igb (an Intel 82576 PF with SR-IOV) under Linux's ``igb``/``igbvf`` drivers, and the functions
before it on the bus, so that the PF's IOMMU group and interrupt line are the VM's.

Test-only: it lets sriov-probe.sh ask mdevfs the same questions as the kernel and get answers
that can be compared byte for byte, the NIC's own parts (net/, ptp/, msi_irqs/, wakeup, AER,
ASPM link/, firmware_node) aside. Every value below is the one the recorded dumps show
(golden/sriov-*.txt), or the one QEMU's hw/net/igb.c and Linux's drivers/net/ethernet/intel/igb
give.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mdevfs.model import Host
from mdevfs.pci import MEM32, MEM64, MEM64_PREFETCH, Bar, BasePciDriver, Caps, PciFunction, PciIds, Sriov

INTEL, REDHAT_QUMRANET = 0x8086, 0x1AF4
#: IORESOURCE_IO | IORESOURCE_SIZEALIGN and the BAR's I/O space bit
IO = 0x40101
#: igb's BARs in QEMU (hw/net/igb.c: MMIO 128 KiB, flash 128 KiB, I/O 32 bytes, MSI-X 16 KiB,
#: 64-bit), where the VM's firmware placed them
PF_BARS = (Bar(0xFE600000, 0x20000, MEM32), Bar(0xFE620000, 0x20000, MEM32), Bar(0xC000, 32, IO),
           Bar(0xFE640000, 0x4000, MEM64), None, None)
#: each VF's BAR0 (MMIO) and BAR3 (MSI-X), 16 KiB, 64-bit prefetchable, at the spans the
#: firmware gave the SR-IOV BARs
VF_BARS = (Bar(0xFE000000, 0x4000, MEM64_PREFETCH), None, None,
           Bar(0xFE020000, 0x4000, MEM64_PREFETCH), None, None)


class Igb(BasePciDriver):
    """The igb PF, bound to ``igb``: 8 VFs in its capability, 7 while igb drives it
    (igb_probe_vfs: pci_sriov_set_totalvfs(7)); its VFs bind to ``igbvf``."""

    kind = "gpu"
    name = "igb"
    module = "igb"
    configures_sriov = True
    #: igb_probe ends with pm_runtime_put_noidle: the probe's reference is dropped
    runtime_usage = 1

    def __init__(self, options: Mapping[str, Any] | None = None, base_dir: Any = None) -> None:
        self.irq = int(dict(options or {}).get("irq", 0))
        self.pf: PciFunction | None = None

    def plug(self, host: Host, address: str, path: str) -> PciFunction:
        host.register_pci_driver(self)
        host.register_pci_driver(IgbVf(self))
        self.pf = PciFunction(
            bdf=address, path=path, bars=PF_BARS, irq=self.irq,
            caps=Caps(link=(1, 1, 1, 1), pm=True, msix=True, ari=True,
                      resets=("flr", "pm", "bus")),
            ids=PciIds(INTEL, 0x10C9, REDHAT_QUMRANET, 0x1100, 0x020000, revision=0x01),
            sriov=Sriov(8, 128, 2, 0x10CA, vf_bars=VF_BARS))
        return host.add_pci(self.pf)

    def matches(self, fn: PciFunction) -> bool:
        return fn is self.pf

    def probe(self, fn: PciFunction) -> None:
        assert fn.sriov is not None
        fn.sriov.driver_max = 7

    def sriov_configure(self, pf: PciFunction, num_vfs: int) -> None:
        return None


class IgbVf(BasePciDriver):
    """``igbvf``: the igb PF's VFs (8086:10ca)."""

    name = "igbvf"
    module = "igbvf"

    def __init__(self, pf: Igb) -> None:
        self.igb = pf

    def matches(self, fn: PciFunction) -> bool:
        return fn.physfn is not None and fn.physfn is self.igb.pf


class Bystander:
    """A function of the VM's that the probe never looks at, but that takes an IOMMU group
    (and an interrupt line) before the PF: the host bridge, the VGA, virtio-rng, the root
    ports, the LPC bridge, an e1000e. Driverless: only its place counts."""

    kind = "gpu"

    def __init__(self, options: Mapping[str, Any] | None = None, base_dir: Any = None) -> None:
        options = dict(options or {})
        self.ids = PciIds(int(options.get("vendor", INTEL)), int(options.get("device", 0)),
                          klass=int(options.get("class", 0)))

    def plug(self, host: Host, address: str, path: str) -> PciFunction:
        return host.add_pci(PciFunction(bdf=address, path=path, ids=self.ids, caps=Caps(link=None)))
