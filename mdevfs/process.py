"""The daemon process: where its files go, its argv, start, readiness, stop, and the
mountpoint checks before it mounts. ``mdevfs mount``, ``mdevfs run``,
:func:`mdevfs.testing.mounted` and the pytest plugin all start daemons through
:func:`start`; nothing else builds a daemon's command line.

    daemon = start(Path("/tmp/x/sys"), control=Path("/tmp/x/ctl"), log=Path("/tmp/x/log"))
    try:
        ...                                   # the mount answers
    finally:
        daemon.stop()                         # unmounted, the process gone

**Immune to the current directory.** The daemon runs as ``python -P -m mdevfs`` with
``/`` as its working directory, so a ``mdevfs/`` folder or an ``attrs.py`` where the
caller stands is never imported (as root, that would run the planted code).

**Readiness.** The daemon gets one end of a socket pair (``--ready-fd``). It writes one
JSON line: ``{"ready": true}`` once the kernel mount exists, or ``{"error": MESSAGE,
"kind": CLASS}`` when it cannot mount; :func:`start` re-raises the error as that class
of :mod:`mdevfs.errors`. A daemon that says nothing within the timeout is killed.
With ``stop_with_client`` the daemon unmounts when the other end closes, which the
kernel does when the starting process dies, even by ``kill -9``.

**Files that root creates.** The default control socket and log file live in a
private per-user runtime directory (:func:`runtime_dir`), never beside the mount in
a shared directory; a log file named by the user is opened with O_NOFOLLOW and must
be a regular file (:func:`open_log`).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .errors import MdevfsError, MountError, MountNotPermitted, UsageError, by_name

log = logging.getLogger("mdevfs")

#: seconds for a daemon to mount, and for a mount to answer a probe
READY_TIMEOUT = 10.0
PROBE_TIMEOUT = 3.0
#: seconds more per MiB of state file to restore (100,000 devices took 14 s to mount)
READY_PER_STATE_MIB = 2.0


def ready_timeout(state: str | os.PathLike[str] | None = None) -> float:
    """The default wait for a daemon to mount: READY_TIMEOUT, plus READY_PER_STATE_MIB for
    each MiB of the state file it restores (``--ready-timeout`` overrides it)."""
    try:
        size = os.path.getsize(state) if state is not None else 0
    except OSError:
        size = 0  # a missing file is a new one; a bad one fails before it matters
    return READY_TIMEOUT + READY_PER_STATE_MIB * size / 2**20


# --- where files go -----------------------------------------------------------------------

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


# --- the mountpoint -----------------------------------------------------------------------

def mountpoints() -> set[str]:
    """The mount points of this mount namespace (/proc/self/mounts, octal escapes undone)."""
    with open("/proc/self/mounts") as f:
        fields = [line.split()[1] for line in f]
    return {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), p) for p in fields}


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
    left by a killed daemon ("Transport endpoint is not connected")."""
    if not os.path.exists("/dev/fuse"):
        raise UsageError("/dev/fuse is missing: load the fuse module or give the container "
                         "--device /dev/fuse")
    if str(directory) in mountpoints():
        code = probe(directory)
        if code == 0:
            raise UsageError(f"{directory}: something is already mounted there")
        if code != errno.ENOTCONN:
            raise UsageError(f"{directory}: {os.strerror(code)}")
        log.warning("%s was left mounted by a dead daemon (%s); unmounting it",
                    directory, os.strerror(code))
        unmount(directory, lazy=True)
    if not directory.is_dir():
        raise UsageError(f"{directory}: no such directory" if not directory.exists()
                         else f"{directory}: not a directory")
    if any(directory.iterdir()):
        raise UsageError(f"{directory}: not empty; mdevfs mounts only on an empty directory")


def unmount(directory: Path, lazy: bool = False) -> None:
    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(directory)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise UsageError(f"cannot unmount {directory}: {result.stderr.strip()}")


# --- starting and stopping ----------------------------------------------------------------

def daemon_argv(directory: Path, *, control: Path, ready_fd: int, config: str | None = None,
                state: str | None = None, uevents: Path | None = None,
                allow_other: bool = False, stop_with_client: bool = False,
                extra: Sequence[str] = (), verbose: bool = False) -> list[str]:
    """The daemon's command line; every path absolute, as it runs in ``/``. ``verbose``
    logs at debug level, with a line for every request (:mod:`mdevfs.trace`)."""
    argv = [sys.executable, "-P", "-m", "mdevfs", *(["--debug"] if verbose else []),
            "mount", "--foreground",
            "--control", os.path.abspath(control), "--ready-fd", str(ready_fd)]
    if config is not None:
        argv += ["--config", os.path.abspath(config)]
    if state is not None:
        argv += ["--state", os.path.abspath(state)]
    if uevents is not None:
        argv += ["--uevents", os.path.abspath(uevents)]
    if allow_other:
        argv.append("--allow-other")
    if stop_with_client:
        argv.append("--stop-with-client")
    return [*argv, *extra, os.path.abspath(directory)]


def fork_daemon(entry: Callable[[list[str]], int], argv: Sequence[str], log_fd: int,
                keep_fd: int, new_session: bool) -> int:
    """Fork a daemon running ``entry(argv[4:])`` (``argv`` as :func:`daemon_argv` builds it,
    ``python -P -m mdevfs …``) as that command line would: in ``/``, nothing of the
    caller's directory importable, stdin from /dev/null, stdout and stderr to ``log_fd``,
    no descriptor of this process but ``keep_fd`` (its readiness socket). Returns its pid."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()  # or the child writes what we had buffered a second time
    try:
        here: str | None = os.path.normpath(os.getcwd())
    except OSError:  # removed: nothing there to import
        here = None
    pid = os.fork()
    if pid != 0:
        return pid
    code = 1  # pragma: no cover - runs in the child
    try:
        if new_session:
            os.setsid()
        # as -P: neither the caller's directory nor a path relative to it (which would
        # mean another directory in /) is importable
        sys.path[:] = [p for p in sys.path if os.path.isabs(p) and os.path.normpath(p) != here]
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDONLY)
        for fd, to in ((null, 0), (log_fd, 1), (log_fd, 2)):
            os.dup2(fd, to)
        os.closerange(3, keep_fd)
        os.closerange(keep_fd + 1, os.sysconf("SC_OPEN_MAX"))
        # The caller's streams and log handlers may be anything (pytest captures both):
        # the daemon's are its descriptors 1 and 2, the log file.
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        for handler in logging.root.handlers[:]:
            logging.root.removeHandler(handler)
        code = entry(list(argv[argv.index("-m") + 2:]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


class Forked:
    """A child forked by :func:`fork_daemon`: the part of :class:`subprocess.Popen` that
    :class:`Daemon` and :func:`stop` use."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._reap(os.WNOHANG if deadline is not None else 0) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
            time.sleep(0.005)
        assert self.returncode is not None
        return self.returncode

    def _reap(self, flags: int) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, flags)
            except ChildProcessError:  # reaped elsewhere: it is gone all the same
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Daemon:
    """A started daemon: its process, mountpoint, control socket and log."""

    def __init__(self, root: Path, proc: subprocess.Popen[bytes] | Forked, control: Path,
                 log_file: Path, link: socket.socket | None) -> None:
        self.root = root
        self.proc = proc
        self.control = control
        self.log_file = log_file
        #: our end of the readiness socket, held while the daemon should live
        self.link = link

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError as exc:
            return f"(its log {self.log_file} cannot be read: {exc.strerror})"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Unmount, then wait; terminate and kill only if the daemon lingers; lazy-unmount
        last. Never waits more than a few seconds at each step."""
        if self.link is not None:
            self.link.close()
            self.link = None
        stop(self.root, self.proc)


def stop(root: Path, proc: subprocess.Popen[bytes] | Forked) -> None:
    """Unmount ``root`` and end ``proc``, its daemon, whatever state it is in."""
    if root.as_posix() in mountpoints() or proc.poll() is None:
        subprocess.run(["fusermount3", "-u", str(root)], capture_output=True, timeout=30)
    for end in (None, proc.terminate, proc.kill):
        if end is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a stopped daemon ends only running
            end()
        try:
            proc.wait(timeout=5)
            break
        except subprocess.TimeoutExpired:
            continue
    if root.as_posix() in mountpoints():
        subprocess.run(["fusermount3", "-u", "-z", str(root)], capture_output=True, timeout=30)


def start(root: Path, *, control: Path, log_file: Path, config: str | None = None,
          state: str | None = None, uevents: Path | None = None, allow_other: bool = False,
          stop_with_client: bool = False, extra: Sequence[str] = (),
          timeout: float | None = None, verbose: bool = False,
          progress: Callable[[float], None] | None = None,
          entry: Callable[[list[str]], int] | None = None) -> Daemon:
    """Start a daemon mounting on ``root`` and return once the mount exists. Raises the
    daemon's own error (TopologyError, StateError, UsageError, … from mdevfs.errors),
    MountNotPermitted, or MountError with the tail of its log. ``timeout`` (default:
    :func:`ready_timeout` of the state file) bounds the wait for the mount; ``progress``
    is called with the seconds waited, about once a second, while the daemon is not ready.

    With ``entry`` (:func:`mdevfs.cli.main`, which the caller has imported along with all
    the daemon needs), the daemon is forked from this process and runs ``entry`` on its
    argv instead of starting a new Python: ``mdevfs mount`` and ``mdevfs run`` so save a
    whole interpreter's start-up and imports. Only a process without threads may fork."""
    if timeout is None:
        timeout = ready_timeout(state)
    log_fd = open_log(log_file)
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        argv = daemon_argv(root, control=control, ready_fd=theirs.fileno(), config=config,
                           state=state, uevents=uevents, allow_other=allow_other,
                           stop_with_client=stop_with_client, extra=extra, verbose=verbose)
        if entry is None:
            proc: subprocess.Popen[bytes] | Forked = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                pass_fds=(theirs.fileno(),), cwd="/", start_new_session=not stop_with_client)
        else:
            proc = Forked(fork_daemon(entry, argv, log_fd, theirs.fileno(),
                                      new_session=not stop_with_client))
    finally:
        os.close(log_fd)
        theirs.close()
    daemon = Daemon(root, proc, control, log_file, mine)
    try:
        _wait_ready(daemon, timeout, progress)
    except BaseException:
        # Never unmount here: what is mounted on root may be another daemon's (a second
        # mount on a busy directory fails exactly so). A daemon of ours that did mount and
        # is killed leaves a dead mount, which the next mount there recovers.
        mine.close()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait()
        raise
    if not stop_with_client:
        mine.close()  # a detached daemon outlives us
        daemon.link = None
    return daemon


def _wait_ready(daemon: Daemon, timeout: float,
                progress: Callable[[float], None] | None = None) -> None:
    sock = daemon.link
    assert sock is not None
    buf = b""
    start = time.monotonic()
    deadline = start + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        step = left if progress is None else min(left, 1.0)
        ready = left > 0 and select.select([sock], [], [], step)[0]
        if not ready and progress is not None and time.monotonic() < deadline:
            progress(time.monotonic() - start)
            continue
        if not ready:
            raise MountError(f"the mdevfs daemon did not mount {daemon.root} within "
                             f"{timeout:.0f} s (--ready-timeout SECONDS waits longer); "
                             f"its log {daemon.log_file}:\n"
                             f"{daemon.log()[-2000:]}")
        data = sock.recv(65536)
        if not data:
            status = daemon.proc.wait(timeout=5)
            raise _as_error(f"the mdevfs daemon exited with status {status}", daemon)
        buf += data
    report = json.loads(buf)
    if report.get("ready"):
        return
    cls = by_name(str(report.get("kind")))
    if cls is MountError:
        raise _as_error(str(report.get("error")), daemon)
    raise cls(str(report.get("error")))


def _as_error(message: str, daemon: Daemon) -> MountError:
    text = daemon.log()
    # libfuse and fusermount3 say why only on stderr, in words: this is the one place
    # that reads them, so that callers (the pytest plugin) can test a type.
    cls = MountNotPermitted if "not permitted" in text.lower() else MountError
    return cls(f"{message}; its log {daemon.log_file}:\n{text[-2000:]}")


class Reporter:
    """The daemon's end of the readiness socket (``--ready-fd``)."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.set_inheritable(False)

    def ready(self) -> None:
        self._send({"ready": True})

    def failed(self, exc: MdevfsError) -> None:
        self._send({"error": str(exc), "kind": type(exc).__name__})

    def _send(self, report: dict[str, object]) -> None:
        with contextlib.suppress(OSError):  # the starter died: nobody to tell
            self.sock.sendall((json.dumps(report) + "\n").encode())


# --- mounts in temporary directories, and the leftovers of killed ones ------------------------

@contextlib.contextmanager
def temporary_mount(config: str | os.PathLike[str] | None = None, *,
                    args: Sequence[str] = (), state: str | os.PathLike[str] | None = None,
                    timeout: float | None = None, record: bool = False,
                    verbose: bool = False,
                    entry: Callable[[list[str]], int] | None = None) -> Iterator[Daemon]:
    """A daemon mounting ``config`` in a fresh private temporary directory (``sys``, with
    ``control.sock``, ``uevents.sock`` and ``mdevfs.log`` beside it), tied to this
    process: it unmounts when this process dies. Stopped, and the directory removed, in
    every case. With ``record``, a killed process's leftovers are found and removed by
    the next :func:`clean_leftovers` (``mdevfs run`` records its mounts). ``entry``: as
    for :func:`start`."""
    workdir = Path(tempfile.mkdtemp(prefix="mdevfs-"))
    root = workdir / "sys"
    root.mkdir()
    note = _record(workdir) if record else None
    daemon = None
    try:
        daemon = start(root, control=workdir / "control.sock", log_file=workdir / "mdevfs.log",
                       config=None if config is None else os.fspath(config),
                       state=None if state is None else os.fspath(state),
                       uevents=workdir / "uevents.sock", stop_with_client=True, extra=args,
                       timeout=timeout, verbose=verbose, entry=entry)
        if note is not None:
            _record(workdir, daemon.proc.pid, note)
        yield daemon
    finally:
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if note is not None:
            note.unlink(missing_ok=True)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (/proc/PID/stat field 22), which tells a
    live process from a later one with the same pid; None when there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[19]


def _record(workdir: Path, daemon: int | None = None, note: Path | None = None) -> Path:
    runs = runtime_dir() / "runs"
    runs.mkdir(mode=0o700, exist_ok=True)
    note = note or runs / f"{os.getpid()}.json"
    note.write_text(json.dumps({"pid": os.getpid(), "start": _start_time(os.getpid()),
                                "workdir": str(workdir), "daemon": daemon,
                                "daemon_start": daemon and _start_time(daemon)}))
    return note


def clean_leftovers() -> list[str]:
    """Remove what killed ``mdevfs run``s left: a mount whose daemon still runs (it is
    ended), a dead mount, the temporary directory. Returns one line per run cleaned."""
    runs = runtime_dir() / "runs"
    done = []
    for note in sorted(runs.glob("*.json")) if runs.is_dir() else []:
        try:
            rec = json.loads(note.read_text())
            pid, workdir = int(rec["pid"]), Path(rec["workdir"])
        except (OSError, ValueError, KeyError, TypeError):
            note.unlink(missing_ok=True)
            continue
        if _start_time(pid) == rec.get("start") and rec.get("start") is not None:
            continue  # that run is alive
        daemon = rec.get("daemon")
        if isinstance(daemon, int) and _start_time(daemon) == rec.get("daemon_start"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon, signal.SIGCONT)
                os.kill(daemon, signal.SIGKILL)
        root = workdir / "sys"
        tmp = Path(tempfile.gettempdir())
        if workdir.parent == tmp and workdir.name.startswith("mdevfs-"):
            if str(root) in mountpoints():
                subprocess.run(["fusermount3", "-u", "-z", str(root)], capture_output=True,
                               timeout=30)
            shutil.rmtree(workdir, ignore_errors=True)
        note.unlink(missing_ok=True)
        done.append(f"removed the leftovers of a killed mdevfs run (pid {pid}): {workdir}")
    return done


# --- many daemons at once: a zygote that forks them -----------------------------------------

def start_many(hosts: Sequence[dict[str, object]], timeout: float = READY_TIMEOUT
               ) -> list[int | MdevfsError]:
    """Start one detached daemon per entry of ``hosts`` (the keyword arguments of
    :func:`start`: root, control, log_file, config, state, uevents, allow_other, extra)
    and return, in order, each one's pid once it has mounted, or its error.

    A daemon's start is mostly Python's imports (0.25 s of CPU). Here one zygote,
    ``python -P -m mdevfs.zygote`` in ``/`` as every daemon runs, imports everything once
    and forks each daemon, which runs exactly what ``mdevfs mount --foreground`` runs; the
    daemons share the zygote's pages until they write them. A hundred hosts mount in
    seconds on two cores instead of twenty. Raises MountError if the zygote fails."""
    proc = subprocess.Popen([sys.executable, "-P", "-m", "mdevfs.zygote"], cwd="/",
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    request = json.dumps({"timeout": timeout, "hosts": [
        {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in h.items()}
        for h in hosts]})
    out, err = proc.communicate(request.encode(), timeout=timeout + 30 + len(hosts))
    try:
        reports = [json.loads(line) for line in out.decode().splitlines()]
    except ValueError:
        reports = []
    if proc.returncode != 0 or len(reports) != len(hosts):
        raise MountError(f"the mdevfs zygote failed (status {proc.returncode}): "
                         f"{err.decode(errors='replace')[-2000:]}")
    return [r["pid"] if r.get("ready") else by_name(str(r.get("kind")))(str(r.get("error")))
            for r in reports]
