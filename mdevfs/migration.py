"""The userspace side of ``migration_version``: may SOURCE migrate to TARGET?

The proposal (v5 3/4) and ABI §5.2 leave compatibility to the vendor driver and
tell userspace only how to ask: read the source's string, write it to the
target, and look at whether both succeed. :func:`check` asks exactly that,
with plain open/read/write on the files, so it works on a real ``/sys`` as on
an mdevfs mount. Its conditions, in the proposal's order:

1. both nodes have a ``migration_version`` attribute (absent: no migration);
2. for type nodes, the types are equal (a device folds its type into its string);
3. reading the source's string succeeds;
4. writing that string to the target succeeds.

A type node paired with a device node is checked at the type level: the
device stands for its ``mdev_type``, as the proposal's example usage does with
``cat .../mdev_type/migration_version``.

An errno is all a real kernel tells userspace; the driver's words go to its log.
On an mdevfs mount, :func:`check` also asks the daemon's control socket for the
reasons its driver logged during the failed read or write (:func:`driver_reasons`)
and gives them as :attr:`Verdict.reason`.

:func:`survey` mounts several hosts' topologies and checks every ordered pair
of their types; :func:`render_text` and :func:`render_svg` show the result.
"""
from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from attrs import frozen

from . import mounts, process, runtime
from .config import Topology
from .control import Client
from .errors import MdevfsError, MountError

ATTR = "migration_version"


class NotAnMdevNode(Exception):
    """A path is neither an mdev type directory nor an mdev device directory."""


@frozen
class MdevNode:
    """A resolved type directory (``kind == "type"``) or device directory."""

    kind: str
    path: Path
    type_id: str


@frozen
class Verdict:
    """The answer for one (source, target) pair.

    ``condition`` is the proposal's condition that failed (1–4), 0 when compatible;
    ``message`` is one line for the user; ``note`` says how a mixed pair was read.
    """

    compatible: bool
    condition: int
    message: str
    note: str | None = None
    #: what the driver logged when it refused (mdevfs mounts only), "; "-joined
    reason: str | None = None

    def explained(self) -> str:
        """The message, and the driver's reason after it when there is one."""
        return self.message + (f" (driver: {self.reason})" if self.reason else "")


def errno_text(exc: OSError) -> str:
    """``Invalid argument (EINVAL)``: the errno's text and its symbolic name."""
    code = exc.errno or errno.EIO
    return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"


def mdev_node(path: str | os.PathLike[str]) -> MdevNode:
    """Resolve symlinks and tell a type directory from a device directory.

    A type directory lies in ``mdev_supported_types/``; a device directory has an
    ``mdev_type`` link to one. Raises :class:`NotAnMdevNode` for anything else.
    """
    real = Path(os.path.realpath(path))
    if not real.is_dir():
        raise NotAnMdevNode(f"{path}: {'not a' if real.exists() else 'no such'} directory")
    if real.parent.name == "mdev_supported_types":
        return MdevNode("type", real, real.name)
    mdev_type = Path(os.path.realpath(real / "mdev_type"))
    if (real / "mdev_type").is_symlink() and mdev_type.parent.name == "mdev_supported_types":
        return MdevNode("device", real, mdev_type.name)
    raise NotAnMdevNode(f"{path}: neither an mdev type directory (in mdev_supported_types/) "
                        "nor an mdev device directory (with an mdev_type link)")


def _as_type(node: MdevNode) -> MdevNode:
    """A device's type node (the target of its ``mdev_type`` link); a type node as it is."""
    if node.kind == "type":
        return node
    return MdevNode("type", Path(os.path.realpath(node.path / "mdev_type")), node.type_id)


def _read(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as f:  # plain read(2)s until EOF
        return f.readall()


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)  # one open, one write(2), as `echo >` does
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class Reasons:
    """Asks the mdevfs daemons behind attribute paths what their drivers logged when they
    refused (the control socket's ``reasons``). Each daemon found keeps a cursor, so that
    a logged reason is given for one failure only, even when the same attribute fails
    twice within a millisecond; before the first failure on a daemon that was not
    :meth:`watch`-ed, the time the action began bounds what is taken."""

    def __init__(self) -> None:
        self._mounts: set[str] | None = None
        #: mount root → [its control client (None: no daemon answers), cursor or None]
        self._daemons: dict[str, list[Any]] = {}

    def watch(self, root: str | os.PathLike[str]) -> None:
        """Set the cursor of the daemon of ``root`` now, before any action on it."""
        entry = self._daemon(os.path.realpath(root))
        if entry[0] is not None:
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                entry[1] = entry[0].reasons(since=1 << 62)["next"]

    def _daemon(self, root: str) -> list[Any]:
        if root not in self._daemons:
            client = None
            for sock in (Path(root).parent / "control.sock", runtime.default_control(root)):
                if sock.is_socket():
                    client = Client(sock, timeout=5.0)
                    break
            self._daemons[root] = [client, None]
        return self._daemons[root]

    def client_of(self, root: str | os.PathLike[str]) -> Client | None:
        """The control client of the mount at ``root``, None where no daemon answers."""
        client: Client | None = self._daemon(os.path.realpath(root))[0]
        return client

    def daemon_of(self, path: Path) -> tuple[list[Any], str] | None:
        """The daemon entry ([client, cursor]) of ``path``'s mdevfs mount and ``path`` from
        its root (links resolved), or None where no mdevfs daemon answers."""
        real = os.path.realpath(path)
        if self._mounts is None:
            self._mounts = set(mounts.mountpoints())
        root = next((str(up) for up in Path(real).parents if str(up) in self._mounts), None)
        entry = None if root is None else self._daemon(root)
        if entry is None or entry[0] is None:
            return None
        return entry, os.path.relpath(real, root)

    def grade(self, path: Path, source: str) -> dict[str, str] | None:
        """mdevfs's graded answer for ``source`` at the migration_version ``path`` (control
        command ``grade``): result none|cold|live, limit and reason; None without a daemon."""
        found = self.daemon_of(path)
        if found is None:
            return None
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return found[0][0].grade(found[1], source)
        return None

    def after_failure(self, path: Path, began: float) -> str | None:
        """What the driver of ``path``'s mount logged for it since the last failure there
        (and since ``began``), "; "-joined; None where no mdevfs daemon answers."""
        found = self.daemon_of(path)
        if found is None:
            return None
        (client, cursor), rel = found
        try:
            got = client.reasons(since=cursor or 0, path=rel)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        found[0][1] = got["next"]
        return "; ".join(r["reason"] for r in got["reasons"] if r["time"] >= began) or None


def driver_reasons(path: Path, action: Callable[[], Any], reasons: Reasons | None = None
                   ) -> Any:
    """Run ``action`` (a read or write of the attribute ``path``); when it raises OSError,
    re-raise it with what the daemon's driver logged for ``path`` meanwhile as its
    ``reason`` attribute (None where no mdevfs daemon answers or nothing was logged).
    Nothing is asked when the action succeeds."""
    began = round(time.time(), 3) - 0.001  # the daemon's clock is ours, kept in ms
    try:
        return action()
    except OSError as exc:
        exc.reason = (reasons or Reasons()).after_failure(path, began)  # type: ignore[attr-defined]
        raise


def check(source: str | os.PathLike[str], target: str | os.PathLike[str],
          source_name: str | None = None, target_name: str | None = None,
          reasons: Reasons | None = None) -> Verdict:
    """Apply the proposal's four conditions in order; names default to the paths as given.
    ``reasons`` (shared by the checks of a matrix) asks mdevfs daemons why they refused.

    Raises :class:`NotAnMdevNode` when either path is neither kind of node.
    """
    src, tgt = mdev_node(source), mdev_node(target)
    sname, tname = source_name or str(source), target_name or str(target)
    note = None
    if src.kind != tgt.kind:
        device, dname = (src, sname) if src.kind == "device" else (tgt, tname)
        note = (f"note: {dname} is a device and the other a type; the device's mdev_type "
                f"({device.type_id}) stands for it")
        src, tgt = _as_type(src), _as_type(tgt)

    def no(condition: int, why: str, reason: str | None = None) -> Verdict:
        return Verdict(False, condition, f"incompatible: {why}", note, reason)

    for node, name in ((src, sname), (tgt, tname)):
        if not (node.path / ATTR).exists():
            return no(1, f"{name} has no {ATTR} attribute (no migration support)")
    if src.kind == "type" and src.type_id != tgt.type_id:
        return no(2, f"the types differ: {src.type_id} ({sname}) and {tgt.type_id} ({tname})")
    try:
        version = driver_reasons(src.path / ATTR, lambda: _read(src.path / ATTR), reasons)
    except OSError as exc:
        return no(3, f"reading the {ATTR} of {sname} failed: {errno_text(exc)}",
                  getattr(exc, "reason", None))
    try:
        driver_reasons(tgt.path / ATTR, lambda: _write(tgt.path / ATTR, version), reasons)
    except OSError as exc:
        return no(4, f"writing the source's {ATTR} to {tname} failed: {errno_text(exc)}",
                  getattr(exc, "reason", None))
    shown = version.decode("ascii", "replace").removesuffix("\n")
    return Verdict(True, 0, f"compatible: {tname} accepted {shown!r} from {sname}", note)


# --- the matrix of several hosts ------------------------------------------------------------

@frozen
class Matrix:
    """``verdicts[i][j]``: may type ``labels[i]`` migrate to type ``labels[j]``?"""

    labels: tuple[str, ...]
    verdicts: tuple[tuple[Verdict, ...], ...]


def host_names(topologies: Sequence[Path]) -> list[str]:
    """Each host is named by its file's stem; a repeated stem gets ``#2``, ``#3``…"""
    names: list[str] = []
    for path in topologies:
        name = path.stem
        names.append(name if name not in names else f"{name}#{names.count(name) + 1}")
    return names


def type_dirs(root: Path, host: str) -> list[tuple[str, Path]]:
    """Every type of every parent of a sysfs root, labelled ``host:parent:type-id``."""
    found = []
    bus = root / "class/mdev_bus"
    for parent in sorted(os.listdir(bus)):
        types = bus / parent / "mdev_supported_types"
        for type_id in sorted(os.listdir(types)):
            found.append((f"{host}:{parent}:{type_id}", types / type_id))
    return found


def survey(topologies: Sequence[str | os.PathLike[str]]) -> Matrix:
    """Mount every topology at once (in temporary directories, always unmounted) and
    check every ordered pair of their types at the type nodes.

    Raises TopologyError for a bad file (before anything is mounted) and
    MountError (a RuntimeError) when a mount does not come up, with the daemon's reason.
    """
    paths = [Path(t) for t in topologies]
    for path in paths:
        Topology.from_toml(path).build()  # refuse a bad file before mounting any
    nodes: list[tuple[str, Path]] = []
    reasons = Reasons()
    with contextlib.ExitStack() as stack:
        for name, path in zip(host_names(paths), paths):
            try:
                mount = stack.enter_context(process.temporary_mount(path))
            except MdevfsError as exc:  # the daemon's own error, e.g. a driver that refuses
                raise MountError(str(exc)) from None
            nodes += type_dirs(mount.root, name)
            reasons.watch(mount.root)
        verdicts = tuple(tuple(check(s, t, sl, tl, reasons) for tl, t in nodes)
                         for sl, s in nodes)
    return Matrix(tuple(label for label, _ in nodes), verdicts)


YES, NO = "✓", "✗"
CORNER = "source \\ target"


def render_text(matrix: Matrix, why: bool = False) -> str:
    """The N×N table: rows are sources, numbered columns the targets in the same order."""
    n = len(matrix.labels)
    num = len(str(n))
    width = max([len(label) for label in matrix.labels] + [len(CORNER)])
    lines = ["migration_version compatibility (row: source type, column: target type)",
             f"{'':>{num}} {CORNER:<{width}}  "
             + " ".join(f"{j:>{num}}" for j in range(1, n + 1))]
    for i, (label, row) in enumerate(zip(matrix.labels, matrix.verdicts), 1):
        marks = (YES if v.compatible else NO for v in row)
        lines.append(f"{i:>{num}} {label:<{width}}  " + " ".join(f"{m:>{num}}" for m in marks))
    lines.append(f"legend: {YES} compatible (the target accepted the source's string), "
                 f"{NO} incompatible (as `mdevfs check` would say)")
    if why:
        lines += [f"{i} → {j}: {v.explained()}" for i, row in enumerate(matrix.verdicts, 1)
                  for j, v in enumerate(row, 1) if not v.compatible]
    return "\n".join(lines) + "\n"


def render_same_type(matrix: Matrix, why: bool = False) -> str:
    """Only the pairs that may migrate at all: for each type id, the table of its types on
    every host and parent (a pair of different types is incompatible by condition 2, and
    made 306 of the 324 cells of the full table say so)."""
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(matrix.labels):
        groups.setdefault(label.rsplit(":", 1)[1], []).append(i)
    num = len(str(max((len(g) for g in groups.values()), default=1)))
    lines = ["migration_version compatibility of same-type pairs (row: source, column: "
             "target); --all compares every pair"]
    for type_id, members in sorted(groups.items()):
        width = max(len(matrix.labels[i].rsplit(":", 1)[0]) for i in members)
        lines.append(f"{type_id}:")
        lines.append(f"  {'':>{num}} {'':<{width}}  "
                     + " ".join(f"{j:>{num}}" for j in range(1, len(members) + 1)))
        for k, i in enumerate(members, 1):
            marks = (YES if matrix.verdicts[i][j].compatible else NO for j in members)
            lines.append(f"  {k:>{num}} {matrix.labels[i].rsplit(':', 1)[0]:<{width}}  "
                         + " ".join(f"{m:>{num}}" for m in marks))
    lines.append(f"legend: {YES} compatible (the target accepted the source's string), "
                 f"{NO} incompatible (as `mdevfs check` would say)")
    if why:
        lines += [f"{matrix.labels[i]} → {matrix.labels[j]}: {matrix.verdicts[i][j].explained()}"
                  for members in groups.values() for i in members for j in members
                  if not matrix.verdicts[i][j].compatible]
    return "\n".join(lines) + "\n"


#: the SVG fill of a cell, by the proposal condition that failed (0: compatible)
COLOURS = {0: "#2e7d32", 4: "#c62828", 3: "#ef6c00", 2: "#e0e0e0", 1: "#f5f5f5"}
LEGEND = {0: "compatible", 4: "incompatible: the target refused the source's string",
          3: "incompatible: reading the source's string failed",
          2: "incompatible: the types differ", 1: "incompatible: no migration_version"}


def render_svg(matrix: Matrix) -> str:
    """The table as a standalone SVG: coloured cells, labels, a legend, and each
    cell's verdict as its tooltip (``<title>``)."""
    n, cell, char = len(matrix.labels), 22, 7.2
    margin = int(max((len(label) for label in matrix.labels), default=0) * char) + 30
    top = margin + 40
    title = "migration_version compatibility (row: source type, column: target type)"
    width = int(max(margin + n * cell + 20, (len(title) + 4) * char * 14 / 12))
    height = top + n * cell + 20 + len(LEGEND) * 18
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           'font-family="monospace" font-size="12">',
           f'<text x="10" y="20" font-size="14">{escape(title)}</text>']
    for i, label in enumerate(matrix.labels):
        y = top + i * cell + cell * 0.7
        x = margin + i * cell + cell * 0.7
        out.append(f'<text x="{margin - 8}" y="{y:.1f}" text-anchor="end">{escape(label)}</text>')
        out.append(f'<text x="{x:.1f}" y="{top - 8}" transform="rotate(-90 {x:.1f} {top - 8})"'
                   f'>{escape(label)}</text>')
    for i, row in enumerate(matrix.verdicts):
        for j, v in enumerate(row):
            x, y = margin + j * cell, top + i * cell
            mark = YES if v.compatible else NO
            out.append(f'<g><title>{escape(matrix.labels[i])} → {escape(matrix.labels[j])}: '
                       f'{escape(v.explained())}</title>'
                       f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" '
                       f'fill="{COLOURS[v.condition]}" stroke="#9e9e9e"/>'
                       f'<text x="{x + cell / 2}" y="{y + cell * 0.72:.1f}" text-anchor="middle"'
                       f' fill="{"#ffffff" if v.condition in (0, 3, 4) else "#757575"}">'
                       f'{mark}</text></g>')
    y = top + n * cell + 30
    for k, (condition, text) in enumerate(LEGEND.items()):
        out.append(f'<rect x="10" y="{y + k * 18 - 11}" width="12" height="12" '
                   f'fill="{COLOURS[condition]}" stroke="#9e9e9e"/>'
                   f'<text x="28" y="{y + k * 18}">{escape(text)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
