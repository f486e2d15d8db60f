"""The pure core, without FUSE: the kernel's rules as the model and the sysfs tree own them."""
from __future__ import annotations

import errno

import pytest
from conftest import errno_of

from mdevfs.config import Topology, TopologyError
from mdevfs.driver import BaseDriver, MdevTypeSpec
from mdevfs.kparse import kstrtoint, kstrtoul, parse_uuid
from mdevfs.model import Host
from mdevfs.nodes import File, Op
from mdevfs.tree import Tree

U = "11111111-2222-3333-4444-555555555555"




def mtty_host(**options) -> Host:
    opts = "".join(f"{k} = {v}\n" for k, v in options.items())
    text = '[[parent]]\ndriver = "mtty"\n' + (f"[parent.options]\n{opts}" if opts else "")
    return Topology.from_text(text, "<test>").build()


# --- ABI §2.2: create_store's input ------------------------------------------------------

@pytest.mark.parametrize("buf", [U.encode(), (U + "\n").encode(), (U + "X").encode(),
                                 U.upper().encode()])
def test_uuid_accepts_36_or_37_bytes_and_ignores_the_37th(buf):
    """ABI §2.2 rows 1, 3: 36 or 37 bytes; only the first 36 are validated; lower-cased."""
    assert parse_uuid(buf) == U


@pytest.mark.parametrize("buf", [U[:-1], U + "\n\n", U.replace("-", "x", 1), "g" + U[1:],
                                 U[:8] + "1" + U[9:], "", U[:35] + "\0"])
def test_uuid_rejects_with_einval(buf):
    """ABI §2.2 rows 1, 3: wrong length, hyphen misplaced or non-hex → EINVAL."""
    assert errno_of(parse_uuid, buf.encode()) == errno.EINVAL


# --- ABI §2.3: remove_store's kstrtoul(buf, 0) --------------------------------------------

@pytest.mark.parametrize("buf,value", [(b"1", 1), (b"1\n", 1), (b"0x1", 1), (b"0X1f", 31),
                                       (b"01", 1), (b"010", 8), (b"+1", 1), (b"0", 0),
                                       (b"0\n", 0), (b"1\0junk", 1),
                                       (b"18446744073709551615", 2**64 - 1)])
def test_kstrtoul_base0(buf, value):
    """ABI §2.3: base 0 (0x hex, leading 0 octal), optional '+', one trailing newline."""
    assert kstrtoul(buf) == value


@pytest.mark.parametrize("buf", [b"", b"\n", b"abc", b"-1", b"1 ", b" 1", b"1\n\n", b"08",
                                 b"0x", b"0xg", b"1a", b"++1"])
def test_kstrtoul_einval(buf):
    """ABI §2.3: non-numeric or negative → EINVAL."""
    assert errno_of(kstrtoul, buf) == errno.EINVAL


def test_kstrtoul_overflow_is_erange():
    """Lib/kstrtox.c _kstrtoull: a value past ULONG_MAX is ERANGE (ABI §2.3 tags the
    kstrtoul details [rec] and says EINVAL; the kernel source says ERANGE)."""
    assert errno_of(kstrtoul, b"18446744073709551616") == errno.ERANGE


# --- the model ----------------------------------------------------------------------------

@pytest.mark.parametrize("buf,value", [(b"-5", -5), (b"+5\n", 5), (b"-0x10", -16),
                                       (b"-2147483648", -2**31), (b"2147483647", 2**31 - 1)])
def test_kstrtoint_takes_one_sign(buf, value):
    assert kstrtoint(buf) == value


@pytest.mark.parametrize("buf,code", [(b"-+5", errno.EINVAL), (b"--5", errno.EINVAL),
                                      (b"+-5", errno.EINVAL), (b"-", errno.EINVAL),
                                      (b"2147483648", errno.ERANGE),
                                      (b"-2147483649", errno.ERANGE)])
def test_kstrtoint_refuses_as_kstrtoll_then_the_int_check(buf, code):
    """Lib/kstrtox.c: after a '-', _kstrtoull (no '+'); a value outside int is ERANGE."""
    assert errno_of(kstrtoint, buf) == code


def test_mtty_pool_is_shared_between_its_types():
    """ABI §3 mtty: one pool of 24 ports; mtty-1 takes 1, mtty-2 takes 2."""
    host = mtty_host()
    one, two = host.parents["mtty"].types.values()
    assert (one.available_instances, two.available_instances) == (24, 12)
    assert host.create(one, U.encode()) == 36
    assert (one.available_instances, two.available_instances) == (23, 11)
    host.remove(host.devices[U], b"1")
    assert (one.available_instances, two.available_instances) == (24, 12)


def test_mtty_exhaustion_is_enospc():
    """ABI §3 mtty: a create that does not fit is ENOSPC, and nothing is created."""
    host = mtty_host(ports=3)
    one, two = host.parents["mtty"].types.values()
    host.create(two, U.encode())
    assert errno_of(host.create, two, U.replace("1", "2").encode()) == errno.ENOSPC
    assert list(host.devices) == [U]
    host.create(one, U.replace("1", "3").encode())
    assert one.available_instances == 0


def test_duplicate_uuid_is_eexist_across_parents_and_case():
    """ABI §2.2 row 4: the global mdev_list, compared as binary UUIDs."""
    host = Host()
    host.add_parent("a", "devices/a", CoreCounted())
    host.add_parent("b", "devices/b", CoreCounted())
    host.create(host.parents["a"].types["core-x"], U.encode())
    assert errno_of(host.create, host.parents["b"].types["core-x"], U.upper().encode()) == \
        errno.EEXIST


class CoreCounted(BaseDriver):
    """A driver that leaves counting to the core, as 6.1+ drivers without get_available."""
    name = "core"

    def types(self):
        return (MdevTypeSpec("x"), MdevTypeSpec("y"))

    def max_instances(self):
        return 2


def test_core_counter_is_per_parent_and_eusers():
    """ABI §1.2 / §2.2 row 5: one counter per parent shared by all its types → EUSERS."""
    host = Host()
    parent = host.add_parent("p", "devices/p", CoreCounted())
    x, y = parent.types.values()
    host.create(x, U.encode())
    assert y.available_instances == 1
    host.create(y, U.replace("1", "2").encode())
    assert (x.available_instances, y.available_instances) == (0, 0)
    assert errno_of(host.create, x, U.replace("1", "3").encode()) == errno.EUSERS
    host.remove(host.devices[U], b"1")
    assert x.available_instances == 1


def test_remove_zero_is_a_noop_and_gone_device_is_enodev():
    """ABI §2.3: val == 0 returns count; a device no longer on the list → ENODEV."""
    host = mtty_host()
    mtype = host.parents["mtty"].types["mtty-1"]
    host.create(mtype, U.encode())
    mdev = host.devices[U]
    assert host.remove(mdev, b"0\n") == 2
    assert U in host.devices
    assert host.remove(mdev, b"0x1") == 3
    assert errno_of(host.remove, mdev, b"1") == errno.ENODEV


def test_iommu_groups_are_lowest_free_from_the_base():
    """ABI §1.1 iommu_group (OLD): one new group per mdev from an ida: lowest free id."""
    host = Topology.from_text('[host]\niommu_group_base = 5\n[[parent]]\ndriver = "mtty"\n',
                              "<t>").build()
    mtype = host.parents["mtty"].types["mtty-1"]
    uuids = [U.replace("1", str(d)) for d in (1, 2, 3)]
    for u in uuids:
        host.create(mtype, u.encode())
    assert [host.devices[u].iommu_group for u in uuids] == [5, 6, 7]
    host.remove(host.devices[uuids[0]], b"1")
    host.create(mtype, U.replace("1", "9").encode())
    assert host.devices[U.replace("1", "9")].iommu_group == 5


# --- the sysfs tree -----------------------------------------------------------------------

def test_tree_builds_device_entries_and_removes_them():
    """ABI §1.1: device dir, its links, and the bus/type/group links, all relative."""
    host = mtty_host()
    tree = Tree(host)
    host.create(host.parents["mtty"].types["mtty-2"], U.encode())
    dev = f"devices/virtual/mtty/mtty/{U}"
    expect = {
        f"bus/mdev/devices/{U}": f"../../../{dev}",
        f"{dev}/mdev_type": "../mdev_supported_types/mtty-2",
        f"{dev}/driver": "../../../../../bus/mdev/drivers/mtty",
        f"{dev}/iommu_group": "../../../../../kernel/iommu_groups/0",
        f"{dev}/subsystem": "../../../../../bus/mdev",
        f"devices/virtual/mtty/mtty/mdev_supported_types/mtty-2/devices/{U}": f"../../../{U}",
        f"kernel/iommu_groups/0/devices/{U}": f"../../../../{dev}",
        f"bus/mdev/drivers/mtty/{U}": f"../../../../{dev}",
        "class/mdev_bus/mtty": "../../devices/virtual/mtty/mtty",
    }
    assert {p: tree.resolve(p).target for p in expect} == expect
    host.remove(host.devices[U], b"1")
    assert [p for p in expect if tree.resolve(p) is not None] == ["class/mdev_bus/mtty"]


def test_a_remove_looked_up_alone_builds_one_node_and_leaves_none_behind():
    """A create makes one node. A lookup of ``remove`` in a device never looked at makes
    that file alone; removing
    the device forgets every node it had, the lone file too; a lookup of any other name
    builds the whole directory once."""
    host = mtty_host()
    tree = Tree(host)
    before = tree.size
    mtype = host.parents["mtty"].types["mtty-2"]
    host.create(mtype, U.encode())
    # one node: the device's directory; every name that leads to it is a view, made when
    # looked up (here the bus link)
    assert tree.size == before + 1
    ddir = tree.resolve(f"bus/mdev/devices/{U}").to
    made = tree.size
    assert made == before + 2
    remove = ddir.child("remove")
    assert remove.name == "remove" and tree.size == made + 1
    assert ddir.child("remove") is remove and tree.size == made + 1
    host.remove(host.devices[U], b"1")
    assert tree.size == before and remove.parent is None
    other = "5f0d3c1e-0000-4000-8000-0000000000aa"
    made = {}
    for uuid, first in ((U, "remove"), (other, "uevent")):  # remove alone first, or whole
        count = tree.size
        host.create(mtype, uuid.encode())
        ddir = tree.resolve(f"bus/mdev/devices/{uuid}").to
        alone = ddir.child(first)
        assert ddir.child("nothing") is None and ddir.children[first] is alone
        made[first] = (tree.size - count, list(ddir.children))
    assert made["remove"] == made["uevent"]  # the same nodes, the same order: none twice


def test_file_write_is_cut_at_page_size_and_empty_write_is_zero():
    """ABI §2.1: store() once per write(2) with at most 4096 bytes; 0 bytes → 0, no store."""
    seen = []
    node = File("x", Op(store=lambda obj, buf: seen.append(len(buf)) or len(buf)))
    node.parent = Tree(Host()).root
    assert node.write(b"a" * 5000) == 4096
    assert node.write(b"") == 0
    assert seen == [4096]


def test_show_longer_than_a_page_is_clamped():
    """ABI §1.3: a show() of PAGE_SIZE or more is clamped to PAGE_SIZE - 1 bytes."""
    node = File("x", Op(show=lambda obj: b"z" * 5000))
    assert len(node.read()) == 4095


def test_write_to_a_removed_node_is_enodev():
    """ABI §2.1: a write after the node is removed → ENODEV (kernfs_get_active)."""
    host = mtty_host()
    tree = Tree(host)
    host.create(host.parents["mtty"].types["mtty-1"], U.encode())
    remove = tree.resolve(f"devices/virtual/mtty/mtty/{U}/remove")
    assert remove.write(b"1") == 1
    assert errno_of(remove.write, b"1") == errno.ENODEV


# --- topology files -----------------------------------------------------------------------

@pytest.mark.parametrize("text,needle", [
    ("[[parent]\n", "not valid TOML"),
    ("[[parent]]\nname = 'x'\n", "parent #1: 'driver' is required"),
    ("[[parent]]\ndriver = 'mtty'\ncolour = 'red'\n", "parent #1: unknown key(s) colour"),
    ("[[parent]]\ndriver = 'no-such'\n", "parent #1 (driver 'no-such'): driver 'no-such': no entry"),
    ("[[parent]]\ndriver = 'mtty'\npath = 'sys/x'\n", "must lie under devices/"),
    ("[[parent]]\ndriver = 'mtty'\n[[parent]]\ndriver = 'mtty'\n",
     "parent #2 (driver 'mtty'): parent name 'mtty' is used twice"),
    ("[[parent]]\ndriver = 'mtty'\n[parent.options]\nports = 'many'\n", "refused its options"),
    ("[[parent]]\ndriver = 'nonexistent_mod:Drv'\n", "failed to load"),
    ("[host]\niommu_group_base = -1\n[[parent]]\ndriver = 'mtty'\n", "iommu_group_base"),
    ("[host]\npci_drivers = [[1]]\n", "[host] pci_drivers"),
    ("[host]\npci_drivers = [{a = 1}]\n", "[host] pci_drivers"),
    ("[host]\niommu = 'arm'\n", "[host] iommu"),
])
def test_bad_topology_names_file_entry_and_problem(tmp_path, text, needle):
    """A bad file gets a clear error naming the file, the entry and the problem."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(TopologyError) as info:
        Topology.from_toml(path).build()
    assert str(info.value).startswith(str(path))
    assert needle in str(info.value)


def test_driver_by_file_path_relative_to_the_topology(tmp_path):
    """A vendor prototypes without packaging: driver = "file.py[:Factory]"."""
    (tmp_path / "proto.py").write_text(
        "from mdevfs.driver import BaseDriver, MdevTypeSpec\n"
        "class Driver(BaseDriver):\n"
        "    name = 'proto'\n"
        "    def types(self):\n"
        "        return (MdevTypeSpec('a', description='hello'),)\n"
        "    def max_instances(self):\n"
        "        return int(self.options['n'])\n")
    path = tmp_path / "t.toml"
    path.write_text("[[parent]]\ndriver = 'proto.py'\nname = 'p0'\npath = 'devices/virtual/p/p0'\n"
                    "[parent.options]\nn = 3\n")
    host = Topology.from_toml(path).build()
    assert host.parents["p0"].types["proto-a"].available_instances == 3


def test_default_topology_holds_the_mtty_sample():
    """The embedded default topology has at least mtty at devices/virtual/mtty/mtty."""
    host = Topology.default().build()
    assert host.parents["mtty"].path == "devices/virtual/mtty/mtty"
    assert list(host.parents["mtty"].types) == ["mtty-1", "mtty-2"]


def test_ida_hands_out_the_lowest_free_id():
    """The group allocator is an ida: lowest free id first, restored ids kept."""
    from mdevfs.model import Ida
    ida = Ida(base=2)
    assert [ida.alloc() for _ in range(3)] == [2, 3, 4]
    assert ida.take(9) and not ida.take(3)
    ida.release(9)
    ida.release(3)
    assert [ida.alloc() for _ in range(4)] == [3, 5, 6, 7]
    ida.release(2)
    assert ida.take(2) and ida.alloc() == 8


def test_a_devices_remove_names_every_name_that_leads_to_the_device():
    """What the FUSE adapter has the kernel forget before a remove (fuse.py's policy): the
    device, every link to it, its IOMMU group and its vfio group; what lies inside them
    goes with them. Every other file takes nothing away."""
    host = mtty_host()
    tree = Tree(host)
    host.create(host.parents["mtty"].types["mtty-1"], U.encode())
    remove = tree.resolve(f"devices/virtual/mtty/mtty/{U}/remove")
    # the names outside the directory are views, made when looked up: none yet
    assert [n.path for n in tree.names_removed_by(remove, b"1")] == [f"devices/virtual/mtty/mtty/{U}"]
    walked = sorted(n.inode for n in tree.walk())  # makes every view's names, builds all
    assert sorted(n.path for n in tree.names_removed_by(remove, b"1")) == sorted([
        f"bus/mdev/devices/{U}", f"bus/mdev/drivers/mtty/{U}", "kernel/iommu_groups/0",
        f"devices/virtual/mtty/mtty/{U}", "class/vfio-dev/vfio0", "class/vfio/0",
        "devices/virtual/vfio/0",
        f"devices/virtual/mtty/mtty/mdev_supported_types/mtty-1/devices/{U}"])
    assert tree.names_removed_by(remove, b"0\n") == tree.names_removed_by(remove, b"x") == []
    assert tree.names_removed_by(tree.resolve(f"devices/virtual/mtty/mtty/{U}/uevent"),
                                 b"1") == []
    assert tree.names_removed_by(tree.resolve("bus/mdev/drivers_probe"), b"1") == []
    assert tree.size == len(set(walked)) == len(walked)
    assert tree.resolve(f"devices/virtual/mtty/mtty/{U}/iommu_group").to is \
        tree.resolve("kernel/iommu_groups/0")
