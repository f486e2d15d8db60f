"""One mdevfs daemon: a topology's host and tree, its state file, faults and control socket.

    daemon = Daemon.prepare(topology, state="state.json")   # refuses a bad state file
    daemon.serve("/tmp/sys", control_path=path)             # until unmounted

:meth:`prepare` does everything that can fail on bad input before anything is
mounted (and takes the state file's lock), then :meth:`serve`. The topology is built and
the state file read once, here. :func:`run` is both, as ``mdevfs mount --foreground`` does
it; :func:`main` is a daemon process's command line (``python -P -m mdevfs.daemon``, as
:func:`mdevfs.process.start` starts or forks it).

Every change reaches the state file before the request that made it is answered:
after each attribute store (:meth:`after_store`) and each control command. A change
the disk refuses is undone (a create is removed again, a remove re-created, a vendor
value put back) and the request fails with EIO, logged with the file and the cause;
ENOSPC would say "the pool is full", which is not what happened.

**Refusal reasons.** A vendor driver explains a refusal in words only in its log
(``log.error`` before it raises the errno), as the kernel's drivers do with
``gvt_vgpu_err``. :class:`Refusals` keeps every WARNING or ERROR record logged while an
attribute's show or store runs, with the attribute's path, for the control
socket's ``reasons`` command: ``mdevfs check`` and ``matrix`` show them beside the
errno, and the log keeps them as before.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import gc
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from attrs import Factory, define

from . import control
from .config import Topology
from .driver import service_environment
from .errors import MdevfsError, MountError, UsageError
from .faults import Faults
from .model import Host
from .mounts import check_mountpoint
from .nodes import File
from .readiness import Reporter
from .state import StateFile, StateSaveError
from .tree import Tree
from .uevent import Uevents

log = logging.getLogger("mdevfs")


class Refusals(logging.Handler):
    """The last ``keep`` WARNING and ERROR records logged during an attribute's show or store.

    The FUSE adapter calls :meth:`Daemon.before` right before the synchronous show or
    store, so a record logged after it belongs to that attribute; records of the
    control socket and uevent tasks, which run between requests, are not kept. Each
    entry: ``seq`` (increasing), ``time``, ``path`` (canonical, from the root), ``op``
    ("read" or "write") and ``reason`` (the log message).
    """

    IGNORED = ("mdevfs.control", "mdevfs.uevent")

    def __init__(self, keep: int = 256) -> None:
        super().__init__(logging.WARNING)
        self.entries: deque[dict[str, Any]] = deque(maxlen=keep)
        self.seq = 0
        #: (path, op) of the attribute whose show or store runs now, or last ran
        self.current: tuple[str, str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.current is None or record.name.startswith(self.IGNORED):
            return
        self.seq += 1
        path, op = self.current
        self.entries.append({"seq": self.seq, "time": round(record.created, 3), "path": path,
                             "op": op, "reason": record.getMessage()})

    def since(self, seq: int = 0, path: str | None = None) -> dict[str, Any]:
        """``{"next": N, "reasons": [...]}``: the entries after ``seq`` (for ``path`` only,
        if given); ask again with ``since=N`` for the ones after these."""
        return {"next": self.seq + 1,
                "reasons": [e for e in self.entries if e["seq"] >= seq
                            and (path is None or e["path"] == path)]}


#: the collector's thresholds while serving (Python's default: 700, 10, 10)
GC_THRESHOLDS = (20_000, 50, 50)


@define
class Daemon:
    topology: Topology
    host: Host
    tree: Tree
    state: StateFile | None
    faults: Faults
    ready: bool = False
    refusals: Refusals = Factory(Refusals)

    @classmethod
    def prepare(cls, topology: Topology, state: str | os.PathLike[str] | None = None) -> Daemon:
        """Build the host and its tree and restore the state file; raises TopologyError,
        StateError or StateInUse. The tree observes the host first, so restored devices
        appear.

        The cyclic garbage collector sleeps meanwhile: what is built lives as long as the
        daemon, and a restore of 100,000 devices (two million objects) spent 9 of its 21 s
        in collections that found nothing (:meth:`serve` then freezes it)."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            return cls._prepare(topology, state)
        finally:
            if enabled:
                gc.enable()

    @classmethod
    def _prepare(cls, topology: Topology, state: str | os.PathLike[str] | None) -> Daemon:
        host = topology.empty_host()
        tree = Tree(host)  # observes first, so that the topology's own devices appear
        if state is None:
            topology.populate(host)
            return cls(topology, host, tree, None, Faults())
        # With a state file, the topology's [[device]] entries are created once, into a new
        # (empty) file, which records them; from then on the file says which devices exist.
        fresh = not os.path.exists(state) or os.path.getsize(state) == 0
        topology.populate(host, devices=False)
        daemon = cls(topology, host, tree, StateFile.open(state, host), Faults())
        if fresh:
            try:
                topology.add_devices(host)
            except BaseException:
                daemon.state.close()  # type: ignore[union-attr]
                raise
        return daemon

    # --- what the FUSE adapter calls around every show and store ---------------------------

    async def before(self, node: File, buf: bytes | None) -> None:
        self.refusals.current = None  # an injected fault is not the driver's refusal
        await self.faults.before(node, buf)
        self.refusals.current = (node.path, "read" if buf is None else "write")

    def after_store(self, node: File) -> None:
        """Record what the store changed; undo it and answer EIO if the disk refuses."""
        if self.state is not None:
            self.save(node.obj, undo=True)

    def save(self, touched: object = None, undo: bool = False) -> None:
        assert self.state is not None
        try:
            self.state.flush(touched)
        except StateSaveError as exc:
            undone = self._undo(exc.changes) if undo else False
            if not undone:
                self.state.resync()
            what = ", ".join(f"{op} {getattr(obj, 'uuid', None) or obj.bdf}"
                             for op, obj, _ in exc.changes)
            log.error("%s (%s); %s", exc.strerror, what,
                      "undone, the write fails with EIO" if undone else
                      "the file is rewritten whole at the next change")
            raise OSError(errno.EIO, exc.strerror) from None

    def _undo(self, changes: list) -> bool:
        """Take back changes that were not recorded, newest first; False if one cannot be."""
        assert self.state is not None
        with self.state.paused():
            for op, obj, before in reversed(changes):
                try:
                    if not self._undo_one(op, obj, before):
                        return False
                except (OSError, ValueError):
                    log.exception("cannot undo %s of %s", op, getattr(obj, "uuid", None) or obj)
                    return False
        return True

    def _undo_one(self, op: str, obj: Any, before: Any) -> bool:
        host = self.host
        if op == "pci":  # a function's binding, or a PF's VFs: back to their record
            if before is None or host.pci.get(obj.bdf) is not obj:
                return False
            self.state.undo_pci(obj, before)  # type: ignore[union-attr]
            return True
        if op == "add" and host.devices.get(obj.uuid) is obj:
            host.remove(obj, b"1")
            return True
        parent = host.parents.get(obj.parent.name)
        if op == "remove" and before is not None and parent is not None:
            mtype = parent.types.get(obj.mdev_type.type_id)  # the parent may be registered anew
            if mtype is None:
                return False
            group, vendor = before  # the device as the file still has it
            host.restore(mtype, obj.uuid, group, json.loads(vendor), bound=group is not None)
            return True
        if op == "bind" and host.devices.get(obj.uuid) is obj and obj.binding is not None:
            host.unbind(obj)  # before 5.14, where a bind can happen, an unbind frees nothing
            return True
        if op == "vendor" and before is not None:
            obj.vendor.clear()
            obj.vendor.update(json.loads(before[1]))
            return True
        return False  # an unbind (a bind again would take another group), an unplugged parent

    # --- serving ----------------------------------------------------------------------------

    def serve(self, mountpoint: str | os.PathLike[str], allow_other: bool = False, *,
              control_path: str | os.PathLike[str] | None = None,
              uevents_path: str | os.PathLike[str] | None = None,
              reporter: Reporter | None = None, stop_with_client: bool = False,
              trace: bool = False) -> None:
        """Mount and serve until unmounted, SIGTERM or SIGINT (or, with
        ``stop_with_client``, until the process at the other end of ``reporter`` dies);
        every change is in the state file as soon as it is made, so there is nothing left
        to save at the end. The daemon binds its sockets itself: the control socket at
        ``control_path`` and, at ``uevents_path``, the one on which a netlink socket is
        handed over for uevents; both are removed at the end. ``trace`` logs a line for
        every request (:mod:`mdevfs.trace`). Raises UsageError when a socket cannot be
        bound, MountError when the mount fails.

        The serving side is composed here, in order: the host and its tree (prepared), the
        state file (an observer, flushed after each change), the uevent sender (an
        observer), faults and the control socket, then FUSE.

        What is built by then lives as long as the daemon: it is frozen out of the cyclic
        garbage collector, which then runs less often (GC_THRESHOLDS). The tree frees itself
        by reference counting (a dropped node's links are cut); at 5,000 devices the default
        thresholds cost a create 15 of its 67 µs."""
        import trio

        from . import fuse

        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        if trace:
            from .trace import TracingOperations as Operations
        else:
            Operations = fuse.SysfsOperations
        ops = Operations(self.tree, before=self.before, after_store=self.after_store)
        with contextlib.ExitStack() as sockets:
            tasks = []
            if control_path is not None:
                sock = sockets.enter_context(_listening(control_path, "control socket",
                                                        "; give another with --control PATH"))
                ctl = control.Control(self.host, self.tree, self.topology, self.faults,
                                      after=self.save if self.state is not None else None,
                                      refusals=self.refusals, settle=ops.invalidate_dropped,
                                      identity=os.path.abspath(control_path))
                tasks.append(functools.partial(ctl.serve, sock))
            if uevents_path is not None:
                sock = sockets.enter_context(_listening(uevents_path, "uevent socket"))
                tasks.append(functools.partial(Uevents(self.host).serve, sock))
            tasks.append(functools.partial(self._report_ready, reporter, stop_with_client,
                                           os.fspath(mountpoint)))
            logging.getLogger().addHandler(self.refusals)
            try:
                if self.state is not None:
                    self.state.flush()  # a version 1 file becomes a journal now, if it can
                trio.run(functools.partial(fuse.serve, ops, os.fspath(mountpoint), allow_other,
                                           tasks=tasks))
            except RuntimeError as exc:
                if self.ready:
                    raise
                raise MountError(f"cannot mount {os.fspath(mountpoint)}: {exc}") from exc
            finally:
                logging.getLogger().removeHandler(self.refusals)
                if self.state is not None:
                    self.state.close()

    async def _report_ready(self, reporter: Reporter | None, stop_with_client: bool,
                            mountpoint: str) -> None:
        """Runs once the kernel mount exists: tell the starter; then, if told to, wait
        for it to die and unmount as SIGTERM does."""
        import trio

        self.ready = True
        if reporter is None:
            return
        reporter.ready()
        if not stop_with_client:
            reporter.sock.close()
            return
        link = trio.socket.from_stdlib_socket(reporter.sock)
        while await link.recv(64):
            pass
        log.warning("the process that started this daemon is gone; unmounting %s", mountpoint)
        os.kill(os.getpid(), signal.SIGTERM)  # the very path of a SIGTERM: a clean unmount


@contextlib.contextmanager
def _listening(path: str | os.PathLike[str], what: str, hint: str = "") -> Iterator[socket.socket]:
    """A listening socket bound at ``path`` (:func:`mdevfs.control.bind`), closed and its
    file removed at the end; UsageError naming ``what`` when it cannot be bound."""
    try:
        sock = control.bind(path)
    except OSError as exc:
        raise UsageError(f"{what} {os.fspath(path)}: {exc.strerror}{hint}") from None
    try:
        yield sock
    finally:
        sock.close()  # trio may have closed it already
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def run(directory: str | os.PathLike[str], *, config: str | None = None,
        kernel: str | None = None, state: str | None = None,
        control_path: str | os.PathLike[str] | None = None,
        uevents_path: str | os.PathLike[str] | None = None, allow_other: bool = False,
        ready_fd: int | None = None, stop_with_client: bool = False,
        trace: bool = False, environment: bool = False) -> None:
    """Prepare and serve the topology ``config`` (default: the embedded one), on ``kernel``
    when given, on ``directory``: everything that can fail on bad input fails before the
    mount. A failure is reported on ``ready_fd`` (:mod:`mdevfs.readiness`) as well as raised;
    with ``environment``, the report of readiness carries what a client needs to use the
    daemon's services (:func:`mdevfs.driver.service_environment`)."""
    reporter = None
    if ready_fd is not None:
        reporter = Reporter(ready_fd, functools.partial(
            service_environment, os.fspath(control_path)) if environment and control_path
            else None)
    try:
        topology = Topology.from_toml(config) if config else Topology.default()
        daemon = Daemon.prepare(topology.on_kernel(kernel), state)
        check_mountpoint(Path(directory))
        log.info("mounting %s (%s parents, %d devices restored) at %s; control socket %s",
                 topology.source, len(daemon.host.parents), len(daemon.host.devices),
                 os.fspath(directory), control_path)
        daemon.serve(directory, allow_other, control_path=control_path,
                     uevents_path=uevents_path, reporter=reporter,
                     stop_with_client=stop_with_client, trace=trace)
    except MdevfsError as exc:
        if reporter is not None:
            reporter.failed(exc)
        raise


def main(argv: list[str] | None = None) -> int:
    """A daemon process: ``python -P -m mdevfs.daemon [--debug] --control PATH [--ready-fd
    FD] [--config FILE] [--kernel X.Y] [--state FILE] [--uevents SOCKET] [--allow-other]
    [--stop-with-client] [--environment] DIR``, the command line :func:`mdevfs.process.daemon_argv` builds.
    Returns the exit status of :mod:`mdevfs.errors`, having printed the error."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mdevfs.daemon",
                                     description="One mdevfs daemon (started by mdevfs mount).")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--control", required=True)
    parser.add_argument("--ready-fd", type=int)
    parser.add_argument("--config")
    parser.add_argument("--kernel")
    parser.add_argument("--state")
    parser.add_argument("--uevents")
    parser.add_argument("--allow-other", action="store_true")
    parser.add_argument("--stop-with-client", action="store_true")
    parser.add_argument("--environment", action="store_true")
    parser.add_argument("dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        run(os.path.abspath(args.dir), config=args.config, kernel=args.kernel, state=args.state,
            control_path=args.control, uevents_path=args.uevents,
            allow_other=args.allow_other, ready_fd=args.ready_fd,
            stop_with_client=args.stop_with_client, trace=args.debug,
            environment=args.environment)
    except MdevfsError as exc:
        print(f"{exc.prefix}: {exc}", file=sys.stderr)
        return exc.exit_status
    return 0


def preloaded() -> Callable[[list[str]], int]:
    """:func:`main`, with everything a daemon imports imported now (pyfuse3 and trio, with
    :mod:`mdevfs.fuse`, and the drivers and services mdevfs ships): a process that forks
    daemons imports them once, not each daemon. A third party's driver is left for each
    daemon to import from disk, so that a process that lives on (the forker) never serves
    an old copy of it."""
    import importlib.metadata

    from . import fuse  # noqa: F401
    from .driver import ENTRY_POINT_GROUP, SERVICE_GROUP

    for group in (ENTRY_POINT_GROUP, SERVICE_GROUP):
        for ep in importlib.metadata.entry_points(group=group):
            if ep.dist is not None and ep.dist.name == "mdevfs":
                with contextlib.suppress(Exception):  # `mdevfs drivers` says why
                    ep.load()
    return main


if __name__ == "__main__":  # python -P -m mdevfs.daemon: the module, once, under its name
    from mdevfs.daemon import main as _main

    status = _main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    if threading.active_count() > 1:
        sys.exit(status)
    os._exit(status)  # nothing left to close: skip the interpreter's teardown
