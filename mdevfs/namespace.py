"""``mdevfs run``: a command in a private mount namespace where the emulated tree
sits at the real ``/sys`` paths, for software that hard-codes them (mdevctl 1.2.0
has no root override, nor has libvirt's node-device driver).

The FUSE daemon runs outside the namespace, on a temporary directory
(:func:`mdevfs.process.temporary_mount`); only bind mounts and tmpfs are
made inside. The kernel discards them with the namespace's last process, so
nothing there needs undoing and the host's mount table never sees them.

Inside, :func:`enter` grafts the mount at ROOT onto /sys. ``mdevfs run`` forks it
(:func:`spawn`, which makes the namespaces with unshare(2)); ``mdevfs fleet run`` and the
test helper start it as ``python -S namespace.py ROOT [--mdevctl-dir DIR] [--uevents
SOCKET] -- COMMAND...`` under ``unshare --mount --net --propagation private`` (plus
``--user --map-root-user`` for a non-root user):

* a path the host lacks (``/sys/class/mdev_bus``) is added to its parent
  directory, which first becomes writable: a tmpfs over it with every original
  entry put back (directories and files bound, symlinks copied), because sysfs
  refuses mkdir;
* a directory the host has (``/sys/kernel/iommu_groups``, a PCI device) is
  covered by a bind of the emulated one.

The relative symlinks of the tree then resolve through the real paths. It then
puts a private ``/etc/mdevctl.d`` and, where the host has one, an empty ``/dev/vfio``
in place (libvirt opens ``/dev/vfio/<group>`` before it destroys an mdev), brings
up ``lo`` in the private network namespace and hands a NETLINK_KOBJECT_UEVENT
socket of it to the daemon at SOCKET (:mod:`mdevfs.uevent`: udev events reach the
command and never the host), sets ``SYSTEMD_DEVICE_VERIFY_SYSFS=0``
(libsystemd's sd-device then accepts a /sys that is not sysfs) and ``MDEVFS_ROOT`` (the
mount itself), and execs COMMAND, whose exit status is the run's.
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import functools
import json
import os
import posixpath
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol

if __package__:  # imported as mdevfs.namespace; run as a script, only the stdlib is there
    from .errors import NamespaceError

SYS = Path("/sys")
MDEVCTL_DIR = Path("/etc/mdevctl.d")
VFIO_DIR = Path("/dev/vfio")
#: where the services' /proc files go (NVIDIA's /proc/driver/nvidia)
PROC_DRIVER = Path("/proc/driver")
SRIOV_MANAGE = Path("/usr/lib/nvidia/sriov-manage")
#: NVIDIA's sriov-manage, as far as management software uses it: -e enables every VF a GPU
#: offers, -d disables them, on one PF or ALL; it writes the same files the real one does
SRIOV_MANAGE_SCRIPT = """#!/bin/sh
# mdevfs's stand-in for NVIDIA's /usr/lib/nvidia/sriov-manage, inside mdevfs run.
set -eu
usage() { echo "usage: sriov-manage -e|-d <PF address>|ALL" >&2; exit 2; }
[ $# -eq 2 ] || usage
case $1 in -e|-d) mode=$1 ;; *) usage ;; esac
dev=/sys/bus/pci/devices
gpu() { # an SR-IOV PF bound to nvidia
    [ -e "$dev/$1/sriov_totalvfs" ] && [ "$(basename "$(readlink "$dev/$1/driver")")" = nvidia ]
}
if [ "$2" = ALL ]; then
    set --
    for d in "$dev"/*; do
        if gpu "$(basename "$d")"; then set -- "$@" "$(basename "$d")"; fi
    done
else
    # a PCI address, nothing else: never a path that leads elsewhere
    if ! printf '%s\\n' "$2" | grep -Eqx '[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}[.][0-7]'; then
        echo "sriov-manage: $2 is not a PCI address (DDDD:BB:SS.F)" >&2; exit 2
    fi
    gpu "$2" || { echo "sriov-manage: $2 is not an SR-IOV GPU bound to nvidia" >&2; exit 1; }
    set -- "$2"
fi
for pf in "$@"; do
    numvfs=$dev/$pf/sriov_numvfs
    if [ "$mode" = -d ]; then
        echo 0 >"$numvfs"
    elif [ "$(cat "$numvfs")" = 0 ]; then
        cat "$dev/$pf/sriov_totalvfs" >"$numvfs"
    fi
    echo "$pf: $(cat "$numvfs") VFs enabled"
done
"""
#: like env(1) and chroot(1): the namespace could not be set up, COMMAND did not run
SETUP_FAILED = 125

_MS_BIND = 0x1000
_MS_REC = 0x4000


# --- outside: start COMMAND in a namespace -----------------------------------------------

def _unshare() -> list[str]:
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return ["unshare", *user, "--mount", "--net", "--propagation", "private"]


def command_line(root: Path, command: Sequence[str], mdevctl_dir: Path | None = None,
                 uevents: Path | None = None, parent: int | None = None) -> list[str]:
    """The argv that runs ``command`` in a namespace showing the mount at ``root`` as /sys;
    ``uevents`` is the daemon's hand-over socket (``mdevfs mount --uevents``). With
    ``parent`` (the pid that starts it), the command is killed when that process dies."""
    keep = ["--mdevctl-dir", str(Path(mdevctl_dir).absolute())] if mdevctl_dir else []
    if uevents is not None:
        keep += ["--uevents", str(Path(uevents).absolute())]
    if parent is not None:
        keep += ["--parent", str(parent)]
    # This file by path, isolated (-I: neither the current directory nor PYTHON*
    # variables reach its imports) and without site: the inside needs only the standard
    # library, and skipping the package's imports halves the start-up (66 -> 31 ms).
    return [*_unshare(), sys.executable, "-I", "-S", __file__, str(root), *keep, "--",
            *command]


@functools.cache
def unsupported() -> str | None:
    """Why no private mount namespace can be made here, or None when one can."""
    if shutil.which("unshare") is None:
        return "mdevfs run needs unshare(1) from util-linux"
    probe = subprocess.run([*_unshare(), "true"], capture_output=True, text=True)
    if probe.returncode == 0:
        return None
    how = ("root (CAP_SYS_ADMIN)" if os.geteuid() == 0 else
           "root, or unprivileged user namespaces (sysctl user.max_user_namespaces > 0, "
           "kernel.unprivileged_userns_clone=1 where that exists)")
    return (f"mdevfs run cannot create a private mount namespace "
            f"({' '.join(_unshare())}: {probe.stderr.strip()}); it needs {how}")


def run(root: Path, command: Sequence[str], *, mdevctl_dir: Path | None = None,
        uevents: Path | None = None, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run`` of ``command`` inside the namespace; raises NamespaceError."""
    reason = unsupported()
    if reason:
        raise NamespaceError(reason)
    return subprocess.run(command_line(root, command, mdevctl_dir, uevents), **kwargs)


class Child(Protocol):
    """A started COMMAND: a :class:`subprocess.Popen`, or a :func:`spawn`'s
    :class:`mdevfs.process.Forked`."""

    def send_signal(self, sig: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


def wait(proc: Child) -> int:
    """Wait for COMMAND, passing on SIGTERM and SIGHUP so that teardown still runs.

    SIGINT from the terminal reaches COMMAND directly (same process group); here it
    only must not end the wait early.
    """
    def forward(signum: int, _frame: Any) -> None:
        proc.send_signal(signum)

    handlers = {signal.SIGTERM: forward, signal.SIGHUP: forward,
                signal.SIGINT: lambda *_: None}
    saved = {sig: signal.signal(sig, fn) for sig, fn in handlers.items()}
    try:
        status = proc.wait()
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)
    return 128 - status if status < 0 else status  # killed by signal N: 128 + N, as shells say


# --- inside: graft the mount onto /sys ---------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]


def _mount(source: str | Path, target: Path, fstype: str | None = None, flags: int = 0,
           data: str | None = None) -> None:
    def enc(s: str | Path | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    if _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        what = f"tmpfs on {target}" if fstype == "tmpfs" else f"bind {source} on {target}"
        raise OSError(err, f"cannot mount {what}: {os.strerror(err)}")


def _link_target(root: Path, rel: str) -> str:
    """Where the symlink ``rel`` of the tree points, as a path from the root."""
    return posixpath.normpath(posixpath.join(posixpath.dirname(rel), os.readlink(root / rel)))


def grafted_paths(root: Path) -> list[str]:
    """What the tree adds to /sys: the mdev and vfio roots, the PCI bus when the tree has
    PCI functions (the host's are hidden in the namespace), each PCI function (an SR-IOV PF
    with the directory its VFs will appear in), the IOMMU unit and its class, the modules of
    the tree's drivers (``driver/module/version``), each other parent and its class link."""
    paths = [p for p in ("class/mdev_bus", "bus/mdev", "kernel/iommu_groups", "class/vfio",
                         "class/vfio-dev", "devices/virtual/vfio", "class/iommu")
             if (root / p).is_dir()]
    for unit in sorted(os.listdir(root / "class/iommu")) if (root / "class/iommu").is_dir() else []:
        paths.append(_link_target(root, f"class/iommu/{unit}"))
    if (root / "module").is_dir():
        paths += [f"module/{name}" for name in sorted(os.listdir(root / "module"))]
    functions = sorted(os.listdir(root / "bus/pci/devices")) if (root / "bus/pci/devices").is_dir() else []
    if functions:
        paths.append("bus/pci")
        for bdf in functions:
            function = _link_target(root, f"bus/pci/devices/{bdf}")
            if (root / function / "physfn").is_symlink():
                continue  # a VF lies beside its PF, in the directory grafted for it
            sriov = (root / function / "sriov_totalvfs").exists()
            where = function.rpartition("/")[0] if sriov else function
            if where not in paths:
                paths.append(where)
    for name in sorted(os.listdir(root / "class/mdev_bus")):
        parent = _link_target(root, f"class/mdev_bus/{name}")
        subsystem = _link_target(root, f"{parent}/subsystem")  # "class/mtty" or "bus/pci"
        if not subsystem.startswith("class/"):
            continue  # a PCI function: grafted above
        paths += [parent, f"{subsystem}/{name}"]
    return paths


class Grafter:
    """Changes the view of /sys (and /etc) by mounts only: run it in a private namespace."""

    def __init__(self, root: Path) -> None:
        self.root = root
        #: directories on a tmpfs of ours, where creating entries touches nothing real
        self.ours: set[Path] = set()

    def make_writable(self, directory: Path) -> None:
        """A tmpfs over ``directory`` holding every original entry again."""
        if directory in self.ours:
            return
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            names = os.listdir(fd)
            _mount("tmpfs", directory, "tmpfs", 0, "mode=0755")
            for name in names:
                mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
                entry = directory / name
                if stat.S_ISLNK(mode):
                    entry.symlink_to(os.readlink(name, dir_fd=fd))
                    continue
                if stat.S_ISDIR(mode):
                    entry.mkdir()
                else:
                    entry.touch()
                # The covered original stays reachable through the descriptor.
                _mount(f"/proc/self/fd/{fd}/{name}", entry, flags=_MS_BIND | _MS_REC)
        finally:
            os.close(fd)
        self.ours.add(directory)

    def graft(self, rel: str) -> None:
        """Make ``/sys/<rel>`` the tree's ``<rel>``; the rest of /sys stays the host's."""
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if not os.path.lexists(SYS / sub):
                self._place(self.root / sub, SYS / sub)  # the whole subtree from here
                return
        src, dest = self.root / rel, SYS / rel
        if src.is_symlink():
            if dest.is_symlink() and os.readlink(dest) == os.readlink(src):
                return
            if not dest.is_symlink():
                raise OSError(f"cannot place the link {rel} over the host's {dest}")
            self.make_writable(dest.parent)
            dest.unlink()
            dest.symlink_to(os.readlink(src))
        else:
            _mount(src, dest, flags=_MS_BIND)

    def _place(self, src: Path, dest: Path) -> None:
        self.make_writable(dest.parent)
        if src.is_symlink():
            dest.symlink_to(os.readlink(src))
        else:
            dest.mkdir()
            _mount(src, dest, flags=_MS_BIND)

    def mdevctl_dir(self, keep: Path | None) -> None:
        """A private /etc/mdevctl.d (a tmpfs), or ``keep`` bound there; either gets the
        scripts.d/{callouts,notifiers} directories mdevctl checks for at start-up
        (mdevctl 1.2.0 refuses to start without them) if they are missing."""
        if not MDEVCTL_DIR.is_dir():
            self.make_writable(MDEVCTL_DIR.parent)
            MDEVCTL_DIR.mkdir()
        if keep is None:
            _mount("tmpfs", MDEVCTL_DIR, "tmpfs", 0, "mode=0755")
        else:
            _mount(keep, MDEVCTL_DIR, flags=_MS_BIND)
        for sub in ("callouts", "notifiers"):
            (MDEVCTL_DIR / "scripts.d" / sub).mkdir(parents=True, exist_ok=True)

    def sriov_manage(self) -> None:
        """When the tree has an SR-IOV PF: the stand-in at /usr/lib/nvidia/sriov-manage, a
        file of the run's private directory (beside ROOT) bound there; /usr/lib/nvidia gets
        a private tmpfs when the host has none."""
        pci = self.root / "bus/pci/devices"
        if not pci.is_dir() or not any((pci / d / "sriov_totalvfs").exists()
                                       for d in os.listdir(pci)):
            return
        fd, script = tempfile.mkstemp(prefix=".sriov-manage.", dir=self.root.parent)
        with os.fdopen(fd, "w") as f:  # a new file each run, in the run's own directory
            f.write(SRIOV_MANAGE_SCRIPT)
            os.fchmod(f.fileno(), 0o755)
        if not SRIOV_MANAGE.parent.is_dir():
            self.make_writable(SRIOV_MANAGE.parent.parent)
            SRIOV_MANAGE.parent.mkdir()
        if not SRIOV_MANAGE.exists():
            self.make_writable(SRIOV_MANAGE.parent)
            SRIOV_MANAGE.touch()
        _mount(script, SRIOV_MANAGE, flags=_MS_BIND)

    def proc_files(self, files: dict[str, str]) -> None:
        """The files the daemon's services show under /proc (NVIDIA's driver/nvidia/…), on a
        tmpfs over /proc/driver; where /proc/driver cannot be covered, none."""
        if not files or not PROC_DRIVER.is_dir():
            return
        try:
            _mount("tmpfs", PROC_DRIVER, "tmpfs", 0, "mode=0555")
        except OSError:
            return  # e.g. a user namespace may not cover procfs: the rest still works
        for rel, text in sorted(files.items()):
            parts = Path(rel).parts
            if len(parts) < 2 or parts[0] != "driver" or ".." in parts:
                continue
            target = PROC_DRIVER.joinpath(*parts[1:])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            target.chmod(0o444)

    def private_vfio(self) -> None:
        """An empty tmpfs over the host's /dev/vfio, if it has one. /dev itself stays the
        host's devtmpfs: libudev (systemd >= 248) disables its udev monitors unless /dev
        is a devtmpfs or /run/udev/control exists."""
        if VFIO_DIR.is_dir():
            _mount("tmpfs", VFIO_DIR, "tmpfs", 0, "mode=0755")


def _service_files(control: str) -> dict[str, str]:
    """The daemon's ``service-files`` (its control socket's protocol, spoken here with the
    standard library alone); none when it cannot say."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(5)
            conn.connect(control)
            conn.sendall(b'{"command": "service-files"}\n')
            reply = json.loads(conn.makefile("rb").readline())
    except (OSError, ValueError):
        return {}
    files = reply.get("result") if isinstance(reply, dict) and reply.get("ok") else None
    return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(files, dict) else {}


def _loopback_up() -> None:
    """``ip link set lo up`` in the new network namespace (SIOCGIFFLAGS, SIOCSIFFLAGS)."""
    ifreq = struct.Struct("16sH22x")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = ifreq.unpack(fcntl.ioctl(s, 0x8913, ifreq.pack(b"lo", 0)))[1]
        fcntl.ioctl(s, 0x8914, ifreq.pack(b"lo", flags | 1))  # IFF_UP


def hand_over(path: str | Path, timeout: float = 5.0) -> int:
    """Give the mdevfs daemon listening at ``path`` a NETLINK_KOBJECT_UEVENT socket of this
    process's network namespace, into which it then sends its events; 0 when it took it.
    The daemon refuses its own network namespace and PID 1's."""
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 15)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(os.fspath(path))
            socket.send_fds(conn, [b"netlink"], [nl.fileno()])
            reply = conn.recv(256).decode(errors="replace").strip()
    except OSError as exc:
        reply = f"no answer from {path}: {exc.strerror or exc}"
    finally:
        nl.close()
    if reply != "ok":
        print(f"mdevfs: no uevents: {reply}", file=sys.stderr)
        return 1
    return 0


def die_with(parent: int) -> None:
    """SIGKILL this process when ``parent`` dies (a ``kill -9`` of mdevfs run leaves no
    command behind, of fleet up no zygote forking on); ProcessLookupError if it already
    has, OSError if the kernel refuses."""
    PR_SET_PDEATHSIG = 1
    if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl(PR_SET_PDEATHSIG): {os.strerror(code)}")
    if os.getppid() != parent:  # re-parented: to init, or to a subreaper
        raise ProcessLookupError(errno.ESRCH, f"pid {parent} is gone")


def _fresh_namespace() -> bool:
    """Whether unshare(1) gave this process a mount namespace of its own."""
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink(f"/proc/{os.getppid()}/ns/mnt")
    except PermissionError:
        # The parent is in another user namespace; a mount namespace we may mount in
        # can then only be one made with ours.
        return True


def _fail(message: str) -> NoReturn:
    print(f"mdevfs run: {message}", file=sys.stderr)
    sys.exit(SETUP_FAILED)


def enter(root: Path, command: Sequence[str], mdevctl_dir: Path | None = None,
          uevents: str | None = None, parent: int | None = None,
          env: Mapping[str, str] | None = None) -> NoReturn:
    """In a fresh mount namespace only: graft the mount at ``root`` onto /sys, hand the
    daemon at ``uevents`` a uevent socket, and exec ``command`` with ``env`` (the services'
    variables: with ``MDEVFS_CONTROL``, the daemon's /proc files are shown too)."""
    env = dict(os.environ if env is None else env)
    if not _fresh_namespace():  # never graft onto the caller's own /sys
        _fail("the namespace helper works only in a new mount namespace; use mdevfs run")
    try:
        grafter = Grafter(root)
        for rel in grafted_paths(grafter.root):
            grafter.graft(rel)
        grafter.mdevctl_dir(mdevctl_dir)
        grafter.sriov_manage()
        grafter.private_vfio()
        if env.get("MDEVFS_CONTROL"):
            grafter.proc_files(_service_files(env["MDEVFS_CONTROL"]))
        _loopback_up()
    except OSError as exc:
        _fail(f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc.strerror or exc))
    if uevents:
        hand_over(uevents)  # without it the command still runs, without events
    if parent is not None:
        try:
            die_with(parent)
        except ProcessLookupError:
            _fail(f"mdevfs run (pid {parent}) is gone")
        except OSError as exc:
            _fail(str(exc.strerror))
    env.update(SYSTEMD_DEVICE_VERIFY_SYSFS="0", MDEVFS_ROOT=str(root))
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores them; COMMAND must not
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"mdevfs run: {command[0]}: {exc.strerror}", file=sys.stderr)
        sys.exit(127 if isinstance(exc, FileNotFoundError) else 126)  # as shells say


_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWNET = 0x20000, 0x10000000, 0x40000000
_MS_PRIVATE = 1 << 18


def spawn(root: Path, command: Sequence[str], mdevctl_dir: Path | None = None,
          uevents: Path | None = None, env: Mapping[str, str] | None = None) -> int:
    """What :func:`command_line` under unshare(1) does, forked from this process instead
    of a new Python: ``mdevfs run``, which has imported this module, starts COMMAND in a
    tenth of the time. The child makes its namespaces as ``unshare --mount --net
    --propagation private`` (and ``--user --map-root-user`` for a non-root user) would,
    then :func:`enter`; it dies with this process. Returns its pid. Only a process
    without threads may call it."""
    parent = os.getpid()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # or the child's exit writes it again
    pid = os.fork()
    if pid != 0:
        return pid
    code = SETUP_FAILED  # pragma: no cover - runs in the child
    try:
        _unshare_here()
        enter(root, command, mdevctl_dir, None if uevents is None else os.fspath(uevents),
              parent, env)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else SETUP_FAILED
    except BaseException as exc:
        print(f"mdevfs run: {exc}", file=sys.stderr)
    finally:
        sys.stderr.flush()
        os._exit(code)


def _unshare_here() -> None:
    """unshare(2) a mount and a network namespace (and a user namespace in which this user
    is root, if it is not), with every mount private."""
    uid, gid = os.geteuid(), os.getegid()
    flags = _CLONE_NEWNS | _CLONE_NEWNET | (_CLONE_NEWUSER if uid != 0 else 0)
    if _libc.unshare(flags) != 0:
        _fail(f"unshare: {os.strerror(ctypes.get_errno())}")
    if uid != 0:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"),
                           ("gid_map", f"0 {gid} 1")):
            Path(f"/proc/self/{name}").write_text(text)
    _mount("none", Path("/"), flags=_MS_REC | _MS_PRIVATE)


def main(argv: list[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="python -S mdevfs/namespace.py",
                                     description="Inside a fresh mount namespace only: graft "
                                     "the mdevfs mount at ROOT onto /sys and exec COMMAND.")
    parser.add_argument("root", metavar="ROOT")
    parser.add_argument("--mdevctl-dir", metavar="DIR", type=Path)
    parser.add_argument("--uevents", metavar="SOCKET")
    parser.add_argument("--parent", metavar="PID", type=int,
                        help="kill COMMAND when the process PID (mdevfs run) dies")
    parser.add_argument("command", nargs="+", metavar="COMMAND")
    args = parser.parse_args(argv)
    enter(Path(args.root), args.command, args.mdevctl_dir, args.uevents, args.parent)


if __name__ == "__main__":
    main()
