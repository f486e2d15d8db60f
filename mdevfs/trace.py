"""A request trace at debug level: each open, read, write and failed lookup, with its result.

    mdevfs -v mount DIR        # or --debug; then `mdevfs log DIR` shows lines such as
    … DEBUG: write devices/virtual/mtty/mtty/mdev_supported_types/mtty-1/create b'bad\\n': EINVAL
    … DEBUG: read devices/virtual/mtty/mtty/mdev_supported_types/mtty-1/available_instances: b'24\\n'
    … DEBUG: lookup devices/virtual/mtty/mtty/nope: ENOENT

:class:`TracingOperations` wraps the adapter's handlers without changing what they answer:
it calls each one's undecorated body, so that it sees the ``OSError`` the core or the driver
raised (its errno and the driver's reason) before :func:`mdevfs.fuse.handler` turns it into
a bare errno, logs, and re-raises. The daemon uses it only when debug logging is on, so a
mount without ``-v`` pays nothing for it.
"""
from __future__ import annotations

import errno
import logging
from typing import Any

import pyfuse3

from .fuse import SysfsOperations, handler

log = logging.getLogger("mdevfs.trace")

_SHOWN = 120  # bytes of a value shown in a trace line


def _result(exc: BaseException) -> str:
    code = exc.errno if isinstance(exc, (OSError, pyfuse3.FUSEError)) else errno.EIO
    name = errno.errorcode.get(code or errno.EIO, str(code))
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else None
    return f"{name} ({reason})" if reason else name


def _value(data: bytes) -> str:
    return repr(data[:_SHOWN]) + ("…" if len(data) > _SHOWN else "")


class TracingOperations(SysfsOperations):
    """:class:`~mdevfs.fuse.SysfsOperations` that logs every request it answers at debug level."""

    @handler
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        try:
            attr = await SysfsOperations.lookup.__wrapped__(self, parent_inode, name, ctx)
        except (OSError, pyfuse3.FUSEError) as exc:
            self._missed(parent_inode, name, _result(exc))
            raise
        if attr.st_ino == 0:  # a missing name, answered as an entry of inode 0
            self._missed(parent_inode, name, "ENOENT")
        return attr

    def _missed(self, parent_inode: int, name: bytes, result: str) -> None:
        parent = self._handles_path(parent_inode)
        log.debug("lookup %s: %s", f"{parent}/{name.decode(errors='replace')}".lstrip("/"),
                  result)

    @handler
    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        try:
            return await SysfsOperations.open.__wrapped__(self, inode, flags, ctx)
        except (OSError, pyfuse3.FUSEError) as exc:
            log.debug("open %s: %s", self._handles_path(inode), _result(exc))
            raise

    @handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        node = self._handles[fh].node
        try:
            data = await SysfsOperations.read.__wrapped__(self, fh, off, size)
        except (OSError, pyfuse3.FUSEError) as exc:
            log.debug("read %s: %s", node.path, _result(exc))
            raise
        if off == 0:  # one line per show(), not one per chunk
            log.debug("read %s: %s", node.path, _value(data))
        return data

    @handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        node = self._handles[fh].node
        data = bytes(buf)
        try:
            count = await SysfsOperations.write.__wrapped__(self, fh, off, buf)
        except (OSError, pyfuse3.FUSEError) as exc:
            log.debug("write %s %s: %s", node.path, _value(data), _result(exc))
            raise
        log.debug("write %s %s: ok", node.path, _value(data))
        return count

    def _handles_path(self, inode: int) -> str:
        try:
            return self._node(inode).path
        except Exception:  # a stale inode: say which
            return f"inode {inode}"
