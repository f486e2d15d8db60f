"""Mount a topology for a test: in a subprocess, unmounted in every teardown.

    with mounted() as m:
        uuid = m.create("mtty-1")
        assert m.read(f"bus/mdev/devices/{uuid}/mdev_type/name") == "Single port serial\\n"

pyfuse3 serves one mount per process, so the filesystem always runs in a
child (:func:`mdevfs.process.temporary_mount`), forked from this process where it can
be, tied to this process: the context
manager returns once the mount exists, and in ``finally`` unmounts, then
terminates, then kills; if this process dies first, the daemon unmounts itself.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import uuid as uuidlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from . import namespace, process
from .control import Client
from .driver import service_environment

#: the device a FUSE mount needs (a module constant so that a test can pretend it is missing)
FUSE_DEVICE = "/dev/fuse"


class Mount:
    """A live mount: the sysfs root and small helpers around plain file I/O."""

    def __init__(self, root: Path, proc: subprocess.Popen[bytes], log_file: Path) -> None:
        self.root = root
        self.proc = proc
        self.log_file = log_file
        #: the daemon's control socket (set by :func:`mounted`): ``m.control.unplug("mtty")``
        self.control: Client | None = None
        #: bound at /etc/mdevctl.d by :meth:`run`; None gives each run an empty one
        self.mdevctl_dir: Path | None = None
        #: the daemon's uevent hand-over socket (``--uevents``), passed on by :meth:`run`
        self.uevents: Path | None = None
        self._environment: dict[str, str] | None = None

    def path(self, rel: str) -> Path:
        return self.root / rel

    def read(self, rel: str) -> str:
        with open(self.root / rel) as f:
            return f.read()

    def write(self, rel: str, data: str | bytes) -> int:
        """One open(O_WRONLY) + one write(2) + close, as a sysfs client does."""
        raw = data.encode() if isinstance(data, str) else data
        fd = os.open(self.root / rel, os.O_WRONLY)
        try:
            return os.write(fd, raw)
        finally:
            os.close(fd)

    def type_dir(self, type_id: str, parent: str | None = None) -> Path:
        """``class/mdev_bus/<parent>/mdev_supported_types/<type_id>``; the parent is found
        when only one offers the type."""
        if parent is None:
            found = sorted((self.root / "class/mdev_bus").glob(f"*/mdev_supported_types/{type_id}"))
            if len(found) != 1:
                raise LookupError(f"{len(found)} parents offer {type_id}; name one")
            return found[0]
        return self.root / "class/mdev_bus" / parent / "mdev_supported_types" / type_id

    def create(self, type_id: str, uuid: str | None = None, parent: str | None = None) -> str:
        uuid = uuid or str(uuidlib.uuid4())
        self.write(str(self.type_dir(type_id, parent) / "create"), uuid)
        return uuid.lower()

    def remove(self, uuid: str) -> None:
        self.write(f"bus/mdev/devices/{uuid}/remove", "1")

    def devices(self) -> list[str]:
        """The UUIDs in ``bus/mdev/devices``."""
        return sorted(os.listdir(self.root / "bus/mdev/devices"))

    def reset(self) -> None:
        """Back to the topology's initial state in one control request: no devices, no
        faults, every parent plugged, fresh drivers. Raises RuntimeError when the daemon
        died."""
        if not self.alive():
            raise RuntimeError(f"the mdevfs daemon has exited; its log:\n{self.log()}")
        assert self.control is not None, "mounted() gives every mount a control socket"
        self.control.reset()

    def run(self, command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """``command`` in an ``mdevfs run`` namespace showing this mount as /sys.

        Output is captured as text unless ``stdout``/``stderr`` say otherwise;
        ``mdevctl_dir`` and ``uevents`` default to :attr:`mdevctl_dir` and :attr:`uevents`
        (the daemon's events then reach the namespace's libudev listeners). Raises
        :class:`mdevfs.errors.NamespaceError` where no namespace can be made.
        """
        if "stdout" not in kwargs and "stderr" not in kwargs:
            kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("mdevctl_dir", self.mdevctl_dir)
        kwargs.setdefault("uevents", self.uevents)
        if self.control is not None and "env" not in kwargs:
            kwargs["env"] = {**os.environ, **self.environment()}
        return namespace.run(self.root, command, **kwargs)

    def environment(self) -> dict[str, str]:
        """What a process needs to use the services of this mount (NVIDIA's NVML: the
        library's directory in LD_LIBRARY_PATH, the control socket in MDEVFS_CONTROL);
        :meth:`run` sets it."""
        assert self.control is not None, "mounted() gives every mount a control socket"
        if self._environment is None:  # worked out once: the socket never moves
            self._environment = service_environment(os.fspath(self.control.path))
        return dict(self._environment)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None


@contextlib.contextmanager
def mounted(config: str | os.PathLike[str] | None = None, *, args: tuple[str, ...] = (),
            timeout: float | None = None, handle: type[Mount] = Mount,
            state: str | os.PathLike[str] | None = None, verbose: bool = False) -> Iterator[Mount]:
    """Mount ``config`` (default: the embedded topology) in a fresh temporary directory.
    With ``state``, devices are recorded in (and restored from) that file (``--state``).
    ``timeout`` bounds the wait for the mount (default: 10 s, more for a large state
    file); ``verbose`` makes the daemon log every request (``mount.log()``).

    Yields a ``handle`` (a :class:`Mount` or subclass). When the mount does not come up,
    raises the daemon's error (a TopologyError or StateError for a bad file), or a
    :class:`mdevfs.errors.MountError` (a RuntimeError) with its log:
    :class:`~mdevfs.errors.MountNotPermitted` where mounting FUSE is not permitted.
    """
    with process.temporary_mount(config, args=args, state=state, timeout=timeout,
                                 verbose=verbose, entry=_daemon_entry()) as launched:
        mount = handle(launched.root, launched.proc, launched.log_file)
        mount.control = Client(launched.control)
        mount.uevents = launched.root.parent / "uevents.sock"
        yield mount


def _daemon_entry() -> process.Entry | None:
    """What :func:`mounted` forks the daemon into (:func:`mdevfs.process.start`): the first
    mount imports the daemon's modules into this process, every later one starts in a
    tenth of the time. None, for a new Python each time, while this process runs
    threads, which a fork would copy in the middle of whatever they hold."""
    if threading.active_count() > 1:
        return None
    from . import daemon

    return daemon.preloaded()


def unavailable() -> str | None:
    """Why this process cannot mount FUSE here, or None when nothing visible stops it."""
    if not os.path.exists(FUSE_DEVICE):
        return (f"{FUSE_DEVICE} is missing: load the fuse module (modprobe fuse) or give "
                f"the container --device /dev/fuse")
    if not os.access(FUSE_DEVICE, os.R_OK | os.W_OK):
        return f"{FUSE_DEVICE} is not readable and writable by uid {os.geteuid()}"
    if os.geteuid() != 0:
        helper = shutil.which("fusermount3")
        if helper is None:
            return "a non-root user mounts through fusermount3, which is missing (Debian: fuse3)"
        if not os.stat(helper).st_mode & 0o4000:
            return f"a non-root user mounts through {helper}, which is not setuid root"
    return None


#: unmount and end a daemon process, whatever state it is in
stop_daemon = process.stop
