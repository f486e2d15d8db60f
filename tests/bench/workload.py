"""The real workload: ``mdevctl list`` and ``mdevctl types`` on mdevfs and on tmpfs.

    mdevfs run -- python -m bench.workload --graft --sys ROOT ...   (preferred)
    unshare --mount --propagation private \\
        python -m bench.workload --sys ROOT ...                     (fallback)

Runs only inside a private mount namespace (``--host-ns`` names the caller's,
which it refuses to be in). There it copies the mounted tree at ROOT
(directories, files with their contents and modes, symlinks) onto a fresh
tmpfs, and then, ``--runs`` times, shows each tree in turn at /sys and times one
``mdevctl list`` and one ``mdevctl types`` (the order alternating; one warm-up
round is not kept). With ``--graft`` the namespace is ``mdevfs run``'s, the
emulated tree already grafted at the real paths: the copy is bound over the
same paths in its turn. Without it the whole /sys is bound to one tree or the
other, and /etc/mdevctl.d becomes a private tmpfs. Debian's mdevctl 1.2.0 has
no root override, so /sys is the only way in. Every mount made here ends with
the namespace. Writes the seconds per run as JSON to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

COMMANDS = {"mdevctl list": ["mdevctl", "list"], "mdevctl types": ["mdevctl", "types"]}
SYS = Path("/sys")


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def copy_tree(src: Path, dst: Path) -> int:
    """Replicate ``src`` as plain files: directories, file contents (empty where a read
    fails or the file is write-only) and modes, symlinks as they are. Returns the nodes."""
    nodes = 0
    stack = [(str(src), str(dst))]
    while stack:
        s, d = stack.pop()
        for entry in os.scandir(s):
            target = os.path.join(d, entry.name)
            nodes += 1
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
            elif entry.is_dir(follow_symlinks=False):
                os.mkdir(target)
                stack.append((entry.path, target))
            else:
                mode = entry.stat(follow_symlinks=False).st_mode & 0o777
                try:
                    with open(entry.path, "rb") as f:
                        data = f.read()
                except OSError:
                    data = b""
                with open(target, "wb") as f:
                    f.write(data)
                os.chmod(target, mode)
    return nodes


def fuse_mountpoints_under_sys() -> list[str]:
    """Where this namespace shows the FUSE mount under /sys (``mdevfs run``'s grafts), as
    paths relative to /sys, from /proc/self/mountinfo."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            point = left.split()[4].encode().decode("unicode_escape")
            if right.split()[0].startswith("fuse") and point.startswith("/sys/"):
                found.append(point[len("/sys/"):])
    return found


def binds(root: Path, copy: Path, graft: bool) -> dict[str, list[tuple[Path, Path]]]:
    """Which binds show each tree at /sys. With ``--graft`` mdevfs is already in place and
    the copy covers exactly the mount points of the grafts, so that no path walk on the
    copy crosses a FUSE dentry (whose revalidation would reach mdevfs); else each tree
    covers the whole of /sys."""
    if not graft:
        return {"mdevfs": [(root, SYS)], "tmpfs": [(copy, SYS)]}
    points = fuse_mountpoints_under_sys()
    if not points:
        raise RuntimeError("no FUSE mount under /sys: not inside mdevfs run?")
    return {"mdevfs": [], "tmpfs": [(copy / rel, SYS / rel) for rel in points]}


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed, done.stdout


def measure(trees: dict[str, list[tuple[Path, Path]]], runs: int,
            devices: int) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {c: {t: [] for t in trees} for c in COMMANDS}
    for rep in range(runs + 1):  # the first round warms up and is not kept
        for name in (list(trees) if rep % 2 else list(trees)[::-1]):
            done: list[Path] = []
            try:
                for src, dest in trees[name]:
                    mount("--bind", str(src), str(dest))
                    done.append(dest)
                items = list(COMMANDS.items())
                for label, cmd in (items if rep % 2 else items[::-1]):
                    elapsed, out = timed(cmd)
                    listed = [line for line in out.splitlines() if line.strip()]
                    if label == "mdevctl list" and len(listed) != devices:
                        raise RuntimeError(f"{name}: mdevctl list printed {len(listed)} "
                                           f"devices, not {devices}:\n{out[-2000:]}")
                    if rep:
                        times[label][name].append(elapsed)
            finally:
                for dest in reversed(done):
                    subprocess.run(["umount", str(dest)], check=True)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workload")
    parser.add_argument("--sys", required=True, type=Path, help="the mounted mdevfs root")
    parser.add_argument("--host-ns", required=True, help="the caller's /proc/self/ns/mnt")
    parser.add_argument("--graft", action="store_true", help="inside mdevfs run")
    parser.add_argument("--devices", required=True, type=int)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    if os.readlink("/proc/self/ns/mnt") == args.host_ns:
        print("bench.workload: refusing to mount in the caller's namespace",
              file=sys.stderr)
        return 2
    if not args.graft and not os.path.isdir("/etc/mdevctl.d"):
        print("bench.workload: /etc/mdevctl.d is missing (is mdevctl installed?)",
              file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="mdevfs-bench-tmpfs-"))
    try:
        mount("-t", "tmpfs", "mdevfs-bench-copy", str(scratch))
        start = time.perf_counter()
        nodes = copy_tree(args.sys, scratch)
        info: dict[str, Any] = {"devices": args.devices, "copied_nodes": nodes,
                                "copy_s": time.perf_counter() - start,
                                "how": "inside mdevfs run" if args.graft else
                                "unshare + a bind of the whole tree at /sys"}
        if not args.graft:
            mount("-t", "tmpfs", "mdevfs-bench-etc", "/etc/mdevctl.d")
            for sub in ("callouts", "notifiers"):
                os.makedirs(f"/etc/mdevctl.d/scripts.d/{sub}")
        runs = measure(binds(args.sys, scratch, args.graft), args.runs, args.devices)
        args.out.write_text(json.dumps({"runs": runs, "info": info}))
    finally:
        subprocess.run(["umount", str(scratch)], capture_output=True, check=False)
        os.rmdir(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
