"""The kernel's mdev sysfs ABI through a real FUSE mount: plain open/read/write/readlink.

Each test names the item of ``docs/abi.md`` it checks.
"""
from __future__ import annotations

import errno
import os
import stat

import pytest
from conftest import errno_of, needs_fuse

from mdevfs.testing import mounted

pytestmark = needs_fuse

U = "11111111-2222-3333-4444-555555555555"
MTTY = "devices/virtual/mtty/mtty"
TYPES = f"{MTTY}/mdev_supported_types"




def write(path, data: bytes, flags: int = os.O_WRONLY) -> int:
    fd = os.open(path, flags)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# --- §1.1 layout --------------------------------------------------------------------------

def test_class_mdev_bus_links_to_the_parent(mtty):
    """§1.1: /sys/class/mdev_bus/<parent> → the parent device dir, named by dev_name."""
    assert os.listdir(mtty.root / "class/mdev_bus") == ["mtty"]
    assert os.readlink(mtty.root / "class/mdev_bus/mtty") == "../../devices/virtual/mtty/mtty"
    assert os.path.realpath(mtty.root / "class/mdev_bus/mtty") == str(mtty.root / MTTY)


def test_type_directories_hold_exactly_the_core_files(mtty):
    """§1.1, §1.2 and §3: mtty-1 and mtty-2; create/name/device_api/available_instances/
    devices; no description file for mtty (6.1+ hides it)."""
    assert sorted(os.listdir(mtty.root / TYPES)) == ["mtty-1", "mtty-2"]
    assert sorted(os.listdir(mtty.root / TYPES / "mtty-1")) == [
        "available_instances", "create", "device_api", "devices", "name"]


def test_device_entries_and_link_targets(mtty):
    """§1.1: the device dir under its parent and every link, relative as the kernel writes."""
    mtty.create("mtty-1", U)
    dev = mtty.root / MTTY / U
    assert sorted(os.listdir(dev)) == ["driver", "iommu_group", "mdev_type", "power", "remove",
                                       "subsystem", "uevent", "vendor", "vfio-dev"]
    links = {name: os.readlink(dev / name)
             for name in ("mdev_type", "driver", "iommu_group", "subsystem")}
    assert links == {"mdev_type": "../mdev_supported_types/mtty-1",
                     "driver": "../../../../../bus/mdev/drivers/mtty",
                     "iommu_group": "../../../../../kernel/iommu_groups/0",
                     "subsystem": "../../../../../bus/mdev"}
    assert os.readlink(mtty.root / "bus/mdev/devices" / U) == f"../../../{MTTY}/{U}"
    assert os.readlink(mtty.root / TYPES / "mtty-1/devices" / U) == f"../../../{U}"
    assert os.readlink(mtty.root / "bus/mdev/drivers/mtty" / U) == f"../../../../{MTTY}/{U}"
    assert os.readlink(mtty.root / "kernel/iommu_groups/0/devices" / U) == f"../../../../{MTTY}/{U}"
    for name in links:  # every link resolves inside the mount
        assert os.path.isdir(dev / name)
    assert os.path.realpath(mtty.root / "bus/mdev/devices" / U / "mdev_type") == \
        str(mtty.root / TYPES / "mtty-1")


def test_a_device_reached_first_by_its_remove_file_is_whole_and_removable(mtty):
    """The first name looked up in a device may be ``remove`` (a remove by path): the
    directory then lists every entry, ``remove`` once and the same inode, and a remove
    through that first handle takes the device away."""
    u2 = "5f0d3c1e-0000-4000-8000-000000000002"
    mtty.create("mtty-1", U)
    mtty.create("mtty-1", u2)
    first = os.stat(mtty.root / "bus/mdev/devices" / U / "remove")
    listed = os.listdir(mtty.root / MTTY / U)
    assert sorted(listed) == sorted(os.listdir(mtty.root / MTTY / u2)) == [
        "driver", "iommu_group", "mdev_type", "power", "remove", "subsystem", "uevent",
        "vendor", "vfio-dev"]
    assert os.stat(mtty.root / MTTY / U / "remove").st_ino == first.st_ino
    assert os.stat(mtty.root / MTTY / U).st_nlink == os.stat(mtty.root / MTTY / u2).st_nlink
    fd = os.open(mtty.root / "bus/mdev/devices" / u2 / "remove", os.O_WRONLY)
    try:
        assert os.write(fd, b"1") == 1
        assert errno_of(os.write, fd, b"1") == errno.ENODEV
    finally:
        os.close(fd)
    assert sorted(os.listdir(mtty.root / "bus/mdev/devices")) == [U]
    assert not os.path.lexists(mtty.root / MTTY / u2)


def test_bus_mdev_files(mtty):
    """§1.1: /sys/bus/mdev/{devices, drivers/<name>/{bind,unbind,uevent}, drivers_autoprobe,
    drivers_probe, uevent} with the driver core's modes."""
    bus = mtty.root / "bus/mdev"
    assert sorted(os.listdir(bus)) == ["devices", "drivers", "drivers_autoprobe",
                                       "drivers_probe", "uevent"]
    assert sorted(os.listdir(bus / "drivers/mtty")) == ["bind", "module", "uevent", "unbind"]
    assert os.readlink(bus / "drivers/mtty/module") == "../../../../module/mtty"
    modes = {n: stat.S_IMODE(os.stat(bus / n).st_mode)
             for n in ("drivers_autoprobe", "drivers_probe", "uevent")}
    assert modes == {"drivers_autoprobe": 0o644, "drivers_probe": 0o200, "uevent": 0o200}
    assert read(bus / "drivers_autoprobe") == b"1\n"


def test_parent_has_uevent_subsystem_and_power(mtty):
    """§1.1 (mtty parent): uevent, subsystem → ../../../../class/mtty, power/."""
    parent = mtty.root / MTTY
    assert os.readlink(parent / "subsystem") == "../../../../class/mtty"
    assert os.readlink(mtty.root / "class/mtty/mtty") == "../../devices/virtual/mtty/mtty"
    assert sorted(os.listdir(parent / "power")) == [  # with CONFIG_PM_ADVANCED_DEBUG, as Debian
        "async", "autosuspend_delay_ms", "control", "runtime_active_kids", "runtime_active_time",
        "runtime_enabled", "runtime_status", "runtime_suspended_time", "runtime_usage"]


# --- §1.2, §1.3 contents ------------------------------------------------------------------

def test_type_attribute_contents(mtty):
    """§1.3 and §3: exact bytes, newline-terminated."""
    t = mtty.root / TYPES
    assert read(t / "mtty-1/name") == b"Single port serial\n"
    assert read(t / "mtty-2/name") == b"Dual port serial\n"
    assert read(t / "mtty-1/device_api") == b"vfio-pci\n"
    assert read(t / "mtty-1/available_instances") == b"24\n"
    assert read(t / "mtty-2/available_instances") == b"12\n"


def test_device_attribute_contents(mtty):
    """§3 mtty: vendor/sample_mdev_dev = "This is MDEV <uuid>\\n"; uevent names the driver."""
    mtty.create("mtty-1", U)
    dev = mtty.root / "bus/mdev/devices" / U
    assert read(dev / "vendor/sample_mdev_dev") == f"This is MDEV {U}\n".encode()
    assert read(dev / "uevent") == b"DRIVER=mtty\n"
    assert read(dev / "mdev_type/name") == b"Single port serial\n"


def test_every_attribute_stats_with_size_4096_and_its_mode(mtty):
    """§1.3 sysfs file size; §1.1 modes: 0200 create/remove, 0444 read-only, 0644 rw."""
    mtty.create("mtty-1", U)
    t = mtty.root / TYPES / "mtty-1"
    dev = mtty.root / MTTY / U
    expect = {t / "create": 0o200, t / "name": 0o444, t / "available_instances": 0o444,
              t / "device_api": 0o444, dev / "remove": 0o200, dev / "uevent": 0o644,
              dev / "vendor/sample_mdev_dev": 0o444, dev / "power/control": 0o644}
    for path, mode in expect.items():
        st = os.stat(path)
        assert (stat.S_ISREG(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size) == \
            (True, mode, 4096), path


# --- §2.1 generic sysfs rules -------------------------------------------------------------

def test_wrong_direction_open_is_eacces_even_for_root(mtty):
    """§2.1: O_RDONLY on a 0200 file, O_WRONLY or O_RDWR on a 0444 file → EACCES for root."""
    t = mtty.root / TYPES / "mtty-1"
    assert errno_of(os.open, t / "create", os.O_RDONLY) == errno.EACCES
    assert errno_of(os.open, t / "create", os.O_RDWR) == errno.EACCES
    assert errno_of(os.open, t / "name", os.O_WRONLY) == errno.EACCES
    assert errno_of(os.open, t / "available_instances", os.O_RDWR) == errno.EACCES


def test_open_with_o_trunc_and_o_creat_is_accepted(mtty):
    """mdevctl 1.2.0 opens create/remove with O_WRONLY|O_CREAT|O_TRUNC."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    assert write(mtty.root / TYPES / "mtty-1/create", U.encode(), flags) == 36
    assert write(mtty.root / "bus/mdev/devices" / U / "remove", b"1", flags) == 1
    os.truncate(mtty.root / TYPES / "mtty-1/create", 0)  # kernfs ignores size changes


def test_zero_length_write_returns_zero(mtty):
    """§2.1: sysfs_kf_write returns 0 for an empty write without calling store."""
    assert write(mtty.root / TYPES / "mtty-1/create", b"") == 0
    assert os.listdir(mtty.root / "bus/mdev/devices") == []


def test_write_is_cut_at_4096_bytes(mtty):
    """§2.1: one store() per write(2), len = min(count, PAGE_SIZE); the buffer is
    NUL-terminated, so "auto" followed by NULs is accepted and write returns 4096."""
    control = mtty.root / MTTY / "power/control"
    assert write(control, b"on\n" + b"\0" * 5000) == 4096
    assert read(control) == b"on\n"
    assert write(control, b"auto") == 4
    assert errno_of(write, control, b"sometimes") == errno.EINVAL


def test_autosuspend_delay_without_autosuspend_is_eio(mtty):
    """Drivers/base/power/sysfs.c: autosuspend_delay_ms show → EIO when not in use."""
    assert errno_of(read, mtty.root / MTTY / "power/autosuspend_delay_ms") == errno.EIO
    assert read(mtty.root / MTTY / "power/runtime_status") == b"unsupported\n"


def test_missing_names_are_enoent(mtty):
    """§2.1: path gone → ENOENT."""
    assert errno_of(os.stat, mtty.root / TYPES / "mtty-3") == errno.ENOENT
    assert errno_of(os.stat, mtty.root / "bus/mdev/devices" / U) == errno.ENOENT


def test_a_group_name_no_kernel_prints_is_enoent(mtty):
    """The views of groups and vfio devices know only the names the kernel prints (%d):
    a device's group ``0`` exists; ``00``, ``+0`` and a digit outside ASCII (``²``, which
    int() refuses) are ENOENT, never EIO."""
    mtty.create("mtty-1", U)
    for view, good in (("kernel/iommu_groups", "0"), ("class/vfio", "0"),
                       ("devices/virtual/vfio", "0"), ("class/vfio-dev", "vfio0")):
        assert os.path.lexists(mtty.root / view / good)
        for bad in ("00", "+0", "²", "٣"):
            name = good.replace("0", bad)
            assert errno_of(os.stat, mtty.root / view / name) == errno.ENOENT, name


# --- §2.2 create --------------------------------------------------------------------------

@pytest.mark.parametrize("data", [U, U + "\n", U + "X"])
def test_create_accepts_36_or_37_bytes(mtty, data):
    """§2.2 rows 1, 3: the 37th byte is not validated; write returns the count."""
    assert write(mtty.root / TYPES / "mtty-1/create", data.encode()) == len(data)
    assert os.path.isdir(mtty.root / "bus/mdev/devices" / U)


@pytest.mark.parametrize("data", [U[:-1], U + "\n\n", U.replace("-", ":"), "z" + U[1:],
                                  U + "\0\0", "1"])
def test_create_rejects_bad_uuids_with_einval(mtty, data):
    """§2.2 rows 1, 3: length outside 36..37, misplaced hyphen, non-hex → EINVAL."""
    assert errno_of(write, mtty.root / TYPES / "mtty-1/create", data.encode()) == errno.EINVAL
    assert os.listdir(mtty.root / "bus/mdev/devices") == []


def test_create_names_the_device_in_lower_case_and_duplicates_are_eexist(mtty):
    """§1.1 "%pUl" device name; §2.2 row 4: any mdev on the host, case-insensitive → EEXIST."""
    upper = U.replace("1", "A")
    assert write(mtty.root / TYPES / "mtty-2/create", upper.encode()) == 36
    assert os.listdir(mtty.root / "bus/mdev/devices") == [upper.lower()]
    for type_id, value in (("mtty-1", upper), ("mtty-2", upper.lower())):
        assert errno_of(write, mtty.root / TYPES / type_id / "create", value.encode()) == \
            errno.EEXIST


def test_device_exists_when_write_returns(mtty):
    """§2.2: everything exists before write() returns (clients look right after)."""
    for i in range(5):
        u = f"{i:08x}-2222-3333-4444-555555555555"
        write(mtty.root / TYPES / "mtty-1/create", u.encode())
        assert os.path.exists(mtty.root / "bus/mdev/devices" / u / "mdev_type/name")
        assert os.path.exists(mtty.root / "kernel/iommu_groups" / str(i) / "devices" / u)


def test_shared_pool_and_fresh_available_instances(mtty):
    """§3 mtty: avail_ports / nr_ports from one pool of 24; a read right after a
    change sees it."""
    t = mtty.root / TYPES
    mtty.create("mtty-1", U)
    assert read(t / "mtty-1/available_instances") == b"23\n"
    assert read(t / "mtty-2/available_instances") == b"11\n"
    mtty.create("mtty-2")
    assert read(t / "mtty-1/available_instances") == b"21\n"
    assert read(t / "mtty-2/available_instances") == b"10\n"


def test_exhaustion_is_the_drivers_enospc(tmp_path):
    """§2.2 row 7 / §3: mtty refuses a create that does not fit with ENOSPC; a value that
    grows from "1\\n" to "10\\n" is read whole (no cached i_size)."""
    from conftest import write_topology

    from mdevfs.testing import mounted
    config = write_topology(tmp_path, '[[parent]]\ndriver = "mtty"\n[parent.options]\nports = 10\n')
    with mounted(config) as m:
        avail = m.root / TYPES / "mtty-1/available_instances"
        uuids = [m.create("mtty-1") for _ in range(9)]
        assert read(avail) == b"1\n"
        assert errno_of(m.create, "mtty-2") == errno.ENOSPC
        m.create("mtty-1")
        assert read(avail) == b"0\n"
        assert errno_of(m.create, "mtty-1") == errno.ENOSPC
        for u in os.listdir(m.root / "bus/mdev/devices"):
            m.remove(u)
        assert read(avail) == b"10\n"
        assert len(uuids) == 9 and m.alive()


# --- §2.3 remove --------------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"1", b"1\n", b"0x1", b"01", b"+1", b"7", b"1\0x"])
def test_remove_accepts_kstrtoul_base0(mtty, data):
    """§2.3: kstrtoul(buf, 0): a non-zero value removes; the dir and every link vanish."""
    mtty.create("mtty-1", U)
    assert write(mtty.root / "bus/mdev/devices" / U / "remove", data) == len(data)
    assert os.listdir(mtty.root / "bus/mdev/devices") == []
    assert not os.path.lexists(mtty.root / MTTY / U)
    assert os.listdir(mtty.root / TYPES / "mtty-1/devices") == []
    assert os.listdir(mtty.root / "kernel/iommu_groups") == []
    assert read(mtty.root / TYPES / "mtty-1/available_instances") == b"24\n"


def test_remove_zero_is_a_successful_noop(mtty):
    """§2.3: val == 0 returns count and does nothing."""
    mtty.create("mtty-1", U)
    assert write(mtty.root / "bus/mdev/devices" / U / "remove", b"0\n") == 2
    assert os.listdir(mtty.root / "bus/mdev/devices") == [U]


@pytest.mark.parametrize("data,err", [(b"abc", errno.EINVAL), (b"-1", errno.EINVAL),
                                      (b"1 ", errno.EINVAL), (b"0x", errno.EINVAL),
                                      (b"99999999999999999999", errno.EINVAL),
                                      (b"18446744073709551616", errno.EINVAL)])
def test_remove_rejects_what_kstrtoul_rejects(mtty, data, err):
    """§2.3: non-numeric, negative or past ULONG_MAX → EINVAL: remove_store turns every
    kstrtoul failure, ERANGE too, into EINVAL (measured on 6.1 and 6.12)."""
    mtty.create("mtty-1", U)
    assert errno_of(write, mtty.root / "bus/mdev/devices" / U / "remove", data) == err
    assert os.listdir(mtty.root / "bus/mdev/devices") == [U]


def test_remove_through_a_handle_that_outlived_the_device_is_enodev(mtty):
    """§2.1: a write after the node was removed → ENODEV (kernfs_get_active fails); so is a
    read through a held attribute, at every offset (conformance h01)."""
    mtty.create("mtty-1", U)
    path = mtty.root / "bus/mdev/devices" / U / "remove"
    first, second = os.open(path, os.O_WRONLY), os.open(path, os.O_WRONLY)
    held = os.open(mtty.root / MTTY / U / "vendor/sample_mdev_dev", os.O_RDONLY)
    try:
        assert os.pread(held, 4, 0) == b"This"
        assert os.write(first, b"1") == 1
        assert errno_of(os.write, second, b"1") == errno.ENODEV
        assert errno_of(os.pread, held, 100, 0) == errno.ENODEV
        assert errno_of(os.pread, held, 100, 4) == errno.ENODEV
    finally:
        for fd in (first, second, held):
            os.close(fd)


def test_unbind_detaches_and_bind_is_enodev(mtty):
    """Unbind_store: the driver lets go (mtty gets its port back), the driver link, IOMMU
    group, vendor attributes and vfio-dev go and the uevent empties; the device stays until
    removed. Nothing binds it again (mdev_match is 0): bind is ENODEV (conformance u01–u11)."""
    drivers = mtty.root / "bus/mdev/drivers/mtty"
    types = mtty.root / TYPES
    mtty.create("mtty-2", U)
    assert read(types / "mtty-1/available_instances") == b"22\n"
    assert errno_of(write, drivers / "bind", U.encode()) == errno.ENODEV  # already bound
    assert write(drivers / "unbind", f"{U}\n".encode()) == 37
    dev = mtty.root / MTTY / U
    assert sorted(os.listdir(dev)) == ["mdev_type", "power", "remove", "subsystem", "uevent"]
    assert read(dev / "uevent") == b""
    assert read(types / "mtty-1/available_instances") == b"24\n"
    assert os.listdir(mtty.root / "kernel/iommu_groups") == []
    assert os.listdir(mtty.root / "class/vfio-dev") == [] and os.listdir(drivers / "..") == ["mtty"]
    assert U not in os.listdir(drivers) and os.listdir(mtty.root / "bus/mdev/devices") == [U]
    for name in ("unbind", "bind"):
        assert errno_of(write, drivers / name, U.encode()) == errno.ENODEV
    assert write(mtty.root / "bus/mdev/drivers_probe", U.encode()) == 36  # binds nothing
    assert not os.path.lexists(dev / "driver")
    assert write(dev / "remove", b"1") == 1
    assert os.listdir(mtty.root / "bus/mdev/devices") == []
    assert read(types / "mtty-1/available_instances") == b"24\n"


def test_vfio_device_and_iommu_group_files(mtty):
    """Vfio_register_emulated_iommu_dev(): vfio-dev/vfio0 and a vfio-noiommu group with its
    files, as Debian's 6.1 and 6.12 show them (conformance walk s1, p05–p07)."""
    mtty.create("mtty-1", U)
    dev = mtty.root / MTTY / U
    vfio = dev / "vfio-dev/vfio0"
    assert sorted(os.listdir(vfio)) == ["device", "power", "subsystem", "uevent"]
    assert os.readlink(vfio / "device") == f"../../../{U}"
    assert os.readlink(vfio / "subsystem") == "../../../../../../../class/vfio-dev"
    assert os.readlink(mtty.root / "class/vfio-dev/vfio0") == f"../../{MTTY}/{U}/vfio-dev/vfio0"
    assert os.readlink(mtty.root / "class/vfio/0") == "../../devices/virtual/vfio/0"
    assert os.path.isdir(mtty.root / "class/vfio/0")
    group = dev / "iommu_group"
    assert (read(group / "name"), read(group / "reserved_regions"), read(group / "type")) == \
        (b"vfio-noiommu\n", b"", b"unknown\n")
    assert stat.S_IMODE(os.stat(group / "type").st_mode) == 0o644
    assert errno_of(write, group / "type", b"DMA") == errno.EINVAL


def test_directory_link_counts_follow_their_subdirectories(mtty):
    """Kernfs: a directory's st_nlink is 2 + its subdirectories, also right after a change
    the kernel had cached (conformance walks s0, s1, s2)."""
    parent, groups = mtty.root / MTTY, mtty.root / "kernel/iommu_groups"
    assert (os.stat(parent).st_nlink, os.stat(groups).st_nlink) == (4, 2)
    mtty.create("mtty-1", U)
    assert (os.stat(parent).st_nlink, os.stat(groups).st_nlink) == (5, 3)
    assert os.stat(parent / U).st_nlink == 5  # power, vendor, vfio-dev
    write(mtty.root / "bus/mdev/drivers/mtty/unbind", U.encode())
    assert (os.stat(parent / U).st_nlink, os.stat(groups).st_nlink) == (3, 2)
    mtty.remove(U)
    assert os.stat(parent).st_nlink == 4


def test_namespace_operations_are_refused_as_sysfs_does(mtty):
    """No namespace methods in sysfs: EPERM from the VFS; O_CREAT of a new name EACCES
    (conformance n01–n08)."""
    mtty.create("mtty-1", U)
    t1, dev = mtty.root / TYPES / "mtty-1", mtty.root / MTTY / U
    for fn, args in ((os.mkdir, (t1 / "new",)), (os.rmdir, (dev,)), (os.unlink, (dev / "remove",)),
                     (os.unlink, (t1 / "devices" / U,)), (os.rename, (dev / "remove", dev / "x")),
                     (os.symlink, ("x", t1 / "devices/new")), (os.link, (dev / "remove", dev / "y")),
                     (os.mknod, (t1 / "node",))):
        assert errno_of(fn, *args) == errno.EPERM, fn
    assert errno_of(os.open, t1 / "new", os.O_WRONLY | os.O_CREAT) == errno.EACCES
    assert sorted(os.listdir(dev))[0] == "driver"


def test_chmod_sticks_and_counts_at_open(mtty):
    """Kernfs_setattr keeps what root sets; open checks the mode too, so a 0 mode is EACCES
    even for root (conformance n06, n14)."""
    create = mtty.root / TYPES / "mtty-1/create"
    name = mtty.root / TYPES / "mtty-1/name"
    try:
        os.chmod(create, 0o600)
        assert stat.S_IMODE(os.stat(create).st_mode) == 0o600
        assert errno_of(os.open, create, os.O_RDONLY) == errno.EACCES  # still no show()
        os.chmod(name, 0)
        assert errno_of(os.open, name, os.O_RDONLY) == errno.EACCES
        os.chown(name, 65534, 65534)
        assert (os.stat(name).st_uid, os.stat(name).st_gid) == (65534, 65534)
        os.utime(name, ns=(10**9, 2 * 10**9))
        assert os.stat(name).st_mtime_ns == 2 * 10**9
    finally:
        os.chmod(create, 0o200)
        os.chmod(name, 0o444)
        os.chown(name, os.getuid(), os.getgid())
    assert read(name) == b"Single port serial\n"
    assert mtty.create("mtty-1", U) == U


def test_held_directories_list_live(mtty):
    """A held directory stream lists what is there now once rewound, with . and ..; a
    removed directory lists nothing (conformance h04, p08)."""
    devices = mtty.root / "bus/mdev/devices"
    fd = os.open(devices, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert sorted(os.listdir(fd)) == []
        mtty.create("mtty-1", U)
        os.lseek(fd, 0, os.SEEK_SET)
        assert sorted(os.listdir(fd)) == [U]  # listdir rewinds the stream
    finally:
        os.close(fd)
    with os.scandir(mtty.root / MTTY / U) as it:
        mtty.remove(U)
        assert [e.name for e in it] == []
    names = os.popen(f"ls -a {mtty.root / 'bus/mdev'}").read().split()
    assert names[:2] == [".", ".."]


def test_iommu_group_ids_are_reused_lowest_first(mtty):
    """§1.1 iommu_group: one group per mdev, ids from an ida (lowest free first)."""
    a, b = mtty.create("mtty-1"), mtty.create("mtty-1")
    group = lambda u: os.path.basename(os.readlink(mtty.root / "bus/mdev/devices" / u / "iommu_group"))  # noqa: E731
    assert (group(a), group(b)) == ("0", "1")
    mtty.remove(a)
    c = mtty.create("mtty-2")
    assert group(c) == "0"


def test_listing_while_devices_come_and_go(mtty):
    """Inodes are never reused and readdir offsets are inodes: a listing is consistent."""
    made = [mtty.create("mtty-1") for _ in range(20)]
    seen = []
    with os.scandir(mtty.root / "bus/mdev/devices") as it:
        for i, entry in enumerate(it):
            seen.append(entry.name)
            if i == 2:
                mtty.remove(made[10])
    assert set(made) - {made[10]} <= set(seen) <= set(made)
    assert len(seen) == len(set(seen))


def test_cached_names_are_never_stale_after_a_change(mtty):
    """Every name is cached, and the kernel is told to forget a dropped one before the write
    that dropped it returns: right after each create, remove and unbind, through stat,
    readlink, readdir and open, every path a client uses says the same, while another
    thread walks the same paths (never at the cost of freshness)."""
    import threading

    dev, bus, tdevs = (mtty.root / MTTY / U, mtty.root / "bus/mdev/devices" / U,
                       mtty.root / TYPES / "mtty-1/devices")
    stop, seen = threading.Event(), []

    def walker() -> None:
        while not stop.is_set():
            for path in (bus / "mdev_type/name", dev / "uevent", tdevs / U / "remove"):
                try:
                    os.stat(path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    seen.append(exc)  # anything but "not there" is a stale or broken name

    thread = threading.Thread(target=walker)
    thread.start()
    try:
        for cycle in range(40):
            mtty.create("mtty-1", U)
            assert os.stat(bus).st_ino == os.stat(dev).st_ino
            assert os.readlink(bus) == f"../../../{MTTY}/{U}"
            assert os.readlink(dev / "iommu_group") == "../../../../../kernel/iommu_groups/0"
            assert U in os.listdir(tdevs) and os.listdir(mtty.root / "kernel/iommu_groups") == ["0"]
            assert read(dev / "uevent") == b"DRIVER=mtty\n"
            if cycle % 2:
                write(mtty.root / "bus/mdev/drivers/mtty/unbind", U.encode())
                for gone in (dev / "driver", dev / "iommu_group", dev / "vendor", bus / "vfio-dev"):
                    assert not os.path.lexists(gone), gone
                assert read(dev / "uevent") == b""
            write(bus / "remove", b"1")
            for gone in (bus, dev, tdevs / U, mtty.root / "kernel/iommu_groups/0",
                         mtty.root / "class/vfio-dev/vfio0"):
                assert not os.path.lexists(gone), gone
                assert errno_of(os.open, gone / "uevent", os.O_RDONLY) == errno.ENOENT
            assert os.listdir(tdevs) == [] and os.listdir(mtty.root / "bus/mdev/devices") == []
    finally:
        stop.set()
        thread.join()
    assert seen == []


def test_names_a_control_request_took_are_forgotten_before_it_is_answered(mtty):
    """A reset over the control socket drops every device: the kernel, which cached each
    name a walk gave it, finds none of them afterwards, and the same UUID made again, of
    another type, is found afresh (its new mdev_type), not through a stale entry."""
    dev, bus = mtty.root / MTTY / U, mtty.root / "bus/mdev/devices" / U
    mtty.create("mtty-1", U)
    assert os.readlink(bus / "mdev_type") == "../mdev_supported_types/mtty-1"
    assert os.readlink(dev / "iommu_group") == "../../../../../kernel/iommu_groups/0"
    mtty.reset()
    for gone in (bus, dev, mtty.root / TYPES / "mtty-1/devices" / U,
                 mtty.root / "kernel/iommu_groups/0"):
        assert not os.path.lexists(gone), gone
    mtty.create("mtty-2", U)
    assert os.readlink(bus / "mdev_type") == "../mdev_supported_types/mtty-2"
    assert os.stat(bus).st_ino == os.stat(dev).st_ino


def test_a_device_counts_its_subdirectories_before_it_is_first_looked_at():
    """A device's directory is built when first looked at : its link count, and
    the link from class/vfio-dev into it, are right before that, bound and unbound, for
    every driver of the default topology (kernfs: nlink is 2 + subdirectories)."""
    drivers_seen = set()
    with mounted() as m:
        drivers = m.root / "bus/mdev/drivers"
        for parent in sorted(os.listdir(m.root / "class/mdev_bus")):
            types = sorted(m.root.glob(f"class/mdev_bus/{parent}/mdev_supported_types/*"))
            tdir = next(t for t in types if int((t / "available_instances").read_text()) >= 2)
            for unbind in (False, True):
                uuid = m.create(tdir.name, parent=parent)
                dev = m.root / "bus/mdev/devices" / uuid
                driver = next(d for d in os.listdir(drivers) if uuid in os.listdir(drivers / d))
                drivers_seen.add(driver)
                if unbind:
                    write(drivers / driver / "unbind", uuid.encode())
                before = os.stat(dev).st_nlink
                if not unbind:  # read through the link first: that builds the directory
                    vfio = [v for v in os.listdir(m.root / "class/vfio-dev")
                            if os.path.realpath(m.root / "class/vfio-dev" / v / "device")
                            == os.path.realpath(dev)]
                    assert len(vfio) == 1, parent
                subdirs = [e for e in os.listdir(dev)
                           if os.path.isdir(dev / e) and not os.path.islink(dev / e)]
                assert before == os.stat(dev).st_nlink == 2 + len(subdirs), (parent, subdirs)
                assert ("vfio-dev" in subdirs) is not unbind
    assert len(drivers_seen) >= 4


def test_a_group_directory_held_across_removals_stays_a_removed_directory(mtty):
    """Kernfs keeps a removed node while a descriptor holds it: fstat gives a removed
    directory, fchmod works. The group number is reused at every create, so the kernel's
    cached name revalidates to a new inode each time; the lookup it then gives back must
    not make mdevfs forget the inode the descriptor holds (it did, one time in three)."""
    for i in range(30):
        uuid = f"eeeeeeee-0f{i:02d}-4000-8000-0000000000{i:02d}"
        mtty.create("mtty-1", uuid)
        fd = os.open(mtty.root / MTTY / uuid / "iommu_group", os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert os.fstat(fd).st_nlink == 3  # with devices/
            mtty.remove(uuid)
            assert os.fstat(fd).st_nlink == 0
            os.fchmod(fd, 0o700)
            assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o700
            assert errno_of(os.stat, f"/proc/self/fd/{fd}/devices") == errno.ENOENT
        finally:
            os.close(fd)
