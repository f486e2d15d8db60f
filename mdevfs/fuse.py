"""The FUSE adapter: the only module that imports pyfuse3.

Each handler resolves the inode, calls one synchronous function of the core
and converts the result. The core never awaits, so every request is atomic
under trio without locks: no reader ever sees a half-built device.

Errors cross one boundary: an OSError becomes ``FUSEError(errno)``; anything
else is a bug, logged with its traceback and answered with EIO, because any
other exception would end ``pyfuse3.main()`` and with it the mount.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import gc
import logging
import os
import queue
import stat
import threading
import time
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
import trio

from .kernel import REMOVED_NLINK_ZERO
from .nodes import PAGE_SIZE, ROOT_INODE, Dir, File, IAttr, Link, Node
from .tree import Tree

log = logging.getLogger(__name__)

# --- the caching policy, in one place ---------------------------------------------------
# sysfs values change behind the reader's back, so pyfuse3's defaults (page cache,
# keep_cache, 300 s timeouts) would serve stale values forever.
# * Attribute files are opened with direct_io: every read reaches show(), and a value
#   that grows from "1\n" to "10\n" is never cut to a cached i_size.
# * Every name is cached (ENTRY_TIMEOUT), so a path walk costs no LOOKUP per component,
#   and a missing name is answered as an entry of inode 0 kept for no time: ENOENT to
#   the caller, never cached, and no exception on the way (1.8x -> 1.6x the floor). A request
#   that takes names away is answered only once the kernel has forgotten every one of
#   them it held (invalidate_entry): the next walk finds a removed device gone, and a
#   re-created one afresh.
# * A device's ``remove`` takes its names from the kernel before it takes the device from
#   the model, answering every lookup meanwhile uncached: until the device is gone,
#   every name of it is found; from then on, none is. No reader ever sees one name of a
#   device without the others.
# * ATTR_TIMEOUT is long: a node's attributes (mode, size 4096, times) never change
#   for the life of its inode, and inodes are never reused.
ENTRY_TIMEOUT = 3600.0
ATTR_TIMEOUT = 3600.0

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def handler(fn: F) -> F:
    """No exception escapes a handler: OSError → its errno; anything else → logged, EIO."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s; answering EIO", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


#: called before every attribute show (``buf`` None) or store: may sleep, or raise OSError
#: instead (injected faults)
Before = Callable[[File, "bytes | None"], Awaitable[None]]
#: called after every store that succeeded (the state file records what it changed)
AfterStore = Callable[[File], None]


class _Handle:
    __slots__ = ("node", "data", "privileged")

    def __init__(self, node: File, privileged: bool) -> None:
        self.node = node
        self.data: bytes | None = None
        #: opened by root (CAP_SYS_ADMIN): a PCI config file reads whole only then
        self.privileged = privileged


class _Listing:
    """An open directory: the entries as of the tree's ``generation`` last looked at."""

    __slots__ = ("node", "generation", "entries", "inodes")

    def __init__(self, node: Dir) -> None:
        self.node = node
        self.generation = -1
        self.entries: list[Node] = []
        self.inodes: list[int] = []


def _copy_attributes(attr: pyfuse3.EntryAttributes) -> pyfuse3.EntryAttributes:
    copy = pyfuse3.EntryAttributes()
    for name in ("attr_timeout", "entry_timeout", "st_ino", "st_mode", "st_nlink", "st_uid",
                 "st_gid", "st_size", "st_blksize", "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
        setattr(copy, name, getattr(attr, name))
    return copy


class SysfsOperations(pyfuse3.Operations):
    """Serves a :class:`~mdevfs.tree.Tree` as a sysfs root."""

    enable_writeback_cache = False
    #: a link's target never changes while its inode lives (inodes are never reused), so
    #: the kernel may keep readlink() results: FUSE_CAP_CACHE_SYMLINKS, which pyfuse3 asks
    #: for when built with mdevfs's patch (pyfuse3-single-reader.patch); stock pyfuse3
    #: ignores the attribute
    enable_symlink_cache = True

    def __init__(self, tree: Tree, *, before: Before | None = None,
                 after_store: AfterStore | None = None) -> None:
        super().__init__()
        self.tree = tree
        self.before = before
        self.after_store = after_store
        tree.dropped = []
        tree.recounted = set()
        #: the inodes the kernel holds, with its lookup count of each (every entry given by
        #: lookup or readdirplus counts one; forget takes its count back: the kernel may
        #: forget one lookup, of a revalidation that found a new inode, while it still holds
        #: the next), and the node of each: the only way from an inode to its node, so the
        #: tree keeps no table of inodes. A removed node stays while held, for a held
        #: descriptor (kernfs keeps the node).
        self.known: dict[int, int] = {}
        self.held: dict[int, Node] = {ROOT_INODE: tree.root}
        #: inodes whose names a request in progress is taking away, forgotten before the
        #: change (a count: two removes of one device may overlap); while any is, every
        #: lookup is answered uncached, so that no name of what goes (a view's name made
        #: meanwhile included) is cached past the change
        self.doomed: dict[int, int] = {}
        #: a removed node's link count: 1 for a file and 2 for a directory, 0 from 7.0
        self._dead_nlink = 0 if tree.host.kernel.has(REMOVED_NLINK_ZERO) else None
        self._notifier = _Notifier()
        self._handles: dict[int, Any] = {}
        self._next_fh = 1
        self._time_ns = time.time_ns()
        self._uid = os.getuid()
        self._gid = os.getgid()
        #: a missing name: the kernel's ENOENT, as an entry of inode 0 that it keeps for no
        #: time (a negative entry expired at once), which costs no exception
        self._missing = pyfuse3.EntryAttributes()
        self._missing.st_ino = 0
        self._missing.entry_timeout = 0

    # --- helpers ------------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        node = self.held.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _new_fh(self, value: Any) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = value
        return fh

    def entry_attributes(self, node: Node,
                         attr: pyfuse3.EntryAttributes | None = None) -> pyfuse3.EntryAttributes:
        """The attributes of ``node``; ``attr``, when given, is one from
        :meth:`_fresh_attributes` to fill in and reuse (readdir does so: pyfuse3 copies
        it into the reply at once). A node root changed is answered on a copy."""
        if attr is None:
            attr = self._fresh_attributes()
        attr.st_ino = node.inode
        attr.entry_timeout = 0 if self.doomed else ENTRY_TIMEOUT
        if isinstance(node, File):
            attr.st_mode = stat.S_IFREG | node.op.mode
            # as sysfs: every attribute stats with size 4096, a binary one with its own
            attr.st_size = PAGE_SIZE if node.op.size is None else node.op.size(node.obj)
            attr.st_nlink = 1
        elif isinstance(node, Dir):
            attr.st_mode = stat.S_IFDIR | 0o755
            attr.st_size = 0
            attr.st_nlink = 2 + node.subdirs  # kernfs: 2 + its subdirectories
        else:
            attr.st_mode = stat.S_IFLNK | 0o777
            attr.st_size = 0  # as kernfs: a symlink stats with size 0
            attr.st_nlink = 1
        if node.parent is None and node.inode != ROOT_INODE:  # removed, held open
            attr = _copy_attributes(attr)
            attr.st_nlink = (self._dead_nlink if self._dead_nlink is not None
                             else 2 if isinstance(node, Dir) else 1)
        iattr = node.iattr
        if iattr is not None:  # what root set (kernfs_setattr), on a fresh copy
            attr = _copy_attributes(attr)
            attr.st_mode = stat.S_IFMT(attr.st_mode) | iattr.mode
            attr.st_uid, attr.st_gid = iattr.uid, iattr.gid
            attr.st_atime_ns, attr.st_mtime_ns = iattr.atime_ns, iattr.mtime_ns
            attr.st_ctime_ns = iattr.ctime_ns
        return attr

    def _fresh_attributes(self) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.attr_timeout = ATTR_TIMEOUT
        attr.st_uid = self._uid
        attr.st_gid = self._gid
        attr.st_blksize = PAGE_SIZE
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = self._time_ns
        return attr

    async def invalidate_dropped(self) -> None:
        """Tell the kernel to forget every name the tree dropped that it holds, and wait
        until it has."""
        recounted = self.tree.recounted
        if recounted:
            # a link count changed (a directory's, a removed node's): only its cached
            # attributes go, which takes no lock in the kernel, so it is safe inside a
            # request; an inode the kernel was never given (or forgot) has none to forget
            held = self.held
            self.forget_attributes([inode for inode in recounted if inode in held])
            recounted.clear()
        if self.tree.dropped:
            batch, self.tree.dropped = self.tree.dropped, []
            known, doomed = self.known, self.doomed
            # a doomed name was forgotten before it went, and found uncached since
            await self.forget_names([(parent, name) for parent, name, inode in batch
                                     if inode in known and inode not in doomed])

    async def forget_names(self, entries: list[tuple[int, str]]) -> None:
        """invalidate_entry of each (directory inode, name), done when this returns."""
        if entries:
            await self._notifier.send(entries)

    def stop(self) -> None:
        """Before the session goes: no thread may notify it after."""
        self._notifier.stop()

    def forget_attributes(self, inodes: list[int]) -> None:
        for inode in inodes:
            with contextlib.suppress(OSError):  # ENOENT: evicted meanwhile
                pyfuse3.invalidate_inode(inode, attr_only=True)

    def _doom(self, names: list[Node], change: int) -> None:
        doomed = self.doomed
        for name in names:
            left = doomed.get(name.inode, 0) + change
            if left:
                doomed[name.inode] = left
            else:
                del doomed[name.inode]

    # --- handlers -----------------------------------------------------------------------

    @handler
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        parent = self._node(parent_inode)
        if not isinstance(parent, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        text = os.fsdecode(name)
        if text == ".":
            return self.entry_attributes(parent)
        if text == "..":
            return self.entry_attributes(parent.parent or self.tree.root)
        if parent.parent is None and parent is not self.tree.root:
            raise pyfuse3.FUSEError(errno.ENOENT)  # a removed directory has no children
        child = parent.child(text)
        if child is None:
            return self._missing
        self.known[child.inode] = self.known.get(child.inode, 0) + 1
        self.held[child.inode] = child
        return self.entry_attributes(child)

    @handler
    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self.entry_attributes(self._node(inode))

    @handler
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        """``kernfs_iop_setattr``: mode, owner and times stick (the kernel has checked
        who may change them); a size change is ignored, so O_TRUNC is harmless."""
        node = self._node(inode)
        if fields.update_mode or fields.update_uid or fields.update_gid or \
                fields.update_atime or fields.update_mtime or fields.update_ctime:
            old = self.entry_attributes(node)
            iattr = node.iattr or IAttr(stat.S_IMODE(old.st_mode), old.st_uid, old.st_gid,
                                        self._time_ns)
            if fields.update_mode:
                iattr.mode = stat.S_IMODE(attr.st_mode)
            if fields.update_uid:
                iattr.uid = attr.st_uid
            if fields.update_gid:
                iattr.gid = attr.st_gid
            if fields.update_atime:
                iattr.atime_ns = attr.st_atime_ns
            if fields.update_mtime:
                iattr.mtime_ns = attr.st_mtime_ns
            iattr.ctime_ns = attr.st_ctime_ns if fields.update_ctime else time.time_ns()
            node.iattr = iattr
        return self.entry_attributes(node)

    # sysfs has no namespace operations: the VFS answers EPERM where kernfs has no method
    # (mkdir, rmdir, unlink, rename, symlink, link, mknod) and EACCES for O_CREAT of a
    # new name (no ->create).
    @handler
    async def mkdir(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    rmdir = unlink = rename = symlink = link = mknod = mkdir

    @handler
    async def create(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EACCES)

    @handler
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        node = self._node(inode)
        if not isinstance(node, Link):
            raise pyfuse3.FUSEError(errno.EINVAL)
        if node.parent is None:  # removed, still held (its target is forgotten): mdevfs's
            raise pyfuse3.FUSEError(errno.ENOENT)  # answer, where kernfs gives the old path
        return os.fsencode(node.target)

    @handler
    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        node = self._node(inode)
        if not isinstance(node, File):
            raise pyfuse3.FUSEError(errno.EISDIR if isinstance(node, Dir) else errno.EACCES)
        # kernfs_fop_open with KERNFS_ROOT_EXTRA_OPEN_PERM_CHECK: a direction the
        # attribute has no method for is EACCES, even for root (ABI §2.1).
        # The mode counts too: after chmod 0 not even root may open it.
        mode = flags & os.O_ACCMODE
        bits = stat.S_IMODE(node.iattr.mode) if node.iattr is not None else node.op.mode
        if mode in (os.O_RDONLY, os.O_RDWR) and (node.op.show is None or not bits & 0o444):
            raise pyfuse3.FUSEError(errno.EACCES)
        if mode in (os.O_WRONLY, os.O_RDWR) and (node.op.store is None or not bits & 0o222):
            raise pyfuse3.FUSEError(errno.EACCES)
        if node.parent is None:
            raise pyfuse3.FUSEError(errno.ENODEV)
        privileged = getattr(ctx, "uid", 0) == 0
        return pyfuse3.FileInfo(fh=self._new_fh(_Handle(node, privileged)), direct_io=True,
                                keep_cache=False)

    @handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle: _Handle = self._handles[fh]
        if off == 0 or handle.data is None:
            # seq_file: a read from the start calls show() again (poll-and-reread works)
            if self.before is not None:
                await self.before(handle.node, None)
            handle.data = None
        if handle.node.parent is None:
            raise pyfuse3.FUSEError(errno.ENODEV)  # kernfs_seq_start: node removed
        if handle.data is None:
            handle.data = handle.node.read()
            limit = handle.node.op.unprivileged_limit
            if limit is not None and not handle.privileged:
                handle.data = handle.data[:limit]  # pci_read_config: 64 bytes for a user
        return handle.data[off:off + size]

    @handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle: _Handle = self._handles[fh]
        data = bytes(buf)
        if self.before is not None:
            await self.before(handle.node, data)
        # The names the store is known to take away go from the kernel first, found
        # uncached meanwhile, so that they vanish from every view at once.
        names = self.tree.names_removed_by(handle.node, data)
        self._doom(names, 1)
        try:
            if names:
                known = self.known
                await self.forget_names([(n.parent.inode, n.name) for n in names
                                         if n.inode in known and n.parent is not None])
            count = handle.node.write(data)
            # What a store builds lives until a remove takes it apart, which leaves no
            # cycles: keep the collector from rescanning it (at 100k devices a full
            # collection took 0.55 s).
            gc.freeze()
            if self.after_store is not None:
                self.after_store(handle.node)
        finally:
            # whatever the store changed before it failed (an unbind the disk refused to
            # record stays done) is forgotten too
            await self.invalidate_dropped()
            self._doom(names, -1)
        return count

    @handler
    async def release(self, fh: int) -> None:
        self._handles.pop(fh, None)

    @handler
    async def opendir(self, inode: int, ctx: Any) -> int:
        node = self._node(inode)
        if not isinstance(node, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return self._new_fh(_Listing(node))

    @handler
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        """``.`` and ``..``, then the entries as they are now (a rewound descriptor sees
        the changes); a directory that was removed lists nothing more (kernfs).
        Offsets: 1 after ``.``, 2 after ``..``, inode + 2 after an entry, so entries that
        come and go while a listing is under way never shift the rest."""
        listing: _Listing = self._handles[fh]
        directory = listing.node
        if start_id < 1:
            if not pyfuse3.readdir_reply(token, b".", self.entry_attributes(directory), 1):
                return
        if start_id < 2:
            up = directory.parent or directory
            if not pyfuse3.readdir_reply(token, b"..", self.entry_attributes(up), 2):
                return
        if directory.parent is None and directory is not self.tree.root:
            return
        if listing.generation != self.tree.generation:
            # in inode order, as made (a view makes what it lacks first, at the end)
            listing.entries = list(directory.children.values())
            listing.inodes = [n.inode for n in listing.entries]
            listing.generation = self.tree.generation
        entries = listing.entries
        reused = self._fresh_attributes()
        known, held = self.known, self.held
        for i in range(bisect_right(listing.inodes, start_id - 2), len(entries)):
            node = entries[i]
            attr = self.entry_attributes(node, reused)
            if not pyfuse3.readdir_reply(token, os.fsencode(node.name), attr, node.inode + 2):
                break
            known[node.inode] = known.get(node.inode, 0) + 1  # an entry given: one lookup
            held[node.inode] = node

    @handler
    async def releasedir(self, fh: int) -> None:
        self._handles.pop(fh, None)

    @handler
    async def statfs(self, ctx: Any) -> Any:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = PAGE_SIZE
        data.f_namemax = 255
        return data

    @handler
    async def forget(self, inode_list: Any) -> None:
        """The kernel gave back lookups: an inode whose count reaches 0 is gone from its
        cache, and a removed one for good."""
        known = self.known
        for inode, nlookup in inode_list:
            left = known.get(inode, 0) - nlookup
            if left > 0:
                known[inode] = left
            else:
                known.pop(inode, None)
                if inode != ROOT_INODE:
                    self.held.pop(inode, None)


class _Notifier:
    """The thread that has the kernel forget names. invalidate_entry must not run inside a
    handler: the kernel may hold a directory lock that a queued request needs, and only
    the request loop can answer it. So this thread calls it while the handler waits and
    trio serves the others. It is one thread, woken through a queue and answering through
    a pipe: a fifth of the cost of a trio worker thread (12 against 75 µs, pinned)."""

    def __init__(self) -> None:
        self._lock = trio.Lock()
        self._jobs: queue.SimpleQueue[tuple[int, list[tuple[int, str]]]] = queue.SimpleQueue()
        self._done = -1  # the pipe's read end, once the thread runs
        self._thread: threading.Thread | None = None
        self._sent = 0

    async def send(self, entries: list[tuple[int, str]]) -> None:
        async with self._lock:  # one batch at a time: each waits for its own
            if self._done < 0:  # started in the daemon, after any fork
                self._done, done = os.pipe2(os.O_CLOEXEC)
                self._thread = threading.Thread(target=self._run, args=(done,),
                                                name="mdevfs-invalidate", daemon=True)
                self._thread.start()
            self._sent += 1
            self._jobs.put((self._sent, entries))
            # numbered, so that a wait cancelled (at unmount) leaves nothing to mistake
            while True:
                await trio.lowlevel.wait_readable(self._done)
                if int.from_bytes(os.read(self._done, 8), "little") == self._sent:
                    return

    def stop(self) -> None:
        """End the thread (before the session it notifies goes): it finishes the batch it
        is in, which a kernel that is unmounting answers at once."""
        if self._thread is not None:
            self._jobs.put((0, []))
            self._thread.join(timeout=5)

    def _run(self, done: int) -> None:
        while True:
            number, entries = self._jobs.get()
            if number == 0:
                return
            for parent_inode, name in entries:
                try:
                    pyfuse3.invalidate_entry(parent_inode, os.fsencode(name))
                except OSError:
                    pass  # ENOENT: the kernel had not cached that name
                except Exception:  # the waiting handler must still be answered
                    log.exception("invalidate_entry(%d, %r)", parent_inode, name)
            os.write(done, number.to_bytes(8, "little"))


def mount_options(allow_other: bool = False) -> set[str]:
    options = {"fsname=mdevfs", "subtype=mdevfs", "default_permissions"}
    if allow_other:
        options.add("allow_other")
    return options


async def serve(ops: SysfsOperations, mountpoint: str, allow_other: bool = False, *,
                tasks: Sequence[Callable[[], Awaitable[None]]] = ()) -> None:
    """Mount the tree ``ops`` serves at ``mountpoint`` and serve until unmounted or
    terminated; ``tasks`` (e.g. the control socket) run alongside and are cancelled at the
    end."""
    import signal

    log.info("pyfuse3 %s, request loop: %s", getattr(pyfuse3, "__version__", "?"),
             getattr(pyfuse3, "SESSION_LOOP", "stock (a reader pool under a lock)"))
    pyfuse3.init(ops, mountpoint, mount_options(allow_other))
    try:
        async with trio.open_nursery() as nursery:
            async def on_signals() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        log.info("signal %d: unmounting %s", signum, mountpoint)
                        pyfuse3.terminate()
                        return

            nursery.start_soon(on_signals)
            for task in tasks:
                nursery.start_soon(task)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
    finally:
        ops.stop()
        pyfuse3.close(unmount=True)
