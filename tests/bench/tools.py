"""The benchmark's instruments: its two C programs (``c/driver.c``, the driver that
times one operation, and ``c/floor.c``, the C floor mounted beside mdevfs), built at
run time into a scratch directory that goes away with the run.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from attrs import frozen

from mdevfs.mounts import fstype
from mdevfs.process import stop as stop_daemon

#: the benchmark lives beside the tests, not in the package: tests/bench/tools.py → ../..
#: is the repository root
REPO_ROOT = Path(__file__).resolve().parents[2]
#: the sources of the driver and the floor, in the repository
C_SOURCES = Path(__file__).resolve().parent / "c"
#: the floor's mount type (floor.c mounts with subtype=mdevfs-floor)
FLOOR_FSTYPE = "fuse.mdevfs-floor"
#: the directory that holds the ``bench`` package, which its own subprocesses
#: (python -m bench.counting, bench.workload) need on sys.path
BENCH_PATH = str(Path(__file__).resolve().parents[1])


class BenchError(Exception):
    """The benchmark cannot run here; the message says what is missing."""


@frozen
class Tools:
    driver: Path
    floor: Path


def build(into: Path) -> Tools:
    """``gcc -O2`` ``c/driver.c`` and ``c/floor.c`` (with ``pkg-config fuse3``) into
    ``into``."""
    for tool in ("gcc", "pkg-config"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is missing (make install sets up gcc, pkg-config and "
                             "libfuse3-dev)")
    flags = subprocess.run(["pkg-config", "fuse3", "--cflags", "--libs"],
                           capture_output=True, text=True, check=False)
    if flags.returncode != 0:
        raise BenchError(f"pkg-config fuse3: {flags.stderr.strip()} (install libfuse3-dev)")
    tools = Tools(driver=into / "driver", floor=into / "floor")
    for src, out, extra in ((C_SOURCES / "driver.c", tools.driver, []),
                            (C_SOURCES / "floor.c", tools.floor, flags.stdout.split())):
        done = subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", str(src), "-o", str(out),
                               *extra],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BenchError(f"building {src} failed:\n{done.stderr}")
    return tools


# --- the driver ------------------------------------------------------------------------------

@frozen
class Sample:
    """One line of the driver: ``n`` timed ops, latencies in µs."""

    n: int
    p50: float
    mean: float
    p99: float
    extra: int


def drive(tools: Tools, op: str, budget_ms: float, path: str, arg: str | None = None,
          cwd: Path | None = None) -> Sample:
    """Run ``driver OP BUDGET_MS PATH [ARG]`` in ``cwd``; a relative PATH keeps the path walk
    to the last component, so both filesystems see the same requests per op."""
    cmd = [str(tools.driver), op, f"{budget_ms:g}", path] + ([arg] if arg is not None else [])
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False)
    if done.returncode != 0:
        raise BenchError(f"driver {op} {path} (in {cwd}) failed: {done.stderr.strip()}")
    fields = dict(item.split("=", 1) for item in done.stdout.split())
    return Sample(n=int(fields["n"]), p50=float(fields["p50_us"]), mean=float(fields["mean_us"]),
                  p99=float(fields["p99_us"]), extra=int(fields["extra"]))


# --- daemons we start, and always stop -----------------------------------------------------

def rss_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def wait_mounted(root: Path, proc: subprocess.Popen[bytes], probe: str,
                 timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the daemon for {root} exited with status {proc.returncode}")
        if os.path.ismount(root) and os.path.exists(root / probe):
            return
        time.sleep(0.002)
    raise BenchError(f"{root} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def daemon(cmd: Sequence[str], probe: str, env: Mapping[str, str] | None = None,
           prefix: str = "mdevfs-bench-") -> Iterator[tuple[Path, subprocess.Popen[bytes], Path]]:
    """Start ``cmd + [mountpoint]`` in the foreground on a fresh temporary directory; yield
    (mountpoint, process, log file) once ``probe`` exists there; always unmount."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    root = workdir / "mnt"
    root.mkdir()
    log_file = workdir / "daemon.log"
    full_env = {**os.environ, **(env or {})}
    with open(log_file, "wb") as out:
        proc = subprocess.Popen([*cmd, str(root)], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=out, env=full_env)
    try:
        try:
            wait_mounted(root, proc, probe)
        except BenchError as exc:
            raise BenchError(f"{exc}\n{log_file.read_text(errors='replace')[-2000:]}") from None
        yield root, proc, log_file
    finally:
        stop_daemon(root, proc)
        shutil.rmtree(workdir, ignore_errors=True)


class Floor:
    """A mounted floor (``c/floor.c``): its root and its per-opcode request counters."""

    def __init__(self, root: Path, proc: subprocess.Popen[bytes], stats: Path) -> None:
        self.root = root
        self.proc = proc
        self.stats = stats

    def counts(self) -> dict[str, int]:
        """The cumulative request counters (SIGUSR1 makes the floor write them)."""
        with contextlib.suppress(FileNotFoundError):
            self.stats.unlink()
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                lines = self.stats.read_text().splitlines()
                if lines and lines[-1].startswith("other "):
                    return {k: int(v) for k, v in (line.split() for line in lines)}
            time.sleep(0.002)
        raise BenchError("the floor wrote no request counters")


@contextlib.contextmanager
def floor_mounted(tools: Tools, knobs: Mapping[str, str]) -> Iterator[Floor]:
    """The C floor with the environment knobs of floor.c (DIO, ET, AT, PLUS, ...)."""
    with tempfile.TemporaryDirectory(prefix="mdevfs-bench-stats-") as scratch:
        stats = Path(scratch) / "counts"
        env = {**knobs, "STATS": str(stats)}
        with daemon([str(tools.floor), "-f"], "migration_version", env,
                    prefix="mdevfs-bench-floor-") as (root, proc, _log):
            try:
                yield Floor(root, proc, stats)
            finally:
                unmount_floor(root)


def unmount_floor(root: Path) -> None:
    """``fusermount3 -u`` a floor, whose session loop then returns and the process exits.
    mdevfs.process.stop unmounts only mdevfs's own mounts: without this it would wait its
    exit timeout for the floor before signalling it. Only a floor's mount is unmounted."""
    if fstype(root) == FLOOR_FSTYPE:
        subprocess.run(["fusermount3", "-u", str(root)], capture_output=True, check=False)


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]
