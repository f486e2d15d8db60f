"""A per-user service that forks daemons: ``mdevfs run`` without the daemon's imports.

A daemon's start is mostly Python importing trio, pyfuse3 and the drivers: 130 of the
250 ms of ``mdevfs run -- true``. The forker imports them once and stays, listening in the
user's private runtime directory (:func:`mdevfs.runtime.runtime_dir`); ``mdevfs run`` asks
it for a daemon over that socket, handing over the daemon's log and readiness sockets, and
imports nothing of the daemon itself. The first run starts the forker (and forks its own
daemon as before); the forker leaves after :data:`IDLE` seconds without a request.

Safety:

* The socket lies in a directory only its user may enter, and the forker answers only a
  peer of its own uid (``SO_PEERCRED``). A request carries what the daemon's own command
  line would (:func:`mdevfs.process.daemon_argv`), with the caller's environment and umask:
  nothing the caller could not run itself.
* The socket's name carries a fingerprint of what the forker imported (the interpreter and
  its venv, ``PYTHONPATH``, every file of ``mdevfs`` and its drivers, the libraries, by
  size and time): edited or reinstalled code gets a fresh forker, never a stale one. A third
  party's driver is imported by each daemon, never by the forker.
* A caller in another mount or user namespace than the forker's (``unshare``, a
  container) would not see the daemon's mount: the forker, which reads the caller's
  namespaces from /proc by its pid, refuses, and the caller forks its daemon itself.
  So does everything when ``MDEVFS_FORKER=off``.
* A daemon gets the caller's environment, umask and signal dispositions, but the forker's
  resource limits and cgroup: a run that must have its own sets ``MDEVFS_FORKER=off``.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .beneath import umask
from .runtime import runtime_dir

#: seconds without a request after which the forker leaves
IDLE = 120.0
#: what a request or its reply may hold, at most
_LIMIT = 1 << 20
_DRIVERS = "mdevfs_vendors"


def disabled() -> bool:
    return os.environ.get("MDEVFS_FORKER", "").lower() in ("off", "0", "no")


#: the libraries a forker imports beside mdevfs (what a daemon would import afresh)
_LIBRARIES = ("pyfuse3", "trio", "attrs", "attr", "tomli_w")


def fingerprint() -> str:
    """What a forker has imported, as it is on disk now, hashed: the interpreter and its
    environment (``sys.prefix``, a venv's), ``PYTHONPATH``, the dynamic loader's preloads,
    every file of mdevfs and its shipped drivers and the file of each library it imports,
    each by name, size and modification time. A run whose fingerprint differs gets another
    forker."""
    digest = hashlib.sha256("\0".join([
        os.path.realpath(sys.executable), sys.version, sys.prefix,
        *(os.environ.get(name, "") for name in ("PYTHONPATH", "LD_PRELOAD", "LD_LIBRARY_PATH"))
    ]).encode())
    files = [spec.origin for spec in map(_spec, _LIBRARIES) if spec and spec.origin]
    for directory in (Path(__file__).parent, _drivers_dir()):
        if directory is not None:
            with os.scandir(directory) as entries:
                files += sorted(e.path for e in entries if e.is_file())
    for path in files:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            digest.update(f"\0{path}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _spec(name: str) -> importlib.machinery.ModuleSpec | None:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _drivers_dir() -> Path | None:
    spec = _spec(_DRIVERS)
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def socket_path() -> Path:
    return runtime_dir() / f"forker-{fingerprint()}.sock"


def _namespaces(pid: int | str = "self") -> list[str]:
    """The mount and user namespaces of process ``pid``; OSError if they cannot be read."""
    return [os.readlink(f"/proc/{pid}/ns/{ns}") for ns in ("mnt", "user")]


# --- the caller's side ---------------------------------------------------------------------

class Forker:
    """A connection to the running forker of this user and this code."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def connect(cls) -> Forker | None:
        """The forker, if one runs for this code; else None (and, unless disabled, one is
        started for the next caller)."""
        if disabled():
            return None
        path = socket_path()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5.0)
        try:
            sock.connect(os.fspath(path))
        except OSError:
            sock.close()
            _start(path)
            return None
        return cls(sock)

    def fork(self, argv: Sequence[str], log_fd: int, ready_fd: int,
             new_session: bool) -> tuple[int, str | None] | None:
        """A daemon running ``argv`` (as :func:`mdevfs.process.daemon_argv` builds it), with
        this process's environment and umask: (pid, start time), or None if the forker
        cannot (another namespace, or it failed: the caller forks its own)."""
        request = {"argv": list(argv), "env": dict(os.environ), "umask": umask(),
                   "new_session": new_session}
        try:
            with self.sock:
                socket.send_fds(self.sock, [json.dumps(request).encode()], [log_fd, ready_fd])
                self.sock.shutdown(socket.SHUT_WR)
                reply = json.loads(_read_all(self.sock))
        except (OSError, ValueError):
            return None
        if not isinstance(reply, dict) or not isinstance(reply.get("pid"), int):
            return None
        return reply["pid"], reply.get("start")


def _read_all(sock: socket.socket) -> bytes:
    chunks, size = [], 0
    while chunk := sock.recv(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > _LIMIT:
            raise ValueError("too long")
    return b"".join(chunks)


def _start(path: Path) -> None:
    """Start a forker in the background (``python -P -m mdevfs.forker`` in ``/``, as a
    daemon runs: nothing of the caller's directory importable), detached from the caller:
    its own session, no descriptor of the caller's."""
    with contextlib.suppress(OSError):
        subprocess.Popen([sys.executable, "-P", "-m", "mdevfs.forker", os.fspath(path)],
                         cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)


# --- the forker ----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:  # pragma: no cover - python -m mdevfs.forker
    """Import what every daemon imports, listen at the given path, fork a daemon per
    request; leave after :data:`IDLE` seconds without one, or once the socket is no longer
    ours (another forker took the name, or the runtime directory went)."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0])
    if path.parent != runtime_dir() or not path.name.startswith("forker-"):
        return 2
    from . import daemon

    entry = daemon.preloaded()
    listener = _listen(path)
    if listener is None:
        return 0  # another forker has it
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the daemons are reaped as they end
    import gc

    gc.freeze()  # the collector leaves the shared pages alone in the daemons
    ours = os.stat(path).st_ino
    last = time.monotonic()
    with listener:
        while time.monotonic() - last < _idle():
            if not select.select([listener], [], [], 1.0)[0]:
                try:
                    if os.stat(path).st_ino != ours:
                        return 0
                except OSError:
                    return 0
                continue
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                with conn:
                    _serve(conn, entry)
            last = time.monotonic()
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == ours:
            path.unlink()
    return 0


def _idle() -> float:
    try:
        return float(os.environ.get("MDEVFS_FORKER_IDLE", IDLE))
    except ValueError:
        return IDLE


def _listen(path: Path) -> socket.socket | None:
    """A socket listening at ``path``, 0600 (:func:`mdevfs.control.bind`: a stale one is
    replaced); None if a live forker has it or something else is there."""
    from .control import bind

    try:
        return bind(path)
    except OSError:
        return None


def _serve(conn: socket.socket, entry: object) -> None:
    """One request: a daemon forked, its pid answered; or an error answered."""
    conn.settimeout(5.0)
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    peer, uid, _gid = struct.unpack("3i", creds)
    fds: list[int] = []
    pid = None
    try:
        if uid != os.geteuid():
            raise ValueError(f"uid {uid} is not this forker's")
        # the caller's own namespaces, as the kernel says them, not as it says
        if _namespaces(peer) != _namespaces():
            raise ValueError("the caller is in another namespace")
        msg, fds, _flags, _addr = socket.recv_fds(conn, _LIMIT, 2)
        more = _read_all(conn)
        request = json.loads(msg + more)
        argv, env, umask = request["argv"], request["env"], request["umask"]
        if (len(fds) != 2 or not isinstance(argv, list) or not all(isinstance(a, str) for a in argv)
                or not isinstance(env, dict) or not isinstance(umask, int)
                or argv[1:4] != ["-P", "-m", "mdevfs.daemon"] or "--ready-fd" not in argv[:-1]):
            raise ValueError("a malformed request")
        argv[argv.index("--ready-fd") + 1] = str(fds[1])  # its number here, not the caller's
        pid = _fork(entry, argv, env, umask, fds[0], fds[1], bool(request.get("new_session")))
        from .process import start_time

        reply: dict[str, object] = {"pid": pid, "start": start_time(pid)}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reply = {"error": str(exc)}
    finally:
        for fd in fds:
            os.close(fd)
    try:
        conn.sendall(json.dumps(reply).encode())
    except OSError:
        if pid is not None:  # the caller gave up (and forks its own): this one must not stay
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _fork(entry: object, argv: list[str], env: dict[str, str], umask: int, log_fd: int,
          ready_fd: int, new_session: bool) -> int:
    from .process import fork_daemon

    def run(args: list[str]) -> int:
        # a daemon's signals as a new Python's, whatever the forker was started with
        for sig in (signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
        os.umask(umask & 0o777)
        return entry(args)  # type: ignore[operator, no-any-return]

    return fork_daemon(run, argv, log_fd, ready_fd, new_session)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
