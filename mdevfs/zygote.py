"""The zygote of :func:`mdevfs.process.start_many`: ``python -P -m mdevfs.zygote``.

It reads the hosts (the keyword arguments of :func:`mdevfs.process.start`) as one JSON
document on stdin, imports what every daemon imports, once, forks one daemon per host,
each running exactly what ``mdevfs mount --foreground`` runs (:func:`mdevfs.daemon.main`),
and prints one JSON line per host, in order: ``{"ready": true, "pid": N}`` or
``{"error": MESSAGE, "kind": CLASS}``. The daemons are detached (a session of their own)
and outlive it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path

from . import daemon, namespace, readiness
from .errors import MdevfsError
from .process import daemon_argv, fork_daemon
from .runtime import open_log


def main() -> None:  # pragma: no cover - runs as python -m mdevfs.zygote
    """Read the hosts from stdin, import everything, fork a daemon per host, and print
    one JSON line per host: ``{"ready": true, "pid": N}`` or ``{"error", "kind"}``."""
    parent = os.getppid()  # the fleet up that started it
    import gc

    daemon.preloaded()  # what every daemon imports, once for all
    try:  # it must never go on forking daemons nobody waits for (up killed, even by OOM)
        namespace.die_with(parent)
    except OSError as exc:
        sys.exit(f"mdevfs zygote: {exc.strerror}")
    request = json.loads(sys.stdin.read())
    gc.freeze()  # the collector then leaves the shared pages alone in the children
    held: list[socket.socket] = []  # our ends, open until each daemon has reported
    children = [_fork_daemon(host, held) for host in request["hosts"]]
    for pid, sock, log_file in children:
        sys.stdout.write(json.dumps(_readiness(pid, sock, log_file, request["timeout"])) + "\n")
    sys.stdout.flush()


def _fork_daemon(host: dict[str, object], held: list[socket.socket]
                 ) -> tuple[int, socket.socket | None, Path]:
    log_file = Path(host["log_file"])
    try:
        log_fd = open_log(log_file)
    except MdevfsError:
        return -1, None, log_file
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    argv = daemon_argv(Path(host["root"]), control=Path(host["control"]),
                       ready_fd=theirs.fileno(), config=host.get("config"),
                       state=host.get("state"),
                       uevents=Path(host["uevents"]) if host.get("uevents") else None,
                       allow_other=bool(host.get("allow_other")), extra=host.get("extra", ()))
    pid = fork_daemon(daemon.main, argv, log_fd, theirs.fileno(), new_session=True)
    os.close(log_fd)
    theirs.close()
    held.append(mine)
    return pid, mine, log_file


def _readiness(pid: int, sock: socket.socket | None, log_file: Path,
               timeout: float) -> dict[str, object]:
    if sock is None:
        return {"error": f"log file {log_file}: cannot be opened", "kind": "UsageError"}
    try:
        report = readiness.receive(sock, timeout)
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return {"error": f"the mdevfs daemon did not mount within {timeout:.0f} s; its "
                f"log {log_file}", "kind": "MountError"}
    finally:
        sock.close()
    if report is None:
        _, status = os.waitpid(pid, 0)
        tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
        return {"error": f"the mdevfs daemon exited with status "
                f"{os.waitstatus_to_exitcode(status)}; its log {log_file}:\n{tail}",
                "kind": "MountError"}
    return {**report, "pid": pid} if report.get("ready") else report


if __name__ == "__main__":  # pragma: no cover
    main()
