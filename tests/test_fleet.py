"""Fleets : many hosts from a fleet.toml, each a mount of its own, and the
migration planner's view of them, through real mounts."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import needs_fuse

from mdevfs import fleet, mounts, planner
from mdevfs.errors import UsageError

pytestmark = needs_fuse
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "fleet"
MDEVFS = [sys.executable, "-m", "mdevfs"]
P4 = "class/mdev_bus/0000:41:00.0/mdev_supported_types/nvidia-63"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def shared(tmp_path: Path, hosts: str, fleet_keys: str = "") -> Path:
    """A fleet of the example GPU host with ``hosts`` as its [[host]] tables."""
    return write(tmp_path / "fleet.toml", f'[fleet]\ntopology = "{EXAMPLES / "gpu-host.toml"}"\n'
                 f"{fleet_keys}\n{hosts}")


def mounted_under(directory: Path) -> list[str]:
    return sorted(m for m in mounts.mountpoints() if m.startswith(str(directory) + "/"))


# --- the fleet file -------------------------------------------------------------------------

def test_count_names_hosts_and_state_dir_gives_each_a_file(tmp_path):
    spec = shared(tmp_path, '[[host]]\nname = "n{n:02}"\ncount = 3\n[[host]]\nname = "solo"\n'
                  f'topology = "{EXAMPLES / "gpu-host.toml"}"\n', 'state_dir = "st"')
    hosts = fleet.load(spec)
    assert [(h.name, h.state, h.text) for h in hosts] == [
        ("n01", tmp_path / "st/n01.json", None), ("n02", tmp_path / "st/n02.json", None),
        ("n03", tmp_path / "st/n03.json", None), ("solo", tmp_path / "st/solo.json", None)]


def test_overrides_merge_driver_options_and_set_the_gpu_count(tmp_path):
    """Gpus = 2 keeps the first two GPUs; gpus = 5 copies the last onto the next free bus,
    its path following; options go to every parent of that driver."""
    spec = shared(tmp_path, '[[host]]\nname = "two"\ngpus = 2\n[host.options.nvidia]\n'
                  'manager = "550.54.10"\n[[host]]\nname = "five"\ngpus = 5\n')
    two, five = fleet.load(spec)
    assert tomllib.loads(two.text) == {"parent": [
        {"driver": "nvidia", "name": f"0000:4{i}:00.0",
         "path": f"devices/pci0000:40/0000:40:01.{i}/0000:4{i}:00.0",
         "options": {"manager": "550.54.10"}} for i in (1, 2)]}
    assert five.text is not None
    assert [(p["name"], p["path"]) for p in tomllib.loads(five.text)["parent"]][3:] == [
        ("0000:44:00.0", "devices/pci0000:40/0000:40:01.4/0000:44:00.0"),
        ("0000:45:00.0", "devices/pci0000:40/0000:40:01.4/0000:45:00.0")]


@pytest.mark.parametrize(("hosts", "problem"), [
    ('[[host]]\nname = "a"\n[[host]]\nname = "a"\n', "host name(s) used twice: a"),
    ('[[host]]\nname = "a"\ngpus = -1\n', "host #1: 'gpus' must be a whole number from 0 to 64"),
    ('[[host]]\nname = "a"\ncolour = 1\n',
     "host #1: keys are count, gpus, kernel, name, options, state, topology"),
    ('[[host]]\nname = "a/b"\n',
     "host #1: host name 'a/b' must be letters, digits, '_.-', not starting with '.'"),
    # a host named like the fleet's own record, or any hidden name, would overwrite it
    ('[[host]]\nname = "fleet.json"\n',
     "host #1: host name 'fleet.json' is the name of the fleet's own record"),
    ('[[host]]\nname = ".hidden"\n',
     "host #1: host name '.hidden' must be letters, digits, '_.-', not starting with '.'"),
    ('[[host]]\nname = "a{n}"\ncount = true\n',
     "host #1: 'count' must be a whole number from 1 to 10000"),
    ('[[host]]\nname = "a"\ncount = 2\n', "host #1: name 'a' must hold {n} to give 2 names"),
    ('[[host]]\nname = "a"\n[host.options]\nnvidia = 3\n',
     "host #1: 'options' must be tables of options per driver ([host.options.DRIVER] …)"),
])
def test_a_bad_fleet_file_is_refused_naming_the_entry(tmp_path, hosts, problem):
    spec = shared(tmp_path, hosts)
    with pytest.raises(UsageError) as refused:
        fleet.load(spec)
    assert str(refused.value) == f"{spec}: {problem}"


# --- up, status, run, down ------------------------------------------------------------------

def test_up_status_run_and_down_through_the_cli(tmp_path):
    """Each host its own root, control socket and log; `fleet run` shows one host's tree at
    /sys; `fleet down` leaves no mount, daemon or directory."""
    top = tmp_path / "skew"
    up = subprocess.run([*MDEVFS, "fleet", "up", str(EXAMPLES / "skew.toml"), str(top)],
                        capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        assert re.fullmatch(rf"mdevfs fleet: 6 hosts up in {top} \(\d+\.\d s\)\n", up.stdout)
        mounts = fleet.hosts(top)
        assert [m.name for m in mounts] == ["old-1", "old-2", "old-3", "new-1", "new-2", "new-3"]
        assert mounted_under(top) == sorted(str(top / m.name / "sys") for m in mounts)
        assert len({m.control for m in mounts}) == 6
        status = subprocess.run([*MDEVFS, "fleet", "status", str(top)], capture_output=True,
                                text=True, timeout=60)
        assert status.returncode == 0
        assert [re.sub(r"^(\S+)\s+\d+", r"\1 PID", line) for line in
                status.stdout.splitlines()] == (
            ["HOST       PID  STATE    PARENTS  DEVICES  ROOT"]
            + [f"{m.name} PID  up             4        0  {m.root}" for m in mounts]
            + ["6 of 6 hosts up"])
        for host, version in (("old-2", "535.54"), ("new-3", "535.161")):
            run = subprocess.run([*MDEVFS, "fleet", "run", str(top), host, "--", "cat",
                                  f"/sys/{P4}/migration_version"],
                                 capture_output=True, text=True, timeout=60)
            assert (run.returncode, run.stdout) == (0, f"NVIDIA-vGPU:{version}:P4-1Q\n")
    finally:
        down = subprocess.run([*MDEVFS, "fleet", "down", str(top)], capture_output=True,
                              text=True, timeout=120)
    assert (down.returncode, down.stdout, down.stderr) == (0, "", "")
    assert mounted_under(tmp_path) == [] and not top.exists()
    assert not any(m.alive() for m in mounts)


def test_hosts_are_separate_and_keep_their_state_files(tmp_path):
    """A device made on one host is on that host only; with state_dir, it is there again
    after the fleet goes down and comes up."""
    spec = shared(tmp_path, '[[host]]\nname = "h{n}"\ncount = 2\n', 'state_dir = "st"')
    uuid = "11111111-2222-3333-4444-555555555555"
    with fleet.running(spec, tmp_path / "f") as (h1, h2):
        (h1.root / P4 / "create").write_text(uuid)
        assert (os.listdir(h1.root / "bus/mdev/devices"), os.listdir(h2.root / "bus/mdev/devices"),
                h1.client().status()["devices"], h2.client().status()["devices"]) == (
            [uuid], [], [uuid], [])
    with fleet.running(spec, tmp_path / "f") as (h1, h2):
        assert (os.listdir(h1.root / "bus/mdev/devices"),
                os.listdir(h2.root / "bus/mdev/devices")) == ([uuid], [])


def test_hosts_run_the_kernels_their_entries_name(tmp_path):
    """Kernel = "5.10" on one [[host]] entry: that host's mdevs bind to vfio_mdev, the other
    host's to their parent's driver; a kernel mdevfs does not know is refused by name."""
    spec = shared(tmp_path, '[[host]]\nname = "old"\nkernel = "5.10"\n[[host]]\nname = "new"\n')
    with fleet.running(spec, tmp_path / "f") as (old, new):
        for host in (old, new):
            (host.root / P4 / "create").write_text("11111111-2222-3333-4444-555555555555")
        driver = "bus/mdev/devices/11111111-2222-3333-4444-555555555555/driver"
        assert (os.readlink(old.root / driver).rsplit("/", 1)[1],
                os.readlink(new.root / driver).rsplit("/", 1)[1]) == ("vfio_mdev",
                                                                     "nvidia-vgpu-vfio")
    bad = shared(tmp_path, '[[host]]\nname = "a"\nkernel = "4.19"\n')
    with pytest.raises(UsageError, match="kernel 4.19: mdevfs emulates 5.10 to 7.3"):
        fleet.load(bad)


def test_a_host_that_cannot_mount_takes_the_others_down(tmp_path):
    spec = shared(tmp_path, '[[host]]\nname = "good"\n[[host]]\nname = "bad"\n'
                  '[host.options.nvidia]\nmanager = "latest"\n')
    with pytest.raises(UsageError) as refused:
        fleet.up(spec, tmp_path / "f")
    assert str(refused.value) == (
        f"host bad: {tmp_path}/f/bad/topology.toml: parent #1 (driver 'nvidia'): the driver "
        "refused its options: ValueError: option 'manager' must look like 535.129.03, not "
        "'latest'")
    assert mounted_under(tmp_path) == [] and not (tmp_path / "f/fleet.json").exists()


def test_up_twice_is_refused(tmp_path):
    spec = shared(tmp_path, '[[host]]\nname = "a"\n')
    with fleet.running(spec, tmp_path / "f"):
        with pytest.raises(UsageError) as refused:
            fleet.up(spec, tmp_path / "f")
    assert str(refused.value) == (f"{tmp_path}/f: exists (a fleet is up there; "
                                  f"`mdevfs fleet down {tmp_path}/f` first)")


# --- the planner's view ---------------------------------------------------------------------

REFUSED = ("writing at the target failed: Protocol not supported (EPROTONOSUPPORT) "
           "(condition 4): vGPU migration from 'NVIDIA-vGPU:535.161:{}' refused: source "
           "release 535.161 is newer than this 535.54")


def test_plan_of_the_skew_example(mdevfs_fleet, tmp_path):
    """Old hosts' vGPUs go anywhere; new hosts' only to new hosts, with NVIDIA's reason;
    six hosts read as two groups."""
    skew = mdevfs_fleet(EXAMPLES / "skew.toml")
    p = skew.plan()
    text = planner.render_text(p, why=True).splitlines()
    assert text[:7] == [
        "fleet migration plan: 6 hosts, 9 types, 2 groups of hosts with identical answers",
        "  G1: old-1, old-2, old-3 (3 hosts): kernel 7.3, nvidia 535.54.03",
        "  G2: new-1, new-2, new-3 (3 hosts): kernel 7.3, nvidia 535.161.07",
        "source \\ target  G1 G2",
        "G1                ✓  ✓",
        "G2                ✗  ✓",
        "legend: ✓ every type may migrate, ✗ none may, k/n k of the n types both hosts offer "
        "(+: others to some GPUs only), ? cannot tell (no migration_version), · no type in "
        "common"]
    profiles = ["P4-1Q", "P4-2Q", "P4-4Q", "P4-8Q", "P4-1A", "P4-2A", "P4-4A", "P4-8A", "P4-1B"]
    assert text[7:] == [f"G2 → G1 nvidia-{63 + i}: no (0/16 accepted): {REFUSED.format(name)}"
                        for i, name in enumerate(profiles)]
    # every host pair has its cells, worked out once per pair of hosts that answer alike
    assert len(p.cells) == sum(1 for _ in p.cells) == 6 * 6 * 9
    assert p.cells[("old-1", "new-3", "nvidia-63")] == p.cells[("old-2", "new-1", "nvidia-63")]
    assert ("nobody", "old-1", "nvidia-63") not in p.cells
    doc = planner.to_json(p)
    assert doc["groups"] == {"G1": ["old-1", "old-2", "old-3"], "G2": ["new-1", "new-2", "new-3"]}
    assert doc["hosts"]["new-2"] == "G2"
    assert len(doc["cells"]) == 4 * 9
    assert doc["cells"][0] == {"source": "G1", "target": "G1", "type": "nvidia-63",
                               "status": "yes", "accepted": 16, "pairs": 16, "reasons": []}
    svg = ET.fromstring(planner.render_svg(p))
    ns = "{http://www.w3.org/2000/svg}"
    titles = [t.text for t in svg.iter(f"{ns}title")]
    assert len(titles) == 4
    assert titles[2].splitlines()[:3] == ["G2 → G1", "nvidia-63: no (0/16)",
                                          "  " + REFUSED.format("P4-1Q")]
    assert "G1 old-1, old-2, old-3 (3 hosts): kernel 7.3, nvidia 535.54.03" in [
        t.text for t in svg.iter(f"{ns}text")]


def test_sriov_vgpus_are_planned_through_their_drivers_grades(mdevfs_fleet, tmp_path):
    """L40S and A100 vGPUs have no migration_version in sysfs: the plan asks the daemons'
    service (the answers NVML gives), live counting as yes; types no one can answer for
    (mtty's) are "cannot tell", never a refusal, and leave the verdict to the others."""
    host = write(tmp_path / "host.toml", '[[parent]]\ndriver = "mtty"\n'
                 '[[gpu]]\ndriver = "nvidia-sriov"\naddress = "0000:41:00.0"\n'
                 'options = { model = "L40S" }\n'
                 '[[gpu]]\ndriver = "nvidia-sriov"\naddress = "0000:81:00.0"\n'
                 'options = { model = "A100" }\n')
    spec = write(tmp_path / "fleet.toml", f'[fleet]\ntopology = "{host}"\n'
                 '[[host]]\nname = "old"\n[host.options.nvidia-sriov]\nmanager = "550.54.10"\n'
                 '[[host]]\nname = "new"\n[host.options.nvidia-sriov]\n'
                 'manager = "550.127.06"\n')
    p = mdevfs_fleet(spec).plan()
    text = planner.render_text(p, why=True).splitlines()
    assert text[1:6] == ["  G1: old: kernel 7.3, nvidia 550.54.10",
                         "  G2: new: kernel 7.3, nvidia 550.127.06",
                         "source \\ target  G1 G2", "G1                ✓  ✓", "G2                ✗  ✓"]
    assert "nvidia-1150" in p.types and "nvidia-472" in p.types  # an L40S's, an A100's
    assert p.cells[("new", "old", "nvidia-1150")].status == planner.NO
    assert p.cells[("old", "old", "mtty-1")].status == planner.UNKNOWN
    assert "G2 → G1 nvidia-472: no (0/1 accepted): cold (limit host_driver): source release " \
           "550.127 is newer than this 550.54: live is refused, a restart here is not" in text
    only_mtty = write(tmp_path / "mtty.toml", '[[parent]]\ndriver = "mtty"\n')
    alone = mdevfs_fleet(write(tmp_path / "f2.toml", f'[fleet]\ntopology = "{only_mtty}"\n'
                               '[[host]]\nname = "a"\n[[host]]\nname = "b"\n')).plan()
    assert planner.summary(alone, "a", "b") == ("?", planner.UNKNOWN)


def test_existing_vgpus_are_sources_and_the_cli_writes_json_and_svg(mdevfs_fleet, tmp_path):
    """A vGPU on a host is read at its device node and offered to every target of its type."""
    skew = mdevfs_fleet(EXAMPLES / "skew.toml")
    (skew.hosts["new-1"].root / P4 / "create").write_text(
        "11111111-2222-3333-4444-555555555555")
    out = subprocess.run([*MDEVFS, "fleet", "matrix", str(skew.dir), "old-1", "new-1",
                          "--json", str(tmp_path / "p.json"), "--svg", str(tmp_path / "p.svg")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:6] == [
        "fleet migration plan: 2 hosts, 9 types, 2 groups of hosts with identical answers",
        "  G1: old-1: kernel 7.3, nvidia 535.54.03", "  G2: new-1: kernel 7.3, nvidia 535.161.07",
        "source \\ target  G1 G2", "G1                ✓  ✓",
        "G2                ✗  ✓"]
    cells = {(c["source"], c["target"], c["type"]): c
             for c in json.loads((tmp_path / "p.json").read_text())["cells"]}
    assert [(c["status"], c["accepted"], c["pairs"]) for c in (
        cells[("G2", "G2", "nvidia-63")], cells[("G2", "G1", "nvidia-63")],
        cells[("G2", "G2", "nvidia-64")])] == [("yes", 20, 20), ("no", 0, 20), ("yes", 16, 16)]
    ET.parse(tmp_path / "p.svg")


def test_a_host_changed_at_run_time_splits_its_group(mdevfs_fleet):
    """One GPU of old-1 upgraded through its control socket: old-1 is a group of its own,
    its vGPUs go to some GPUs of the others only, and new hosts' to one GPU of it."""
    skew = mdevfs_fleet(EXAMPLES / "skew.toml")
    skew.hosts["old-1"].control.set_option("0000:41:00.0", "manager", "535.161.07")
    p = skew.plan()
    assert planner.render_text(p).splitlines()[:8] == [
        "fleet migration plan: 6 hosts, 9 types, 3 groups of hosts with identical answers",
        "  G1: old-1: kernel 7.3, nvidia 535.161.07",
        "  G2: old-2, old-3 (2 hosts): kernel 7.3, nvidia 535.54.03",
        "  G3: new-1, new-2, new-3 (3 hosts): kernel 7.3, nvidia 535.161.07",
        "source \\ target    G1   G2   G3",
        "G1               0/9+ 0/9+    ✓",
        "G2                  ✓    ✓    ✓",
        "G3               0/9+    ✗    ✓"]
    assert p.cells[("new-1", "old-1", "nvidia-63")] == planner.Cell(
        "some", 4, 16, (REFUSED.format("P4-1Q"),))


def test_graded_answers_and_the_limiting_component(mdevfs_fleet):
    """Mdevfs's model of NVML's graded answer, through the control socket and the plan: the
    new hosts' vGPUs may go to the old hosts cold, limited by the host driver."""
    skew = mdevfs_fleet(EXAMPLES / "skew.toml")
    grade = skew.hosts["old-1"].control.grade
    attr = f"{P4}/migration_version"
    assert [tuple(grade(attr, f"NVIDIA-vGPU:{v}").values()) for v in (
        "535.10:P4-1Q", "535.161:P4-1Q", "470.10:P4-1Q", "550.1:P4-1Q", "535.10:P4-2Q")] == [
        ("live", "none", "release 535.10 may go live to 535.54"),
        ("cold", "host_driver",
         "source release 535.161 is newer than this 535.54: live is refused, a restart here is not"),
        ("cold", "host_driver", "branch R470 is older than this manager's R535: no live "
         "migration across branches"),
        ("none", "guest_driver", "the guest's branch R550 is newer than this manager's R535"),
        ("none", "gpu", "vGPU type P4-2Q is not P4-1Q")]
    p = skew.plan(graded=True)
    assert planner.render_text(p).splitlines()[3:6] == [
        "source \\ target  G1 G2", "G1                ✓  ✓", "G2                c  ✓"]
    assert p.cells[("new-1", "old-2", "nvidia-70")] == planner.Cell(
        "no", 0, 16, (REFUSED.format("P4-8A"),), (("cold", 16),), ("host_driver",))
    assert p.cells[("old-1", "new-2", "nvidia-70")].grades == (("live", 16),)
