"""vgpu_allocator: create one mdev of a requested type where there is room; print its UUID.

    python vgpu_allocator.py TYPE [--sysfs-root DIR]

TYPE is a type id (``nvidia-63``) or a type's ``name`` (``GRID P4-1Q``), as KubeVirt's
mediated-devices configuration accepts either. Parents are tried in name order; the
first whose ``available_instances`` is above 0 and whose driver accepts the create
gets the device. Exit status 1 when none does.

A tiny stand-in for real management software: plain file I/O under a configurable
sysfs root, ``/sys`` by default. Its tests (test_vgpu_allocator.py) use the
``mdevfs`` pytest fixture.
"""
from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path


def type_dirs(root: Path, wanted: str) -> list[Path]:
    """Every ``mdev_supported_types/<type>`` whose id or name is ``wanted``, by parent."""
    found = []
    for parent in sorted((root / "class/mdev_bus").iterdir()):
        for tdir in sorted((parent / "mdev_supported_types").iterdir()):
            name = tdir / "name"
            if wanted in (tdir.name, name.read_text().strip() if name.exists() else None):
                found.append(tdir)
    return found


def store(attribute: Path, value: str) -> None:
    """One write(2) of ``value``, as a sysfs store wants it, and nothing else: a buffered
    file (``Path.write_text``) keeps what a failed write did not take and writes it again
    when it is closed, so a create the driver refused may succeed behind the caller's back."""
    fd = os.open(attribute, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def allocate(root: Path, wanted: str) -> str:
    """Create a device of type ``wanted``; its UUID. Raises LookupError when nothing has room."""
    for tdir in type_dirs(root, wanted):
        if int((tdir / "available_instances").read_text()) <= 0:
            continue
        dev = str(uuid.uuid4())
        try:
            store(tdir / "create", dev)
        except OSError:
            continue  # taken meanwhile, or refused by the driver: try the next parent
        return dev
    raise LookupError(f"no parent has an available instance of {wanted!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("type", metavar="TYPE", help="an mdev type id or name")
    parser.add_argument("--sysfs-root", type=Path, default=Path("/sys"), metavar="DIR")
    args = parser.parse_args(argv)
    try:
        print(allocate(args.sysfs_root, args.type))
    except LookupError as exc:
        print(f"vgpu_allocator: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
