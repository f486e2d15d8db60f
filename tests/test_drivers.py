"""The vendor-driver API's public face (mdevfs.driver): every shipped driver declares its
kind and options, each option with its type, default and meaning; a topology's options are
checked against the declaration before the driver runs; `mdevfs drivers NAME` shows an entry
that mounts; `record` asks the installed drivers whether they made what it found."""
from __future__ import annotations

import importlib.metadata

import pytest
from conftest import needs_fuse, write_topology

from mdevfs import driverdoc
from mdevfs.config import Topology, TopologyError
from mdevfs.driver import GPU, PARENT, Option, installed, kind_of, load_factory, options_of
from mdevfs.record import RecFunction, RecParent, RecType
from mdevfs.testing import mounted

SHIPPED = sorted(ep.name for ep in importlib.metadata.entry_points(group="mdevfs.vendors"))


def test_every_shipped_driver_declares_its_options_with_their_meaning():
    assert SHIPPED == ["gvt", "mbochs", "mdpy", "mtty", "nvidia", "nvidia-sriov", "recorded",
                       "scheme"]
    for name in SHIPPED:
        declared = options_of(load_factory(name))
        assert declared, name
        for option in declared:
            assert isinstance(option, Option) and option.doc and set(option.kind.split("|")) <= {
                "int", "str", "bool", "table", "list"}, (name, option)
            assert option.default is None or option.problem(option.default) is None, option
    assert [n for n, _ in installed(GPU)] == ["nvidia-sriov"]
    assert kind_of(load_factory("mtty")) == PARENT


@pytest.mark.parametrize(("options", "problem"), [
    ("port = 4", "unknown option(s) 'port' (known: ports)"),
    ('ports = "4"', "option 'ports' must be an int, not '4'"),
    ("ports = true", "option 'ports' must be an int, not True"),
])
def test_options_are_checked_against_the_declaration_first(tmp_path, options, problem):
    path = write_topology(tmp_path, f'[[parent]]\ndriver = "mtty"\n[parent.options]\n{options}\n')
    with pytest.raises(TopologyError) as refused:
        Topology.from_toml(path).build()
    assert str(refused.value) == (f"{path}: parent #1 (driver 'mtty'): the driver refused its "
                                  f"options: ValueError: {problem}")


def test_a_gpu_entry_names_its_driver(tmp_path):
    path = write_topology(tmp_path, '[[gpu]]\naddress = "0000:41:00.0"\n')
    with pytest.raises(TopologyError, match="'driver' must name the driver of the device "
                                            r"\(nvidia-sriov\)"):
        Topology.from_toml(path)


@needs_fuse
@pytest.mark.parametrize("name", SHIPPED)
def test_the_entry_mdevfs_drivers_shows_mounts_as_it_is(tmp_path, name):
    doc = next(d for d in driverdoc.drivers() if d.name == name)
    text = driverdoc.example(doc)
    assert f'[[{doc.kind}]]\ndriver = "{name}"\n' in text
    with mounted(write_topology(tmp_path, text)) as m:
        if doc.kind == GPU:
            assert m.read("bus/pci/devices/0000:41:00.0/driver_override") == "(null)\n"
        else:
            assert len(list((m.root / "class/mdev_bus").iterdir())) == 1


def test_record_asks_each_installed_driver_whether_it_made_a_parent():
    """From_recording: the samples recognise their own types and infer their pools; a
    parent no driver recognises gets none; an NVIDIA PF of a catalogued card is a gpu."""
    mtty = RecParent("mtty", "devices/virtual/mtty/mtty", types=[
        RecType("mtty-1", available=20), RecType("mtty-2", available=10)])
    assert load_factory("mtty").from_recording(mtty) == {"ports": 20}
    other = RecParent("x", "devices/virtual/x/x", types=[RecType("x-1", available=1)])
    assert [f.from_recording(other) for _, f in installed(PARENT)
            if hasattr(f, "from_recording")] == [None] * 5
    l40s = RecFunction("0000:41:00.0", "devices/pci0000:40/0000:41:00.0", 0x10DE, 0x26B9, 2, -1)
    options, lines = load_factory("nvidia-sriov").from_recording(l40s)
    assert options == {"model": "L40S", "vfs": 2} and lines[0].startswith("GPU 0000:41:00.0")
    nic = RecFunction("0000:02:00.0", "devices/pci0000:00/0000:02:00.0", 0x8086, 0x10C9, 0, -1)
    assert load_factory("nvidia-sriov").from_recording(nic) is None
