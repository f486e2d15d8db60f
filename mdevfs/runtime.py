"""Where a daemon's files go: the private per-user runtime directory, and the names in it.

The default control socket and log file of a mount live in a directory only its user may
enter (:func:`runtime_dir`), never beside the mount in a shared directory; a log file named
by the user is opened with O_NOFOLLOW and must be a regular file (:func:`open_log`).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import tempfile
from pathlib import Path

from .errors import UsageError


def runtime_dir() -> Path:
    """A directory only this user may enter, for control sockets, logs and the records
    of running ``mdevfs run``s: ``$XDG_RUNTIME_DIR/mdevfs``, else ``/run/mdevfs`` for
    root, else ``/run/user/<uid>/mdevfs`` or ``<tmp>/mdevfs-<uid>``. It is created
    0700; one that is another user's, or open to others, is refused (UsageError)."""
    uid = os.geteuid()
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    candidates = []
    if os.path.isabs(xdg) and _private(Path(xdg), uid, must_exist=True):
        candidates.append(Path(xdg) / "mdevfs")
    if uid == 0:
        candidates.append(Path("/run/mdevfs"))
    else:
        if _private(Path(f"/run/user/{uid}"), uid, must_exist=True):
            candidates.append(Path(f"/run/user/{uid}/mdevfs"))
        candidates.append(Path(tempfile.gettempdir()) / f"mdevfs-{uid}")
    path = candidates[0]
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    if not _private(path, uid, must_exist=True):
        st = os.lstat(path)
        raise UsageError(f"runtime directory {path} is not private to uid {uid} (owner uid "
                         f"{st.st_uid}, mode {stat.filemode(st.st_mode)}); remove it, or set "
                         f"XDG_RUNTIME_DIR to a directory of yours")
    return path


def _private(path: Path, uid: int, must_exist: bool) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return not must_exist
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077


def _mount_key(mountpoint: Path) -> str:
    """``<name>-<hash>``: the mountpoint's last name (for people) and a hash of its whole
    path (to be unique), short enough for a socket path (108 bytes)."""
    path = os.path.abspath(mountpoint)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(path))[:32] or "root"
    return f"{name}-{hashlib.sha256(os.fsencode(path)).hexdigest()[:12]}"


def default_control(mountpoint: str | os.PathLike[str]) -> Path:
    """Where ``mdevfs mount DIR`` puts its control socket unless told: the runtime dir."""
    return runtime_dir() / f"{_mount_key(Path(mountpoint))}.ctl"


def default_log(mountpoint: str | os.PathLike[str]) -> Path:
    """Where a detached daemon logs unless told: the runtime dir."""
    return runtime_dir() / f"{_mount_key(Path(mountpoint))}.log"


def open_log(path: Path) -> int:
    """A descriptor appending to ``path``: created 0600 if missing, never through a
    symlink, never a FIFO or device (which could hang the daemon or write elsewhere).
    Raises UsageError naming the file and the problem."""
    flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
             | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        try:  # say why in words (a sticky directory may answer EACCES for a link)
            mode = os.lstat(path).st_mode
        except OSError:
            mode = 0
        why = ("it is a symbolic link; give the file itself" if stat.S_ISLNK(mode)
               else "it is a FIFO without a reader" if exc.errno == errno.ENXIO
               else exc.strerror)
        raise UsageError(f"log file {path}: {why}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"log file {path}: not a regular file")
    os.set_blocking(fd, True)
    return fd
