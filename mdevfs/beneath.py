"""Files from other people: read a tree without leaving it, write outputs without following links.

mdevfs runs as root and is handed trees, recordings and output paths by users who may not be
root. Everything here treats them as hostile:

* :class:`Root` reads below a directory descriptor. Every path is resolved by the kernel with
  ``openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)``: a symlink may lead anywhere inside the
  root, and a step out of it (an absolute target, a ``..`` above the root, a ``/proc`` magic
  link) fails with EXDEV, whatever the tree does meanwhile. Nothing outside is ever read.
* :func:`write_new` creates a file as a fresh inode (``O_CREAT | O_EXCL | O_NOFOLLOW`` beside
  the target) and renames it into place: a planted symlink is replaced, never followed.
* :class:`NewTree` builds a directory tree in a private temporary directory, resolving every
  path with ``RESOLVE_NO_SYMLINKS`` (no link it wrote is ever walked through), sets modes on
  descriptors (never through a link), and renames it into place.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import posixpath
import shutil
import stat
import struct
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

_SYS_OPENAT2 = 437  # the same number on every Linux architecture
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """``openat2(2)``: a descriptor of ``path`` below ``dir_fd``; raises OSError."""
    how = struct.pack("QQQ", flags | os.O_CLOEXEC, mode, resolve)
    fd = _libc.syscall(_SYS_OPENAT2, ctypes.c_int(dir_fd), os.fsencode(path or "."),
                       ctypes.c_char_p(how), ctypes.c_size_t(len(how)))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return fd


class Root:
    """A directory tree read from below its root: no path ever resolves outside it.

    Paths are relative to the root (``"class/mdev_bus/mtty"``). A path whose walk leaves the
    root fails with EXDEV; a loop with ELOOP; a FIFO or device is never opened for reading
    (ENXIO-free: regular files only, else EINVAL). The last directories walked stay open and
    names are resolved below them, just as beneath: below a directory only its own subtree is
    reachable, which was inside the root when it was walked, even if it has moved since.
    """

    #: how many directories stay open for the names below them (a recording reads a
    #: device's dozen files from one; each walk from the root costs a FUSE LOOKUP per step)
    DIRECTORIES = 16

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._real = os.readlink(f"/proc/self/fd/{self.fd}")
        self._dirs: OrderedDict[str, int] = OrderedDict()

    def close(self) -> None:
        while self._dirs:
            os.close(self._dirs.popitem()[1])
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _directory(self, rel: str) -> int:
        """A descriptor (O_PATH) of the directory at ``rel``, resolved beneath the root once
        and kept among the last :attr:`DIRECTORIES` used."""
        fd = self._dirs.pop(rel, None)
        if fd is None:
            fd = openat2(self.fd, rel, os.O_PATH | os.O_DIRECTORY,
                         RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
            if len(self._dirs) >= self.DIRECTORIES:
                os.close(self._dirs.popitem(last=False)[1])
        self._dirs[rel] = fd
        return fd

    def _open(self, rel: str, flags: int) -> int:
        """``rel`` opened beneath its directory when that is enough, else beneath the root: a
        name whose link leads elsewhere in the tree is EXDEV below its directory (never
        outside it), and is then resolved again from the root, where the answer is final."""
        parent, _, name = rel.rpartition("/")
        if parent and name not in ("", ".", ".."):
            try:
                return openat2(self._directory(parent), name, flags,
                               RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
        return openat2(self.fd, rel, flags, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)

    @contextlib.contextmanager
    def _opened(self, rel: str, flags: int, follow: bool = True) -> Iterator[int]:
        flags |= 0 if follow else os.O_NOFOLLOW
        fd = self._open(rel, flags)
        try:
            yield fd
        finally:
            os.close(fd)

    def read(self, rel: str, limit: int = 65536) -> bytes:
        """At most ``limit`` bytes of the regular file at ``rel`` (links followed inside)."""
        with self._opened(rel, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY) as fd:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), rel)
            if not stat.S_ISREG(mode):
                raise OSError(errno.EINVAL, "not a regular file", rel)
            return os.read(fd, limit)

    def listdir(self, rel: str = "") -> list[str]:
        """The names in the directory at ``rel``, sorted (links followed inside)."""
        with self._opened(rel, os.O_RDONLY | os.O_DIRECTORY) as fd:
            return sorted(os.listdir(fd))

    def lstat(self, rel: str) -> os.stat_result:
        """The entry at ``rel`` itself (a link is not followed; its directories are)."""
        with self._opened(rel, os.O_PATH, follow=False) as fd:
            return os.fstat(fd)

    def stat(self, rel: str) -> os.stat_result:
        with self._opened(rel, os.O_PATH) as fd:
            return os.fstat(fd)

    def exists(self, rel: str) -> bool:
        try:
            self.stat(rel)
        except OSError:
            return False
        return True

    def is_link(self, rel: str) -> bool:
        try:
            return stat.S_ISLNK(self.lstat(rel).st_mode)
        except OSError:
            return False

    def is_dir(self, rel: str, follow: bool = True) -> bool:
        try:
            st = self.stat(rel) if follow else self.lstat(rel)
        except OSError:
            return False
        return stat.S_ISDIR(st.st_mode)

    def readlink(self, rel: str) -> str:
        """The text of the link at ``rel`` (its directories resolved inside the root)."""
        parent, _, name = rel.rpartition("/")
        with self._opened(parent, os.O_RDONLY | os.O_DIRECTORY) as fd:
            return os.readlink(name, dir_fd=fd)

    def resolve(self, rel: str) -> str:
        """Where ``rel`` leads, every link followed, as a path from the root ("" for the
        root itself); OSError (EXDEV) when that is outside. A link to nothing (as in a
        umockdev recording, which keeps links but not all they point to) resolves as
        realpath(3) does: its directory by the kernel, its text by hand."""
        try:
            return self._real_rel(rel)
        except FileNotFoundError:
            if not self.is_link(rel):
                raise
        parent, _, _ = rel.rpartition("/")
        target = self.readlink(rel)
        if target.startswith("/"):
            raise OSError(errno.EXDEV, "leads outside the root", rel)
        joined = posixpath.normpath(posixpath.join(self._real_rel(parent), target))
        if joined == ".." or joined.startswith("../"):
            raise OSError(errno.EXDEV, "leads outside the root", rel)
        return "" if joined == "." else joined

    def _real_rel(self, rel: str) -> str:
        with self._opened(rel, os.O_PATH) as fd:
            real = os.readlink(f"/proc/self/fd/{fd}")
        if real == self._real:
            return ""
        if not real.startswith(self._real.rstrip("/") + "/"):
            raise OSError(errno.EXDEV, "leads outside the root", rel)  # a moved mount
        return real[len(self._real.rstrip("/")) + 1:]


def read_regular(path: str | os.PathLike[str], limit: int = 256 << 20,
                 nofollow: bool = False) -> bytes:
    """The bytes of the regular file the user named at ``path`` (at most ``limit``): a FIFO
    or device is refused (EINVAL) without blocking, never read; with ``nofollow``, a
    symlink is refused (ELOOP) too."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
                 | (os.O_NOFOLLOW if nofollow else 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        chunks, size = [], 0
        while size < limit and (chunk := os.read(fd, min(1 << 20, limit - size))):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_new(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` as a new file renamed into place: a symlink or FIFO planted
    at ``path`` is replaced, never followed or opened; a directory there is refused."""
    path = Path(os.path.abspath(path))
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # O_EXCL, 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode & ~umask())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def umask() -> int:
    """The process's umask, read without setting it (os.umask would change it for every
    thread for a moment)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    raise OSError(errno.ENOSYS, "no Umask in /proc/self/status")


class NewTree:
    """A tree written into a fresh private directory beside ``dest``, renamed to ``dest`` by
    :meth:`commit`. ``dest`` must not exist, or be an empty directory of this user's;
    nothing another user planted is ever walked through or written."""

    def __init__(self, dest: str | os.PathLike[str]) -> None:
        self.dest = Path(os.path.abspath(dest))
        try:
            st = os.lstat(self.dest)
        except FileNotFoundError:
            st = None
        if st is not None and (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()
                               or os.listdir(self.dest)):
            raise FileExistsError(errno.EEXIST, "exists, and is not an empty directory of "
                                  "this user's", str(self.dest))
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.", dir=self.dest.parent))
        self.fd = os.open(self.tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._modes: list[tuple[str, int]] = []

    def _dir_fd(self, rel: str) -> int:
        return openat2(self.fd, rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                       RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)

    def makedirs(self, rel: str) -> None:
        done = ""
        for part in filter(None, rel.split("/")):
            if part in (".", ".."):
                raise OSError(errno.EINVAL, "a path of plain names only", rel)
            fd = self._dir_fd(done)
            try:
                os.mkdir(part, 0o700, dir_fd=fd)
            except FileExistsError:
                pass
            finally:
                os.close(fd)
            done = f"{done}/{part}".lstrip("/")

    def add(self, rel: str, kind: str, mode: int = 0o644, content: bytes = b"",
            target: str = "") -> None:
        """A directory, a file or a link at ``rel``; its parents are made as needed. Modes
        are set by :meth:`commit`, last, so that read-only directories can be filled."""
        parent, _, name = rel.strip("/").rpartition("/")
        if not name or name in (".", ".."):
            raise OSError(errno.EINVAL, "a path of plain names only", rel)
        self.makedirs(parent)
        fd = self._dir_fd(parent)
        try:
            if kind == "dir":
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=fd)
            elif kind == "link":
                os.symlink(target, name, dir_fd=fd)
                return
            else:
                file = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                               | os.O_CLOEXEC, 0o600, dir_fd=fd)
                with os.fdopen(file, "wb") as f:
                    f.write(content)
        finally:
            os.close(fd)
        self._modes.append((rel.strip("/"), mode))

    def commit(self, mode: int = 0o755) -> None:
        """Set every mode (deepest first, on descriptors opened without following links),
        then rename the tree to ``dest``."""
        for rel, bits in reversed(self._modes):
            parent, _, name = rel.rpartition("/")
            fd = self._dir_fd(parent)
            try:  # a file or directory of ours, 0600 or 0700 until now: readable
                entry = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                                dir_fd=fd)
            finally:
                os.close(fd)
            try:
                os.fchmod(entry, bits)
            finally:
                os.close(entry)
        os.fchmod(self.fd, mode)
        os.close(self.fd)
        self.fd = -1
        os.rename(self.tmp, self.dest)  # replaces an empty directory of ours, if one is there

    def discard(self) -> None:
        """Remove the temporary tree (a failed write); nothing reaches ``dest``."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        shutil.rmtree(self.tmp, ignore_errors=True)
