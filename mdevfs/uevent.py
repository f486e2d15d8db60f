"""Uevents: what the kernel and udevd would announce when the model changes.

Each change sends two datagrams per event on a NETLINK_KOBJECT_UEVENT socket:

* the kernel's (group 1): ``ACTION@DEVPATH`` then ``KEY=value`` strings, each
  NUL-terminated (lib/kobject_uevent.c);
* udevd's (group 2), which libudev monitors (libvirt's node-device driver)
  read: a 40-byte header (``"libudev"``, magic 0xfeedcafe big-endian, header
  size, properties offset and length, then the big-endian MurmurHash2 of the
  subsystem and devtype and a tag bloom filter, as systemd's
  ``device_monitor_send_device`` fills them) followed by the same strings.

The events, with the properties of the ``uevent`` file plus ACTION, DEVPATH,
SUBSYSTEM and SEQNUM (one counter, from 1), follow the kernel's order:

* create: ``add`` (no DRIVER yet), then ``bind`` with DRIVER (mdev_device_create:
  device_add, then device_driver_attach); remove: ``unbind`` then ``remove``;
* a PCI function (a VF that sriov_numvfs made): ``add``, then ``bind``; ``unbind`` then
  ``remove`` when the VFs are disabled;
* a parent: ``add``, then ``change`` with MDEV_STATE=registered
  (mdev_register_parent); on unplug ``change`` with MDEV_STATE=unregistered, then
  ``remove`` (mdevfs drops the parent's directory with it).

Libudev ignores group-1 messages from a process (nl_pid > 0), so only raw
listeners see the kernel ones; the udev ones are what libvirt acts on.

Nothing is sent until a process hands the daemon a netlink socket of its own
network namespace (:func:`mdevfs.namespace.hand_over`, done by ``mdevfs run``)
on the Unix socket of ``mdevfs mount --uevents PATH``. A socket of the daemon's
own network namespace, or of PID 1's, is refused: listeners on the host never
see an emulated event.
"""
from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import socket
import struct
import time
from collections.abc import Mapping

from .attributes import device_uevent, parent_uevent
from .model import Binding, Host, HostObserver, MdevDevice, Parent
from .pci import PciDriver, PciFunction
from .pci_sysfs import pci_uevent

log = logging.getLogger(__name__)

NETLINK_KOBJECT_UEVENT = 15
GROUP_KERNEL, GROUP_UDEV = 1, 2
UDEV_MONITOR_MAGIC = 0xFEEDCAFE
_HEADER_SIZE = 40
_SIOCGSKNS = 0x894C  # a socket's network namespace, as a new descriptor


def murmur2(data: bytes, seed: int = 0) -> int:
    """MurmurHash2, 32 bits (systemd's ``string_hash32`` uses seed 0)."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    h = (seed ^ len(data)) & mask
    whole = len(data) & ~3
    for (k,) in struct.iter_unpack("<I", data[:whole]):
        k = (k * m) & mask
        k ^= k >> 24
        h = ((h * m) & mask) ^ ((k * m) & mask)
    tail = data[whole:]
    for i in reversed(range(len(tail))):
        h ^= tail[i] << (8 * i)
    if tail:
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    return h ^ (h >> 15)


def kernel_message(props: Mapping[str, str]) -> bytes:
    head = f"{props['ACTION']}@{props['DEVPATH']}\0"
    return (head + "".join(f"{k}={v}\0" for k, v in props.items())).encode()


def udev_message(props: Mapping[str, str]) -> bytes:
    body = "".join(f"{k}={v}\0" for k, v in props.items()).encode()
    devtype = props.get("DEVTYPE")
    return (b"libudev\0" + struct.pack(">I", UDEV_MONITOR_MAGIC)
            + struct.pack("=III", _HEADER_SIZE, _HEADER_SIZE, len(body))
            + struct.pack(">IIII", murmur2(props["SUBSYSTEM"].encode()),
                          murmur2(devtype.encode()) if devtype else 0, 0, 0)
            + body)


def _netns(fd: int) -> tuple[int, int]:
    """The (st_dev, st_ino) of a socket's network namespace."""
    ns = fcntl.ioctl(fd, _SIOCGSKNS)
    try:
        st = os.fstat(ns)
    finally:
        os.close(ns)
    return st.st_dev, st.st_ino


def check_private(nl: socket.socket) -> None:
    """Raise PermissionError unless ``nl`` lives in a network namespace other than
    this process's and PID 1's (where the host's listeners are)."""
    theirs = _netns(nl.fileno())
    for path, whose in (("/proc/self/ns/net", "the daemon's own"), ("/proc/1/ns/net", "PID 1's")):
        try:
            st = os.stat(path)
        except OSError:
            continue  # PID 1 of another user: its namespace is not ours to compare
        if theirs == (st.st_dev, st.st_ino):
            raise PermissionError(errno.EPERM, f"the socket is in {whose} network namespace; "
                                  f"only a private one is served")


class Uevents(HostObserver):
    """Announces the host's changes on the netlink socket handed in last."""

    def __init__(self, host: Host) -> None:
        self.sock: socket.socket | None = None
        self.seqnum = 0
        host.observers.append(self)  # after the tree: the files exist when an event arrives

    def attach(self, nl: socket.socket) -> None:
        check_private(nl)
        if self.sock is not None:
            self.sock.close()
        self.sock = nl

    def emit(self, action: str, devpath: str, subsystem: str,
             props: Mapping[str, str]) -> dict[str, str]:
        """Send one event; returns its properties (for tests and logs)."""
        self.seqnum += 1
        event = {"ACTION": action, "DEVPATH": f"/{devpath}", "SUBSYSTEM": subsystem,
                 **props, "SEQNUM": str(self.seqnum),
                 "USEC_INITIALIZED": str(time.monotonic_ns() // 1000)}
        if self.sock is None:
            return event
        kernel = {k: v for k, v in event.items() if k != "USEC_INITIALIZED"}
        for group, data in ((GROUP_KERNEL, kernel_message(kernel)),
                            (GROUP_UDEV, udev_message(event))):
            try:
                self.sock.sendto(data, (0, group))
            except OSError as exc:  # ECONNREFUSED: no kernel input on old kernels
                if exc.errno != errno.ECONNREFUSED:
                    log.warning("uevent %s %s not sent: %s", action, devpath, exc.strerror)
        return event

    # --- HostObserver -------------------------------------------------------------------

    def parent_added(self, parent: Parent) -> None:
        props = parent_uevent(parent)
        subsystem = parent.driver.subsystem[1]
        self.emit("add", parent.path, subsystem, props)
        self.emit("change", parent.path, subsystem, {**props, "MDEV_STATE": "registered"})

    def parent_removed(self, parent: Parent) -> None:
        props = parent_uevent(parent)
        subsystem = parent.driver.subsystem[1]
        self.emit("change", parent.path, subsystem, {**props, "MDEV_STATE": "unregistered"})
        self.emit("remove", parent.path, subsystem, props)

    def device_added(self, mdev: MdevDevice) -> None:
        path, props = f"{mdev.parent.path}/{mdev.uuid}", device_uevent(mdev)
        unbound = {k: v for k, v in props.items() if k != "DRIVER"}
        self.emit("add", path, "mdev", unbound)
        if mdev.binding is not None:
            self.emit("bind", path, "mdev", props)

    def device_bound(self, mdev: MdevDevice) -> None:
        self.emit("bind", f"{mdev.parent.path}/{mdev.uuid}", "mdev", device_uevent(mdev))

    def device_unbound(self, mdev: MdevDevice, binding: Binding) -> None:
        self.emit("unbind", f"{mdev.parent.path}/{mdev.uuid}", "mdev", device_uevent(mdev))

    def device_removed(self, mdev: MdevDevice) -> None:
        self.emit("remove", f"{mdev.parent.path}/{mdev.uuid}", "mdev", device_uevent(mdev))

    def pci_added(self, fn: PciFunction) -> None:
        """A function appears (a VF made by sriov_numvfs, a rescan) before any driver
        probes it."""
        self.emit("add", fn.path, "pci", pci_uevent(fn))

    def pci_bound(self, fn: PciFunction) -> None:
        self.emit("bind", fn.path, "pci", pci_uevent(fn))

    def pci_unbound(self, fn: PciFunction, driver: PciDriver) -> None:
        self.emit("unbind", fn.path, "pci", pci_uevent(fn))  # sent once the driver is gone

    def pci_removed(self, fn: PciFunction) -> None:
        self.emit("remove", fn.path, "pci", pci_uevent(fn))

    # --- the hand-over socket -----------------------------------------------------------

    async def serve(self, listener: socket.socket) -> None:
        """Take netlink sockets handed over on ``listener`` (a bound Unix stream socket)
        until cancelled; each peer gets ``ok`` or ``refused: why`` back."""
        import trio

        sock = trio.socket.from_stdlib_socket(listener)
        with sock:
            while True:
                conn, _ = await sock.accept()
                with conn, trio.move_on_after(5):  # a silent peer holds up no one else
                    try:
                        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                        msg = await conn.recvmsg(16, socket.CMSG_SPACE(16))
                        await conn.send(self._take(msg[1], creds))
                    except OSError as exc:  # the peer went away: wait for the next
                        log.warning("uevent hand-over failed: %s", exc)

    def _take(self, ancdata: list[tuple[int, int, bytes]], creds: bytes) -> bytes:
        fds = array.array("i")
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
        socks = [socket.socket(fileno=fd) for fd in fds]
        try:
            uid = struct.unpack("3i", creds)[1]
            if uid != os.getuid():
                raise PermissionError(errno.EPERM, f"uid {uid} is not the mounting user")
            if len(socks) != 1 or socks[0].family != socket.AF_NETLINK \
                    or socks[0].proto != NETLINK_KOBJECT_UEVENT:
                raise OSError(errno.EINVAL, "send one NETLINK_KOBJECT_UEVENT socket")
            self.attach(socks.pop())
        except OSError as exc:
            log.warning("uevent socket refused: %s", exc.strerror)
            return f"refused: {exc.strerror}\n".encode()
        finally:
            for s in socks:
                s.close()
        log.info("uevents: sending into the network namespace handed over")
        return b"ok\n"


if __name__ == "__main__":
    import sys

    from .namespace import hand_over

    if len(sys.argv) != 2:
        sys.exit("usage: python -m mdevfs.uevent SOCKET  (hand this network namespace's "
                 "uevent socket to the mdevfs daemon listening at SOCKET)")
    sys.exit(hand_over(sys.argv[1]))
