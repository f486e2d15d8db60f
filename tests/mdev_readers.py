"""How KubeVirt and NVIDIA's device plugin find mdevs in /sys, transcribed to Python.

Run inside ``mdevfs run``; prints one JSON object. Sources: kubevirt d923fdb
(mediated_device.go, mediated_devices_types.go) and kubevirt-gpu-device-plugin d26f237
(createVgpuIDMap).
"""
from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path

MDEV_BASE = "/sys/bus/mdev/devices"
MDEV_CLASS_BUS = "/sys/class/mdev_bus"
PCI_BASE = "/sys/bus/pci/devices"


def symlinked_mdevs() -> list[os.DirEntry[str]]:
    """Os.ReadDir / filepath.Walk with Lstat: entries that are not symlinks are skipped."""
    return sorted((e for e in os.scandir(MDEV_BASE) if e.is_symlink()), key=lambda e: e.name)


def kubevirt_devices() -> dict[str, dict[str, str]]:
    found = {}
    for entry in symlinked_mdevs():
        parts = os.readlink(entry.path).split("/")
        if len(parts) < 5:  # getAlreadyConfiguredMdevParents wants at least 5 components
            continue
        try:
            type_name = Path(entry.path, "mdev_type/name").read_text().strip().replace(" ", "_")
        except OSError:
            type_name = os.path.basename(os.readlink(f"{entry.path}/mdev_type"))
        found[entry.name] = {"parent": parts[-2], "type": type_name,
                             "iommu_group": os.path.basename(os.readlink(f"{entry.path}/iommu_group"))}
    return found


def kubevirt_types() -> dict[str, list[str]]:
    """DiscoverConfigurableMDEVTypes: glob /sys/class/mdev_bus/**/mdev_supported_types/*."""
    found: dict[str, list[str]] = {}
    for path in sorted(glob.glob(f"{MDEV_CLASS_BUS}/**/mdev_supported_types/*")):
        parent = path.split("/")[-3]
        found.setdefault(parent, []).append(os.path.basename(path))
    return found


def nvidia_devices() -> dict[str, dict[str, str | int]]:
    found = {}
    for entry in symlinked_mdevs():
        name = Path(entry.path, "mdev_type/name").read_text().strip()
        bdf = os.readlink(entry.path).split("/")[-2]
        try:
            numa = int(Path(PCI_BASE, bdf, "numa_node").read_text())
        except (OSError, ValueError):
            numa = 0
        found[entry.name] = {"parent": bdf, "type": re.sub(r"\s+", "_", name), "numa_node": numa}
    return found


if __name__ == "__main__":
    print(json.dumps({"kubevirt": kubevirt_devices(), "kubevirt_types": kubevirt_types(),
                      "nvidia": nvidia_devices()}))
