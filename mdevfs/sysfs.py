"""The sysfs view of the model: directories, attribute files and relative symlinks.

The tree follows ``mdev-sysfs-abi.md`` §1.1 and is kept in step with the model
as a :class:`~mdevfs.model.HostObserver`. Nodes are small ``__slots__`` objects;
an attribute file holds a shared :class:`Op` (how to show and store) and the
model object it shows, so a device costs a few hundred bytes per node.

Inodes are handed out by one counter and never reused; a removed node is
dropped from the table and marked dead, so a write through a file handle that
outlived it fails with ENODEV, as kernfs_get_active() makes it fail.
"""
from __future__ import annotations

import errno
import functools
import logging
import posixpath
import struct
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from attrs import frozen

from .driver import Attribute, Migration
from .errors import fail
from .model import Binding, Host, HostObserver, MdevDevice, MdevType, Parent
from .pci import PciFunction

log = logging.getLogger(__name__)

PAGE_SIZE = 4096
#: the migration_version string limit of the seed: ASCII, at most PATH_MAX bytes
PATH_MAX = 4096
ROOT_INODE = 1
UEVENT_ACTIONS = frozenset(("add", "remove", "change", "move", "online", "offline", "bind", "unbind"))


@frozen
class Op:
    """How one kind of attribute shows and stores: ``show(obj) -> bytes``,
    ``store(obj, buf) -> count``. A missing half makes the file one-way."""

    show: Callable[[Any], bytes] | None = None
    store: Callable[[Any, bytes], int] | None = None
    #: the most show() may give before it is cut (sysfs: PAGE_SIZE - 1)
    limit: int = PAGE_SIZE - 1

    @property
    def mode(self) -> int:
        return (0o444 if self.show else 0) | (0o200 if self.store else 0)


class Node:
    __slots__ = ("inode", "name", "parent", "iattr")
    #: a name that comes and goes on its own (a device, a link to it, its IOMMU group):
    #: the FUSE adapter never lets the kernel cache it, so no reader sees it stale
    volatile = False

    def __init__(self, name: str) -> None:
        self.inode = 0
        self.name = name
        self.parent: Dir | None = None
        #: what root set with chmod, chown or utimes (kernfs_setattr keeps it), else None
        self.iattr: IAttr | None = None

    @property
    def path(self) -> str:
        parts = []
        node: Node | None = self
        while node is not None and node.inode != ROOT_INODE:
            parts.append(node.name)
            node = node.parent
        return "/".join(reversed(parts))


class IAttr:
    """A node's attributes once changed by root: mode bits, owner and times (ns)."""

    __slots__ = ("mode", "uid", "gid", "atime_ns", "mtime_ns", "ctime_ns")

    def __init__(self, mode: int, uid: int, gid: int, time_ns: int) -> None:
        self.mode, self.uid, self.gid = mode, uid, gid
        self.atime_ns = self.mtime_ns = self.ctime_ns = time_ns


class Dir(Node):
    __slots__ = ("children", "subdirs")

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.children: dict[str, Node] = {}
        #: kernfs counts a directory's subdirectories: its link count is 2 + subdirs
        self.subdirs = 0

    @property
    def mode(self) -> int:
        return 0o755


class LazyDir(Dir):
    """A directory whose entries are made when first looked at (a ``power/``, an IOMMU
    group's files, ``vfio-dev/vfioN``: most of a device, which clients rarely read); until
    then it costs one node. ``subdirs`` is what it will hold, so that its link count is
    right before it is built."""

    __slots__ = ("build",)

    def __init__(self, name: str, build: Callable[[Dir], None], subdirs: int = 0) -> None:
        super().__init__(name)
        self.build: Callable[[Dir], None] | None = build
        self.subdirs = subdirs

    @property  # type: ignore[override]
    def children(self) -> dict[str, Node]:
        if self.build is not None:
            build, self.build = self.build, None
            subdirs = self.subdirs
            build(self)
            self.subdirs = subdirs  # building counted them again
        return _DIR_CHILDREN.__get__(self)

    @children.setter
    def children(self, value: dict[str, Node]) -> None:
        _DIR_CHILDREN.__set__(self, value)


class VolatileLazyDir(LazyDir):
    __slots__ = ()
    volatile = True


_DIR_CHILDREN = Dir.__dict__["children"]  # the slot LazyDir's property stands in front of


class VolatileDir(Dir):
    __slots__ = ()
    volatile = True


class File(Node):
    __slots__ = ("op", "obj")

    def __init__(self, name: str, op: Op, obj: Any = None) -> None:
        super().__init__(name)
        self.op = op
        self.obj = obj

    @property
    def mode(self) -> int:
        return self.op.mode

    def read(self) -> bytes:
        """``show()`` as sysfs_kf_seq_show gives it: at most PAGE_SIZE - 1 bytes."""
        assert self.op.show is not None
        data = self.op.show(self.obj)
        if len(data) > self.op.limit:
            log.warning("fill_read_buffer: %s returned bad count %d", self.path, len(data))
            data = data[:self.op.limit]
        return data

    def write(self, buf: bytes) -> int:
        """``sysfs_kf_write``: one store() per write(2), cut at PAGE_SIZE; 0 bytes is a no-op."""
        assert self.op.store is not None
        if self.parent is None:
            fail(errno.ENODEV)  # the node is being (or was) removed
        buf = buf[:PAGE_SIZE]
        if not buf:
            return 0
        return self.op.store(self.obj, buf)


class Link(Node):
    """A symlink to another node; its relative target is worked out when read, so a
    link costs a pointer rather than a path string."""

    __slots__ = ("to",)

    def __init__(self, name: str, to: Node) -> None:
        super().__init__(name)
        self.to = to

    @property
    def mode(self) -> int:
        return 0o777

    @property
    def target(self) -> str:
        """As kernfs_get_target_path() writes it: up to the nearest *strict* ancestor of
        the target, then down, so a link to an ancestor reads ``../../../<name>``."""
        where = self.parent.path if self.parent is not None else ""
        rel = posixpath.relpath(self.to.path or ".", where or ".")
        if self.to.parent is not None and set(rel.split("/")) <= {"..", "."}:
            rel = posixpath.normpath(posixpath.join(rel, "..")) + "/" + self.to.name
        return rel


class VolatileLink(Link):
    __slots__ = ()
    volatile = True


class InnerLink(VolatileLink):
    """A link to a node inside a lazy directory (``class/vfio-dev/vfioN`` to a device's
    ``vfio-dev/vfioN``): the node, and the directory around it, are made when the link
    is first read, not when the link is."""

    __slots__ = ("base", "inner")

    def __init__(self, name: str, base: Dir, inner: tuple[str, ...]) -> None:
        Node.__init__(self, name)
        self.base: Dir | None = base
        self.inner = inner

    @property  # type: ignore[override]
    def to(self) -> Node:
        node: Node = self.base  # type: ignore[assignment]
        for name in self.inner:
            node = node.children[name]  # type: ignore[attr-defined]
        return node

    @to.setter
    def to(self, value: Node | None) -> None:  # Tree._drop: the link is gone
        self.base = None


def _text(value: object) -> bytes:
    return f"{value}\n".encode()


# --- the core's attributes (one shared Op each) ------------------------------------------

TYPE_NAME = Op(show=lambda t: _text(t.spec.pretty_name or t.spec.sysfs_name))
TYPE_DEVICE_API = Op(show=lambda t: _text(t.spec.device_api))
TYPE_DESCRIPTION = Op(show=lambda t: _text(t.spec.description))
TYPE_AVAILABLE = Op(show=lambda t: _text(t.available_instances))
TYPE_CREATE = Op(store=lambda t, buf: t.parent.host.create(t, buf))
DEVICE_REMOVE = Op(store=lambda d, buf: d.parent.host.remove(d, buf))


def _uevent_store(obj: Any, buf: bytes) -> int:
    """``kobject_synth_uevent``: a known action word, else EINVAL."""
    action = buf.split(b"\0", 1)[0].decode("latin-1").split(" ", 1)[0].rstrip("\n")
    if action not in UEVENT_ACTIONS:
        fail(errno.EINVAL)
    return len(buf)


def _props(props: dict[str, str]) -> bytes:
    return "".join(f"{k}={v}\n" for k, v in props.items()).encode()


def device_uevent(mdev: MdevDevice) -> dict[str, str]:
    """A device's ``uevent`` file, and the properties its events carry (mdevfs.uevent)."""
    return {"DRIVER": mdev.parent.driver.mdev_driver} if mdev.binding is not None else {}


def parent_uevent(parent: Parent) -> dict[str, str]:
    return dict(parent.driver.parent_uevent())


DEVICE_UEVENT = Op(show=lambda d: _props(device_uevent(d)), store=_uevent_store)
PARENT_UEVENT = Op(show=lambda p: _props(parent_uevent(p)), store=_uevent_store)
PARENT_DEV = Op(show=lambda p: _text("{MAJOR}:{MINOR}".format_map(p.driver.parent_uevent())))
BUS_UEVENT = Op(store=_uevent_store)


def pci_uevent(fn: PciFunction) -> dict[str, str]:
    """pci_uevent(): what a PCI function's ``uevent`` holds, and its events carry."""
    ids = fn.ids
    props = {"DRIVER": fn.driver.name} if fn.driver is not None else {}
    props.update({
        "PCI_CLASS": f"{ids.klass:X}",
        "PCI_ID": f"{ids.vendor:04X}:{ids.device:04X}",
        "PCI_SUBSYS_ID": f"{ids.subsystem_vendor:04X}:{ids.subsystem_device:04X}",
        "PCI_SLOT_NAME": fn.bdf,
        "MODALIAS": (f"pci:v{ids.vendor:08X}d{ids.device:08X}sv{ids.subsystem_vendor:08X}"
                     f"sd{ids.subsystem_device:08X}bc{ids.klass >> 16:02X}"
                     f"sc{ids.klass >> 8 & 0xFF:02X}i{ids.klass & 0xFF:02X}")})
    return props


def _pci_config(fn: PciFunction) -> bytes:
    """A type-0 configuration header (256 bytes): ids, revision, class and subsystem ids;
    no capabilities."""
    ids = fn.ids
    head = struct.pack("<HHHHI", ids.vendor, ids.device, 0, 0, ids.klass << 8 | ids.revision)
    head = head.ljust(0x2C, b"\0") + struct.pack("<HH", ids.subsystem_vendor, ids.subsystem_device)
    return head.ljust(256, b"\0")


#: resource_show prints PCI_BRIDGE_RESOURCES lines for a device that is not a bridge:
#: six BARs, the ROM and six SR-IOV BARs
_RESOURCE_LINES = 13


def _resource(fn: PciFunction) -> bytes:
    bars = list(fn.bars) + [None] * (_RESOURCE_LINES - len(fn.bars))
    return "".join(f"0x{b.start if b else 0:016x} 0x{b.end if b else 0:016x} "
                   f"0x{b.flags if b else 0:016x}\n" for b in bars).encode()


def _hex(width: int, get: Callable[[Any], int]) -> Op:
    return Op(show=lambda fn: f"0x{get(fn):0{width}x}\n".encode())


#: what pci-sysfs.c shows for every PCI function and clients read (libvirt's udevProcessPCI,
#: NVIDIA's go-nvlib: numa_node and resource)
PCI_FILES = {
    "vendor": _hex(4, lambda fn: fn.ids.vendor),
    "device": _hex(4, lambda fn: fn.ids.device),
    "subsystem_vendor": _hex(4, lambda fn: fn.ids.subsystem_vendor),
    "subsystem_device": _hex(4, lambda fn: fn.ids.subsystem_device),
    "class": _hex(6, lambda fn: fn.ids.klass),
    "revision": _hex(2, lambda fn: fn.ids.revision),
    "numa_node": Op(show=lambda fn: _text(fn.numa_node)),
    "resource": Op(show=_resource),
    "config": Op(show=_pci_config),
    "uevent": Op(show=lambda fn: _props(pci_uevent(fn)), store=_uevent_store),
}
#: a PF's SR-IOV files (pci-sysfs.c and iov.c); the tree adds sriov_numvfs, which the host stores
SRIOV_FILES = {
    "sriov_totalvfs": Op(show=lambda fn: _text(fn.sriov.total_vfs)),
    "sriov_offset": Op(show=lambda fn: _text(fn.sriov.offset)),
    "sriov_stride": Op(show=lambda fn: _text(fn.sriov.stride)),
    "sriov_vf_device": Op(show=lambda fn: f"{fn.sriov.vf_device:x}\n".encode()),
    "sriov_drivers_autoprobe": Op(show=lambda fn: _text(int(fn.sriov.drivers_autoprobe)),
                                  store=lambda fn, buf: _set_vf_autoprobe(fn, buf)),
}


def _set_vf_autoprobe(fn: PciFunction, buf: bytes) -> int:
    """sriov_drivers_autoprobe_store: ``kstrtobool`` (its first one or two characters:
    y, t, 1, on; n, f, 0, off), else EINVAL."""
    word = buf[:2].decode("latin-1").lower()
    if word[:1] in ("y", "t", "1") or word == "on":
        fn.sriov.drivers_autoprobe = True
    elif word[:1] in ("n", "f", "0") or word == "of":
        fn.sriov.drivers_autoprobe = False
    else:
        fail(errno.EINVAL)
    return len(buf)


def _set_autoprobe(state: list[int], buf: bytes) -> int:
    state[0] = 0 if buf[:1] == b"0" else 1  # bus_autoprobe store: '0' off, else on
    return len(buf)


def _streq(buf: bytes, word: str) -> bool:
    """``sysfs_streq``: equal but for one trailing newline on either side."""
    text = buf.split(b"\0", 1)[0].decode("latin-1")
    return text.removesuffix("\n") == word


def _one_of(*words: str) -> Callable[[list[str], bytes], int]:
    """A store that keeps one of ``words`` (compared as sysfs_streq does), else EINVAL."""

    def store(state: list[str], buf: bytes) -> int:
        for word in words:
            if _streq(buf, word):
                state[0] = word
                return len(buf)
        fail(errno.EINVAL)

    return store


def _no_autosuspend(obj: Any, buf: bytes = b"") -> Any:
    fail(errno.EIO)  # power.use_autosuspend is off: both show and store say EIO


POWER_CONTROL = Op(show=lambda s: _text(s[0]), store=_one_of("auto", "on"))
POWER_STATUS = Op(show=lambda s: b"unsupported\n")
POWER_TIME = Op(show=lambda s: b"0\n")
POWER_AUTOSUSPEND = Op(show=_no_autosuspend, store=_no_autosuspend)
POWER_DISABLED = Op(show=lambda s: b"disabled\n")
POWER_ASYNC = Op(show=lambda s: _text(s[0]), store=_one_of("enabled", "disabled"))

# --- IOMMU groups ---------------------------------------------------------------------------
#: iommu_group_store_type: a group without a default domain is EINVAL, and so is, in mdevfs,
#: any change of a hardware group's domain (not emulated)
_GROUP_TYPE_STORE = lambda g, buf: fail(errno.EINVAL)  # noqa: E731
#: one made by vfio_register_emulated_iommu_dev() (an mdev): named, no domain
NOIOMMU_GROUP_FILES = {
    "name": Op(show=lambda g: b"vfio-noiommu\n"),
    "reserved_regions": Op(show=lambda g: b""),
    "type": Op(show=lambda g: b"unknown\n", store=_GROUP_TYPE_STORE),
}
#: a PCI function's, behind an x86 IOMMU in its default lazy DMA domain [rec]
PCI_GROUP_FILES = {
    "reserved_regions": Op(show=lambda g: b"0x00000000fee00000 0x00000000feefffff msi\n"),
    "type": Op(show=lambda g: b"DMA-FQ\n", store=_GROUP_TYPE_STORE),
}
EMPTY_UEVENT = Op(show=lambda o: b"", store=_uevent_store)


def _vendor_op(attr: Attribute) -> Op:
    show = store = None
    if attr.show is not None:
        show_fn = attr.show
        show = lambda _obj: b"" if (text := show_fn()) is None else _text(text)  # noqa: E731
    if attr.store is not None:
        store_fn = attr.store

        def store(_obj: Any, buf: bytes) -> int:
            store_fn(buf)
            return len(buf)
    return Op(show=show, store=store)


def migration_op(migration: Migration, owner: str) -> Op:
    """``migration_version`` (seed v5, spec §5.2), with the limits the framework enforces.

    A driver whose string is not an ASCII ``str`` of at most PATH_MAX bytes has a
    bug: the read fails with EIO and the log names the driver. A string of exactly
    PATH_MAX bytes reads back whole with its newline (PATH_MAX + 1 bytes), which a
    real sysfs page could not hold; the seed's limit wins over the page here, so
    that every string the seed allows survives ``cat`` then ``echo``.
    A write with any non-ASCII byte is EINVAL; the driver sees the text up to the
    first NUL (as a C string) without one trailing newline (as sysfs_streq).
    """

    def show(obj: Any) -> bytes:
        version = migration.version()
        if not isinstance(version, str) or not version.isascii() or len(version) > PATH_MAX:
            problem = (f"of type {type(version).__name__}, not str" if not isinstance(version, str)
                       else "not ASCII" if not version.isascii() else f"{len(version)} bytes")
            log.error("driver %s: migration_version of %s is %s; answering EIO",
                      owner, _describe(obj), problem)
            fail(errno.EIO)
        return _text(version)

    def store(_obj: Any, buf: bytes) -> int:
        if not buf.isascii():
            fail(errno.EINVAL)
        text = buf.split(b"\0", 1)[0].decode("ascii")
        migration.check(text.removesuffix("\n"))
        return len(buf)

    return Op(show=show, store=store, limit=PATH_MAX + 1)


def _describe(obj: Any) -> str:
    if isinstance(obj, MdevDevice):
        return f"device {obj.uuid} ({obj.mdev_type.type_id})"
    if isinstance(obj, MdevType):
        return f"type {obj.type_id} of {obj.parent.name}"
    return repr(obj)


async def _nothing_to_settle() -> None:
    return None


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
        #: awaited after a change made outside a FUSE request (the control socket): the
        #: FUSE adapter sets it to drop the kernel's cached entries for removed names
        self.settle: Callable[[], Awaitable[None]] = _nothing_to_settle
        #: what each device added: all of it, and the part that goes when it is unbound
        self._device_nodes: dict[MdevDevice, list[Node]] = {}
        self._bound_nodes: dict[MdevDevice, list[Node]] = {}
        self._pci_nodes: dict[PciFunction, list[Node]] = {}
        self._numvfs = Op(show=lambda fn: _text(fn.sriov.num_vfs), store=host.set_numvfs)
        self._next_inode = ROOT_INODE
        self.root = self._register(Dir(""))
        for path in ("class/mdev_bus", "bus/mdev/devices", "bus/mdev/drivers",
                     "kernel/iommu_groups", "devices/virtual/vfio", "class/vfio", "class/vfio-dev"):
            self.mkdirs(path)
        bus = self.mkdirs("bus/mdev")
        self._file(bus, "drivers_autoprobe",
                   Op(show=lambda s: _text(s[0]), store=_set_autoprobe), [1])
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
            self._file(where, name, _vendor_op(attr), obj)

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
                                            store=_uevent_store))
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


__all__ = ["Tree", "Node", "Dir", "File", "Link", "Op", "migration_op", "device_uevent",
           "parent_uevent", "PAGE_SIZE", "PATH_MAX"]
