"""The capture-and-replay commands' library side: ``mdevfs record``, ``import``, ``export``.

    made = record("/sys", anonymize=True)        # a host as a topology file (made.text)
    made = import_umockdev("host.umockdev")      # a umockdev recording, the same way
    export(None, mount=Path("/tmp/sys"), tree=Path("tree"), umockdev=None)
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from . import mounts
from .beneath import read_regular
from .config import Topology
from .errors import UsageError
from .export import Entry, walk_mount, walk_topology, write_tree
from .infer import Replay, replay
from .record import anonymize, scan
from .umockdev import UmockdevError, read_umockdev, write_umockdev


def record(root: str | os.PathLike[str], anonymized: bool = False,
           source: str = "") -> Replay:
    """``mdevfs record``: the topology of the sysfs root ``root``, and what it kept."""
    if not Path(root).is_dir():
        raise UsageError(f"record: {os.fspath(root)} is not a directory (a sysfs root)")
    rec = scan(root)
    if not (rec.parents or rec.functions):
        raise UsageError(f"record: no mdev parent and no SR-IOV PCI function under "
                         f"{os.fspath(root)} ({'; '.join(rec.problems) or 'nothing to record'})")
    if anonymized:
        anonymize(rec)
    return replay(rec, source or os.fspath(root))


def import_umockdev(path: str | os.PathLike[str], anonymized: bool = False) -> Replay:
    """``mdevfs import``: a umockdev recording, laid out as a tree in a temporary directory
    and recorded from there. Raises UsageError for a file that cannot be read or parsed, or
    whose entries reach through a link of its own (an ``A:`` line below an ``L:`` line)."""
    try:
        text = read_regular(path).decode(errors="replace")
        entries = read_umockdev(text, os.fspath(path))
    except OSError as exc:
        raise UsageError(f"import: {os.fspath(path)}: cannot read: {exc.strerror}") from None
    except UmockdevError as exc:
        raise UsageError(f"import: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="mdevfs-import-") as tmp:
        try:
            write_tree(entries, Path(tmp) / "sys")
        except OSError as exc:
            why = ("passes through a link the recording itself makes" if exc.errno == errno.ELOOP
                   else exc.strerror)
            raise UsageError(f"import: {os.fspath(path)}: {exc.filename}: {why}") from None
        return record(Path(tmp) / "sys", anonymized, source=os.fspath(path))


def export(config: str | None, mount: Path | None, tree: Path | None,
           umockdev: Path | None) -> list[Entry]:
    """``mdevfs export``: the entries of a live mount (``mount``) or of a topology's initial
    state (``config``, None: the default), written as a plain tree and/or a .umockdev file.
    A tree is written only where nothing is, or into an empty directory of this user's, and
    files are written as new files (UsageError otherwise)."""
    if mount is not None:
        if not mounts.is_mdevfs(mount):  # its walk trusts the tree: only mdevfs's own
            raise UsageError(f"export: {mount} is not an mdevfs mount")
        entries = walk_mount(mount)
    else:
        entries = walk_topology(Topology.from_toml(config) if config else Topology.default())
    try:
        if tree is not None:
            write_tree(entries, tree)
        if umockdev is not None:
            write_umockdev(entries, umockdev)
    except FileExistsError:
        raise UsageError(f"export: {tree} exists and is not an empty directory of yours") \
            from None
    except UmockdevError as exc:
        raise UsageError(f"export: {exc}") from None
    except OSError as exc:
        raise UsageError(f"export: {exc.filename or tree or umockdev}: {exc.strerror}") from None
    return entries
