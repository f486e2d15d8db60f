"""KubeVirt's and NVIDIA's way of reading mdevs gets the right answers .

Inside ``mdevfs run`` on the default topology, one device is created on every parent
that offers a type with room; tests/mdev_readers.py then resolves
/sys/bus/mdev/devices/<uuid> with readlink exactly as those readers do. The expected
answers come from the topology's model, not from the mounted tree, and the parents
are enumerated from it, so every vendor of the default topology is covered.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid as uuidlib
from pathlib import Path

import pytest
from conftest import needs_fuse

from mdevfs import namespace
from mdevfs.config import Topology

pytestmark = [needs_fuse, pytest.mark.skipif(namespace.unsupported() is not None,
                                             reason=namespace.unsupported() or "")]

READERS = Path(__file__).with_name("mdev_readers.py")


def plan() -> tuple[list[dict[str, str]], dict[str, list[str]], int]:
    """One device per parent (its first type with room), every parent's types, and the first
    IOMMU group an mdev gets: the GPUs' own groups come first, as at boot."""
    host = Topology.default().build()
    devices, types = [], {}
    for name, parent in sorted(host.parents.items()):
        types[name] = sorted(parent.types)
        room = [t for t in parent.types.values() if parent.available(t) > 0]
        if room:
            devices.append({"uuid": str(uuidlib.uuid4()), "parent": name, "path": parent.path,
                            "type_id": room[0].type_id,
                            "name": room[0].spec.pretty_name or room[0].spec.sysfs_name})
    return devices, types, host.iommu_group_base + len(host.pci)


def test_kubevirt_and_nvidia_readers_see_every_vendor():
    devices, types, group_base = plan()
    assert len(devices) >= 1
    creates = "".join(f"printf %s {d['uuid']} > /sys/class/mdev_bus/{d['parent']}/"
                      f"mdev_supported_types/{d['type_id']}/create && " for d in devices)
    done = subprocess.run([sys.executable, "-m", "mdevfs", "run", "--", "sh", "-c",
                           f"{creates}exec {sys.executable} {READERS}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)

    assert seen["kubevirt_types"] == types
    # Devices are created in order; each takes the lowest free IOMMU group.
    assert seen["kubevirt"] == {
        d["uuid"]: {"parent": d["parent"], "type": d["name"].replace(" ", "_"),
                    "iommu_group": str(group_base + i)}
        for i, d in enumerate(devices)}
    assert {u: (v["parent"], v["type"]) for u, v in seen["nvidia"].items()} == {
        d["uuid"]: (d["parent"], re.sub(r"\s+", "_", d["name"])) for d in devices}
    # The parent KubeVirt names is the directory the device sits in, as on a real host.
    assert all(Path(d["path"]).name == d["parent"] for d in devices)
