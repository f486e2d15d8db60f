"""`make demo`: mount the embedded default topology, show the tree, create and remove a device.

Everything here is plain file I/O on the mount, as management software does it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

MDEVFS = [sys.executable, "-m", "mdevfs"]


def show(root: Path, rel: str) -> None:
    print(f"$ cat {rel}\n{(root / rel).read_text()}", end="")


def tree(root: Path, rel: str) -> None:
    print(f"$ find {rel}")
    for dirpath, dirnames, filenames in sorted(os.walk(root / rel)):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            shown = path.relative_to(root)
            print(f"  {shown} -> {os.readlink(path)}" if path.is_symlink() else f"  {shown}")


def migration(root: Path) -> None:
    """The seed's check by hand on two GVT-g vGPUs: read the source's string, write it
    to the target; a changed string is refused with the driver's errno."""
    gvt = "class/mdev_bus/0000:00:02.0/mdev_supported_types/i915-GVTg_V5_4"
    if not (root / gvt).exists():
        return
    src, dst = str(uuid.uuid4()), str(uuid.uuid4())
    for dev in (src, dst):
        print(f"$ echo {dev} > {gvt}/create")
        (root / gvt / "create").write_text(dev + "\n")
    show(root, f"bus/mdev/devices/{src}/migration_version")
    version = (root / "bus/mdev/devices" / src / "migration_version").read_text()
    newer = version.rsplit("-", 1)[0] + "-00000002\n"  # another software version
    for text in (version, newer):
        print(f"$ echo {text.strip()} > bus/mdev/devices/{dst}/migration_version")
        try:
            (root / "bus/mdev/devices" / dst / "migration_version").write_text(text)
            print("  (accepted: compatible)")
        except OSError as exc:
            print(f"  write error: {exc.strerror} (incompatible)")
    for dev in (src, dst):
        (root / "bus/mdev/devices" / dev / "remove").write_text("1\n")


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="mdevfs-demo-"))
    subprocess.run(MDEVFS + ["mount", str(root)], check=True)
    try:
        print(f"$ ls {root}/class/mdev_bus\n  " + "  ".join(sorted(os.listdir(root / "class/mdev_bus"))))
        for parent in sorted(os.listdir(root / "class/mdev_bus")):
            types = root / "class/mdev_bus" / parent / "mdev_supported_types"
            for type_id in sorted(os.listdir(types)):
                rel = f"class/mdev_bus/{parent}/mdev_supported_types/{type_id}"
                for attr in ("name", "device_api", "available_instances", "description"):
                    if (root / rel / attr).exists():
                        show(root, f"{rel}/{attr}")
        type_dir = "class/mdev_bus/mtty/mdev_supported_types/mtty-1"
        dev = str(uuid.uuid4())
        print(f"$ echo {dev} > {type_dir}/create")
        (root / type_dir / "create").write_text(dev + "\n")
        show(root, f"{type_dir}/available_instances")
        tree(root, f"bus/mdev/devices/{dev}/")
        print(f"  bus/mdev/devices/{dev} -> {os.readlink(root / 'bus/mdev/devices' / dev)}")
        print(f"$ echo 1 > bus/mdev/devices/{dev}/remove")
        (root / "bus/mdev/devices" / dev / "remove").write_text("1\n")
        print(f"$ ls bus/mdev/devices\n  {' '.join(os.listdir(root / 'bus/mdev/devices')) or '(empty)'}")
        show(root, f"{type_dir}/available_instances")
        migration(root)
    finally:
        subprocess.run(MDEVFS + ["umount", str(root)], check=True)
        root.rmdir()
    print("unmounted; demo done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
