"""Faults on demand: injected errnos, latency and a busy ``remove``, set through the control socket.

Consulted by the FUSE adapter before every attribute show and store
(:meth:`Faults.before`). Attributes are named by their canonical path from the
sysfs root (symlinks resolved, as :meth:`Node.path` gives it), so a fault set
through ``bus/mdev/devices/<uuid>/remove`` applies to every way to that file.
A latency sleeps before the core is called, never in the middle of a change.
"""
from __future__ import annotations

import errno

import trio
from attrs import Factory, define

from .attributes import DEVICE_REMOVE
from .errors import fail
from .kparse import kstrtoul
from .model import MdevDevice
from .nodes import File

READ, WRITE = "read", "write"


@define
class Faults:
    #: (path, "read" | "write") → (errno, once)
    errors: dict[tuple[str, str], tuple[int, bool]] = Factory(dict)
    #: path → seconds slept before each show or store
    latency: dict[str, float] = Factory(dict)
    #: UUIDs whose ``remove`` answers EBUSY, as GVT did for an in-use vGPU on old kernels
    busy: set[str] = Factory(set)
    #: path → what the requests sleeping on its latency wait for: cleared, they go on at once
    _sleepers: dict[str, trio.Event] = Factory(dict)

    def set_latency(self, path: str, seconds: float) -> None:
        """Sleep ``seconds`` before each show or store of ``path``; 0 clears the latency and
        lets the requests sleeping on it go on now."""
        if seconds:
            self.latency[path] = seconds
        else:
            self.latency.pop(path, None)
            self._wake(path)

    def clear(self, path: str | None = None) -> None:
        """Forget the faults on ``path``, or every fault (sleeping requests go on)."""
        if path is None:
            self.errors.clear()
            self.latency.clear()
            self.busy.clear()
            for sleeping in list(self._sleepers):
                self._wake(sleeping)
            return
        self.set_latency(path, 0)
        for op in (READ, WRITE):
            self.errors.pop((path, op), None)

    def sleeping(self) -> list[str]:
        """The paths a request is sleeping on now."""
        return sorted(p for p, e in self._sleepers.items() if e.statistics().tasks_waiting)

    def _wake(self, path: str) -> None:
        event = self._sleepers.pop(path, None)
        if event is not None:
            event.set()

    async def before(self, node: File, buf: bytes | None) -> None:
        """Sleep, then fail as told; ``buf`` is None for a read. No-op on a dead node,
        whose store fails with ENODEV anyway (kernfs_get_active first)."""
        if not (self.errors or self.latency or self.busy):
            return
        path = node.path
        delay = self.latency.get(path)
        if delay:
            event = self._sleepers.setdefault(path, trio.Event())
            with trio.move_on_after(delay):
                await event.wait()
            if self._sleepers.get(path) is event and not event.statistics().tasks_waiting:
                del self._sleepers[path]  # slept its time, and the last to
        if node.parent is None:
            return
        op = READ if buf is None else WRITE
        injected = self.errors.get((path, op))
        if injected is not None:
            code, once = injected
            if once:
                del self.errors[(path, op)]
            fail(code)
        if buf is not None and node.op is DEVICE_REMOVE:
            mdev: MdevDevice = node.obj
            # remove_store of 4.10–5.1: parse first; 0 is a no-op; a vendor refusal is EBUSY
            if mdev.uuid in self.busy and buf and kstrtoul(buf[:4096]) != 0:
                fail(errno.EBUSY)
