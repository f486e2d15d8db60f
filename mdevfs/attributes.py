"""The attributes of the mdev core, the PM core and IOMMU groups: one shared :class:`Op` each.

An :class:`~mdevfs.nodes.Op` says how one kind of file shows and stores, given the model
object the file belongs to (a type, a device, a parent); the tree attaches it to a node.
Formats and errnos follow the kernel: ``mdev_sysfs.c`` for types and devices,
``kobject_synth_uevent`` for ``uevent`` writes, ``drivers/base/power/sysfs.c`` for ``power/``,
``drivers/iommu/iommu.c`` for IOMMU groups, and the proposal's ``migration_version``.
"""
from __future__ import annotations

import errno
import functools
import logging
import re
from collections.abc import Callable
from typing import Any

from .driver import Attribute, Migration
from .errors import fail
from .kernel import GROUP_TYPE_DMA_FQ, GROUP_TYPE_WRITABLE, MDEV_GROUP_NAMED, Kernel
from .kparse import UUID_STRING_LEN, sysfs_word, uuid_is_valid
from .model import MdevDevice, MdevType, Parent
from .nodes import Op

log = logging.getLogger("mdevfs.sysfs")

#: the migration_version string limit of the proposal: ASCII, at most PATH_MAX bytes
PATH_MAX = 4096
UEVENT_ACTIONS = frozenset(("add", "remove", "change", "move", "online", "offline", "bind", "unbind"))


def text(value: object) -> bytes:
    return f"{value}\n".encode()


# --- the core's attributes (one shared Op each) ------------------------------------------

TYPE_NAME = Op(show=lambda t: text(t.spec.pretty_name or t.spec.sysfs_name))
TYPE_DEVICE_API = Op(show=lambda t: text(t.spec.device_api))
TYPE_DESCRIPTION = Op(show=lambda t: text(t.spec.description))
TYPE_AVAILABLE = Op(show=lambda t: text(t.available_instances))
TYPE_CREATE = Op(store=lambda t, buf: t.parent.host.create(t, buf))
DEVICE_REMOVE = Op(store=lambda d, buf: d.parent.host.remove(d, buf))


#: lib/kobject_uevent.c: an event's environment holds at most 64 variables in 2048 bytes
UEVENT_NUM_ENVP, UEVENT_BUFFER_SIZE = 64, 2048
#: the SEQNUM= of a synthetic event: its length counts against the buffer (a number of a busy
#: host's order)
_SEQNUM = "SEQNUM=2000"


class _Env:
    """``struct kobj_uevent_env``: add_uevent_var fails once 64 variables or 2048 bytes are
    taken."""

    def __init__(self) -> None:
        self.count = self.size = 0

    def add(self, var: str) -> bool:
        size = len(var.encode("latin-1")) + 1
        if self.count >= UEVENT_NUM_ENVP or self.size + size > UEVENT_BUFFER_SIZE:
            return False
        self.count, self.size = self.count + 1, self.size + size
        return True


def synth_uevent(buf: bytes, devpath: str, subsystem: str, props: dict[str, str]) -> int:
    """``kobject_synth_uevent``: a write to a ``uevent`` file. One trailing newline or NUL
    goes; the text up to the first space must be an action word exactly (else EINVAL); after
    a space, a UUID and then `` KEY=VALUE`` pairs of letters and digits only, one space
    before each (else EINVAL; so is an argument list past 64 variables or 2048 bytes). The
    event then made (ACTION, DEVPATH, SUBSYSTEM, the arguments, the object's own properties
    and SEQNUM) must fit the same limits, else ENOMEM."""
    text = buf.decode("latin-1")
    stripped = text[:-1] if text[-1:] in ("\n", "\0") else text
    word, space, _ = stripped.partition(" ")
    if not stripped or word not in UEVENT_ACTIONS:
        fail(errno.EINVAL)
    # the arguments are what follows the space in the whole buffer: kobject_action_args drops
    # one trailing newline of its own
    synth = _synth_args(text[len(word) + 1:]) if space else ["SYNTH_UUID=0"]
    env = _Env()
    for var in [f"ACTION={word}", f"DEVPATH={devpath}", f"SUBSYSTEM={subsystem}", *synth,
                *(f"{k}={v}" for k, v in props.items()), _SEQNUM]:
        if not env.add(var):
            fail(errno.ENOMEM)
    return len(buf)


def _synth_args(args: str) -> list[str]:
    """``kobject_action_args``: the UUID, then the `` KEY=VALUE`` pairs; EINVAL for anything
    else, or for more than fits its own environment."""
    if args[-1:] in ("\n", "\0"):
        args = args[:-1]
    uuid = args[:UUID_STRING_LEN]
    if not uuid_is_valid(uuid.encode("latin-1")):
        fail(errno.EINVAL)
    out, env = [f"SYNTH_UUID={uuid}"], _Env()
    env.add(out[0])
    rest = args[UUID_STRING_LEN:]
    while rest:
        match = _PAIR.match(rest)
        if match is None or not env.add(f"SYNTH_ARG_{match[1]}={match[2]}"):
            fail(errno.EINVAL)
        out.append(f"SYNTH_ARG_{match[1]}={match[2]}")
        rest = rest[match.end():]
    return out


#: one space, a key and a value of letters and digits (isalnum, in the C locale)
_PAIR = re.compile(r" ([0-9A-Za-z]+)=([0-9A-Za-z]+)(?= |$)")


def uevent_store(obj: Any, buf: bytes) -> int:
    """A ``uevent`` write to an object with no properties of its own (a bus, a driver)."""
    return synth_uevent(buf, "/bus", "bus", {})


def props_text(props: dict[str, str]) -> bytes:
    return "".join(f"{k}={v}\n" for k, v in props.items()).encode()


def device_uevent(mdev: MdevDevice) -> dict[str, str]:
    """A device's ``uevent`` file, and the properties its events carry (mdevfs.uevent)."""
    if mdev.binding is None:
        return {}
    return {"DRIVER": mdev.parent.host.mdev_driver_of(mdev.parent)}


def parent_uevent(parent: Parent) -> dict[str, str]:
    return dict(parent.driver.parent_uevent())


DEVICE_UEVENT = Op(show=lambda d: props_text(device_uevent(d)), store=lambda d, buf: synth_uevent(
    buf, f"/{d.parent.path}/{d.uuid}", "mdev", device_uevent(d)))
PARENT_UEVENT = Op(show=lambda p: props_text(parent_uevent(p)), store=lambda p, buf: synth_uevent(
    buf, f"/{p.path}", p.driver.subsystem[1], parent_uevent(p)))
PARENT_DEV = Op(show=lambda p: text("{MAJOR}:{MINOR}".format_map(p.driver.parent_uevent())))
BUS_UEVENT = Op(store=uevent_store)


def _one_of(*words: str) -> Callable[[list[str], bytes], int]:
    """A store that keeps one of ``words`` (compared as sysfs_streq does), else EINVAL."""

    def store(state: list[str], buf: bytes) -> int:
        word = sysfs_word(buf)
        if word not in words:
            fail(errno.EINVAL)
        state[0] = word
        return len(buf)

    return store


def _no_autosuspend(obj: Any, buf: bytes = b"") -> Any:
    fail(errno.EIO)  # power.use_autosuspend is off: both show and store say EIO


POWER_CONTROL = Op(show=lambda s: text(s[0]), store=_one_of("auto", "on"))
POWER_STATUS = Op(show=lambda s: b"unsupported\n")
POWER_TIME = Op(show=lambda s: b"0\n")
POWER_AUTOSUSPEND = Op(show=_no_autosuspend, store=_no_autosuspend)
POWER_DISABLED = Op(show=lambda s: b"disabled\n")
POWER_ASYNC = Op(show=lambda s: text(s[0]), store=_one_of("enabled", "disabled"))

# --- IOMMU groups ---------------------------------------------------------------------------
#: iommu_group_store_type: a group without a default domain is EINVAL, and so is, in mdevfs,
#: any change of a hardware group's domain (not emulated)
_GROUP_TYPE_STORE = lambda g, buf: fail(errno.EINVAL)  # noqa: E731
#: the reserved regions of a PCI function's group: the MSI window, and on AMD the HyperTransport
#: range (amd_iommu_get_resv_regions)
_RESERVED = {"intel": b"0x00000000fee00000 0x00000000feefffff msi\n",
             "amd": b"0x00000000fee00000 0x00000000feefffff msi\n"
                    b"0x000000fd00000000 0x000000ffffffffff reserved\n"}


@functools.cache  # the same few for every group, made once per kernel and IOMMU: read only
def group_files(kernel: Kernel, iommu: str | None) -> dict[str, Op]:
    """An IOMMU group's files: one made by vfio_register_emulated_iommu_dev() for an mdev
    (``iommu`` None: named vfio-noiommu from 5.16, no domain), or a PCI function's behind an
    x86 IOMMU in its default lazy DMA domain (DMA-FQ from 5.15); ``type`` 0644 from 5.11."""
    writable = kernel.has(GROUP_TYPE_WRITABLE)
    if iommu is None:
        kind, files = b"unknown\n", {"reserved_regions": Op(show=lambda g: b"")}
        if kernel.has(MDEV_GROUP_NAMED):
            files["name"] = Op(show=lambda g: b"vfio-noiommu\n")
    else:
        kind = b"DMA-FQ\n" if kernel.has(GROUP_TYPE_DMA_FQ) else b"DMA\n"
        reserved = _RESERVED[iommu]
        files = {"reserved_regions": Op(show=lambda g: reserved)}
    files["type"] = Op(show=lambda g: kind, store=_GROUP_TYPE_STORE if writable else None)
    return dict(sorted(files.items()))


def _domains_used(host: Any) -> bytes:
    """intel-iommu domains_used: the domain ids taken, 2 reserved ones (6.1's count) and one
    for each PCI function's DMA domain."""
    return text(2 + sum(fn.iommu_group is not None for fn in host.pci.values()))


def iommu_unit_files(iommu: str) -> dict[str, dict[str, Op]]:
    """An IOMMU unit's attribute group (intel/iommu.c intel_iommu_groups, amd/init.c
    amd_iommu_groups). The register values are those of a typical server's unit (mdevfs's
    choice: no kernel here shows one); ``domains_used`` follows the functions."""
    if iommu == "intel":
        return {"intel-iommu": {
            "address": Op(show=lambda h: b"fbffc000\n"),
            "cap": Op(show=lambda h: b"8d2078c106f0466\n"),
            "domains_supported": Op(show=lambda h: b"65536\n"),
            "domains_used": Op(show=_domains_used),
            "ecap": Op(show=lambda h: b"f020df\n"),
            "version": Op(show=lambda h: b"1:0\n"),
        }}
    return {"amd-iommu": {
        "cap": Op(show=lambda h: b"190b64\n"),
        "features": Op(show=lambda h: b"0:25bf732fa2295afe\n"),
    }}


EMPTY_UEVENT = Op(show=lambda o: b"", store=uevent_store)


def vendor_op(attr: Attribute) -> Op:
    show = store = None
    if attr.show is not None:
        show_fn = attr.show
        show = lambda _obj: b"" if (shown := show_fn()) is None else text(shown)  # noqa: E731
    if attr.store is not None:
        store_fn = attr.store

        def store(_obj: Any, buf: bytes) -> int:
            store_fn(buf)
            return len(buf)
    return Op(show=show, store=store)


def migration_op(migration: Migration, owner: str) -> Op:
    """``migration_version`` (the proposal (v5), ABI §5.2), with the limits the framework enforces.

    A driver whose string is not an ASCII ``str`` of at most PATH_MAX bytes has a
    bug: the read fails with EIO and the log names the driver. A string of exactly
    PATH_MAX bytes reads back whole with its newline (PATH_MAX + 1 bytes), which a
    real sysfs page could not hold; the proposal's limit wins over the page here, so
    that every string the proposal allows survives ``cat`` then ``echo``.
    A write with any non-ASCII byte is EINVAL; the driver sees the text up to the
    first NUL (as a C string) without one trailing newline (as sysfs_streq).
    """

    def show(obj: Any) -> bytes:
        version = migration.version()
        if not isinstance(version, str) or not version.isascii() or len(version) > PATH_MAX:
            problem = (f"of type {type(version).__name__}, not str" if not isinstance(version, str)
                       else "not ASCII" if not version.isascii() else f"{len(version)} bytes")
            log.error("driver %s: migration_version of %s is %s; answering EIO",
                      owner, _describe(obj), problem)
            fail(errno.EIO)
        return text(version)

    def store(_obj: Any, buf: bytes) -> int:
        if not buf.isascii():
            fail(errno.EINVAL)
        text = buf.split(b"\0", 1)[0].decode("ascii")
        migration.check(text.removesuffix("\n"))
        return len(buf)

    return Op(show=show, store=store, limit=PATH_MAX + 1)


def _describe(obj: Any) -> str:
    if isinstance(obj, MdevDevice):
        return f"device {obj.uuid} ({obj.mdev_type.type_id})"
    if isinstance(obj, MdevType):
        return f"type {obj.type_id} of {obj.parent.name}"
    return repr(obj)


# --- buses, modules, vfio groups ----------------------------------------------------------

def _set_autoprobe(what: str) -> Op:
    """A bus's ``drivers_autoprobe``: '0' as the first character turns it off, anything else
    on (bus.c drivers_autoprobe_store)."""
    def store(host: Any, buf: bytes) -> int:
        setattr(host, what, buf[:1] != b"0")
        return len(buf)

    return Op(show=lambda host: text(int(getattr(host, what))), store=store)


MDEV_AUTOPROBE = _set_autoprobe("mdev_autoprobe")
PCI_AUTOPROBE = _set_autoprobe("pci_autoprobe")


def _alignment_store(state: list[str], buf: bytes) -> int:
    state[0] = sysfs_word(buf)
    return len(buf)


#: pci.c resource_alignment: the pci=resource_alignment= parameter, empty unless given
RESOURCE_ALIGNMENT = Op(show=lambda s: text(s[0]) if s[0] else b"", store=_alignment_store)
MODULE_FILES = {
    "coresize": Op(show=lambda e: b"65536\n"),
    "initsize": Op(show=lambda e: b"0\n"),
    "initstate": Op(show=lambda e: b"live\n"),
    "refcnt": Op(show=lambda e: b"0\n"),
    "taint": Op(show=lambda e: b"OE\n" if e.module_version else b"\n"),
    "uevent": BUS_UEVENT,
}
MODULE_VERSION = Op(show=lambda e: text(e.module_version))

#: the major of vfio's group character devices (/dev/vfio/<N>): alloc_chrdev_region gives
#: whatever is free when vfio loads (244 to 248 on the Debian VMs of tests/conformance);
#: mdevfs's choice is 6.1's
VFIO_GROUP_MAJOR = 246
#: a vfio group's files (``devices/virtual/vfio/<N>``), of its :class:`~mdevfs.model.Binding`
VFIO_GROUP_DEV = Op(show=lambda b: f"{VFIO_GROUP_MAJOR}:{b.vfio_minor}\n".encode())
VFIO_GROUP_UEVENT = Op(show=lambda b: f"MAJOR={VFIO_GROUP_MAJOR}\nMINOR={b.vfio_minor}\n"
                       f"DEVNAME=vfio/{b.iommu_group}\n".encode(), store=uevent_store)
