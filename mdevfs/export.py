"""``mdevfs export``: a topology's current state as a static tree, for CI without FUSE.

    entries = walk_topology(Topology.default())      # in-process: no mount, no FUSE
    entries = walk_mount(Path("/tmp/sys"))           # or what a live mount shows
    write_tree(entries, Path("tree"))                # files, links and modes

(:mod:`mdevfs.umockdev` writes the same entries as a ``.umockdev`` file.)

A static tree answers reads as the state it was taken in; it has no create or remove, and no
errno (an attribute that fails to read in sysfs is an empty file of the same mode).
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from attrs import frozen

from .beneath import NewTree
from .config import Topology
from .nodes import PAGE_SIZE, Dir, File, Link
from .tree import Tree


@frozen
class Entry:
    """One node of a sysfs tree: a directory, a file (its bytes, or the errno its read
    failed with; None for a write-only file) or a link."""

    path: str
    kind: str  # "dir", "file" or "link"
    mode: int
    content: bytes | None = None
    error: int | None = None
    target: str | None = None

    def line(self) -> str:
        """A one-line description for comparing two trees."""
        what = (self.target if self.kind == "link" else
                f"!{errno.errorcode.get(self.error, self.error)}" if self.error is not None
                else repr(self.content) if self.content is not None else "")
        return f"{self.path}|{self.kind}|{self.mode:04o}|{what}"


def walk_topology(topology: Topology) -> list[Entry]:
    """The tree a mount of ``topology`` shows at start, built in this process."""
    host = topology.empty_host()
    tree = Tree(host)
    topology.populate(host)
    return walk_tree(tree)


def walk_tree(tree: Tree) -> list[Entry]:
    """What ``tree`` shows now, as entries."""
    entries = []
    for node in tree.walk():
        path = node.path
        if not path:
            continue
        if isinstance(node, Link):
            entries.append(Entry(path, "link", 0o777, target=node.target))
        elif isinstance(node, File):
            content, error = None, None
            if node.op.show is not None:
                try:
                    content = node.read()
                except OSError as exc:
                    error = exc.errno
            entries.append(Entry(path, "file", node.mode, content, error))
        elif isinstance(node, Dir):
            entries.append(Entry(path, "dir", node.mode))
    return sorted(entries, key=lambda e: e.path)


def walk_mount(root: Path, under: Iterable[str] = ("",)) -> list[Entry]:
    """What the tree at ``root`` shows (never following links), below each of ``under``."""
    entries = []
    for start in under:
        for top, dirs, files in os.walk(root / start):
            for name in sorted(dirs + files):
                path = Path(top) / name
                rel = os.path.relpath(path, root)
                info = os.lstat(path)
                mode = stat.S_IMODE(info.st_mode)
                if stat.S_ISLNK(info.st_mode):
                    entries.append(Entry(rel, "link", mode, target=os.readlink(path)))
                elif stat.S_ISDIR(info.st_mode):
                    entries.append(Entry(rel, "dir", mode))
                else:
                    entries.append(_read_file(path, rel, mode))
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
    return sorted(entries, key=lambda e: e.path)


def _read_file(path: Path, rel: str, mode: int) -> Entry:
    if not mode & 0o444:
        return Entry(rel, "file", mode)
    try:  # at most a page, as sysfs shows: a BAR's file may stat with its size (GiBs)
        with open(path, "rb", buffering=0) as f:
            return Entry(rel, "file", mode, f.read(PAGE_SIZE))
    except OSError as exc:
        return Entry(rel, "file", mode, error=exc.errno)


def write_tree(entries: Iterable[Entry], dest: Path) -> None:
    """The entries as plain files, directories and links at ``dest``, which must not exist
    or be an empty directory of this user's. Written into a private directory beside it and
    renamed into place (:class:`mdevfs.beneath.NewTree`): no path is ever walked through a
    link, so entries that pass through a link of the tree are refused (OSError ELOOP)."""
    new = NewTree(dest)
    try:
        for e in entries:
            new.add(e.path, e.kind, e.mode, e.content or b"", e.target or "")
        new.commit()
    except BaseException:
        new.discard()
        raise
