"""The control socket: hot-unplug, injected faults, run-time driver options, reset.

A Unix stream socket of mode 0600, by default in the mounting user's private
runtime directory (:func:`mdevfs.runtime.default_control`) or where
``mdevfs mount --control PATH`` puts it. Only the mounting user's uid is served
(checked with SO_PEERCRED as well as by the mode). The protocol is one JSON
object per line each way::

    → {"command": "unplug", "parent": "mtty"}
    ← {"ok": true, "result": null}
    ← {"ok": false, "errno": 2, "error": "no parent 'x' (parents: mtty)"}

Commands (fields): ``status``; ``unplug`` / ``plug`` (parent); ``fail`` (path,
op "read"|"write", error: an errno number or name such as "EIO", once);
``latency`` (path, seconds; 0 clears it, and the requests sleeping on it go on); ``busy``
(uuid, on); ``open`` (address, on: a PCI function's VFIO device held open, as by a VM);
``clear`` (path,
optional: without it every fault goes); ``set-option`` (parent, key, value);
``reset``; ``reasons`` (since, path: both optional): the refusal reasons the
drivers logged during recent shows and stores (:class:`mdevfs.daemon.Refusals`);
``grade`` (path of a migration_version, source): none, cold or live, and the limit;
``service`` (name, call, args): a call of an installed service (``nvml``), answered from
the host; ``service-files``: the /proc files the services show.
Each command runs whole between two FUSE requests, as they do.
:class:`Client` speaks it from Python; ``mdevfs ctl DIR COMMAND`` from a shell.
"""
from __future__ import annotations

import errno
import inspect
import json
import logging
import os
import posixpath
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from attrs import Factory, define

from .config import Topology
from .driver import VendorDriver, load_service, service_names
from .errors import fail
from .faults import READ, WRITE, Faults
from .model import Host
from .nodes import File, Link
from .pci import PciFunction
from .tree import Tree

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20
_SUN_PATH_MAX = 107


class ControlError(OSError):
    """The daemon refused a command; ``errno`` and the message say why."""


@define
class Control:
    """What the control socket can do to a running host."""

    host: Host
    tree: Tree
    topology: Topology
    faults: Faults
    #: unplugged parents: name → (path, driver, the PCI function it is, if one), for ``plug``
    unplugged: dict[str, tuple[str, VendorDriver, PciFunction | None]] = Factory(dict)
    #: called after each command (the state file records what it changed); may raise OSError
    after: Callable[[], None] | None = None
    #: the daemon's recent refusal reasons (:class:`mdevfs.daemon.Refusals`), if kept
    refusals: Any = None
    #: awaited after each command: the FUSE adapter drops the kernel's cached entries of
    #: the names a command removed (:meth:`mdevfs.fuse.SysfsOperations.invalidate_dropped`)
    settle: Callable[[], Awaitable[None]] | None = None
    #: the control socket's path: what tells this host from another (a service's UUIDs)
    identity: str = ""
    #: the installed services (``mdevfs.services``), each made when first asked
    services: dict[str, Any] = Factory(dict)

    def execute(self, request: Any) -> Any:
        """Run one request; raises OSError (or ValueError for bad arguments)."""
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            fail(errno.EINVAL, 'a request is a JSON object with a "command"')
        args = dict(request)
        name = args.pop("command")
        method: Callable[..., Any] | None = getattr(self, "cmd_" + name.replace("-", "_"), None)
        if method is None:
            fail(errno.EINVAL, f"unknown command {name!r}")
        try:
            inspect.signature(method).bind(**args)
        except TypeError as exc:
            fail(errno.EINVAL, f"{name}: {exc}")
        return method(**args)

    # --- commands -----------------------------------------------------------------------

    def cmd_status(self) -> dict[str, Any]:
        modules = {e.module: e.module_version for e in self.host.pci_drivers.values()
                   if e.instances and e.module_version}
        return {"pid": os.getpid(), "kernel": str(self.host.kernel), "modules": modules,
                "parents": list(self.host.parents),
                "unplugged": list(self.unplugged),
                "devices": list(self.host.devices),
                "errors": [{"path": p, "op": op, "errno": errno.errorcode.get(e, e), "once": o}
                           for (p, op), (e, o) in self.faults.errors.items()],
                "latency": dict(self.faults.latency), "sleeping": self.faults.sleeping(),
                "busy": sorted(self.faults.busy)}

    def cmd_unplug(self, parent: str) -> None:
        """Hot-unplug: the parent's devices are destroyed, then the parent goes."""
        found = self._parent(parent)
        on = self.host.pci.get(parent) if found.own_pci is None else None  # a VF it lives on
        self.host.remove_parent(parent)
        self.unplugged[parent] = (found.path, found.driver, on)

    def cmd_plug(self, parent: str) -> None:
        """Plug an unplugged parent back: its types return, its devices do not."""
        if parent not in self.unplugged:
            fail(errno.ENOENT, f"parent {parent!r} is not unplugged "
                               f"(unplugged: {', '.join(self.unplugged) or 'none'})")
        path, driver, fn = self.unplugged[parent]
        if fn is not None and self.host.pci.get(parent) is not fn:
            fail(errno.ENODEV, f"parent {parent!r} was PCI function {parent}, which is gone "
                               f"(its VFs were disabled?)")
        del self.unplugged[parent]
        self.host.add_parent(parent, path, driver)

    def cmd_fail(self, path: str, op: str, error: int | str, once: bool = False) -> str:
        if op not in (READ, WRITE):
            fail(errno.EINVAL, f"op must be {READ!r} or {WRITE!r}, not {op!r}")
        node = self._file(path)
        if (node.op.show if op == READ else node.op.store) is None:
            fail(errno.EINVAL, f"{node.path} cannot be {'read' if op == READ else 'written'}")
        self.faults.errors[(node.path, op)] = (_errno_number(error), bool(once))
        return node.path

    def cmd_latency(self, path: str, seconds: float) -> str:
        if not isinstance(seconds, (int, float)) or not 0 <= seconds <= 3600:
            fail(errno.EINVAL, f"seconds must be a number from 0 to 3600, not {seconds!r}")
        node = self._file(path)
        self.faults.set_latency(node.path, float(seconds))
        return node.path

    def cmd_busy(self, uuid: str, on: bool = True) -> None:
        uuid = str(uuid).lower()
        if on and uuid not in self.host.devices:
            fail(errno.ENOENT, f"no device {uuid}")
        if on:
            self.faults.busy.add(uuid)
        else:
            self.faults.busy.discard(uuid)

    def cmd_clear(self, path: str | None = None) -> None:
        self.faults.clear(None if path is None else self._canonical(path))

    def cmd_set_option(self, parent: str, key: str, value: Any) -> None:
        driver = (self.unplugged[parent][1] if parent in self.unplugged
                  else self._parent(parent).driver)
        setter = getattr(driver, "set_option", None)
        if setter is None:
            fail(errno.EINVAL, f"driver {driver.name} has no run-time options")
        setter(key, value)

    def cmd_open(self, address: str, on: bool = True) -> None:
        """Open (or close) the VFIO device of PCI function ``address``, as a VM would."""
        fn = self.host.pci.get(str(address))
        if fn is None or fn.vfio is None:
            fail(errno.ENOENT, f"no VFIO device of a PCI function {address}")
        self.host.open_vfio(fn, bool(on))

    def cmd_reasons(self, since: int = 0, path: str | None = None) -> dict[str, Any]:
        """The reasons drivers logged for refusals after ``since`` (``path``: one
        attribute's only): ``{"next": N, "reasons": [{seq, time, path, op, reason}]}``."""
        if not isinstance(since, int) or isinstance(since, bool):
            fail(errno.EINVAL, f"since must be a whole number, not {since!r}")
        if self.refusals is None:
            return {"next": 1, "reasons": []}
        return self.refusals.since(since, None if path is None else self._canonical(path))

    def cmd_grade(self, path: str, source: str) -> dict[str, str]:
        """How a VM whose source wrote ``source`` may come to the type or device of the
        ``migration_version`` at ``path``: ``{"result": none|cold|live, "limit", "reason"}``
        from a driver's ``grade(source)`` (mdevfs's model, beside the proposal's yes/no); a
        driver without one answers by the proposal: live when its check accepts, else none,
        limited by "other"."""
        node = self._file(path)
        if posixpath.basename(node.path) != "migration_version" or not isinstance(source, str):
            fail(errno.EINVAL, f"{path!r} is not a migration_version, or source not a string")
        if self.refusals is not None:
            self.refusals.current = None  # what the driver logs now is no attribute's refusal
        target = node.obj
        migration = target.parent.driver.migration(target)
        grade = getattr(migration, "grade", None)
        if grade is not None:
            return grade(source)
        try:
            migration.check(source)
        except OSError as exc:
            return {"result": "none", "limit": "other",
                    "reason": exc.strerror or os.strerror(exc.errno or errno.EIO)}
        return {"result": "live", "limit": "none", "reason": "the proposal's check accepts it"}

    def cmd_service(self, name: str, call: str, args: list[Any] | None = None) -> Any:
        """One call of a service (``nvml``: NVIDIA's management library), answered from
        the host as it is now."""
        if not isinstance(call, str) or not isinstance(args or [], list):
            fail(errno.EINVAL, "call must be a string and args a list")
        return self._service(name).answer(call, [str(a) for a in args or []])

    def cmd_service_files(self) -> dict[str, str]:
        """The files every service shows under /proc (``mdevfs run`` puts them there)."""
        files: dict[str, str] = {}
        for name in service_names():
            files.update(self._service(name).files())
        return files

    def _service(self, name: str) -> Any:
        if name not in self.services:
            factory = load_service(name)
            if factory is None:
                fail(errno.ENOENT, f"no service {name!r} (installed: "
                                   f"{', '.join(service_names()) or 'none'})")
            self.services[name] = factory(self.host, self.identity)
        return self.services[name]

    def cmd_reset(self) -> None:
        """The topology's initial state: no devices, no faults, fresh drivers, every GPU
        and parent as the topology gives them."""
        self.host.clear()
        self.unplugged.clear()
        self.faults.clear()
        self.services.clear()  # what they keep (NVML's vGPU version range) starts afresh
        self.topology.populate(self.host)

    # --- helpers ------------------------------------------------------------------------

    def _parent(self, name: str) -> Any:
        found = self.host.parents.get(name)
        if found is None:
            fail(errno.ENOENT, f"no parent {name!r} (parents: {', '.join(self.host.parents)})")
        return found

    def _canonical(self, path: str) -> str:
        """``path`` from the sysfs root with every symlink resolved, as Node.path gives it."""
        done: list[str] = []
        rest = [p for p in str(path).split("/") if p]
        hops = 0
        while rest:
            part = rest.pop(0)
            if part in (".", ".."):
                if part == ".." and done:
                    done.pop()
                continue
            node = self.tree.resolve("/".join(done + [part]))
            if isinstance(node, Link):
                hops += 1
                if hops > 40:
                    fail(errno.ELOOP, path)
                rest = [p for p in node.target.split("/") if p] + rest
                continue
            done.append(part)
        return posixpath.join(*done) if done else ""

    def _file(self, path: str) -> File:
        node = self.tree.resolve(self._canonical(path))
        if not isinstance(node, File):
            fail(errno.ENOENT, f"no attribute file {path!r}")
        return node

    # --- serving ------------------------------------------------------------------------

    async def serve(self, sock: socket.socket) -> None:
        """Answer requests on the listening socket ``sock`` until cancelled."""
        import trio

        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        await trio.serve_listeners(self._connection, [listener])

    async def _connection(self, stream: Any) -> None:
        import trio

        try:
            creds = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                             struct.calcsize("3i"))
            uid = struct.unpack("3i", creds)[1]
            if uid != os.getuid():
                await stream.send_all(_reply(PermissionError(
                    errno.EPERM, f"uid {uid} is not the mounting user")))
                return
            buf = b""
            while data := await stream.receive_some(65536):
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    answer = self._answer(line)
                    if self.settle is not None:
                        await self.settle()  # removed names are gone from the kernel's cache
                    await stream.send_all(answer)
                if len(buf) > MAX_LINE:
                    await stream.send_all(_reply(OSError(errno.E2BIG, "request too long")))
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        except Exception:
            log.exception("control connection failed")
        finally:
            await stream.aclose()

    def _answer(self, line: bytes) -> bytes:
        try:
            request = json.loads(line)
            try:
                result = self.execute(request)
            finally:
                if self.after is not None:
                    self.after()
            log.info("control: %s", request)
            return (json.dumps({"ok": True, "result": result}) + "\n").encode()
        except json.JSONDecodeError as exc:
            return _reply(OSError(errno.EINVAL, f"not JSON: {exc}"))
        except ValueError as exc:
            return _reply(OSError(errno.EINVAL, str(exc)))
        except OSError as exc:
            return _reply(exc)
        except Exception as exc:  # a driver bug must not end the daemon
            log.exception("control command %r failed", line[:200])
            return _reply(OSError(errno.EIO, f"internal error: {type(exc).__name__}: {exc}"))


#: errnos from 512 up are the kernel's internal ones, "never seen by user programs"
#: (include/linux/errno.h); fs/fuse/dev.c rejects a reply's error past a bound (-1000 in
#: older kernels, tighter in newer ones) and such a request was left unanswered here: a
#: reader in a sleep kill -9 could not end. So only 1 to 511 are injected.
MAX_ERRNO = 511


def _errno_number(value: int | str) -> int:
    """An errno that a caller can receive through FUSE: a name such as "EIO", or a
    number from 1 to 511 that has a name; anything else is refused with EINVAL."""
    code: Any = value
    if isinstance(value, str):
        text = value.strip()
        number = text.isascii() and text.isdigit()
        code = int(text) if number else getattr(errno, text.upper(), None)
        if code is None or not text.upper().startswith("E") and not number:
            fail(errno.EINVAL, f"unknown errno {value!r}: give a name such as EIO or a "
                               f"number from 1 to {MAX_ERRNO}")
    if not isinstance(code, int) or isinstance(code, bool):
        fail(errno.EINVAL, f"errno must be a name or a number, not {value!r}")
    if not 0 < code <= MAX_ERRNO:
        fail(errno.EINVAL, f"errno {code} cannot be injected: only 1 to {MAX_ERRNO} reach a "
                           f"caller through FUSE unchanged")
    if code not in errno.errorcode:
        fail(errno.EINVAL, f"errno {code} has no name on this system (errno.errorcode)")
    return code


def _reply(exc: OSError) -> bytes:
    code = exc.errno or errno.EIO
    return (json.dumps({"ok": False, "errno": code,
                        "error": exc.strerror or os.strerror(code)}) + "\n").encode()


def bind(path: str | os.PathLike[str]) -> socket.socket:
    """A listening socket at ``path`` with mode 0600; a stale one (no daemon) is replaced.
    Raises OSError; its strerror does not repeat the path."""
    path = os.fspath(path)
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise OSError(errno.ENAMETOOLONG, f"the path is longer than {_SUN_PATH_MAX} bytes")
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise OSError(errno.EEXIST, "it exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # left by a daemon that was killed
        else:
            raise OSError(errno.EADDRINUSE, "another mdevfs daemon answers there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # born 0600: no moment where others may connect
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock


class Client:
    """Speaks to a daemon's control socket; each method raises :class:`ControlError`."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def request(self, command: str, **fields: Any) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(os.fspath(self.path))
            try:
                sock.sendall((json.dumps({"command": command, **fields}) + "\n").encode())
            except BrokenPipeError:
                pass  # refused before it read: the refusal waits to be read
            buf = b""
            while not buf.endswith(b"\n"):
                data = sock.recv(65536)
                if not data:
                    raise ControlError(errno.ECONNRESET, "the daemon closed the connection")
                buf += data
        reply = json.loads(buf)
        if not reply["ok"]:
            raise ControlError(reply["errno"], reply["error"])
        return reply["result"]

    def status(self) -> dict[str, Any]:
        return self.request("status")

    def unplug(self, parent: str) -> None:
        self.request("unplug", parent=parent)

    def plug(self, parent: str) -> None:
        self.request("plug", parent=parent)

    def fail(self, path: str, op: str, error: int | str, once: bool = False) -> str:
        """Make ``op`` ("read" or "write") of the attribute at ``path`` fail with ``error``."""
        return self.request("fail", path=path, op=op, error=error, once=once)

    def latency(self, path: str, seconds: float) -> str:
        return self.request("latency", path=path, seconds=seconds)

    def busy(self, uuid: str, on: bool = True) -> None:
        self.request("busy", uuid=uuid, on=on)

    def open(self, address: str, on: bool = True) -> None:
        """Hold the VFIO device of PCI function ``address`` open (``on``) or close it."""
        self.request("open", address=address, on=on)

    def clear(self, path: str | None = None) -> None:
        self.request("clear", **({} if path is None else {"path": path}))

    def set_option(self, parent: str, key: str, value: Any) -> None:
        self.request("set-option", parent=parent, key=key, value=value)

    def reset(self) -> None:
        self.request("reset")

    def grade(self, path: str, source: str) -> dict[str, str]:
        """How ``source`` may migrate to the migration_version at ``path``: result, limit,
        reason."""
        return self.request("grade", path=path, source=source)

    def reasons(self, since: int = 0, path: str | None = None) -> dict[str, Any]:
        """Recent refusal reasons: ``{"next": N, "reasons": [{seq, time, path, op, reason}]}``."""
        return self.request("reasons", since=since, **({} if path is None else {"path": path}))
