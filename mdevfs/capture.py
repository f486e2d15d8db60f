"""The capture-and-replay commands' library side: ``mdevfs record``, ``import``, ``export``.

    text, rec = record("/sys", anonymize=True)        # a host as a topology file
    text, rec = import_umockdev("host.umockdev")      # a umockdev recording, the same way
    export(None, mount=Path("/tmp/sys"), tree=Path("tree"), umockdev=None)
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .config import Topology
from .errors import UsageError
from .export import Entry, walk_mount, walk_topology, write_tree
from .infer import topology_text
from .record import Recording, anonymize, scan
from .umockdev import UmockdevError, read_umockdev, write_umockdev


def record(root: str | os.PathLike[str], anonymized: bool = False,
           source: str = "") -> tuple[str, Recording]:
    """``mdevfs record``: the topology text of the sysfs root ``root`` and what was read."""
    if not Path(root).is_dir():
        raise UsageError(f"record: {os.fspath(root)} is not a directory (a sysfs root)")
    rec = scan(root)
    if not (rec.parents or rec.gpus):
        raise UsageError(f"record: no mdev parent and no NVIDIA SR-IOV GPU under "
                         f"{os.fspath(root)} ({'; '.join(rec.problems) or 'nothing to record'})")
    if anonymized:
        anonymize(rec)
    return topology_text(rec, source or os.fspath(root)), rec


def import_umockdev(path: str | os.PathLike[str], anonymized: bool = False) -> tuple[str, Recording]:
    """``mdevfs import``: a umockdev recording, laid out as a tree in a temporary directory
    and recorded from there. Raises UsageError for a file that cannot be read or parsed."""
    try:
        entries = read_umockdev(Path(path).read_text(errors="replace"), os.fspath(path))
    except OSError as exc:
        raise UsageError(f"import: {os.fspath(path)}: cannot read: {exc.strerror}") from None
    except UmockdevError as exc:
        raise UsageError(f"import: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="mdevfs-import-") as tmp:
        write_tree(entries, Path(tmp) / "sys")
        return record(Path(tmp) / "sys", anonymized, source=os.fspath(path))


def export(config: str | None, mount: Path | None, tree: Path | None,
           umockdev: Path | None) -> list[Entry]:
    """``mdevfs export``: the entries of a live mount (``mount``) or of a topology's initial
    state (``config``, None: the default), written as a plain tree and/or a .umockdev file.
    A tree is written only into a missing or empty directory (UsageError otherwise)."""
    if tree is not None and tree.exists() and (not tree.is_dir() or any(tree.iterdir())):
        raise UsageError(f"export: {tree} exists and is not an empty directory")
    if mount is not None:
        if not (mount / "class/mdev_bus").is_dir():
            raise UsageError(f"export: {mount} has no class/mdev_bus (not an mdevfs mount?)")
        entries = walk_mount(mount)
    else:
        entries = walk_topology(Topology.from_toml(config) if config else Topology.default())
    if tree is not None:
        write_tree(entries, tree)
    if umockdev is not None:
        write_umockdev(entries, umockdev)
    return entries
