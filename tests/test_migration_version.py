"""What the framework enforces on every migration_version (the proposal (v5) 3/4, ABI §5.2).

A probe driver, loaded from a file as a vendor prototyping one would be, lets the
tests choose its string and its verdict through its own type attributes:
``test/version`` takes ``<n>*<text>`` (the string is text repeated n times, bytes
taken as Latin-1), ``errno:<N>`` (version() raises N) or ``notstr`` (returns 42);
``test/verdict`` takes the errno check() raises (0: accept). check() appends
repr() of every string it is handed, one a line, to the file named by option ``seen``.
"""
from __future__ import annotations

import ast
import errno
import os
import stat

import pytest
from conftest import STRICT, errno_of
from hypothesis import given, settings
from hypothesis import strategies as st

from mdevfs.attributes import PATH_MAX, migration_op
from mdevfs.nodes import Dir, File
from mdevfs.testing import mounted

PROBE = '''
from mdevfs.driver import Attribute, BaseDriver, MdevTypeSpec
from mdevfs.errors import fail


class Driver(BaseDriver):
    name = mdev_driver = default_parent = "probe"
    subsystem = ("class", "probe")
    default_path = "devices/virtual/probe/probe"

    def __init__(self, options=None):
        super().__init__(options)
        self.value, self.verdict, self.seen = "v1", 0, self.options["seen"]

    def types(self):
        return (MdevTypeSpec("a"), MdevTypeSpec("none"))

    def max_instances(self):
        return 8

    def set_version(self, buf):
        if buf.startswith(b"errno:"):
            self.value = int(buf[6:])
        elif buf == b"notstr":
            self.value = None
        else:
            count, _, text = buf.partition(b"*")
            self.value = text.decode("latin-1") * int(count)

    def set_verdict(self, buf):
        self.verdict = int(buf)

    def type_attributes(self, mtype):
        if mtype.spec.sysfs_name != "a":
            return ()
        return (Attribute("test/version", store=self.set_version),
                Attribute("test/verdict", store=self.set_verdict),
                Attribute("test/big", show=lambda: "b" * 5000))

    def migration(self, target):
        mtype = getattr(target, "mdev_type", target)
        return None if mtype.spec.sysfs_name == "none" else self

    def version(self):
        if isinstance(self.value, int):
            fail(self.value)
        return 42 if self.value is None else self.value

    def check(self, source):
        with open(self.seen, "a") as f:
            f.write(repr(source) + "\\n")
        if self.verdict:
            fail(self.verdict)
'''
TYPE = "class/mdev_bus/probe/mdev_supported_types/probe-a"
MV = f"{TYPE}/migration_version"



@pytest.fixture(scope="module")
def mount(tmp_path_factory):
    if (not os.path.exists("/dev/fuse") or os.geteuid() != 0) and not STRICT:
        pytest.skip("needs /dev/fuse and root")
    where = tmp_path_factory.mktemp("probe")
    (where / "probe.py").write_text(PROBE)
    (where / "probe.toml").write_text(f'[[parent]]\ndriver = "probe.py"\n'
                                      f'options = {{ seen = "{where}/seen" }}\n')
    (where / "seen").write_text("")
    with mounted(where / "probe.toml") as m:
        m.seen_file = where / "seen"
        yield m
        assert m.alive(), m.log()


@pytest.fixture
def m(mount):
    """The probe mount, reset to string "v1", verdict 0 and no devices around each test."""
    mount.write(f"{TYPE}/test/version", "1*v1")
    mount.write(f"{TYPE}/test/verdict", "0")
    yield mount
    for uuid in os.listdir(mount.root / "bus/mdev/devices"):
        mount.remove(uuid)


def seen(m) -> list[str]:
    """Every string the probe's check() was handed, in order."""
    return [ast.literal_eval(line) for line in m.seen_file.read_text().splitlines()]


# --- presence and mode --------------------------------------------------------------------

def test_attribute_at_type_and_device_mode_0644(m):
    """The proposal: an optional read-write attribute under the type node and the device node."""
    uuid = m.create("probe-a", parent="probe")
    for path in (MV, f"bus/mdev/devices/{uuid}/migration_version"):
        assert stat.S_IMODE(os.stat(m.path(path)).st_mode) == 0o644
        assert m.read(path) == "v1\n"


def test_absent_when_the_driver_has_no_migration(m):
    """The proposal: absence of the attribute means no migration support (type and device)."""
    uuid = m.create("probe-none", parent="probe")
    none_type = "class/mdev_bus/probe/mdev_supported_types/probe-none"
    assert "migration_version" not in os.listdir(m.path(none_type))
    assert "migration_version" not in os.listdir(m.path(f"bus/mdev/devices/{uuid}"))
    assert errno_of(m.read, f"{none_type}/migration_version") == errno.ENOENT


# --- read ---------------------------------------------------------------------------------

def test_read_is_the_string_and_a_newline(m):
    """The proposal: read(2) returns the driver's string; sysfs adds the newline."""
    m.write(f"{TYPE}/test/version", "3*ab-")
    assert m.path(MV).read_bytes() == b"ab-ab-ab-\n"


def test_read_fails_with_the_drivers_errno(m):
    """The proposal: read(2) fails with the vendor's errno when migration is unsupported."""
    for code in (errno.ENODEV, errno.ETIMEDOUT, errno.EOPNOTSUPP):
        m.write(f"{TYPE}/test/version", f"errno:{code}")
        assert errno_of(m.read, MV) == code


def test_path_max_string_reads_back_whole(m):
    """The proposal's restriction 2: a string of PATH_MAX (4096) bytes is allowed, read whole + newline."""
    m.write(f"{TYPE}/test/version", "4096*z")
    data = m.path(MV).read_bytes()
    assert data == b"z" * 4096 + b"\n"


def test_a_longer_string_is_eio_naming_the_driver(m):
    """The proposal's restriction 2, enforced by the framework: 4097 bytes is a driver bug → EIO, logged."""
    m.write(f"{TYPE}/test/version", "4097*z")
    mark = len(m.log())
    assert errno_of(m.read, MV) == errno.EIO
    assert "driver probe: migration_version of type probe-a of probe is 4097 bytes" in \
        m.log()[mark:]


@pytest.mark.parametrize("setting, problem", [
    (b"1*caf\xe9", "not ASCII"),
    (b"1*\xff", "not ASCII"),
    (b"notstr", "of type int, not str"),
])
def test_a_non_ascii_string_is_eio_naming_the_driver(m, setting, problem):
    """The proposal's restriction 1, enforced by the framework: a non-ASCII string → EIO, logged."""
    uuid = m.create("probe-a", parent="probe")
    m.write(f"{TYPE}/test/version", setting)
    for path in (MV, f"bus/mdev/devices/{uuid}/migration_version"):
        mark = len(m.log())
        assert errno_of(m.read, path) == errno.EIO
        assert "driver probe" in m.log()[mark:] and problem in m.log()[mark:]
    assert f"device {uuid}" in m.log()


def test_other_attributes_keep_the_page_limit(m):
    """ABI §1.3: other attributes are still cut at PAGE_SIZE - 1 bytes."""
    assert m.path(f"{TYPE}/test/big").read_bytes() == b"b" * 4095


# --- write --------------------------------------------------------------------------------

def test_write_returns_the_count_and_strips_one_newline(m):
    """The proposal: write(2) of the source's string succeeds with the byte count; one '\\n' ignored."""
    assert m.write(MV, "src-1\n") == 6
    assert m.write(MV, "src-2") == 5
    assert m.write(MV, "src-3\n\n") == 7
    assert seen(m)[-3:] == ["src-1", "src-2", "src-3\n"]


def test_write_fails_with_the_drivers_errno(m):
    """The proposal: write(2) fails with the vendor-specific errno when incompatible."""
    for code in (errno.EINVAL, errno.ENODEV, errno.EPROTO):
        m.write(f"{TYPE}/test/verdict", str(code))
        assert errno_of(m.write, MV, "v1\n") == code


def test_non_ascii_write_is_einval_before_the_driver(m):
    """The proposal's restriction 1, enforced by the framework: a non-ASCII write → EINVAL."""
    before = len(seen(m))
    for data in (b"caf\xe9", b"v1\n\x80", b"ok\0\xff"):
        assert errno_of(m.write, MV, data) == errno.EINVAL
    assert len(seen(m)) == before


def test_nul_ends_the_string(m):
    """ABI §2.1: the store buffer is a C string, so the driver sees text up to a NUL."""
    assert m.write(MV, b"abc\0def") == 7
    assert seen(m)[-1] == "abc"


def test_writes_are_cut_at_4096_bytes(m):
    """ABI §2.1: one store() per write(2), cut at PAGE_SIZE (4096) bytes."""
    assert m.write(MV, "y" * 5000) == 4096
    assert seen(m)[-1] == "y" * 4096


def test_path_max_string_round_trips(m):
    """The proposal: cat of a PATH_MAX string then echo of it into the attribute is accepted."""
    m.write(f"{TYPE}/test/version", "4096*q")
    text = m.path(MV).read_bytes()
    assert m.write(MV, text) == 4096  # echo's 4097 bytes, cut at 4096: the newline goes
    assert seen(m)[-1] == "q" * 4096


def test_empty_write_does_not_reach_the_driver(m):
    """ABI §2.1: a zero-length write returns 0 without calling store()."""
    m.write(f"{TYPE}/test/verdict", str(errno.EINVAL))
    before = len(seen(m))
    assert m.write(MV, b"") == 0
    assert len(seen(m)) == before


@settings(max_examples=25, deadline=None)
@given(text=st.text(st.characters(codec="ascii", exclude_characters="\0"), max_size=200))
def test_any_ascii_string_survives_read_then_write(mount, text):
    """The proposal (through a mount): a driver's ASCII string reads back exactly and writes back."""
    mount.write(f"{TYPE}/test/verdict", "0")
    mount.write(f"{TYPE}/test/version", b"1*" + text.encode())
    assert mount.path(MV).read_bytes() == text.encode() + b"\n"
    assert mount.write(MV, text.encode() + b"\n") == len(text) + 1
    assert seen(mount)[-1] == text


# --- the same rules without FUSE ----------------------------------------------------------

class Fake:
    def __init__(self, value: object) -> None:
        self.value = value
        self.seen: list[str] = []

    def version(self) -> object:
        return self.value

    def check(self, source: str) -> None:
        self.seen.append(source)


def node(fake: Fake) -> File:
    file = File("migration_version", migration_op(fake, "fake"), obj=None)
    file.parent = Dir("probe-a")  # attached: a detached node answers ENODEV
    return file


@given(value=st.text(max_size=PATH_MAX + 3) | st.text(st.characters(codec="ascii"),
                                                       min_size=PATH_MAX - 2,
                                                       max_size=PATH_MAX + 2))
def test_show_accepts_exactly_ascii_up_to_path_max(value):
    """The proposal's restrictions 1 and 2: the string + '\\n' if ASCII and ≤ PATH_MAX, else EIO."""
    if value.isascii() and len(value) <= PATH_MAX:
        assert node(Fake(value)).read() == value.encode() + b"\n"
    else:
        with pytest.raises(OSError) as info:
            node(Fake(value)).read()
        assert info.value.errno == errno.EIO


@given(buf=st.binary(max_size=5000))
def test_store_refuses_non_ascii_and_hands_over_the_c_string(buf):
    """The proposal's restriction 1 + ABI §2.1: non-ASCII → EINVAL; else the text to the first NUL,
    minus one trailing newline, from at most 4096 bytes; the count is returned."""
    fake = Fake("x")
    cut = buf[:4096]
    if not cut:
        assert node(fake).write(buf) == 0
    elif not cut.isascii():
        with pytest.raises(OSError) as info:
            node(fake).write(buf)
        assert info.value.errno == errno.EINVAL
        assert fake.seen == []
    else:
        assert node(fake).write(buf) == len(cut)
        assert fake.seen == [cut.split(b"\0")[0].decode().removesuffix("\n")]
