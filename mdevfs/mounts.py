"""Mountpoints: which are mounted, whether one answers, and the one way mdevfs unmounts.

A FUSE mount whose daemon is stopped never answers, and a process waiting on it can only be
killed: :func:`probe` looks in a child process that is killed after a timeout.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from .errors import MountError, UsageError

log = logging.getLogger("mdevfs")

#: seconds for a mount to answer a probe
PROBE_TIMEOUT = 3.0


def mountpoints() -> set[str]:
    """The mount points of this mount namespace (/proc/self/mounts, octal escapes undone)."""
    with open("/proc/self/mounts") as f:
        return {_unescape(line.split()[1]) for line in f}


def fstype(directory: str | os.PathLike[str]) -> str | None:
    """The type of the filesystem mounted last on ``directory`` (``fuse.mdevfs`` for an
    mdevfs mount, dead or alive), from /proc/self/mountinfo; None if nothing is."""
    want = os.path.abspath(directory)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, rest = line.partition(" - ")
            point = _unescape(fields.split()[4])
            if point == want:
                found = rest.split()[0]
    return found


def is_mdevfs(directory: str | os.PathLike[str]) -> bool:
    """Whether an mdevfs FUSE mount is on ``directory``: the only kind mdevfs unmounts when
    it stops a daemon, so that a path another user chose never unmounts anything else."""
    return fstype(directory) == "fuse.mdevfs"


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def probe(directory: Path, timeout: float = PROBE_TIMEOUT) -> int:
    """List ``directory`` in a child process: 0 when it answers, else the errno. A FUSE
    mount whose daemon is stopped never answers, and a process waiting on it can only be
    killed, so the child is killed after ``timeout`` seconds: MountError then."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.listdir(directory)  # a readdir always reaches the daemon; a stat may be cached
            code = 0
        except OSError as exc:
            code = exc.errno or errno.EIO
        os._exit(code)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)  # FUSE requests wait killably
    os.waitpid(pid, 0)
    raise MountError(f"{directory}: the filesystem mounted there does not answer within "
                     f"{timeout:.0f} s (is its daemon stopped?); `mdevfs umount --lazy "
                     f"{directory}` detaches it")


def check_mountpoint(directory: Path) -> None:
    """Refuse a missing or non-empty directory, or one a live daemon serves; unmount one
    left by a killed mdevfs daemon ("Transport endpoint is not connected"), and only that."""
    if not os.path.exists("/dev/fuse"):
        raise UsageError("/dev/fuse is missing: load the fuse module or give the container "
                         "--device /dev/fuse")
    if str(directory) in mountpoints():
        code = probe(directory)
        if code == 0:
            raise UsageError(f"{directory}: something is already mounted there")
        if code != errno.ENOTCONN:
            raise UsageError(f"{directory}: {os.strerror(code)}")
        if not is_mdevfs(directory):
            raise UsageError(f"{directory}: a dead mount of {fstype(directory)} is there; "
                             "mdevfs unmounts only its own")
        log.warning("%s was left mounted by a dead daemon (%s); unmounting it",
                    directory, os.strerror(code))
        unmount(directory, lazy=True)
    if not directory.is_dir():
        raise UsageError(f"{directory}: no such directory" if not directory.exists()
                         else f"{directory}: not a directory")
    if any(directory.iterdir()):
        raise UsageError(f"{directory}: not empty; mdevfs mounts only on an empty directory")


def unmount(directory: Path, lazy: bool = False, check: bool = True) -> bool:
    """``fusermount3 -u [-z] directory``: the one place mdevfs unmounts. True when it did;
    with ``check``, a refusal is a UsageError with fusermount3's words."""
    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(directory)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if result.returncode != 0 and check:
        raise UsageError(f"cannot unmount {directory}: {result.stderr.strip()}")
    return result.returncode == 0
