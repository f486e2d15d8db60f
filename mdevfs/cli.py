"""``mdevfs``: mount, unmount, and inspect an emulated mdev sysfs tree.

No domain logic lives here: commands parse, set up logging once, build the
model from a topology and hand it to the FUSE adapter or a library function.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .config import Topology, TopologyError

log = logging.getLogger("mdevfs")

READY_TIMEOUT = 10.0


class UsageError(Exception):
    """A clear, final message for the user (exit status 2)."""


def _topology(config: str | None) -> Topology:
    return Topology.from_toml(config) if config else Topology.default()


def mountpoints() -> set[str]:
    """The mount points of this mount namespace (/proc/self/mounts, octal escapes undone)."""
    with open("/proc/self/mounts") as f:
        fields = [line.split()[1] for line in f]
    return {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), p) for p in fields}


def check_mountpoint(directory: Path) -> None:
    """Refuse a missing or non-empty directory; recover one left by a killed daemon."""
    if not os.path.exists("/dev/fuse"):
        raise UsageError("/dev/fuse is missing: load the fuse module or give the container "
                         "--device /dev/fuse")
    if str(directory) in mountpoints():
        try:
            os.listdir(directory)  # a readdir always reaches the daemon; a stat may be cached
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise UsageError(f"{directory}: {exc.strerror}") from exc
            log.warning("%s was left mounted by a dead daemon (%s); unmounting it",
                        directory, exc.strerror)
            unmount(directory, lazy=True)
        else:
            raise UsageError(f"{directory}: something is already mounted there")
    if not directory.is_dir():
        raise UsageError(f"{directory}: no such directory" if not directory.exists()
                         else f"{directory}: not a directory")
    if any(directory.iterdir()):
        raise UsageError(f"{directory}: not empty; mdevfs mounts only on an empty directory")


def unmount(directory: Path, lazy: bool = False) -> None:
    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(directory)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise UsageError(f"cannot unmount {directory}: {result.stderr.strip()}")


def wait_ready(directory: Path, proc: subprocess.Popen[bytes] | None,
               timeout: float = READY_TIMEOUT) -> None:
    """Return once the mount answers; raise if the daemon dies or the time runs out."""
    deadline = time.monotonic() + timeout
    probe = directory / "class" / "mdev_bus"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise UsageError(f"the mdevfs daemon exited with status {proc.returncode}")
        if os.path.ismount(directory) and probe.is_dir():
            return
        time.sleep(0.005)
    raise UsageError(f"{directory} did not answer within {timeout:.0f} s")


def cmd_mount(args: argparse.Namespace) -> int:
    directory = Path(args.dir).absolute()
    topology = _topology(args.config)
    host = topology.build()  # refuse a bad topology before anything is mounted
    check_mountpoint(directory)
    if args.foreground:
        import trio

        from .fuse import serve
        from .sysfs import Tree

        tree = Tree(host)
        log.info("mounting %s (%s) at %s", topology.source, len(host.parents), directory)
        trio.run(serve, tree, str(directory), args.allow_other)
        return 0
    log_file = Path(args.log_file or Path(tempfile.gettempdir()) / f"mdevfs-{os.getpid()}.log")
    cmd = [sys.executable, "-m", "mdevfs", "mount", "--foreground", str(directory)]
    if args.config:
        cmd[4:4] = ["--config", str(Path(args.config).absolute())]
    if args.allow_other:
        cmd.insert(4, "--allow-other")
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    try:
        wait_ready(directory, proc)
    except UsageError as exc:
        tail = log_file.read_text(errors="replace")[-2000:]
        if proc.poll() is None:
            proc.kill()
        raise UsageError(f"{exc}; its log {log_file}:\n{tail}") from None
    print(f"mdevfs: {directory} mounted (pid {proc.pid}, log {log_file})")
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    unmount(Path(args.dir).absolute(), lazy=args.lazy)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdevfs", description="A kernel-faithful emulator of the Linux mdev sysfs interface.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("mount", help="mount an emulated sysfs root on DIR",
                       description="Mount a topology's sysfs tree on DIR. Without --foreground "
                       "it returns once the mount answers and the daemon logs to a file.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--config", metavar="FILE", help="topology file (default: the embedded one)")
    p.add_argument("--foreground", "-f", action="store_true", help="serve in this process")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users in (sysfs modes are enforced)")
    p.add_argument("--log-file", metavar="FILE", help="where the detached daemon logs")
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="unmount DIR", description="Unmount an mdevfs mount.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--lazy", "-z", action="store_true", help="detach even if busy")
    p.set_defaults(func=cmd_umount)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        return args.func(args)
    except (UsageError, TopologyError) as exc:
        print(f"mdevfs: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
