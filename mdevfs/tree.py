"""The sysfs tree of a host: every node, made and dropped in step with the model.

The tree follows ``docs/abi.md`` (the kernel's layout of ``class/mdev_bus``, ``bus/mdev``,
``kernel/iommu_groups``, ``class/vfio*`` and the PCI functions) and is kept in step with the
model as a :class:`~mdevfs.model.HostObserver`. It is built of :mod:`mdevfs.nodes`; the files
in it take their behaviour from the tables of :mod:`mdevfs.attributes` and
:mod:`mdevfs.pci_sysfs`.
"""
from __future__ import annotations

import errno
import functools
import posixpath
import sys
from collections.abc import Iterator
from typing import Any

from .attributes import (
    BUS_UEVENT,
    DEVICE_REMOVE,
    DEVICE_UEVENT,
    EMPTY_UEVENT,
    NOIOMMU_GROUP_FILES,
    PARENT_DEV,
    PARENT_UEVENT,
    PCI_GROUP_FILES,
    POWER_ASYNC,
    POWER_AUTOSUSPEND,
    POWER_CONTROL,
    POWER_DISABLED,
    POWER_STATUS,
    POWER_TIME,
    TYPE_AVAILABLE,
    TYPE_CREATE,
    TYPE_DESCRIPTION,
    TYPE_DEVICE_API,
    TYPE_NAME,
    migration_op,
    set_autoprobe,
    text,
    uevent_store,
    vendor_op,
)
from .errors import fail
from .model import Binding, Host, HostObserver, MdevDevice, MdevType, Parent
from .nodes import (
    ROOT_INODE,
    Dir,
    File,
    InnerLink,
    LazyDir,
    Link,
    Node,
    Op,
    VolatileDir,
    VolatileLazyDir,
    VolatileLink,
)
from .pci import PciFunction
from .pci_sysfs import PCI_FILES, SRIOV_FILES


class Tree(HostObserver):
    """The whole sysfs root, kept in step with a :class:`Host`."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.nodes: dict[int, Node] = {}
        #: (directory inode, name) of every entry removed since the FUSE adapter last
        #: told the kernel; None while nobody listens (no mount)
        self.dropped: list[tuple[int, str]] | None = None
        #: directories whose link count (2 + subdirectories) changed since the FUSE adapter
        #: last told the kernel; None while nobody listens
        self.recounted: set[int] | None = None
        #: counts every change of any directory's entries (a listing is rebuilt when it moved)
        self.generation = 0
        #: what each device added: all of it, and the part that goes when it is unbound
        self._device_nodes: dict[MdevDevice, list[Node]] = {}
        self._bound_nodes: dict[MdevDevice, list[Node]] = {}
        self._pci_nodes: dict[PciFunction, list[Node]] = {}
        self._numvfs = Op(show=lambda fn: text(fn.sriov.num_vfs), store=host.set_numvfs)
        self._next_inode = ROOT_INODE
        self.root = self._register(Dir(""))
        for path in ("class/mdev_bus", "bus/mdev/devices", "bus/mdev/drivers",
                     "kernel/iommu_groups", "devices/virtual/vfio", "class/vfio", "class/vfio-dev"):
            self.mkdirs(path)
        bus = self.mkdirs("bus/mdev")
        self._file(bus, "drivers_autoprobe",
                   Op(show=lambda s: text(s[0]), store=set_autoprobe), [1])
        self._file(bus, "drivers_probe", Op(store=self._drivers_probe))
        self._file(bus, "uevent", BUS_UEVENT)
        # the directories every device links into, found once
        self.iommu_groups = self._dir_at("kernel/iommu_groups")
        self.bus_mdev = self._dir_at("bus/mdev")
        self.bus_devices = self._dir_at("bus/mdev/devices")
        self.class_vfio = self._dir_at("class/vfio")
        self.class_vfio_dev = self._dir_at("class/vfio-dev")
        self.virtual_vfio = self._dir_at("devices/virtual/vfio")
        #: each type's directory, for the devices made of it
        self._type_dirs: dict[MdevType, Dir] = {}
        host.observers.append(self)
        for fn in host.pci.values():
            self.pci_added(fn)
        for parent in host.parents.values():
            self.parent_added(parent)

    # --- nodes ----------------------------------------------------------------------------

    def _register(self, node: Node) -> Any:
        node.inode = self._next_inode
        self._next_inode += 1
        self.nodes[node.inode] = node
        return node

    def _attach(self, directory: Dir, node: Node) -> Any:
        self._register(node)
        node.parent = directory
        directory.children[node.name] = node
        self.generation += 1
        if isinstance(node, Dir):
            self._recount(directory, 1)
        return node

    def _recount(self, directory: Dir, change: int) -> None:
        directory.subdirs += change
        if self.recounted is not None:
            self.recounted.add(directory.inode)

    def _file(self, directory: Dir, name: str, op: Op, obj: Any = None) -> File:
        return self._attach(directory, File(name, op, obj))

    def _dir(self, directory: Dir, name: str, kind: type[Dir] = Dir) -> Dir:
        existing = directory.children.get(name)
        if isinstance(existing, Dir):
            return existing
        return self._attach(directory, kind(name))

    def _drop(self, node: Node) -> None:
        """Detach ``node`` and forget its whole subtree; its inodes are never reused."""
        if node.parent is not None:
            node.parent.children.pop(node.name, None)
            self.generation += 1
            if isinstance(node, Dir):
                self._recount(node.parent, -1)
            if self.dropped is not None and not node.volatile:
                self.dropped.append((node.parent.inode, node.name))
        stack = [node]
        while stack:
            cur = stack.pop()
            self.nodes.pop(cur.inode, None)
            cur.parent = None  # no cycle is left behind: reference counting frees it all
            if isinstance(cur, Link):
                cur.to = None  # type: ignore[assignment]
            elif isinstance(cur, Dir) and not (isinstance(cur, LazyDir) and cur.build):
                stack.extend(cur.children.values())

    def resolve(self, path: str) -> Node | None:
        node: Node | None = self.root
        for part in filter(None, path.split("/")):
            if not isinstance(node, Dir):
                return None
            node = node.children.get(part)
        return node

    def mkdirs(self, path: str) -> Dir:
        node = self.root
        for part in filter(None, path.split("/")):
            node = self._dir(node, part)
        return node

    def link(self, at: str, to: str, kind: type[Link] = Link) -> Link:
        """A symlink at ``at`` to ``to`` (both from the root), relative as sysfs writes it."""
        where, name = posixpath.split(at)
        return self._attach(self.mkdirs(where), kind(name, self.mkdirs(to)))

    def unlink(self, path: str) -> None:
        node = self.resolve(path)
        if node is not None:
            self._drop(node)

    def walk(self, node: Node | None = None) -> Iterator[Node]:
        stack = [node or self.root]
        while stack:
            cur = stack.pop()
            yield cur
            if isinstance(cur, Dir):
                stack.extend(reversed(list(cur.children.values())))

    # --- the model's changes --------------------------------------------------------------

    def parent_added(self, parent: Parent) -> None:
        driver = parent.driver
        pdir = self.mkdirs(parent.path)
        if parent.name not in self.host.pci:  # a class device: its own files are the parent's
            props = driver.parent_uevent()
            if "MAJOR" in props and "MINOR" in props:
                self._file(pdir, "dev", PARENT_DEV, parent)
            kind, subsys = driver.subsystem
            self.link(f"{parent.path}/subsystem", f"{kind}/{subsys}")
            self.link(f"class/{subsys}/{parent.name}" if kind == "class"
                      else f"{kind}/{subsys}/devices/{parent.name}", parent.path)
            self._file(pdir, "uevent", PARENT_UEVENT, parent)
            self._power(pdir)
        types = self._dir(pdir, "mdev_supported_types")
        for mtype in parent.types.values():
            self._type_dir(types, mtype)
        self._driver_dir(driver)
        self.link(f"class/mdev_bus/{parent.name}", parent.path)

    def pci_added(self, fn: PciFunction) -> None:
        """A PCI function: pci-sysfs.c's files, its links, its IOMMU group and, when its
        driver registered it with VFIO, vfio-dev; a PF's SR-IOV files, a VF's physfn."""
        where, name = posixpath.split(fn.path)
        fdir = self._attach(self.mkdirs(where), (VolatileDir if fn.is_vf else Dir)(name))
        for file, op in PCI_FILES.items():
            self._file(fdir, file, op, fn)
        self._power(fdir)
        self._attach(fdir, Link("subsystem", self.mkdirs("bus/pci")))
        nodes: list[Node] = [fdir, self._attach(self.mkdirs("bus/pci/devices"),
                                                VolatileLink(fn.bdf, fdir))]
        group = self._iommu_group(fdir, fn.iommu_group, PCI_GROUP_FILES)
        self._attach(fdir, Link("iommu_group", group))
        nodes.append(group)
        if fn.driver is not None:
            drvdir = self._pci_driver_dir(fn.driver.name)
            self._attach(fdir, Link("driver", drvdir))
            nodes.append(self._attach(drvdir, VolatileLink(fn.bdf, fdir)))
            self._vendor_files(fdir, fn.driver.function_attributes(fn), fn)
        if fn.vfio is not None:
            self._vfio_dev(fdir, fn.vfio)
            nodes += self._vfio_group(fdir, fn.vfio)
        if fn.sriov is not None:
            for file, op in SRIOV_FILES.items():
                self._file(fdir, file, op, fn)
            self._file(fdir, "sriov_numvfs", self._numvfs, fn)
        if fn.physfn is not None:
            pf = self._dir_at(fn.physfn.path)
            self._attach(fdir, Link("physfn", pf))
            index = fn.physfn.sriov.vfs.index(fn)
            nodes.append(self._attach(pf, VolatileLink(f"virtfn{index}", fdir)))
        self._pci_nodes[fn] = nodes

    def pci_removed(self, fn: PciFunction) -> None:
        for node in self._pci_nodes.pop(fn, []):
            self._drop(node)

    def _pci_driver_dir(self, name: str) -> Dir:
        drivers = self.mkdirs("bus/pci/drivers")
        if name not in drivers.children:
            ddir = self._dir(drivers, name)
            self._file(ddir, "bind", Op(store=self._pci_bind))
            self._file(ddir, "unbind", Op(store=functools.partial(self._pci_unbind, name)))
            self._file(ddir, "uevent", BUS_UEVENT)
        return self._dir_at(f"bus/pci/drivers/{name}")

    def _pci_function_named(self, buf: bytes) -> PciFunction:
        fn = self.host.pci.get(buf.split(b"\0", 1)[0].decode("latin-1").removesuffix("\n"))
        if fn is None:
            fail(errno.ENODEV)  # bus_find_device_by_name() found nothing
        return fn

    def _pci_bind(self, _obj: Any, buf: bytes) -> int:
        """bind_store: every emulated function is bound (device_driver_attach: EBUSY)."""
        fn = self._pci_function_named(buf)
        fail(errno.EBUSY if fn.driver is not None else errno.ENODEV)

    def _pci_unbind(self, driver: str, _obj: Any, buf: bytes) -> int:
        """unbind_store: ENODEV unless bound to this driver; detaching a GPU from its driver
        is not emulated (EBUSY), so its VFs and vGPUs stay as they are."""
        fn = self._pci_function_named(buf)
        fail(errno.EBUSY if fn.driver is not None and fn.driver.name == driver
             else errno.ENODEV)

    def _type_dir(self, types: Dir, mtype: MdevType) -> None:
        tdir = self._type_dirs[mtype] = self._dir(types, mtype.type_id)
        self._file(tdir, "create", TYPE_CREATE, mtype)
        self._file(tdir, "name", TYPE_NAME, mtype)
        self._file(tdir, "device_api", TYPE_DEVICE_API, mtype)
        self._file(tdir, "available_instances", TYPE_AVAILABLE, mtype)
        if mtype.spec.description is not None:
            self._file(tdir, "description", TYPE_DESCRIPTION, mtype)
        self._vendor_files(tdir, mtype.parent.driver.type_attributes(mtype), mtype)
        self._migration(tdir, mtype)
        self._dir(tdir, "devices")

    def _driver_dir(self, driver: Any) -> None:
        """``bus/mdev/drivers/<name>`` with its ``module`` link (``module/<module>``)."""
        name = driver.mdev_driver
        drivers = self._dir_at("bus/mdev/drivers")
        if name in drivers.children:
            return
        ddir = self._dir(drivers, name)
        self._file(ddir, "bind", Op(store=self._bind))
        self._file(ddir, "unbind", Op(store=functools.partial(self._unbind, name)))
        self._file(ddir, "uevent", BUS_UEVENT)
        module = getattr(driver, "module", None) or name.replace("-", "_")
        self.link(f"module/{module}/drivers/mdev:{name}", ddir.path)
        self.link(f"{ddir.path}/module", f"module/{module}")

    def _power(self, directory: Dir) -> None:
        self._attach(directory, LazyDir("power", self._power_files))

    def _power_files(self, power: Dir) -> None:
        self._file(power, "control", POWER_CONTROL, ["auto"])
        self._file(power, "runtime_status", POWER_STATUS)
        self._file(power, "runtime_active_time", POWER_TIME)
        self._file(power, "runtime_suspended_time", POWER_TIME)
        self._file(power, "autosuspend_delay_ms", POWER_AUTOSUSPEND)
        if self.host.pm_advanced_debug:
            self._file(power, "async", POWER_ASYNC, ["disabled"])
            self._file(power, "runtime_active_kids", POWER_TIME)
            self._file(power, "runtime_enabled", POWER_DISABLED)
            self._file(power, "runtime_usage", POWER_TIME)

    def _vendor_files(self, directory: Dir, attrs: Any, obj: Any) -> None:
        for attr in attrs:
            group, _, name = attr.name.rpartition("/")
            where = directory
            for part in filter(None, group.split("/")):
                where = self._dir(where, part)
            self._file(where, name, vendor_op(attr), obj)

    def _migration(self, directory: Dir, target: MdevType | MdevDevice) -> None:
        migration = target.parent.driver.migration(target)
        if migration is not None:
            self._file(directory, "migration_version",
                       migration_op(migration, target.parent.driver.name), target)

    def parent_removed(self, parent: Parent) -> None:
        for mtype in parent.types.values():
            self._type_dirs.pop(mtype, None)
        self.unlink(f"class/mdev_bus/{parent.name}")
        if parent.name in self.host.pci:  # the PCI function stays (or goes by itself)
            self.unlink(f"{parent.path}/mdev_supported_types")
            return
        kind, subsys = parent.driver.subsystem
        self.unlink(f"class/{subsys}/{parent.name}" if kind == "class"
                    else f"{kind}/{subsys}/devices/{parent.name}")
        self.unlink(parent.path)

    def device_added(self, mdev: MdevDevice) -> None:
        """``device_add()``: the device directory exists before any link to it appears; its
        entries (and, if the driver bound it, what binding adds inside it) are made when
        it is first looked at, which most devices never are: a create or a restore makes
        the names that lead to the device, a third of its nodes."""
        uuid = sys.intern(mdev.uuid)  # names several entries: one string for all
        tdir = self._type_dirs[mdev.mdev_type]
        ddir = VolatileLazyDir(uuid, functools.partial(self._device_entries, mdev),
                               subdirs=1)  # power/
        self._attach(tdir.parent.parent, ddir)  # <parent>/mdev_supported_types/<type>
        nodes: list[Node] = [ddir]
        for where in (tdir.children["devices"], self.bus_devices):
            nodes.append(self._attach(where, VolatileLink(uuid, ddir)))
        self._device_nodes[mdev] = nodes
        if mdev.binding is not None:
            self._bound(mdev, ddir, mdev.binding)

    def _device_entries(self, mdev: MdevDevice, ddir: Dir) -> None:
        self._file(ddir, "remove", DEVICE_REMOVE, mdev)
        self._attach(ddir, Link("mdev_type", self._type_dirs[mdev.mdev_type]))
        self._attach(ddir, Link("subsystem", self.bus_mdev))
        self._file(ddir, "uevent", DEVICE_UEVENT, mdev)
        self._power(ddir)
        if mdev.binding is not None:
            self._bound_entries(mdev, ddir, mdev.binding)

    def _bound(self, mdev: MdevDevice, ddir: Dir, binding: Binding) -> None:
        """What the driver's probe and ``vfio_register_emulated_iommu_dev()`` add: outside
        the device directory now, inside it with the rest of its entries."""
        drvdir = self._driver_of(mdev)
        group = self._iommu_group(ddir, binding.iommu_group, NOIOMMU_GROUP_FILES)
        self._bound_nodes[mdev] = [group, *self._vfio_group(ddir, binding),
                                   self._attach(drvdir, VolatileLink(ddir.name, ddir))]
        if isinstance(ddir, LazyDir) and ddir.build is not None:
            ddir.subdirs += self._bound_subdirs(mdev)  # what it will hold once built
        else:
            self._bound_entries(mdev, ddir, binding)

    def _driver_of(self, mdev: MdevDevice) -> Dir:
        return self.bus_mdev.children["drivers"].children[mdev.parent.driver.mdev_driver]

    def _bound_subdirs(self, mdev: MdevDevice) -> int:
        """The directories binding adds inside a device: ``vfio-dev`` and the vendor's
        attribute groups."""
        attrs = mdev.parent.driver.device_attributes(mdev)
        return 1 + len({attr.name.split("/", 1)[0] for attr in attrs if "/" in attr.name})

    def _bound_entries(self, mdev: MdevDevice, ddir: Dir, binding: Binding) -> None:
        before = set(ddir.children)
        self._attach(ddir, Link("iommu_group",
                                self.iommu_groups.children[str(binding.iommu_group)]))
        self._attach(ddir, Link("driver", self._driver_of(mdev)))
        self._vendor_files(ddir, mdev.parent.driver.device_attributes(mdev), mdev)
        self._migration(ddir, mdev)
        self._vfio_dev(ddir, binding)
        self._bound_nodes[mdev] += [ddir.children[name] for name in ddir.children
                                    if name not in before]

    def _iommu_group(self, ddir: Dir, number: int, files: dict[str, Op]) -> Dir:
        """``kernel/iommu_groups/<number>`` holding ``ddir``; ddir's ``iommu_group`` link
        is the caller's to make."""

        def build(group: Dir) -> None:
            for name, op in files.items():
                self._file(group, name, op)
            self._attach(self._dir(group, "devices"), Link(ddir.name, ddir))

        return self._attach(self.iommu_groups, VolatileLazyDir(str(number), build, subdirs=1))

    def _vfio_dev(self, ddir: Dir, binding: Binding) -> None:
        """``vfio-dev/vfio<index>`` in ``ddir``, its entries made when first looked at."""
        self._attach(self._dir(ddir, "vfio-dev"),
                     LazyDir(f"vfio{binding.vfio_index}",
                             functools.partial(self._vfio_device, ddir), subdirs=1))

    def _vfio_device(self, ddir: Dir, vfio: Dir) -> None:
        self._attach(vfio, Link("device", ddir))
        self._attach(vfio, Link("subsystem", self.class_vfio_dev))
        self._file(vfio, "uevent", EMPTY_UEVENT)
        self._power(vfio)

    def _vfio_group(self, ddir: Dir, binding: Binding) -> list[Node]:
        """The vfio group's ``class/vfio/<minor>``, and the ``class/vfio-dev`` link to the
        device's ``vfio-dev/vfio<index>``; returns them."""
        minor = str(binding.vfio_group)

        def build_group(vgroup: Dir) -> None:
            self._attach(vgroup, Link("subsystem", self.class_vfio))
            self._file(vgroup, "uevent", Op(show=lambda _: f"DEVNAME=vfio/{minor}\n".encode(),
                                            store=uevent_store))
            self._power(vgroup)

        vfio = f"vfio{binding.vfio_index}"
        vgroup = self._attach(self.virtual_vfio, VolatileLazyDir(minor, build_group, subdirs=1))
        return [vgroup,
                self._attach(self.class_vfio_dev, InnerLink(vfio, ddir, ("vfio-dev", vfio))),
                self._attach(self.class_vfio, VolatileLink(minor, vgroup))]

    def device_unbound(self, mdev: MdevDevice, binding: Binding) -> None:
        for node in self._bound_nodes.pop(mdev, ()):
            self._drop(node)
        ddir = self._device_nodes[mdev][0]
        if isinstance(ddir, LazyDir) and ddir.build is not None:
            self._recount(ddir, -self._bound_subdirs(mdev))  # it will not hold them now

    def device_removed(self, mdev: MdevDevice) -> None:
        nodes = self._device_nodes.pop(mdev, [])
        if nodes and self.dropped:
            # The device was just unbound on its way out (Host._destroy): the names its
            # unbinding took from its directory need no telling the kernel, since nothing
            # reaches them once the directory (never cached) is gone.
            ddir = nodes[0].inode
            self.dropped = [entry for entry in self.dropped if entry[0] != ddir]
        for node in self._bound_nodes.pop(mdev, []) + nodes:
            self._drop(node)

    def _dir_at(self, path: str) -> Dir:
        node = self.resolve(path)
        assert isinstance(node, Dir), path
        return node

    # --- bus files ------------------------------------------------------------------------

    def _device_named(self, buf: bytes) -> MdevDevice:
        name = buf.split(b"\0", 1)[0].decode("latin-1").removesuffix("\n")
        mdev = self.host.devices.get(name)
        if mdev is None:
            fail(errno.ENODEV)  # bus_find_device_by_name() found nothing
        return mdev

    def _drivers_probe(self, _obj: Any, buf: bytes) -> int:
        self._device_named(buf)  # already bound: bus_rescan_devices_helper has nothing to do
        return len(buf)

    def _bind(self, _obj: Any, buf: bytes) -> int:
        """``bind_store``: no mdev ever matches a driver (``mdev_match`` is 0): ENODEV."""
        self._device_named(buf)
        fail(errno.ENODEV)

    def _unbind(self, driver: str, _obj: Any, buf: bytes) -> int:
        """``unbind_store``: a device bound to this driver is detached, else ENODEV."""
        mdev = self._device_named(buf)
        if mdev.binding is None or mdev.parent.driver.mdev_driver != driver:
            fail(errno.ENODEV)
        self.host.unbind(mdev)
        return len(buf)
