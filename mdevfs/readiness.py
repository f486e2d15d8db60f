"""The readiness protocol between a daemon and whoever started it: one JSON line.

The starter keeps one end of a socket pair; the daemon gets the other (``--ready-fd``). The
daemon writes ``{"ready": true}`` (with ``"environment"`` when asked for) once the kernel
mount exists, or ``{"error": MESSAGE, "kind": CLASS}`` when it cannot mount (CLASS names a
class of :mod:`mdevfs.errors`); if it dies first, the starter reads end-of-file. With
``--stop-with-client`` the daemon keeps its end open and unmounts when the starter's end
closes, which the kernel does when the starter dies, even by ``kill -9``.

:class:`Reporter` is the daemon's side; :func:`receive` the starter's
(:func:`mdevfs.process.start` and the zygote of :func:`mdevfs.process.start_many`).
"""
from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Callable
from typing import Any

from .errors import MdevfsError, by_name


class Reporter:
    """The daemon's end of the readiness socket (``--ready-fd``). ``environment``, if
    given, is asked once the mount exists: its answer goes with ``ready`` (what a client
    needs to use the daemon's services)."""

    def __init__(self, fd: int,
                 environment: Callable[[], dict[str, str]] | None = None) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.set_inheritable(False)
        self.environment = environment

    def ready(self) -> None:
        report: dict[str, object] = {"ready": True}
        if self.environment is not None:
            report["environment"] = self.environment()
        self._send(report)

    def failed(self, exc: MdevfsError) -> None:
        self._send({"error": str(exc), "kind": type(exc).__name__})

    def _send(self, report: dict[str, object]) -> None:
        with contextlib.suppress(OSError):  # the starter died: nobody to tell
            self.sock.sendall((json.dumps(report) + "\n").encode())


def receive(sock: socket.socket, timeout: float,
            progress: Callable[[float], None] | None = None) -> dict[str, Any] | None:
    """The daemon's report on ``sock``: ``{"ready": True}`` or ``{"error", "kind"}``; None
    when the daemon closed its end without one (it exited). Raises TimeoutError when none
    came within ``timeout`` seconds. ``progress`` is called with the seconds waited, about
    once a second, meanwhile."""
    buf = b""
    start = time.monotonic()
    deadline = start + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        step = left if progress is None else min(left, 1.0)
        if left <= 0:
            raise TimeoutError(f"no report within {timeout:.0f} s")
        if not select.select([sock], [], [], step)[0]:
            if progress is not None and time.monotonic() < deadline:
                progress(time.monotonic() - start)
            continue
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    return json.loads(buf)


def error_of(report: dict[str, Any]) -> MdevfsError:
    """The error a daemon reported, as the class of :mod:`mdevfs.errors` it names."""
    return by_name(str(report.get("kind")))(str(report.get("error")))
