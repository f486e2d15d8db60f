"""One mdevfs daemon: a topology's host and tree, its state file, faults and control socket.

    daemon = Daemon.prepare(topology, state="state.json")   # refuses a bad state file
    daemon.serve("/tmp/sys", sock=control.bind("/tmp/.sys.mdevfs-ctl"))  # until unmounted

:meth:`prepare` does everything that can fail on bad input before anything is
mounted; ``mdevfs mount`` (and ``mdevfs run``) call it, then :meth:`serve`.
"""
from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Awaitable, Callable, Sequence

from attrs import define

from . import control
from .config import Topology
from .faults import Faults
from .model import Host
from .state import StateError, StateFile
from .sysfs import File, Tree


@define
class Daemon:
    topology: Topology
    host: Host
    tree: Tree
    state: StateFile | None
    faults: Faults

    @classmethod
    def prepare(cls, topology: Topology, state: str | os.PathLike[str] | None = None) -> Daemon:
        """Build the host and its tree and restore the state file; raises TopologyError
        or StateError. The tree observes the host first, so restored devices appear."""
        host = topology.build()
        tree = Tree(host)
        state_file = StateFile.open(state, host) if state is not None else None
        return cls(topology, host, tree, state_file, Faults())

    # --- the FUSE adapter's hooks (fuse.Hooks) --------------------------------------------

    async def before(self, node: File, buf: bytes | None) -> None:
        await self.faults.before(node, buf)

    def after_store(self, node: File) -> None:
        if self.state is not None:
            self.state.save()  # a vendor attribute may have changed mdev.vendor

    # --- serving ----------------------------------------------------------------------------

    def serve(self, mountpoint: str | os.PathLike[str], allow_other: bool = False,
              sock: socket.socket | None = None,
              tasks: Sequence[Callable[[], Awaitable[None]]] = ()) -> None:
        """Mount and serve until unmounted, SIGTERM or SIGINT; every change is in the state
        file as soon as it is made, so there is nothing left to save at the end.
        ``sock`` is a listening control socket from :func:`control.bind`; it is closed
        and its file removed at the end. ``tasks`` run alongside (the uevent hand-over)."""
        import trio

        from .fuse import serve

        tasks = list(tasks)
        if sock is not None:
            sock_path = sock.getsockname()
            ctl = control.Control(self.host, self.tree, self.topology, self.faults)
            tasks.append(functools.partial(ctl.serve, sock))
        try:
            if self.state is not None:
                try:
                    self.state.save()  # a missing file is created now, so a restart finds it
                except OSError as exc:
                    raise StateError(f"state file {self.state.path}: cannot write it: "
                                     f"{exc.strerror}") from exc
            trio.run(functools.partial(serve, self.tree, os.fspath(mountpoint), allow_other,
                                       hooks=self, tasks=tasks))
        finally:
            if sock is not None:
                sock.close()  # trio may have closed it already
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(sock_path)
