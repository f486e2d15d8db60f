"""The sysfs tree of a host: every node, made and dropped in step with the model.

The tree follows ``docs/abi.md`` (the kernel's layout of ``class/mdev_bus``, ``bus/mdev``,
``kernel/iommu_groups``, ``class/vfio*``, the PCI functions, ``bus/pci`` and the IOMMU unit)
and is kept in step with the model as a :class:`~mdevfs.model.HostObserver`. It is built of
:mod:`mdevfs.nodes`; the files in it take their behaviour from the tables of
:mod:`mdevfs.attributes` and :mod:`mdevfs.pci_sysfs`. What the kernel a host runs changes
(:mod:`mdevfs.kernel`) is asked of ``host.kernel`` here and nowhere else in the view.

The tree keeps, for each parent, PCI function and driver, the nodes it made for it, so
that taking the object away drops exactly those. A device has one node of its own, its
directory; every name outside it that leads to it is a view of the model (a
:class:`~mdevfs.nodes.ViewDir`'s), made when looked up and dropped with the device.
"""
from __future__ import annotations

import errno
import functools
import posixpath
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .attributes import (
    BUS_UEVENT,
    DEVICE_REMOVE,
    DEVICE_UEVENT,
    EMPTY_UEVENT,
    MDEV_AUTOPROBE,
    PARENT_DEV,
    PARENT_UEVENT,
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
    VFIO_GROUP_DEV,
    VFIO_GROUP_UEVENT,
    group_files,
    migration_op,
    vendor_op,
)
from .errors import fail
from .kernel import NO_VFIO_MDEV_DRIVER, PER_PARENT_MDEV_DRIVER, VFIO_DEV_CLASS
from .kparse import device_named, sysfs_number
from .model import VFIO_MDEV, Binding, Host, HostObserver, MdevDevice, MdevType, Parent
from .nodes import (
    ROOT_INODE,
    DeviceDir,
    Dir,
    File,
    InnerLink,
    LazyDir,
    Link,
    Node,
    Op,
    ViewDir,
    raw_children,
)
from .pci import PciFunction
from .pci_sysfs import PCI_POWER_FILES
from .pci_tree import PciTree


class Tree(PciTree, HostObserver):
    """The whole sysfs root, kept in step with a :class:`Host`."""

    def __init__(self, host: Host) -> None:
        self.host = host
        #: how many nodes the tree holds (the FUSE adapter maps the inodes it gave out to
        #: their nodes; nothing else needs a table of them)
        self.size = 0
        #: (directory inode, name, inode) of every entry removed since the FUSE adapter
        #: last told the kernel; None while nobody listens (no mount)
        self.dropped: list[tuple[int, str, int]] | None = None
        #: directories whose link count (2 + subdirectories) changed since the FUSE adapter
        #: last told the kernel; None while nobody listens
        self.recounted: set[int] | None = None
        #: counts every change of any directory's entries (a listing is rebuilt when it moved)
        self.generation = 0
        #: what each object added: all of it, and what goes when it is unbound (a device's
        #: names outside its directory are views of the model: see ``_device_views``; what
        #: binding put inside a device's directory, once built)
        self._parent_nodes: dict[Parent, list[Node]] = {}
        self._bound_inside: dict[MdevDevice, list[Node]] = {}
        #: the bound mdevs, by IOMMU group and by vfio device index: what the views of
        #: the groups and vfio devices show
        self._mdev_groups: dict[int, MdevDevice] = {}
        self._mdev_vfio: dict[int, MdevDevice] = {}
        self._pci_dirs: dict[PciFunction, Dir] = {}
        self._pci_nodes: dict[PciFunction, list[Node]] = {}
        self._pci_bound_nodes: dict[PciFunction, list[Node]] = {}
        #: each type's directory, for the devices made of it; each driver's directory
        self._type_dirs: dict[MdevType, Dir] = {}
        self._type_subdirs: dict[MdevType, int] = {}
        self._mdev_drivers: dict[str, Dir] = {}
        self._pci_drivers: dict[str, Dir] = {}
        self._next_inode = ROOT_INODE
        # the builders of lazy directories, bound once: a bound method made for each
        # directory would cost more than the directory
        self._build_power = self._power_files
        self._build_device = self._device_entries
        self._build_mdev_group = functools.partial(self._iommu_group_entries, None)
        self._build_vfio_device = self._vfio_device
        self._build_vfio_group = self._vfio_group_entries
        self.root = self._register(Dir(""))
        # the directories every device is seen in: views of the model
        self.mkdirs("class/mdev_bus")
        bus = self.mkdirs("bus/mdev")
        self.bus_devices = self._view(bus, "devices", host.devices.keys, self._bus_link)
        self.mkdirs("bus/mdev/drivers")
        groups = self._group_names
        self.iommu_groups = self._view(self.mkdirs("kernel"), "iommu_groups", groups,
                                       self._mdev_group)
        self.virtual_vfio = self._view(self.mkdirs("devices/virtual"), "vfio", groups,
                                       self._mdev_vfio_group)
        self.class_vfio = self._view(self.mkdirs("class"), "vfio", groups,
                                     self._mdev_vfio_group_link)
        self.class_vfio_dev: ViewDir | None = (
            self._view(self.mkdirs("class"), "vfio-dev", self._vfio_dev_names,
                       self._mdev_vfio_dev_link) if host.kernel.has(VFIO_DEV_CLASS) else None)
        self._file(bus, "drivers_autoprobe", MDEV_AUTOPROBE, host)
        self._file(bus, "drivers_probe", Op(store=self._mdev_drivers_probe))
        self._file(bus, "uevent", BUS_UEVENT)
        self.bus_mdev = bus
        if not host.kernel.has(NO_VFIO_MDEV_DRIVER):  # vfio_mdev: every mdev's until 5.14
            self._mdev_driver_dir(VFIO_MDEV, VFIO_MDEV if not host.kernel.has(
                PER_PARENT_MDEV_DRIVER) else "mdev")
        self._pci_bus()
        self.iommu_unit: Dir | None = self._iommu_unit()
        host.observers.append(self)
        for entry in host.pci_drivers.values():
            self.pci_driver_added(entry)
        for fn in host.pci.values():
            self.pci_added(fn)
        for parent in host.parents.values():
            self.parent_added(parent)

    # --- nodes ----------------------------------------------------------------------------

    def _register(self, node: Node) -> Any:
        node.inode = self._next_inode
        self._next_inode += 1
        self.size += 1
        return node

    def _attach(self, directory: Dir, node: Node, counted: bool = False) -> Any:
        """``node`` into ``directory``; a lazy directory is not built for it (its build,
        later, makes the rest). ``counted``: a directory already in ``directory``'s link
        count (a view's, counted when the model made it)."""
        self._register(node)
        node.parent = directory
        raw_children(directory)[node.name] = node
        self.generation += 1
        if not counted and isinstance(node, Dir):
            self._recount(directory, 1)
        return node

    def _view(self, directory: Dir, name: str, names: Callable[[], Iterable[str]],
              make: Callable[[ViewDir, str], Node | None]) -> ViewDir:
        return self._attach(directory, ViewDir(name, names, make))

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
        if node.parent is None:
            return  # dropped already
        raw_children(node.parent).pop(node.name, None)
        self.generation += 1
        if isinstance(node, Dir):
            self._recount(node.parent, -1)
        if self.dropped is not None:
            self.dropped.append((node.parent.inode, node.name, node.inode))
        stack = [node]
        while stack:
            cur = stack.pop()
            self.size -= 1
            if self.recounted is not None:  # a removed node's link count, if still held
                self.recounted.add(cur.inode)
            cur.parent = None  # no cycle is left behind: reference counting frees it all
            if isinstance(cur, Link):
                cur.to = None  # type: ignore[assignment]
            elif isinstance(cur, Dir):  # what a lazy one holds, never building it
                entries = raw_children(cur)
                stack.extend(entries.values())
                # a removed directory the kernel still holds (fuse's ``held``) lists and
                # finds nothing: it keeps none of its subtree alive
                entries.clear()
                if isinstance(cur, LazyDir):
                    cur.build = cur.arg = None

    def _drop_all(self, nodes: list[Node]) -> None:
        for node in nodes:
            self._drop(node)

    def resolve(self, path: str) -> Node | None:
        node: Node | None = self.root
        for part in filter(None, path.split("/")):
            if not isinstance(node, Dir):
                return None
            node = node.child(part)
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

    def walk(self, node: Node | None = None) -> Iterator[Node]:
        stack = [node or self.root]
        while stack:
            cur = stack.pop()
            yield cur
            if isinstance(cur, Dir):
                stack.extend(reversed(list(cur.children.values())))

    def _dir_at(self, path: str) -> Dir:
        node = self.resolve(path)
        assert isinstance(node, Dir), path
        return node

    def _vendor_files(self, directory: Dir, attrs: Any, obj: Any) -> list[Node]:
        """A driver's attributes in ``directory`` (``group/name`` makes the group); returns
        the entries made directly in ``directory``."""
        made = []
        for attr in attrs:
            group, _, name = attr.name.rpartition("/")
            where = directory
            for part in filter(None, group.split("/")):
                if where is directory and part not in where.children:
                    made.append(self._dir(where, part))
                where = self._dir(where, part)
            node = self._file(where, name, vendor_op(attr), obj)
            if where is directory:
                made.append(node)
        return made

    def _power(self, directory: Dir) -> Dir:
        return self._attach(directory, LazyDir("power", self._build_power))

    def _power_files(self, _: None, power: Dir) -> None:
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

    def _pci_power(self, fn: PciFunction, power: Dir) -> None:
        """A PCI function's power/: runtime PM as pci_pm_init leaves it (forbidden, active),
        or, under vfio-pci, allowed and suspended."""
        self._file(power, "control", PCI_POWER_FILES["control"], fn)
        self._file(power, "runtime_status", PCI_POWER_FILES["runtime_status"], fn)
        self._file(power, "runtime_active_time", PCI_POWER_FILES["runtime_active_time"], fn)
        self._file(power, "runtime_suspended_time", PCI_POWER_FILES["runtime_suspended_time"],
                   fn)
        self._file(power, "autosuspend_delay_ms", POWER_AUTOSUSPEND)
        if self.host.pm_advanced_debug:
            self._file(power, "async", PCI_POWER_FILES["async"], fn)
            self._file(power, "runtime_active_kids", POWER_TIME)
            self._file(power, "runtime_enabled", PCI_POWER_FILES["runtime_enabled"], fn)
            self._file(power, "runtime_usage", PCI_POWER_FILES["runtime_usage"], fn)

    # --- mdev parents and types -------------------------------------------------------------

    def parent_added(self, parent: Parent) -> None:
        driver = parent.driver
        pdir = self.mkdirs(parent.path)
        nodes: list[Node] = []
        if parent.own_pci is None and parent.name not in self.host.pci:
            # a class device: its own files are the parent's
            props = driver.parent_uevent()
            if "MAJOR" in props and "MINOR" in props:
                self._file(pdir, "dev", PARENT_DEV, parent)
            kind, subsys = driver.subsystem
            self.link(f"{parent.path}/subsystem", f"{kind}/{subsys}")
            nodes.append(self.link(f"class/{subsys}/{parent.name}" if kind == "class"
                                   else f"{kind}/{subsys}/devices/{parent.name}", parent.path))
            self._file(pdir, "uevent", PARENT_UEVENT, parent)
            self._power(pdir)
            self._vendor_files(pdir, getattr(driver, "parent_attributes", lambda: ())(), parent)
            nodes.append(pdir)
        types = self._dir(pdir, "mdev_supported_types")
        if pdir not in nodes:
            nodes.append(types)
        for mtype in parent.types.values():
            self._type_dir(types, mtype)
        name = self.host.mdev_driver_of(parent)
        if name not in self._mdev_drivers:  # vfio_mdev's is there from the start
            self._mdev_driver_dir(name, getattr(driver, "module", None) or name.replace("-", "_"))
        nodes.append(self.link(f"class/mdev_bus/{parent.name}", parent.path))
        self._parent_nodes[parent] = nodes

    def parent_removed(self, parent: Parent) -> None:
        for mtype in parent.types.values():
            self._type_dirs.pop(mtype, None)
            self._type_subdirs.pop(mtype, None)
        self._drop_all(self._parent_nodes.pop(parent, []))

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
        self._view(tdir, "devices", mtype.devices.keys, functools.partial(self._type_link, mtype))

    def _mdev_driver_dir(self, name: str, module: str) -> Dir:
        """``bus/mdev/drivers/<name>`` with its ``module`` link (``module/<module>``)."""
        ddir = self._mdev_drivers[name] = self._view(
            self._dir_at("bus/mdev/drivers"), name, functools.partial(self._driver_names, name),
            functools.partial(self._driver_link, name))
        self._file(ddir, "bind", Op(store=functools.partial(self._mdev_bind, name)))
        self._file(ddir, "unbind", Op(store=functools.partial(self._mdev_unbind, name)))
        self._file(ddir, "uevent", BUS_UEVENT)
        self.link(f"module/{module}/drivers/mdev:{name}", ddir.path)
        self.link(f"{ddir.path}/module", f"module/{module}")
        return ddir

    def _migration(self, directory: Dir, target: MdevType | MdevDevice) -> list[Node]:
        migration = target.parent.driver.migration(target)
        if migration is None:
            return []
        return [self._file(directory, "migration_version",
                           migration_op(migration, target.parent.driver.name), target)]

    # --- mdev devices -----------------------------------------------------------------------

    def device_added(self, mdev: MdevDevice) -> None:
        """``device_add()``: the device directory, under its parent. Its entries (and, if
        the driver bound it, what binding adds inside it) are made when it is first looked
        at, which most devices never are; every name that leads to it (``bus/mdev/devices``,
        its type's ``devices/``, its groups) is a view of the model, made when looked up.
        A create or a restore makes one node."""
        uuid = sys.intern(mdev.uuid)
        tdir = self._type_dirs[mdev.mdev_type]
        subdirs = 1 + (0 if self._per_parent else self._vendor_subdirs(mdev))  # power/
        ddir = DeviceDir(uuid, self._build_device, mdev, subdirs=subdirs)
        self._attach(tdir.parent.parent, ddir)  # <parent>/mdev_supported_types/<type>
        if mdev.binding is not None:
            self._bound(mdev, ddir, mdev.binding)

    def _ddir(self, mdev: MdevDevice) -> DeviceDir:
        return raw_children(self._type_dirs[mdev.mdev_type].parent.parent)[mdev.uuid]  # type: ignore

    @property
    def _per_parent(self) -> bool:
        return self.host.kernel.has(PER_PARENT_MDEV_DRIVER)

    def _device_entries(self, mdev: MdevDevice, ddir: Dir,
                        only: str | None = None) -> Node | None:
        """Build ``ddir``: every entry, or with ``only`` "remove" that one alone (a remove
        needs no more), or nothing for another name."""
        if "remove" not in raw_children(ddir) and only in (None, "remove"):
            self._file(ddir, "remove", DEVICE_REMOVE, mdev)
        if only is not None:
            return raw_children(ddir).get(only) if only == "remove" else None
        self._attach(ddir, Link("mdev_type", self._type_dirs[mdev.mdev_type]))
        self._attach(ddir, Link("subsystem", self.bus_mdev))
        self._file(ddir, "uevent", DEVICE_UEVENT, mdev)
        self._power(ddir)
        if not self._per_parent:  # before 5.14 the vendor's files come with the device
            self._vendor_files(ddir, mdev.parent.driver.device_attributes(mdev), mdev)
            self._migration(ddir, mdev)
        if mdev.binding is not None:
            self._bound_entries(mdev, ddir, mdev.binding)

    def _bound(self, mdev: MdevDevice, ddir: Dir, binding: Binding) -> None:
        """What the driver's probe and ``vfio_register_emulated_iommu_dev()`` add: outside
        the device directory (the groups, the links to it: views), inside it with the rest
        of its entries."""
        self._mdev_groups[binding.iommu_group] = mdev
        if self.class_vfio_dev is not None:
            self._mdev_vfio[binding.vfio_index] = mdev
        self._recount(self.iommu_groups, 1)
        self._recount(self.virtual_vfio, 1)
        self.generation += 1
        if isinstance(ddir, LazyDir) and ddir.build is not None:
            self._recount(ddir, self._bound_subdirs(mdev))  # what it will hold once built
        else:
            self._bound_entries(mdev, ddir, binding)

    def _driver_of(self, mdev: MdevDevice) -> Dir:
        return self._mdev_drivers[self.host.mdev_driver_of(mdev.parent)]

    def _vendor_subdirs(self, mdev: MdevDevice) -> int:
        """The directories of the driver's device attribute groups. In the kernel they are
        the driver's, the same for every device (its static ``attribute_group`` arrays), so
        they are counted once per type, not asked of the driver for each device."""
        count = self._type_subdirs.get(mdev.mdev_type)
        if count is None:
            attrs = mdev.parent.driver.device_attributes(mdev)
            count = self._type_subdirs[mdev.mdev_type] = len(
                {attr.name.split("/", 1)[0] for attr in attrs if "/" in attr.name})
        return count

    def _bound_subdirs(self, mdev: MdevDevice) -> int:
        """The directories binding adds inside a device: ``vfio-dev`` (from 6.1) and, from
        5.14, the vendor's attribute groups."""
        return (int(self.host.kernel.has(VFIO_DEV_CLASS))
                + (self._vendor_subdirs(mdev) if self._per_parent else 0))

    def _bound_entries(self, mdev: MdevDevice, ddir: Dir, binding: Binding) -> None:
        nodes = self._bound_inside.setdefault(mdev, [])
        nodes.append(self._attach(ddir, Link(
            "iommu_group", self.iommu_groups.child(str(binding.iommu_group)))))
        nodes.append(self._attach(ddir, Link("driver", self._driver_of(mdev))))
        if self._per_parent:
            nodes += self._vendor_files(ddir, mdev.parent.driver.device_attributes(mdev), mdev)
            nodes += self._migration(ddir, mdev)
        nodes += self._vfio_dev(ddir, binding)

    def device_bound(self, mdev: MdevDevice) -> None:
        assert mdev.binding is not None
        self._bound(mdev, self._ddir(mdev), mdev.binding)

    def device_unbound(self, mdev: MdevDevice, binding: Binding) -> None:
        self._drop_all(self._bound_inside.pop(mdev, []))
        ddir = self._ddir(mdev)
        for view, name in self._bound_views(mdev, ddir, binding):
            node = raw_children(view).get(name)
            if node is not None:
                self._drop(node)
            elif view is self.iommu_groups or view is self.virtual_vfio:
                self._recount(view, -1)  # a group never looked at: counted all the same
        del self._mdev_groups[binding.iommu_group]
        self._mdev_vfio.pop(binding.vfio_index, None)
        self.generation += 1
        if isinstance(ddir, LazyDir) and ddir.build is not None:
            self._recount(ddir, -self._bound_subdirs(mdev))  # it will not hold them now

    def _bound_views(self, mdev: MdevDevice, ddir: Dir,
                     binding: Binding) -> list[tuple[Dir, str]]:
        """Where a bound device is seen outside its directory: its IOMMU group, its vfio
        group and the links to it, each (directory, name)."""
        group = str(binding.iommu_group)
        views: list[tuple[Dir, str]] = [(self.iommu_groups, group), (self.virtual_vfio, group),
                                        (self.class_vfio, group)]
        if self.class_vfio_dev is not None:
            views.append((self.class_vfio_dev, f"vfio{binding.vfio_index}"))
        views.append((self._driver_of(mdev), ddir.name))
        return views

    def _device_views(self, mdev: MdevDevice) -> list[tuple[Dir, str]]:
        """Where a device is seen outside its directory: its bus and type links, and, bound,
        what :meth:`_bound_views` says."""
        ddir = self._ddir(mdev)
        views: list[tuple[Dir, str]] = [(self.bus_devices, ddir.name), (
            raw_children(self._type_dirs[mdev.mdev_type])["devices"], ddir.name)]  # type: ignore
        if mdev.binding is not None:
            views += self._bound_views(mdev, ddir, mdev.binding)
        return views

    def names_removed_by(self, node: Node, buf: bytes) -> list[Node]:
        """The names a store of ``buf`` to ``node`` would take away, where known before it
        runs: for a device's ``remove`` of a value that removes (not 0, nor one that fails
        to parse), its directory and every name outside it that leads to it (the links,
        its IOMMU group and vfio group) that has been made; else none."""
        if not isinstance(node, File) or node.op is not DEVICE_REMOVE or node.parent is None:
            return []
        if not Host.removes(buf):
            return []
        made = (raw_children(view).get(name) for view, name in self._device_views(node.obj))
        return [node.parent, *(n for n in made if n is not None)]

    def device_removed(self, mdev: MdevDevice) -> None:
        ddir = self._ddir(mdev)  # unbound already (Host._destroy): what binding made is gone
        for view, name in self._device_views(mdev):
            node = raw_children(view).get(name)
            if node is not None:
                self._drop(node)
        self._drop(ddir)

    # --- the views: the names of devices outside their directories, made when looked up ----

    def _group_names(self) -> Iterator[str]:
        return map(str, self._mdev_groups)

    def _vfio_dev_names(self) -> Iterator[str]:
        return (f"vfio{index}" for index in self._mdev_vfio)

    def _bus_link(self, view: ViewDir, name: str) -> Node | None:
        mdev = self.host.devices.get(name)
        return None if mdev is None else self._attach(view, Link(name, self._ddir(mdev)))

    def _type_link(self, mtype: MdevType, view: ViewDir, name: str) -> Node | None:
        mdev = mtype.devices.get(name)
        return None if mdev is None else self._attach(view, Link(name, self._ddir(mdev)))

    def _driver_link(self, driver: str, view: ViewDir, name: str) -> Node | None:
        mdev = self.host.devices.get(name)
        if mdev is None or mdev.binding is None or self.host.mdev_driver_of(mdev.parent) != driver:
            return None
        return self._attach(view, Link(name, self._ddir(mdev)))

    def _driver_names(self, driver: str) -> Iterator[str]:
        return (uuid for uuid, mdev in self.host.devices.items() if mdev.binding is not None
                and self.host.mdev_driver_of(mdev.parent) == driver)

    def _bound_mdev(self, name: str) -> MdevDevice | None:
        """The bound mdev whose IOMMU group is called ``name``."""
        number = sysfs_number(name)
        return None if number is None else self._mdev_groups.get(number)

    def _mdev_group(self, view: ViewDir, name: str) -> Node | None:
        mdev = self._bound_mdev(name)
        if mdev is None:
            return None
        return self._attach(view, LazyDir(name, self._build_mdev_group, self._ddir(mdev),
                                          subdirs=1), counted=True)

    def _mdev_vfio_group(self, view: ViewDir, name: str) -> Node | None:
        mdev = self._bound_mdev(name)
        if mdev is None:
            return None
        return self._attach(view, LazyDir(name, self._build_vfio_group, mdev.binding,
                                          subdirs=1), counted=True)

    def _mdev_vfio_group_link(self, view: ViewDir, name: str) -> Node | None:
        if self._bound_mdev(name) is None:
            return None
        return self._attach(view, Link(name, self.virtual_vfio.child(name)))

    def _mdev_vfio_dev_link(self, view: ViewDir, name: str) -> Node | None:
        index = sysfs_number(name[4:]) if name.startswith("vfio") else None
        mdev = None if index is None else self._mdev_vfio.get(index)
        if mdev is None:
            return None
        return self._attach(view, InnerLink(name, self._ddir(mdev), "vfio-dev"))

    # --- IOMMU groups and VFIO ------------------------------------------------------------------

    def _iommu_group(self, ddir: Dir, number: int, iommu: str | None) -> Dir:
        """``kernel/iommu_groups/<number>`` holding ``ddir`` (an mdev's emulated group when
        ``iommu`` is None); ddir's ``iommu_group`` link is the caller's to make."""
        build = (self._build_mdev_group if iommu is None
                 else functools.partial(self._iommu_group_entries, iommu))
        return self._attach(self.iommu_groups, LazyDir(str(number), build, ddir, subdirs=1))

    def _iommu_group_entries(self, iommu: str | None, ddir: Dir, group: Dir) -> None:
        for name, op in group_files(self.host.kernel, iommu).items():
            self._file(group, name, op)
        self._attach(self._dir(group, "devices"), Link(ddir.name, ddir))

    def _vfio_dev(self, ddir: Dir, binding: Binding) -> list[Node]:
        """``vfio-dev/vfio<index>`` in ``ddir`` (from 6.1), its entries made when first looked
        at; returns ``vfio-dev``."""
        if self.class_vfio_dev is None:
            return []
        vfio_dev = self._dir(ddir, "vfio-dev")
        self._attach(vfio_dev, LazyDir(f"vfio{binding.vfio_index}",
                                       self._build_vfio_device, ddir, subdirs=1))
        return [vfio_dev]

    def _vfio_device(self, ddir: Dir, vfio: Dir) -> None:
        self._attach(vfio, Link("device", ddir))
        self._attach(vfio, Link("subsystem", self.class_vfio_dev))
        self._file(vfio, "uevent", EMPTY_UEVENT)
        self._power(vfio)

    def _vfio_group(self, ddir: Dir, binding: Binding) -> list[Node]:
        """The vfio group, named after the IOMMU group (``devices/virtual/vfio/<N>``,
        ``class/vfio/<N>``), and the ``class/vfio-dev`` link to the device's
        ``vfio-dev/vfio<index>``; returns them."""
        name = str(binding.iommu_group)
        vgroup = self._attach(self.virtual_vfio,
                              LazyDir(name, self._build_vfio_group, binding, subdirs=1))
        nodes = [vgroup, self._attach(self.class_vfio, Link(name, vgroup))]
        if self.class_vfio_dev is not None:
            vfio = f"vfio{binding.vfio_index}"
            nodes.append(self._attach(self.class_vfio_dev,
                                      InnerLink(vfio, ddir, "vfio-dev")))
        return nodes

    def _vfio_group_entries(self, binding: Binding, vgroup: Dir) -> None:
        self._file(vgroup, "dev", VFIO_GROUP_DEV, binding)
        self._attach(vgroup, Link("subsystem", self.class_vfio))
        self._file(vgroup, "uevent", VFIO_GROUP_UEVENT, binding)
        self._power(vgroup)

    # --- the mdev bus's files ------------------------------------------------------------------

    def _mdev_drivers_probe(self, _obj: Any, buf: bytes) -> int:
        """``drivers_probe``: an unbound device is offered to the drivers; from 5.14 none
        takes it (``mdev_match`` is 0), before vfio_mdev does."""
        mdev = device_named(self.host.devices, buf)
        if mdev.binding is None and not self._per_parent:
            self.host.bind(mdev)
        return len(buf)

    def _mdev_bind(self, driver: str, _obj: Any, buf: bytes) -> int:
        """``bind_store``: from 5.14 no mdev ever matches a driver: ENODEV; before, vfio_mdev
        takes an unbound device."""
        mdev = device_named(self.host.devices, buf)
        if driver != VFIO_MDEV:
            fail(errno.ENODEV)
        self.host.bind(mdev)
        return len(buf)

    def _mdev_unbind(self, driver: str, _obj: Any, buf: bytes) -> int:
        """``unbind_store``: a device bound to this driver is detached, else ENODEV."""
        mdev = device_named(self.host.devices, buf)
        if mdev.binding is None or self.host.mdev_driver_of(mdev.parent) != driver:
            fail(errno.ENODEV)
        self.host.unbind(mdev)
        return len(buf)


__all__ = ["Tree"]
