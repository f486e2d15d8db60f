"""Uevents : the kernel's and udevd's messages, in a private network
namespace only. libvirt acting on them is tests/test_libvirt.py."""
from __future__ import annotations

import json
import socket
import struct
import sys

import pytest
from conftest import MTTY_ONLY, needs_fuse, write_topology

from mdevfs import namespace
from mdevfs.config import Topology
from mdevfs.testing import mounted
from mdevfs.tree import Tree
from mdevfs.uevent import (
    NETLINK_KOBJECT_UEVENT,
    UDEV_MONITOR_MAGIC,
    Uevents,
    kernel_message,
    murmur2,
    udev_message,
)

U1 = "11111111-2222-3333-4444-555555555555"
MTTY = "devices/virtual/mtty/mtty"


class Recorder(Uevents):
    def __init__(self, host) -> None:
        super().__init__(host)
        self.events: list[dict[str, str]] = []

    def emit(self, *args) -> dict[str, str]:
        event = super().emit(*args)
        self.events.append({k: v for k, v in event.items() if k != "USEC_INITIALIZED"})
        return event


@pytest.fixture
def host():
    host = Topology.from_text(MTTY_ONLY, "<test>").build()
    Tree(host)
    return host


def test_murmur2_matches_libudev():
    # "mdev": the hash udevadm monitor --subsystem-match=mdev's socket filter let through
    assert murmur2(b"mdev") == 0xBB5211C7
    assert murmur2(b"") == 0


def test_messages_have_the_kernel_and_libudev_layouts():
    props = {"ACTION": "add", "DEVPATH": f"/{MTTY}/{U1}", "SUBSYSTEM": "mdev", "SEQNUM": "7"}
    assert kernel_message(props) == (f"add@/{MTTY}/{U1}\0ACTION=add\0DEVPATH=/{MTTY}/{U1}\0"
                                     f"SUBSYSTEM=mdev\0SEQNUM=7\0").encode()
    msg = udev_message(props)
    prefix, magic = struct.unpack_from(">8sI", msg)
    size, offset, length = struct.unpack_from("=III", msg, 12)
    subsystem_hash, devtype_hash, bloom_hi, bloom_lo = struct.unpack_from(">4I", msg, 24)
    assert (prefix, magic, size, offset) == (b"libudev\0", UDEV_MONITOR_MAGIC, 40, 40)
    assert msg[offset:] == kernel_message(props).split(b"\0", 1)[1] and length == len(msg) - 40
    assert (subsystem_hash, devtype_hash, bloom_hi, bloom_lo) == (murmur2(b"mdev"), 0, 0, 0)


def test_the_events_follow_the_kernels_order(host):
    """Create: add, then bind with DRIVER; remove: unbind, remove; a parent: add, change
    MDEV_STATE=registered; unplugged: change MDEV_STATE=unregistered, remove."""
    ev = Recorder(host)
    mtype = host.parents["mtty"].types["mtty-1"]
    host.create(mtype, U1.encode())
    host.remove(host.devices[U1], b"1")
    parent = host.parents["mtty"]
    host.remove_parent("mtty")
    host.add_parent("mtty", parent.path, parent.driver)
    dev = f"/{MTTY}/{U1}"
    seen = [(e["ACTION"], e["DEVPATH"], e["SUBSYSTEM"], e.get("DRIVER"), e.get("MDEV_STATE"))
            for e in ev.events]
    assert seen == [("add", dev, "mdev", None, None), ("bind", dev, "mdev", "mtty", None),
                    ("unbind", dev, "mdev", None, None), ("remove", dev, "mdev", None, None),
                    ("change", f"/{MTTY}", "mtty", None, "unregistered"),
                    ("remove", f"/{MTTY}", "mtty", None, None),
                    ("add", f"/{MTTY}", "mtty", None, None),
                    ("change", f"/{MTTY}", "mtty", None, "registered")]
    assert [int(e["SEQNUM"]) for e in ev.events] == list(range(1, 9))


def test_a_vfs_events_follow_its_driver(tmp_path):
    """A VF made by sriov_numvfs: add (no driver yet), bind with DRIVER; an unbind through
    its driver's unbind file: unbind without it; drivers_probe binds again; sriov_numvfs 0:
    unbind, remove (bus_notify and __device_release_driver's order)."""
    host = Topology.from_text('[[gpu]]\ndriver = "nvidia-sriov"\naddress = "0000:41:00.0"\n'
                              '[gpu.options]\nmodel = "L40S"\nvfs = 0\n', "<test>").build()
    Tree(host)
    ev = Recorder(host)
    pf = host.pci["0000:41:00.0"]
    host.set_numvfs(pf, b"1")
    vf = host.pci["0000:41:00.4"]
    host.pci_unbind(vf, "nvidia")
    host.drivers_probe(vf)
    host.set_numvfs(pf, b"0")
    path = f"/{vf.path}"
    assert [(e["ACTION"], e["DEVPATH"], e["SUBSYSTEM"], e.get("DRIVER")) for e in ev.events] == [
        ("add", path, "pci", None), ("bind", path, "pci", "nvidia"),
        ("unbind", path, "pci", None), ("bind", path, "pci", "nvidia"),
        ("unbind", path, "pci", None), ("remove", path, "pci", None)]
    assert ev.events[0]["PCI_SLOT_NAME"] == "0000:41:00.4"


def test_a_510_mdev_bound_after_its_create_announces_it():
    """Before 5.14 a device created while the bus does not autoprobe binds to vfio_mdev
    later (bind or drivers_probe): its bind event comes then."""
    host = Topology.from_text('[host]\nkernel = "5.10"\n' + MTTY_ONLY, "<test>").build()
    Tree(host)
    ev = Recorder(host)
    host.mdev_autoprobe = False
    host.create(host.parents["mtty"].types["mtty-1"], U1.encode())
    host.bind(host.devices[U1])
    assert [(e["ACTION"], e.get("DRIVER")) for e in ev.events] == [("add", None),
                                                                   ("bind", "vfio_mdev")]


def test_a_socket_of_the_hosts_network_namespace_is_refused(host):
    ev = Uevents(host)
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    with nl, pytest.raises(PermissionError):
        ev.attach(nl)
    assert ev.sock is None


# Inside the namespace: listen on both groups, create and remove a device, print what came.
LISTEN = f"""
import json, socket
s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, {NETLINK_KOBJECT_UEVENT})
s.bind((0, 3))
s.settimeout(0.5)
t = "/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1"
open(t + "/create", "w").write("{U1}")
uevent = open("/sys/bus/mdev/devices/{U1}/uevent").read()
open("/sys/bus/mdev/devices/{U1}/remove", "w").write("1")
got = []
try:
    while True:
        data, (pid, group) = s.recvfrom(65536)
        if b"/mtty/" in data:
            got.append([group, data.decode("latin-1")])
except socket.timeout:
    pass
print(json.dumps([uevent, got]))
"""


@needs_fuse
@pytest.mark.skipif(namespace.unsupported() is not None, reason=namespace.unsupported() or "")
def test_events_reach_the_namespace_and_never_the_host(tmp_path):
    host_listener = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    host_listener.bind((0, 3))
    host_listener.setblocking(False)
    with host_listener, mounted(write_topology(tmp_path, MTTY_ONLY)) as m:
        done = m.run([sys.executable, "-S", "-c", LISTEN])
        assert done.returncode == 0, done.stderr
        uevent, got = json.loads(done.stdout)
        leaked = []
        try:
            while True:
                leaked.append(host_listener.recv(65536))
        except BlockingIOError:
            pass
    assert [msg for msg in leaked if b"/mtty/" in msg] == []
    assert [(group, text.split("\0", 1)[0]) for group, text in got] == [
        (group, f"{action}@/{MTTY}/{U1}" if group == 1 else "libudev")
        for action in ("add", "bind", "unbind", "remove") for group in (1, 2)]
    bind = dict(kv.split("=", 1) for kv in got[2][1].split("\0")[1:] if kv)
    assert bind["DRIVER"] + "\n" == uevent.removeprefix("DRIVER=")  # the uevent file's
