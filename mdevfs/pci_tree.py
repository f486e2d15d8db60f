"""The PCI half of the sysfs tree (:class:`mdevfs.tree.Tree`): ``bus/pci`` and its drivers,
each function's directory as pci-sysfs.c makes it (its files from :mod:`mdevfs.pci_sysfs`),
the IOMMU unit, and ``module/<name>``; kept in step with the host's PCI bus as the tree's
observer methods ``pci_added``, ``pci_bound`` … A mixin: the node helpers are the tree's.
"""
from __future__ import annotations

import posixpath
from typing import Any

from .attributes import (
    BUS_UEVENT,
    EMPTY_UEVENT,
    MODULE_FILES,
    MODULE_VERSION,
    PCI_AUTOPROBE,
    RESOURCE_ALIGNMENT,
    iommu_unit_files,
)
from .kparse import device_named
from .nodes import Dir, LazyDir, Link, Node, Op
from .pci import DriverEntry, PciDriver, PciFunction
from .pci_sysfs import function_files


class PciTree:
    """What the tree shows of the PCI bus."""

    # --- PCI functions --------------------------------------------------------------------------

    def _pci_bus(self) -> None:
        """``bus/pci`` (drivers/base/bus.c, pci-sysfs.c): devices, drivers, slots and the bus
        files."""
        self.bus_pci = self.mkdirs("bus/pci")
        self.bus_pci_devices = self._dir(self.bus_pci, "devices")
        self._dir(self.bus_pci, "drivers")
        self._dir(self.bus_pci, "slots")
        self._file(self.bus_pci, "drivers_autoprobe", PCI_AUTOPROBE, self.host)
        self._file(self.bus_pci, "drivers_probe", Op(store=self._pci_drivers_probe))
        self._file(self.bus_pci, "rescan", Op(store=lambda _o, buf: self.host.rescan(buf)))
        self._file(self.bus_pci, "resource_alignment", RESOURCE_ALIGNMENT, [""])
        self._file(self.bus_pci, "uevent", BUS_UEVENT)

    def _iommu_unit(self) -> Dir | None:
        """The IOMMU every PCI function sits behind (iommu-sysfs.c): Intel's ``dmar0``, a
        virtual device, or AMD's ``ivhd0`` below the IOMMU's own PCI function (whose PCI files
        mdevfs does not give); ``class/iommu/<unit>``, and a link in its ``devices/`` for each
        function. None without an IOMMU, when ``class/iommu`` is empty (the class is
        registered at boot, iommu_dev_init, whatever the hardware)."""
        self.mkdirs("class/iommu")
        if self.host.iommu == "none":
            return None
        name, path = (("dmar0", "devices/virtual/iommu/dmar0") if self.host.iommu == "intel"
                      else ("ivhd0", "devices/pci0000:00/0000:00:00.2/iommu/ivhd0"))
        unit = self.mkdirs(path)
        self._dir(unit, "devices")
        for group, files in iommu_unit_files(self.host.iommu).items():
            gdir = self._dir(unit, group)
            for file, op in files.items():
                self._file(gdir, file, op, self.host)
        self._power(unit)
        self.link(f"{path}/subsystem", "class/iommu")
        self._file(unit, "uevent", EMPTY_UEVENT)
        self.link(f"class/iommu/{name}", path)
        return unit

    def pci_added(self, fn: PciFunction) -> None:
        """A PCI function: pci-sysfs.c's files, its links, its IOMMU group and unit; a PF's
        SR-IOV files, a VF's physfn; then, if a driver has it, what binding adds."""
        where, name = posixpath.split(fn.path)
        fdir = self._attach(self.mkdirs(where), Dir(name))
        self._pci_dirs[fn] = fdir
        for file, op in function_files(fn).items():
            self._file(fdir, file, op, fn)
        self._attach(fdir, LazyDir("power", self._pci_power, fn))
        self._attach(fdir, Link("subsystem", self.bus_pci))
        nodes: list[Node] = [fdir, self._attach(self.bus_pci_devices, Link(fn.bdf, fdir))]
        if fn.iommu_group is not None:
            group = self._iommu_group(fdir, fn.iommu_group, self.host.iommu)
            self._attach(fdir, Link("iommu_group", group))
            nodes.append(group)
        if self.iommu_unit is not None:
            self._attach(fdir, Link("iommu", self.iommu_unit))
            nodes.append(self._attach(self.iommu_unit.children["devices"],
                                      Link(fn.bdf, fdir)))
        if fn.physfn is not None:
            pf = self._pci_dirs[fn.physfn]
            self._attach(fdir, Link("physfn", pf))
            index = fn.physfn.sriov.vfs.index(fn)  # type: ignore[union-attr]
            nodes.append(self._attach(pf, Link(f"virtfn{index}", fdir)))
        self._pci_nodes[fn] = nodes
        if fn.driver is not None:
            self.pci_bound(fn)

    def pci_removed(self, fn: PciFunction) -> None:
        self._drop_all(self._pci_bound_nodes.pop(fn, []) + self._pci_nodes.pop(fn, []))
        self._pci_dirs.pop(fn, None)

    def pci_bound(self, fn: PciFunction) -> None:
        """What binding adds: the ``driver`` link and the driver's link back, the driver's
        attributes (``nvidia/``), and, when the driver registers the function with VFIO,
        ``vfio-dev`` and the vfio group."""
        driver = fn.driver
        assert driver is not None
        fdir, ddir = self._pci_dirs[fn], self._pci_drivers[driver.name]
        nodes = [self._attach(fdir, Link("driver", ddir)),
                 self._attach(ddir, Link(fn.bdf, fdir))]
        nodes += self._vendor_files(fdir, driver.function_attributes(fn), fn)
        if fn.vfio is not None:
            nodes += self._vfio_dev(fdir, fn.vfio) + self._vfio_group(fdir, fn.vfio)
        self._pci_bound_nodes[fn] = nodes

    def pci_unbound(self, fn: PciFunction, driver: PciDriver) -> None:
        self._drop_all(self._pci_bound_nodes.pop(fn, []))

    def pci_driver_added(self, entry: DriverEntry) -> None:
        """``bus/pci/drivers/<name>``: bind, unbind, new_id, remove_id, uevent and the
        ``module`` link; ``module/<module>`` with its files and ``drivers/pci:<name>``."""
        ddir = self._pci_drivers[entry.name] = self._dir(self._dir_at("bus/pci/drivers"),
                                                         entry.name)
        self._file(ddir, "bind", Op(store=self._pci_bind), entry)
        self._file(ddir, "unbind", Op(store=self._pci_unbind), entry)
        self._file(ddir, "new_id", Op(store=lambda e, buf: self.host.new_id(e.name, buf)), entry)
        self._file(ddir, "remove_id", Op(store=lambda e, buf: self.host.remove_id(e.name, buf)),
                   entry)
        self._file(ddir, "uevent", BUS_UEVENT)
        module = self.mkdirs(f"module/{entry.module}")
        if "initstate" not in module.children:
            self._module_files(module, entry)
        self.link(f"module/{entry.module}/drivers/pci:{entry.name}", ddir.path)
        self.link(f"{ddir.path}/module", f"module/{entry.module}")

    def _module_files(self, module: Dir, entry: DriverEntry) -> None:
        """A loaded module's files (kernel/module/sysfs.c): its state, reference count and
        taint, and ``version`` where the module has one (nvidia: the driver release)."""
        for name, op in MODULE_FILES.items():
            self._file(module, name, op, entry)
        if entry.module_version is not None:
            self._file(module, "version", MODULE_VERSION, entry)
        for sub in ("holders", "notes", "sections"):
            self._dir(module, sub)

    def _pci_bind(self, entry: DriverEntry, buf: bytes) -> int:
        self.host.pci_bind(device_named(self.host.pci, buf), entry.name)
        return len(buf)

    def _pci_unbind(self, entry: DriverEntry, buf: bytes) -> int:
        self.host.pci_unbind(device_named(self.host.pci, buf), entry.name)
        return len(buf)

    def _pci_drivers_probe(self, _obj: Any, buf: bytes) -> int:
        self.host.drivers_probe(device_named(self.host.pci, buf))
        return len(buf)
