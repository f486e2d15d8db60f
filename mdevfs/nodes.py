"""The nodes of a sysfs tree: directories, attribute files and relative symlinks.

Nodes are small ``__slots__`` objects; an attribute file holds a shared :class:`Op` (how to
show and store) and the model object it shows, so a node costs a few dozen bytes beside
what it points at. :class:`mdevfs.tree.Tree` makes them and keeps them in step with the
model; the FUSE adapter serves them.

Inodes are handed out by one counter and never reused; a removed node is detached and
marked dead (no parent), so a write through a file handle that outlived it fails with
ENODEV, as kernfs_get_active() makes it fail. A :class:`ViewDir` computes its entries for
the model's objects from the model, making a node only when a name is looked up.
"""
from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable
from typing import Any

from attrs import frozen

from .errors import fail

log = logging.getLogger("mdevfs.sysfs")

PAGE_SIZE = 4096
ROOT_INODE = 1

@frozen
class Op:
    """How one kind of attribute shows and stores: ``show(obj) -> bytes``,
    ``store(obj, buf) -> count``. A missing half makes the file one-way."""

    show: Callable[[Any], bytes] | None = None
    store: Callable[[Any, bytes], int] | None = None
    #: the most show() may give before it is cut (sysfs: PAGE_SIZE - 1; a binary attribute
    #: its size)
    limit: int = PAGE_SIZE - 1
    #: the mode, where it is not the one show and store make (resourceN 0600, remove 0220)
    fixed_mode: int | None = None
    #: what stat says of its size, given the object (a binary attribute's); else 4096
    size: Callable[[Any], int] | None = None
    #: the most a reader without CAP_SYS_ADMIN gets (PCI config: 64 bytes), if less
    unprivileged_limit: int | None = None

    @property
    def mode(self) -> int:
        if self.fixed_mode is not None:
            return self.fixed_mode
        return (0o444 if self.show else 0) | (0o200 if self.store else 0)


class Node:
    __slots__ = ("inode", "name", "parent", "iattr")

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

    def child(self, name: str) -> Node | None:
        """The entry called ``name`` (a lookup)."""
        return self.children.get(name)


class LazyDir(Dir):
    """A directory whose entries are made when first looked at (a ``power/``, an IOMMU
    group's files, ``vfio-dev/vfioN``: most of a device, which clients rarely read); until
    then it costs one node, without even an empty table of entries. ``build(arg, dir)``
    makes them: a builder shared by every directory of its kind, with ``arg`` what tells
    this one from the others (a per-directory closure would cost more than the
    directory). ``subdirs`` is what it will hold, so that its link count is right before
    it is built."""

    __slots__ = ("build", "arg")

    def __init__(self, name: str, build: Callable[[Any, Dir], None], arg: Any = None,
                 subdirs: int = 0) -> None:
        Node.__init__(self, name)
        self.build: Callable[[Any, Dir], None] | None = build
        self.arg = arg
        self.subdirs = subdirs

    @property  # type: ignore[override]
    def children(self) -> dict[str, Node]:
        if self.build is not None:
            build, self.build = self.build, None
            subdirs = self.subdirs
            build(self.arg, self)
            self.arg = None
            self.subdirs = subdirs  # building counted them again
        return raw_children(self)

    @children.setter
    def children(self, value: dict[str, Node]) -> None:
        _DIR_CHILDREN.__set__(self, value)


class DeviceDir(LazyDir):
    """A device's directory: its builder, asked for one name (``build(arg, dir, name)``),
    may make that entry alone and return it, so that a lookup of ``remove`` (on its way to
    a remove) builds one node, not the directory; the full build makes the rest."""

    __slots__ = ()

    def child(self, name: str) -> Node | None:
        build = self.build
        if build is not None:
            node = raw_children(self).get(name) or build(self.arg, self, name)  # type: ignore[call-arg]
            if node is not None:
                return node
        return self.children.get(name)


class ViewDir(Dir):
    """A directory whose entries for the model's objects are computed from the model
    (``bus/mdev/devices``, a type's ``devices/``, ``kernel/iommu_groups``, ``class/vfio``):
    ``names()`` says which there are, ``make(dir, name)`` makes and attaches the node of
    one (None: there is none), which then stays, the same inode, until the tree drops it.
    A create or a restore so makes no node here: a lookup makes one, a listing all.
    Entries attached as usual (a PCI function's group) live beside them."""

    __slots__ = ("names", "make")

    def __init__(self, name: str, names: Callable[[], Iterable[str]],
                 make: Callable[[ViewDir, str], Node | None]) -> None:
        super().__init__(name)
        self.names = names
        self.make = make

    @property  # type: ignore[override]
    def children(self) -> dict[str, Node]:
        entries = raw_children(self)
        for name in [n for n in self.names() if n not in entries]:
            self.make(self, name)
        return entries

    @children.setter
    def children(self, value: dict[str, Node]) -> None:
        _DIR_CHILDREN.__set__(self, value)

    def child(self, name: str) -> Node | None:
        return raw_children(self).get(name) or self.make(self, name)


_DIR_CHILDREN = Dir.__dict__["children"]  # the slot LazyDir's property stands in front of


def raw_children(directory: Dir) -> dict[str, Node]:
    """A directory's entries as they are, without building a lazy one."""
    try:
        return _DIR_CHILDREN.__get__(directory)  # type: ignore[no-any-return]
    except AttributeError:  # a lazy directory nothing was put in yet
        entries: dict[str, Node] = {}
        _DIR_CHILDREN.__set__(directory, entries)
        return entries


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
        """As kernfs_get_target_path() writes it: up from the link's directory to the
        nearest ancestor of the target's directory, then down to the target, so a link to
        an ancestor reads ``../../../<name>``."""
        here, there = _ancestors(self.parent), _ancestors(self.to.parent)
        common = 0
        for mine, theirs in zip(here, there):
            if mine is not theirs:
                break
            common += 1
        return "/".join([".."] * (len(here) - common)
                        + [n.name for n in there[common:]] + [self.to.name])


def _ancestors(directory: Node | None) -> list[Node]:
    """``directory`` and its ancestors below the root, from the top."""
    chain = []
    while directory is not None and directory.inode != ROOT_INODE:
        chain.append(directory)
        directory = directory.parent
    chain.reverse()
    return chain


class InnerLink(Link):
    """A link to the node of its own name in ``base/inner``, inside a lazy directory
    (``class/vfio-dev/vfioN`` to a device's ``vfio-dev/vfioN``): the node, and the
    directory around it, are made when the link is first read, not when the link is."""

    __slots__ = ("base", "inner")

    def __init__(self, name: str, base: Dir, inner: str) -> None:
        Node.__init__(self, name)
        self.base: Dir | None = base
        self.inner = inner

    @property  # type: ignore[override]
    def to(self) -> Node:
        return self.base.children[self.inner].children[self.name]  # type: ignore[union-attr,attr-defined]

    @to.setter
    def to(self, value: Node | None) -> None:  # Tree._drop: the link is gone
        self.base = None
