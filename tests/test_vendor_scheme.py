"""The declarative scheme driver: a migration_version scheme from the topology alone."""
from __future__ import annotations

import errno
import os
import stat

import pytest
from conftest import errno_of, shared_mount
from hypothesis import given, settings
from hypothesis import strategies as st
from mdevfs_vendors.scheme import Scheme, SchemeDriver

from mdevfs.config import Topology, TopologyError
from mdevfs.driver import build

HOSTS = """
[[parent]]
driver = "scheme"
[parent.options]
name = "acme"
max_instances = 3
format = "acme-{major}.{minor}-{build}-{type}"
fields = { major = 2, minor = 1, build = "x" }
rules = { minor = "target>=source" }
unsupported_errno = "EOPNOTSUPP"
incompatible_errno = "EPROTO"
[[parent.options.types]]
name = "small"
pretty_name = "Acme small"
description = "1 slice"
[[parent.options.types]]
name = "big"
device_api = "vfio-platform"
migration = "unsupported"
[[parent.options.types]]
name = "tiny"
migration = "absent"

[[parent]]
driver = "scheme"
name = "sw0"
path = "devices/platform/sw0"
[parent.options]
name = "sw"
format = "sw:{version}/{type}/{abi:04x}"
fields = { version = "3.2.7", abi = 0x1f }
rules = { version = "same-major-minor>=", abi = "target<=source" }
[[parent.options.types]]
name = "one"
"""
ACME = "class/mdev_bus/acme/mdev_supported_types"
SW = "class/mdev_bus/sw0/mdev_supported_types/sw-one/migration_version"



mount, m = shared_mount(HOSTS, "scheme")


# --- types --------------------------------------------------------------------------------

def test_types_come_from_the_topology(m):
    """Scheme: the types, names, descriptions and device_api are options."""
    assert sorted(os.listdir(m.path(ACME))) == ["acme-big", "acme-small", "acme-tiny"]
    assert m.path(f"{ACME}/acme-small/name").read_bytes() == b"Acme small\n"
    assert m.path(f"{ACME}/acme-small/description").read_bytes() == b"1 slice\n"
    assert m.path(f"{ACME}/acme-big/name").read_bytes() == b"big\n"
    assert m.path(f"{ACME}/acme-big/device_api").read_bytes() == b"vfio-platform\n"
    assert "description" not in os.listdir(m.path(f"{ACME}/acme-big"))
    assert os.readlink(m.path("class/mdev_bus/acme")) == "../../devices/virtual/acme/acme"
    assert os.readlink(m.path("class/sw/sw0")) == "../../devices/platform/sw0"


def test_core_counter_gives_eusers(m):
    """ABI §2.2 row 5: max_instances feeds the core's shared counter; exhausted is EUSERS."""
    for type_id in ("acme-small", "acme-big", "acme-tiny"):
        m.create(type_id, parent="acme")
    assert m.read(f"{ACME}/acme-small/available_instances") == "0\n"
    assert errno_of(m.create, "acme-small", None, "acme") == errno.EUSERS


# --- migration_version --------------------------------------------------------------------

def test_string_is_the_format_filled_in_at_both_nodes(m):
    """ABI §5.2: the driver's string plus a newline, mode 0644, at the type and device."""
    uuid = m.create("acme-small", parent="acme")
    for where in (f"{ACME}/acme-small", f"bus/mdev/devices/{uuid}"):
        path = m.path(f"{where}/migration_version")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
        assert path.read_bytes() == b"acme-2.1-x-small\n"
    assert m.read(SW) == "sw:3.2.7/one/001f\n"


def test_unsupported_type_fails_with_the_configured_errno(m):
    """ABI §5.2: read (and write) fail with the driver's errno when unsupported."""
    uuid = m.create("acme-big", parent="acme")
    for where in (f"{ACME}/acme-big", f"bus/mdev/devices/{uuid}"):
        assert errno_of(m.read, f"{where}/migration_version") == errno.EOPNOTSUPP
        assert errno_of(m.write, f"{where}/migration_version", "acme-2.1-x-big") == \
            errno.EOPNOTSUPP


def test_absent_type_has_no_attribute(m):
    """ABI §5.2: absence of the attribute means no migration support."""
    uuid = m.create("acme-tiny", parent="acme")
    assert "migration_version" not in os.listdir(m.path(f"{ACME}/acme-tiny"))
    assert "migration_version" not in os.listdir(m.path(f"bus/mdev/devices/{uuid}"))


@pytest.mark.parametrize("path, source, ok", [
    (f"{ACME}/acme-small", "acme-2.1-x-small", True),
    (f"{ACME}/acme-small", "acme-2.0-x-small", True),      # minor: target ≥ source
    (f"{ACME}/acme-small", "acme-2.2-x-small", False),
    (f"{ACME}/acme-small", "acme-3.1-x-small", False),     # major: equal
    (f"{ACME}/acme-small", "acme-2.1-y-small", False),     # build: equal
    (f"{ACME}/acme-small", "acme-2.1-x-big", False),       # type: equal
    (f"{ACME}/acme-small", "acme-2.1-x-small ", False),
    (f"{ACME}/acme-small", "ACME-2.1-x-small", False),
    (SW.removesuffix("/migration_version"), "sw:3.2.7/one/001f", True),
    (SW.removesuffix("/migration_version"), "sw:3.1.99/one/001f", True),  # same major, older
    (SW.removesuffix("/migration_version"), "sw:3.2.0/one/001F", True),
    (SW.removesuffix("/migration_version"), "sw:3.3.0/one/001f", False),
    (SW.removesuffix("/migration_version"), "sw:2.9.0/one/001f", False),
    (SW.removesuffix("/migration_version"), "sw:3.2.7/one/0020", True),   # abi: target ≤ source
    (SW.removesuffix("/migration_version"), "sw:3.2.7/one/001e", False),
    (SW.removesuffix("/migration_version"), "sw:3/one/001f", False),
])
def test_rules_decide_through_the_mount(m, path, source, ok):
    """Scheme rules: each field is compared by its rule; EPROTO/EINVAL."""
    target = f"{path}/migration_version"
    if ok:
        assert m.write(target, source + "\n") == len(source) + 1
    else:
        mark = len(m.log())
        code = errno.EPROTO if "acme" in path else errno.EINVAL
        assert errno_of(m.write, target, source + "\n") == code
        assert "may not migrate" in m.log()[mark:]


@settings(max_examples=40, deadline=None)
@given(major=st.integers(0, 4), minor=st.integers(0, 4),
       build=st.sampled_from(["x", "y", "x1"]), kind=st.sampled_from(["small", "big"]))
def test_mount_agrees_with_the_rules(mount, major, minor, build, kind):
    """Scheme rules, through a mount: success iff every rule holds."""
    source = f"acme-{major}.{minor}-{build}-{kind}"
    target = f"{ACME}/acme-small/migration_version"
    if major == 2 and minor <= 1 and build == "x" and kind == "small":
        assert mount.write(target, source) == len(source)
    else:
        assert errno_of(mount.write, target, source) == errno.EPROTO


def test_fields_change_through_the_control_socket(m):
    """Scheme: ctl set-option PARENT fields.<name> moves the string at both nodes."""
    uuid = m.create("acme-small", parent="acme")
    try:
        m.control.set_option("acme", "fields.minor", 4)
        for where in (f"{ACME}/acme-small", f"bus/mdev/devices/{uuid}"):
            assert m.read(f"{where}/migration_version") == "acme-2.4-x-small\n"
            assert m.write(f"{where}/migration_version", "acme-2.3-x-small") == 16
        assert errno_of(m.control.set_option, "acme", "fields.minor", "four") == errno.EINVAL
        assert errno_of(m.control.set_option, "acme", "fields.patch", 1) == errno.EINVAL
        assert errno_of(m.control.set_option, "acme", "format", "{type}") == errno.EINVAL
    finally:
        m.control.set_option("acme", "fields.minor", 1)
    assert m.read(f"{ACME}/acme-small/migration_version") == "acme-2.1-x-small\n"


def test_fields_change_at_run_time():
    """Scheme: set_field() moves the string; the rules then judge against the new value."""
    host = Topology.from_text(HOSTS, "t").build()
    driver = host.parents["acme"].driver
    migration = driver.migration(host.parents["acme"].types["acme-small"])
    old = migration.version()
    driver.set_field("minor", 0)
    assert migration.version() == "acme-2.0-x-small"
    with pytest.raises(OSError) as info:
        migration.check(old)
    assert info.value.errno == errno.EPROTO
    with pytest.raises(ValueError):
        driver.set_field("minor", "one")
    with pytest.raises(ValueError, match="would not parse back"):
        driver.set_field("build", "x-1")  # "acme-2.0-x-1-small" splits as build x, type 1-small
    assert migration.version() == "acme-2.0-x-small"


# --- option checks ------------------------------------------------------------------------

GOOD = {"format": "v{major}-{type}", "fields": {"major": 1}, "types": [{"name": "a"}]}


@pytest.mark.parametrize("change, named", [
    ({"format": "v{major}-{typ}"}, "{typ}"),
    ({"format": "v{major}-{major}-{type}"}, "appears twice"),
    ({"format": "v{type}"}, "leaves out field(s) major"),
    ({"format": "v{major!r}-{type}"}, "{major}"),
    ({"format": "v{type:>5}{major}"}, "{type}"),
    ({"format": "v{major"}, "'format'"),
    ({"format": 7}, "'format'"),
    ({"fields": {"major": -1}}, "'fields.major'"),
    ({"fields": {"major": 1.5}}, "'fields.major'"),
    ({"fields": {"major": True}}, "'fields.major'"),
    ({"fields": {"type": 1}}, "'fields'"),
    ({"rules": {"major": "newer"}}, "'rules.major'"),
    ({"rules": {"minor": "equal"}}, "'rules.minor'"),
    ({"rules": {"type": "target>=source"}}, "'rules.type'"),
    ({"fields": {"major": "one"}, "rules": {"major": "target>=source"}}, "'rules.major'"),
    ({"rules": {"major": "same-major-minor>="}}, "'rules.major'"),
    ({"unsupported_errno": "ENOTANERRNO"}, "'unsupported_errno'"),
    ({"incompatible_errno": 100000}, "'incompatible_errno'"),
    ({"types": []}, "'types'"),
    ({"types": [{"name": "a"}, {"name": "a"}]}, "'types' #2"),
    ({"types": [{"name": "a b"}]}, "'types' #1"),
    ({"types": [{"name": "a", "colour": "red"}]}, "'colour'"),
    ({"types": [{"name": "a", "migration": "maybe"}]}, "'migration'"),
    ({"format": "{type}{b}", "fields": {"b": "x"}, "types": [{"name": "ab"}]},
     "does not parse back"),
    ({"max_instances": -2}, "'max_instances'"),
    ({"versoin": 1}, "'versoin'"),
])
def test_bad_options_are_refused_by_name(change, named):
    """Topology files: a bad scheme option is a ValueError naming it, so TopologyError."""
    with pytest.raises(ValueError) as info:
        build(SchemeDriver, {**GOOD, **change})
    assert named in str(info.value)


def test_topology_error_names_the_parent():
    """Topology files: config.py reports the scheme's ValueError with the parent entry."""
    text = ('[[parent]]\ndriver = "scheme"\n'
            'options = { format = "{nope}", types = [{name = "a"}] }\n')
    with pytest.raises(TopologyError) as info:
        Topology.from_text(text, "t.toml").build()
    assert "t.toml: parent #1 (driver 'scheme')" in str(info.value)
    assert "'format'" in str(info.value)


# --- the rules, property-based (no FUSE) --------------------------------------------------

def check(scheme: Scheme, source: str, type_name: str = "t") -> bool:
    return scheme.incompatibility(source, type_name) is None


@given(rule=st.sampled_from(["equal", "any", "target>=source", "target<=source"]),
       source=st.integers(0, 10**6), target=st.integers(0, 10**6))
def test_whole_number_rules(rule, source, target):
    """Scheme rules: equal, any, target>=source, target<=source on whole numbers."""
    scheme = Scheme("n{n}-{type}", {"n": target}, {"n": rule})
    expected = {"equal": source == target, "any": True, "target>=source": target >= source,
                "target<=source": target <= source}[rule]
    assert check(scheme, f"n{source}-t") is expected


@given(source=st.tuples(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99)),
       target=st.tuples(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99)))
def test_same_major_minor_rule(source, target):
    """Scheme rules / ABI §5.5: same major, target minor ≥ source minor, bugfix ignored."""
    scheme = Scheme("{v}:{type}", {"v": ".".join(map(str, target))}, {"v": "same-major-minor>="})
    expected = source[0] == target[0] and target[1] >= source[1]
    assert check(scheme, ".".join(map(str, source)) + ":t") is expected


@given(values=st.fixed_dictionaries({
    "a": st.integers(0, 2**40),
    "b": st.text(st.characters(codec="ascii", exclude_characters="_"), min_size=1, max_size=12),
    "c": st.integers(0, 2**32 - 1)}), type_name=st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True))
def test_strings_parse_back_to_their_fields(values, type_name):
    """Scheme: a string made by the format parses back to the same fields (decimal and hex)."""
    scheme = Scheme("{a}_{b}_{type}_{c:08x}", values, {})
    assert scheme.parse(scheme.render(type_name)) == {**values, "type": type_name}
    assert check(scheme, scheme.render(type_name), type_name)


@given(source=st.text(max_size=30))
def test_anything_else_is_incompatible_under_equal_rules(source):
    """Scheme: with only 'equal' rules, the one compatible string is the target's own."""
    scheme = Scheme("acme-{major}.{minor}-{type}", {"major": 2, "minor": 1}, {})
    assert check(scheme, source, "small") is (source == "acme-2.1-small")
