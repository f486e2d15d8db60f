"""The FUSE adapter without a mount: mdevfs.fuse.SysfsOperations driven as the kernel would
drive it (lookup, open, read, write, forget), on a host and tree built in this process, under
trio. What the kernel itself decides (path walks, caching, readdir buffers) is the mount
tier's; here, what the adapter answers: its errnos, its handles, its error boundary and its
record of the inodes the kernel holds."""
from __future__ import annotations

import errno
import os
from typing import Any

import pyfuse3
import pytest
import trio

from mdevfs.config import Topology
from mdevfs.driver import Attribute, BaseDriver, MdevTypeSpec
from mdevfs.fuse import ENTRY_TIMEOUT, SysfsOperations
from mdevfs.model import Host
from mdevfs.nodes import ROOT_INODE
from mdevfs.tree import Tree

U = "12345678-1234-4234-8234-123456789abc"


class Ops(SysfsOperations):
    """The adapter with what it tells the kernel to forget recorded instead of sent: each
    name, and the entry timeout a lookup of it gets meanwhile (None: not found)."""

    def __init__(self, tree: Tree, **kwargs: Any) -> None:
        super().__init__(tree, **kwargs)
        self.invalidated: list[tuple[str, float | None]] = []
        #: a path looked up (for the first time) while names are being forgotten, with
        #: the entry timeout it got
        self.probe: str | None = None
        self.probed: list[float] = []

    async def forget_names(self, entries: list[tuple[int, str]]) -> None:
        if self.probe is not None:
            where, name = self.probe.rsplit("/", 1)
            self.probe = None
            self.probed.append((await self.lookup(
                await walk(self, where), name.encode(), Root())).entry_timeout)
        for parent, name in entries:
            try:
                attr = await self.lookup(parent, name.encode(), Root())
                timeout = attr.entry_timeout if attr.st_ino else None
            except pyfuse3.FUSEError:  # in a directory that is gone
                timeout = None
            self.invalidated.append((f"{self.held[parent].path}/{name}", timeout))

    def forget_attributes(self, inodes: list[int]) -> None:
        pass


class Root:
    """A ctx as the kernel passes it."""

    def __init__(self, uid: int = 0) -> None:
        self.uid, self.gid, self.pid, self.umask = uid, uid, 1, 0o022


def setup(topology: str | None = None) -> Ops:
    host = (Topology.from_text(topology, "<test>") if topology else Topology.default()
            ).empty_host()
    tree = Tree(host)
    (Topology.from_text(topology, "<test>") if topology else Topology.default()).populate(host)
    return Ops(tree)


async def walk(ops: Ops, path: str) -> int:
    """The inode of ``path``, looked up name by name (links followed), as the kernel walks."""
    inode = ROOT_INODE
    parts = [p for p in path.split("/") if p]
    while parts:
        name = parts.pop(0)
        attr = await ops.lookup(inode, name.encode(), Root())
        if attr.st_ino == 0:  # a negative entry: the kernel's ENOENT
            raise pyfuse3.FUSEError(errno.ENOENT)
        node = ops.held[attr.st_ino]
        if hasattr(node, "target") and parts:  # a link in the middle: follow it
            target = (await ops.readlink(attr.st_ino, Root())).decode()
            base = node.path.rsplit("/", 1)[0]
            resolved = os.path.normpath(f"{base}/{target}")
            return await walk(ops, resolved + "/" + "/".join(parts))
        inode = attr.st_ino
    return inode


async def read(ops: Ops, path: str, uid: int = 0) -> bytes:
    info = await ops.open(await walk(ops, path), os.O_RDONLY, Root(uid))
    assert info.direct_io and not info.keep_cache
    try:
        return await ops.read(info.fh, 0, 65536)
    finally:
        await ops.release(info.fh)


async def write(ops: Ops, path: str, data: bytes) -> int:
    info = await ops.open(await walk(ops, path), os.O_WRONLY, Root())
    try:
        return await ops.write(info.fh, 0, data)
    finally:
        await ops.release(info.fh)


def fuse_errno(coro: Any) -> int:
    async def run() -> int:
        with pytest.raises(pyfuse3.FUSEError) as info:
            await coro
        return info.value.errno
    return trio.run(run)


TYPE = "class/mdev_bus/mtty/mdev_supported_types/mtty-1"


def test_a_create_through_the_adapter_makes_the_device_and_counts_it():
    ops = setup()

    async def scenario() -> None:
        assert await read(ops, f"{TYPE}/available_instances") == b"24\n"
        assert await write(ops, f"{TYPE}/create", U.encode()) == 36
        assert await read(ops, f"{TYPE}/available_instances") == b"23\n"
        assert await read(ops, f"bus/mdev/devices/{U}/mdev_type/name") == b"Single port serial\n"
        device = await ops.lookup(await walk(ops, "bus/mdev/devices"), U.encode(), Root())
        types = await ops.lookup(await walk(ops, "devices/virtual/mtty/mtty"),
                                 b"mdev_supported_types", Root())
        # every name is cached, a device's as a parent's
        assert device.entry_timeout == types.entry_timeout == ENTRY_TIMEOUT
        ops.invalidated.clear()
        assert await write(ops, f"bus/mdev/devices/{U}/remove", b"1") == 1
        # the remove had the kernel forget each name of the device it was given (not the
        # type's link, nor the IOMMU group, never looked up), before the device went:
        # meanwhile a lookup still found them, uncached
        assert sorted(ops.invalidated) == [(f"bus/mdev/devices/{U}", 0),
                                           (f"devices/virtual/mtty/mtty/{U}", 0)]
        with pytest.raises(pyfuse3.FUSEError) as gone:
            await walk(ops, f"bus/mdev/devices/{U}")
        assert gone.value.errno == errno.ENOENT

    trio.run(scenario)


def test_a_name_first_looked_up_while_a_remove_forgets_is_not_cached():
    """A walker's first lookup of one of the device's names (its IOMMU group, a view's
    name made right then) while the remove has the kernel forget the others: answered
    uncached, so nothing of the device outlives the remove in the kernel's cache."""
    ops = setup()

    async def scenario() -> None:
        await write(ops, f"{TYPE}/create", U.encode())
        await walk(ops, f"bus/mdev/devices/{U}/remove")
        ops.probe = f"class/vfio/{ops.tree.host.devices[U].binding.iommu_group}"
        assert await write(ops, f"bus/mdev/devices/{U}/remove", b"1") == 1
        assert ops.probed == [0]

    trio.run(scenario)


def test_a_store_that_fails_after_its_change_still_has_the_kernel_forget_what_went():
    """An unbind the state file refuses to record stays done and answers EIO: the names it
    took (the IOMMU group the kernel was given) are forgotten all the same."""
    def refuse(node: Any) -> None:
        raise OSError(errno.EIO, "the disk is full")

    host = Topology.default().empty_host()
    tree = Tree(host)
    Topology.default().populate(host)
    ops = Ops(tree, after_store=refuse)

    async def scenario() -> None:
        info = await ops.open(await walk(ops, f"{TYPE}/create"), os.O_WRONLY, Root())
        with pytest.raises(pyfuse3.FUSEError):
            await ops.write(info.fh, 0, U.encode())  # the create stays: nothing undoes it here
        group = f"kernel/iommu_groups/{host.devices[U].binding.iommu_group}"
        await walk(ops, group)  # the kernel is given the group
        ops.invalidated.clear()
        with pytest.raises(pyfuse3.FUSEError) as failed:
            await write(ops, "bus/mdev/drivers/mtty/unbind", U.encode())
        assert failed.value.errno == errno.EIO and host.devices[U].binding is None
        assert (group, None) in ops.invalidated

    trio.run(scenario)


def test_the_adapter_answers_the_kernels_errnos():
    ops = setup()
    create = trio.run(walk, ops, f"{TYPE}/create")
    directory = trio.run(walk, ops, TYPE)
    assert fuse_errno(ops.open(create, os.O_RDONLY, Root())) == errno.EACCES  # even root
    assert fuse_errno(ops.open(directory, os.O_RDONLY, Root())) == errno.EISDIR
    # a missing name: an entry of inode 0, kept for no time, which the kernel answers
    # with ENOENT and never caches
    missing = trio.run(ops.lookup, directory, b"nothing", Root())
    assert (missing.st_ino, missing.entry_timeout) == (0, 0)
    assert fuse_errno(ops.mkdir(directory, b"x", 0o755, Root())) == errno.EPERM
    assert fuse_errno(ops.create(directory, b"x", 0o644, os.O_WRONLY, Root())) == errno.EACCES
    assert fuse_errno(ops.readlink(create, Root())) == errno.EINVAL

    async def bad_uuid() -> int:
        info = await ops.open(create, os.O_WRONLY, Root())
        with pytest.raises(pyfuse3.FUSEError) as refused:
            await ops.write(info.fh, 0, b"not-a-uuid")
        return refused.value.errno

    assert trio.run(bad_uuid) == errno.EINVAL


def test_a_handle_held_across_a_removal_reads_enodev_and_its_directory_lists_nothing():
    ops = setup()

    async def scenario() -> None:
        await write(ops, f"{TYPE}/create", U.encode())
        uevent = await ops.open(await walk(ops, f"bus/mdev/devices/{U}/uevent"), os.O_RDONLY,
                                Root())
        device = await walk(ops, f"devices/virtual/mtty/mtty/{U}")
        await write(ops, f"devices/virtual/mtty/mtty/{U}/remove", b"1")
        with pytest.raises(pyfuse3.FUSEError) as gone:
            await ops.read(uevent.fh, 0, 4096)
        assert gone.value.errno == errno.ENODEV
        held = await ops.getattr(device, Root())  # kernfs keeps the node while it is held
        assert held.st_nlink == 0
        with pytest.raises(pyfuse3.FUSEError) as empty:
            await ops.lookup(device, b"uevent", Root())
        assert empty.value.errno == errno.ENOENT
        await ops.release(uevent.fh)

    trio.run(scenario)


def test_a_forget_gives_back_its_lookups_not_the_inode():
    """The kernel forgets one lookup of a revalidation while it still holds the next: the
    inode stays known, and a removed node stays readable by its holder, until every lookup
    is given back."""
    ops = setup()

    async def scenario() -> None:
        await write(ops, f"{TYPE}/create", U.encode())
        group = await walk(ops, f"bus/mdev/devices/{U}/iommu_group")
        node = ops.held[group]
        await ops.lookup(node.parent.inode, node.name.encode(), Root())  # a second lookup
        await ops.forget([(group, 1)])
        await write(ops, f"bus/mdev/devices/{U}/remove", b"1")
        assert (await ops.getattr(group, Root())).st_ino == group  # still held
        await ops.forget([(group, 1)])
        with pytest.raises(pyfuse3.FUSEError) as forgotten:
            await ops.getattr(group, Root())
        assert forgotten.value.errno == errno.ENOENT

    trio.run(scenario)


class Broken(BaseDriver):
    """A driver with a bug: its attribute raises what no driver should."""

    name = mdev_driver = default_parent = "broken"
    default_path = "devices/virtual/broken/broken"
    subsystem = ("class", "broken")

    def types(self) -> Any:
        return (MdevTypeSpec("1"),)

    def max_instances(self) -> int:
        return 1

    def device_attributes(self, mdev: Any) -> Any:
        return (Attribute("vendor/bug", show=lambda: 1 / 0),)


def test_an_unexpected_exception_is_eio_and_the_adapter_goes_on():
    host = Host()
    tree = Tree(host)
    host.add_parent("broken", Broken.default_path, Broken())
    ops = Ops(tree)

    async def scenario() -> None:
        await write(ops, "class/mdev_bus/broken/mdev_supported_types/broken-1/create",
                    U.encode())
        with pytest.raises(pyfuse3.FUSEError) as bug:
            await read(ops, f"bus/mdev/devices/{U}/vendor/bug")
        assert bug.value.errno == errno.EIO
        assert await read(ops, f"bus/mdev/devices/{U}/uevent") == b"DRIVER=broken\n"

    trio.run(scenario)


def test_a_users_read_of_pci_config_is_the_header_alone():
    ops = setup()
    config = "bus/pci/devices/0000:c1:00.0/config"
    assert len(trio.run(read, ops, config)) == 4096
    assert len(trio.run(read, ops, config, 1000)) == 64


def test_a_removed_link_and_directory_the_kernel_still_holds_answer_and_keep_nothing():
    """After a remove, the kernel may still hold the device's bus link and directory: the
    link's readlink is ENOENT (its target is gone), the directory holds no entries and
    finds none, so nothing of the device is kept alive by them."""
    ops = setup()

    async def scenario() -> None:
        await write(ops, f"{TYPE}/create", U.encode())
        link = (await ops.lookup(await walk(ops, "bus/mdev/devices"), U.encode(), Root())).st_ino
        ddir = await walk(ops, f"devices/virtual/mtty/mtty/{U}")
        await walk(ops, f"devices/virtual/mtty/mtty/{U}/power/control")  # built and held
        assert await write(ops, f"bus/mdev/devices/{U}/remove", b"1") == 1
        for inode in (link, ddir):
            assert (await ops.getattr(inode, Root())).st_ino == inode  # still held
        with pytest.raises(pyfuse3.FUSEError) as gone:
            await ops.readlink(link, Root())
        assert gone.value.errno == errno.ENOENT
        with pytest.raises(pyfuse3.FUSEError) as empty:
            await ops.lookup(ddir, b"power", Root())
        assert empty.value.errno == errno.ENOENT
        assert ops.held[ddir].children == {}

    trio.run(scenario)
