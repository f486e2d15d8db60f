"""The migration planner's view of a fleet: which host's vGPUs may go to which host.

:func:`plan` does what the proposal says userspace does, through the mounts: it reads the
``migration_version`` of every type and every existing device of every host (the
sources), and writes each distinct string read to every type node of that type on every
host (the targets). A write is a function of the string and the target alone, so a
string is written once per target node, however many sources show it. A cell of the
plan is (source host, target host, type): every source of that type on the source host
against every target node of it on the target host, ``yes`` when all were accepted,
``no`` when none, ``some`` otherwise, with the errnos and the drivers' reasons
(:func:`mdevfs.migration.driver_reasons`).

Hosts whose answers are identical, as sources and as targets, form a group, so that a
fleet of a hundred hosts with two driver versions reads as a 2×2 table; each group is
labelled with what its hosts run (the kernel, the modules' versions: a vGPU manager release).

vGPUs that have no ``migration_version`` in sysfs (NVIDIA's vendor-VFIO VFs, Ampere's VF
types) are asked of the daemons' services instead (``mdevfs.services``: ``migration_types``
gives each type's string, ``grade`` the target driver's answer, live counting as the
proposal's yes), the answers NVML gives. A pair that no one can answer, the source having no
``migration_version`` and no service speaking for it, is "cannot tell", never a refusal.
"""
from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from attrs import Factory, define, frozen

from .migration import ATTR, Reasons, _read, _write, driver_reasons, errno_text

YES, SOME, NO, COLD, UNKNOWN = "yes", "some", "no", "cold", "unknown"
#: the reason of a pair no one can answer: the source has no migration_version
NO_ATTRIBUTE = "(condition 1)"
CORNER = "source \\ target"
#: worker threads reading and writing the hosts (the daemons do the work)
_WORKERS = 2 * (os.cpu_count() or 1)


@frozen
class Source:
    """A string read at a source: a type node, or a device (``uuid``)."""

    host: str
    type_id: str
    where: str  # parent, or parent/uuid
    version: str | None  # None: the read failed (or no attribute), ``why`` says how
    why: str | None


@frozen
class Cell:
    status: str  # yes, some, no
    accepted: int
    pairs: int
    reasons: tuple[str, ...]
    #: with ``graded``: (live|cold|none, pairs) and the limiting components named
    grades: tuple[tuple[str, int], ...] = ()
    limits: tuple[str, ...] = ()


@define
class Plan:
    hosts: list[str]
    types: list[str]
    #: (source host, target host, type) → Cell; absent when either host lacks the type
    cells: Mapping[tuple[str, str, str], Cell]
    #: groups of hosts with identical answers, in host order
    groups: list[list[str]]
    graded: bool = False
    #: what each host runs (its kernel, its modules' versions), as a group's label says it
    has: dict[str, str] = Factory(dict)

    def group_of(self, host: str) -> str:
        return next(f"G{i}" for i, g in enumerate(self.groups, 1) if host in g)


def plan(roots: Mapping[str, Path], graded: bool = False) -> Plan:
    """The plan of the hosts ``{name: sysfs root}``, all mounted. With ``graded``, each
    (target node, string) is also asked mdevfs's graded question (control ``grade``).
    Each host is read, then written to, by one worker thread: the daemons answer meanwhile."""
    reasons = Reasons()
    with concurrent.futures.ThreadPoolExecutor(_WORKERS) as pool:
        read = dict(zip(roots, pool.map(lambda n: _read_host(n, roots[n], reasons), roots)))
        sources = [s for name in roots for s in read[name].sources]
        by_type: dict[str, set[str]] = {}
        for s in sources:
            if s.version is not None:
                by_type.setdefault(s.type_id, set()).add(s.version)
        written = list(pool.map(
            lambda n: _write_host(n, read[n], by_type, reasons, graded), roots))
    answers: dict[tuple[str, str, str], list[Answer]] = {}  # (host, type, version)
    counts: dict[tuple[str, str], int] = {}  # (host, type) → its type nodes
    for host_answers, host_counts in written:
        answers.update(host_answers)
        counts.update(host_counts)
    has = {name: read[name].has for name in roots}
    types = sorted({s.type_id for s in sources})
    hosts = list(roots)
    mine: dict[tuple[str, str], list[Source]] = {}
    for s in sources:
        mine.setdefault((s.host, s.type_id), []).append(s)
    # A cell depends on the source host's sources and the target host's answers alone: hosts
    # that read and answer alike (a class) have equal cells, worked out once per class pair.
    classes: dict[tuple[Any, ...], str] = {}
    class_of = {}
    for name in hosts:
        reads = tuple((t, s.where, s.version, s.why) for t in types for s in mine.get((name, t), ()))
        answered = _answered(name, types, by_type, answers)
        offered = tuple(counts.get((name, t), 0) for t in types)
        class_of[name] = classes.setdefault((reads, answered, offered, has[name]), name)
    reps = list(dict.fromkeys(class_of.values()))
    cells = {(a, b, t): _cell(mine[(a, t)], answers, b, t, counts[(b, t)])
             for a in reps for b in reps for t in types
             if (a, t) in mine and (b, t) in counts}
    return Plan(hosts, types, _HostCells(cells, class_of),
                _groups(hosts, types, cells, has, class_of), graded, has)


@frozen
class _Read:
    """What one host showed: its daemon's control client, the types its services answer for,
    its type nodes, the strings read at its sources, and what it runs."""

    client: Any
    served: list[Served]
    nodes: list[tuple[str, str, Path]]
    sources: list[Source]
    has: str


def _read_host(name: str, root: Path, reasons: Reasons) -> _Read:
    reasons.watch(root)
    client = reasons.client_of(root)
    served = _served(client)
    offered = {s.type_id for s in served}
    nodes = [(p, t, path) for p, t, path in _type_nodes(root)
             if t not in offered or (path / ATTR).exists()]
    sources = _sources(name, root, nodes, reasons)
    sources += [Source(name, s.type_id, s.where, s.version, None) for s in served]
    return _Read(client, served, nodes, sources, _has(client))


def _write_host(name: str, read: _Read, by_type: Mapping[str, set[str]], reasons: Reasons,
                graded: bool) -> tuple[dict[tuple[str, str, str], list[Answer]],
                                       dict[tuple[str, str], int]]:
    """Every string of a type written to each of the host's nodes of it (or asked of the
    service that speaks for it): the answers, and how many nodes of each type it has."""
    answers: dict[tuple[str, str, str], list[Answer]] = {}
    counts: dict[tuple[str, str], int] = {}
    for _, type_id, path in read.nodes:
        counts[(name, type_id)] = counts.get((name, type_id), 0) + 1
        for version in sorted(by_type.get(type_id, ())):
            answers.setdefault((name, type_id, version), []).append(
                (_accepts(path, version, reasons),
                 reasons.grade(path / ATTR, version) if graded else None))
    for target in read.served:
        counts[(name, target.type_id)] = counts.get((name, target.type_id), 0) + 1
        for version in sorted(by_type.get(target.type_id, ())):
            answers.setdefault((name, target.type_id, version), []).append(
                _graded_by_service(read.client, target, version, graded))
    return answers, counts


def _answered(name: str, types: Sequence[str], by_type: Mapping[str, set[str]],
              answers: Mapping[tuple[str, str, str], list[Answer]]) -> tuple[Any, ...]:
    """What host ``name`` answered, as a target, to every string written to it."""
    return tuple((t, v, tuple((why, tuple(sorted(g.items())) if g else None)
                              for why, g in answers.get((name, t, v), ())))
                 for t in types for v in sorted(by_type.get(t, ())))


class _HostCells(Mapping[tuple[str, str, str], "Cell"]):
    """Every host pair's cells, as its classes' (the hosts of a class have equal cells)."""

    def __init__(self, cells: dict[tuple[str, str, str], Cell], class_of: dict[str, str]):
        self._cells, self._class_of = cells, class_of

    def __getitem__(self, key: tuple[str, str, str]) -> Cell:
        a, b, t = key
        return self._cells[(self._class_of[a], self._class_of[b], t)]

    def __iter__(self) -> Iterator[tuple[str, str, str]]:
        members: dict[str, list[str]] = {}
        for host, rep in self._class_of.items():
            members.setdefault(rep, []).append(host)
        for ca, cb, t in self._cells:
            for a in members[ca]:
                for b in members[cb]:
                    yield a, b, t

    def __len__(self) -> int:
        sizes: dict[str, int] = {}
        for rep in self._class_of.values():
            sizes[rep] = sizes.get(rep, 0) + 1
        return sum(sizes[a] * sizes[b] for a, b, _ in self._cells)


@frozen
class Served:
    """A type a daemon's service answers for: its label, the service and the type as the
    service names them, where (a GPU's address), and the string a vGPU of it carries."""

    type_id: str
    service: str
    call_type: str
    where: str
    version: str


def _served(client: Any) -> list[Served]:
    """Every type the host's services answer migration questions for."""
    from .driver import service_names

    found: list[Served] = []
    if client is None:
        return found
    for name in service_names():
        try:
            reply = client.request("service", name=name, call="migration_types", args=[])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not reply or reply[0] != 0:
            continue
        for line in reply[1:]:
            label, call_type, where, version = str(line).split("\t", 3)
            found.append(Served(label, name, call_type, where, version))
    return found


def _graded_by_service(client: Any, target: Served, version: str, graded: bool) -> Answer:
    """A service's grade of ``version`` at ``target``: live is the proposal's yes."""
    try:
        reply = client.request("service", name=target.service, call="grade",
                               args=[target.where, target.call_type, version])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"the daemon did not answer: {exc}", None
    if not reply or reply[0] != 0:
        return "the target's service could not grade it", None
    result, limit, reason = reply[1], reply[2], reply[3]
    grade = {"result": result, "limit": limit, "reason": reason}
    why = None if result == "live" else f"{result} (limit {limit}): {reason}"
    return why, grade if graded else None


def _has(client: Any) -> str:
    """What a host runs, as its group's label says it: the kernel and the modules' versions."""
    try:
        status = client.status() if client is not None else {}
    except (OSError, ValueError, KeyError, TypeError):
        status = {}
    parts = [f"kernel {status['kernel']}"] if status.get("kernel") else []
    parts += [f"{m} {v}" for m, v in sorted(status.get("modules", {}).items())]
    return ", ".join(parts)


def _type_nodes(root: Path) -> list[tuple[str, str, Path]]:
    """(parent, type id, type directory with links resolved) of every type of a root."""
    found = []
    bus = root / "class/mdev_bus"
    for parent in sorted(os.listdir(bus)):
        real = Path(os.path.realpath(bus / parent)) / "mdev_supported_types"
        found += [(parent, type_id, real / type_id) for type_id in sorted(os.listdir(real))]
    return found


def _sources(host: str, root: Path, nodes: Sequence[tuple[str, str, Path]],
             reasons: Reasons) -> list[Source]:
    found = [_source(host, type_id, parent, path / ATTR, reasons)
             for parent, type_id, path in nodes]
    devices = root / "bus/mdev/devices"
    for uuid in sorted(os.listdir(devices)):
        real = Path(os.path.realpath(devices / uuid))
        type_id = Path(os.path.realpath(real / "mdev_type")).name
        found.append(_source(host, type_id, f"{real.parent.name}/{uuid}", real / ATTR, reasons))
    return found


def _source(host: str, type_id: str, where: str, attr: Path, reasons: Reasons) -> Source:
    try:
        raw = driver_reasons(attr, lambda: _read(attr), reasons)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not attr.exists():  # not a driver's ENOENT
            return Source(host, type_id, where, None, f"the source has no {ATTR} {NO_ATTRIBUTE}")
        return Source(host, type_id, where, None, _why("reading at the source", exc, 3))
    return Source(host, type_id, where, raw.decode("ascii", "replace").removesuffix("\n"), None)


def _accepts(type_dir: Path, version: str, reasons: Reasons) -> str | None:
    """None when the target type node accepts ``version``, else why not."""
    attr = type_dir / ATTR
    try:
        driver_reasons(attr, lambda: _write(attr, version.encode() + b"\n"), reasons)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not attr.exists():  # not a driver's ENOENT
            return f"the target has no {ATTR} {NO_ATTRIBUTE}"
        return _why("writing at the target", exc, 4)
    return None


def _why(what: str, exc: OSError, condition: int) -> str:
    reason = getattr(exc, "reason", None)
    return (f"{what} failed: {errno_text(exc)} (condition {condition})"
            + (f": {reason}" if reason else ""))


#: a target node's answer to one string: why the write failed (None: accepted), and the grade
Answer = tuple["str | None", "dict[str, str] | None"]


def _cell(mine: Sequence[Source], answers: Mapping[tuple[str, str, str], list[Answer]],
          target: str, type_id: str, count: int) -> Cell:
    """Every source of the type against the target host's ``count`` nodes of it."""
    results: list[Answer] = []
    for s in mine:
        if s.version is None:
            results += [(s.why, {"result": "none", "limit": "other"})] * count
        else:
            results += answers[(target, type_id, s.version)]
    ok = sum(why is None for why, _ in results)
    unknown = sum(why is not None and why.endswith(NO_ATTRIBUTE) for why, _ in results)
    status = (YES if ok == len(results) else UNKNOWN if unknown == len(results)
              else NO if ok == 0 else SOME)
    reasons = tuple(sorted({why for why, _ in results if why is not None}))
    graded = [g for _, g in results if g is not None]
    grades = tuple((r, n) for r in ("live", "cold", "none")
                   if (n := sum(g["result"] == r for g in graded)))
    limits = tuple(sorted({g["limit"] for g in graded if g["limit"] != "none"}))
    return Cell(status, ok, len(results), reasons, grades, limits)


def _groups(hosts: Sequence[str], types: Sequence[str],
            cells: Mapping[tuple[str, str, str], Cell], has: Mapping[str, str],
            class_of: Mapping[str, str]) -> list[list[str]]:
    """Hosts with the same row and column of cells, and running the same, in host order
    (``cells``: those of the classes' representatives, ``class_of`` each host's)."""
    reps = list(dict.fromkeys(class_of[h] for h in hosts))
    key = {a: (tuple(cells.get((a, b, t)) for b in reps for t in types),
               tuple(cells.get((b, a, t)) for b in reps for t in types), has.get(a, ""))
           for a in reps}
    groups: dict[tuple[Any, ...], list[str]] = {}
    for a in hosts:
        groups.setdefault(key[class_of[a]], []).append(a)
    return list(groups.values())


# --- output ---------------------------------------------------------------------------------

def _members(hosts: Sequence[str]) -> str:
    return (hosts[0] if len(hosts) == 1
            else f"{hosts[0]} … {hosts[-1]} ({len(hosts)} hosts)" if len(hosts) > 3
            else ", ".join(hosts) + f" ({len(hosts)} hosts)")


def summary(p: Plan, a: str, b: str) -> tuple[str, str]:
    """(mark, status) of a source/target host pair over the types both have."""
    cells = [p.cells[(a, b, t)] for t in p.types if (a, b, t) in p.cells]
    if not cells:
        return "·", "none"
    if all(c.status == UNKNOWN for c in cells):
        return "?", UNKNOWN  # no migration_version: no one can tell, nothing was refused
    cells = [c for c in cells if c.status != UNKNOWN]
    yes = sum(c.status == YES for c in cells)
    if yes == len(cells):
        return "✓", YES
    if p.graded and all(c.grades and "none" not in dict(c.grades) for c in cells):
        return "c", COLD  # every VM may move, some only by a restart
    if all(c.status == NO for c in cells):
        return "✗", NO
    partly = "+" if any(c.status == SOME for c in cells) else ""
    return f"{yes}/{len(cells)}{partly}", SOME


def render_text(p: Plan, why: bool = False) -> str:
    reps = [g[0] for g in p.groups]
    names = [f"G{i}" for i in range(1, len(reps) + 1)]
    lines = [f"fleet migration plan: {len(p.hosts)} hosts, {len(p.types)} types, "
             f"{len(p.groups)} groups of hosts with identical answers"]
    lines += [f"  {n}: {_members(g)}" + (f": {p.has[g[0]]}" if p.has.get(g[0]) else "")
              for n, g in zip(names, p.groups)]
    width = max(len(n) for n in names + [CORNER])
    marks = [[summary(p, a, b)[0] for b in reps] for a in reps]
    col = max([len(n) for n in names] + [len(m) for row in marks for m in row])
    lines.append(f"{CORNER:<{width}}  " + " ".join(f"{n:>{col}}" for n in names))
    for n, row in zip(names, marks):
        lines.append(f"{n:<{width}}  " + " ".join(f"{m:>{col}}" for m in row))
    lines.append("legend: ✓ every type may migrate, ✗ none may, k/n k of the n types both "
                 "hosts offer (+: others to some GPUs only), ? cannot tell (no "
                 "migration_version), · no type in common"
                 + (", c every type may move cold (graded)" if p.graded else ""))
    if why:
        for (na, a), (nb, b) in ((x, y) for x in zip(names, reps) for y in zip(names, reps)):
            for t in p.types:
                cell = p.cells.get((a, b, t))
                if cell is not None and cell.status != YES:
                    lines += [f"{na} → {nb} {t}: {cell.status} ({cell.accepted}/{cell.pairs} "
                              f"accepted){_graded(cell)}: {r}" for r in cell.reasons]
    return "\n".join(lines) + "\n"


def _graded(cell: Cell) -> str:
    """``, graded cold 16 (limit host_driver)``; empty when not graded."""
    if not cell.grades:
        return ""
    limit = f" (limit {', '.join(cell.limits)})" if cell.limits else ""
    return ", graded " + ", ".join(f"{r} {n}" for r, n in cell.grades) + limit


def to_json(p: Plan) -> dict[str, Any]:
    """Groups, each host's group, and every group pair's cells (hosts of a group answer
    alike, so a host pair's cells are its groups')."""
    reps = [(f"G{i}", g[0]) for i, g in enumerate(p.groups, 1)]
    return {"hosts": {h: p.group_of(h) for h in p.hosts},
            "groups": {n: g for (n, _), g in zip(reps, p.groups)},
            "types": p.types,
            "cells": [{"source": na, "target": nb, "type": t, "status": c.status,
                       "accepted": c.accepted, "pairs": c.pairs, "reasons": list(c.reasons),
                       **({"grades": dict(c.grades), "limits": list(c.limits)}
                          if p.graded else {})}
                      for na, a in reps for nb, b in reps for t in p.types
                      if (c := p.cells.get((a, b, t))) is not None]}


COLOURS = {YES: "#2e7d32", COLD: "#1565c0", SOME: "#f9a825", NO: "#c62828", UNKNOWN: "#bdbdbd",
           "none": "#eeeeee"}


def render_svg(p: Plan) -> str:
    """The group table as SVG: one cell per group pair, coloured by its summary, with
    every type's status and reasons as the cell's title (shown on hover)."""
    reps = [g[0] for g in p.groups]
    labels = [f"G{i} {_members(g)}" + (f": {p.has[g[0]]}" if p.has.get(g[0]) else "")
              for i, g in enumerate(p.groups, 1)]
    cell, char = 44, 7.2
    margin = int(max(len(label) for label in labels) * char) + 20
    top = 70 + int(max(len(f"G{len(reps)}") for _ in reps) * char)
    n = len(reps)
    heading = render_text(p).splitlines()[0]
    width = int(max(margin + n * cell + 20, 640, len(heading) * 8.6 + 20))  # 14 px characters
    height = top + n * cell + 40 + 6 * 18
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           'font-family="monospace" font-size="12">',
           f'<text x="10" y="20" font-size="14">{escape(heading)}</text>',
           '<text x="10" y="40">row: source group, column: target group; hover a cell for '
           'each type and the reasons</text>']
    for i, label in enumerate(labels):
        y = top + i * cell + cell * 0.6
        out.append(f'<text x="{margin - 8}" y="{y:.1f}" text-anchor="end">{escape(label)}</text>')
        out.append(f'<text x="{margin + i * cell + cell / 2}" y="{top - 8}" '
                   f'text-anchor="middle">G{i + 1}</text>')
    for i, a in enumerate(reps):
        for j, b in enumerate(reps):
            mark, status = summary(p, a, b)
            x, y = margin + j * cell, top + i * cell
            out.append(f'<g><title>{escape(_title(p, i, j, a, b))}</title>'
                       f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" '
                       f'fill="{COLOURS[status]}" stroke="#9e9e9e"/>'
                       f'<text x="{x + cell / 2}" y="{y + cell * 0.6:.1f}" text-anchor="middle" '
                       f'fill="{"#000000" if status in (SOME, UNKNOWN, "none") else "#ffffff"}">'
                       f'{escape(mark)}</text></g>')
    y = top + n * cell + 30
    for k, (status, text) in enumerate((
            (YES, "every type may migrate"), (COLD, "every type, some only cold (graded)"),
            (SOME, "some types or some GPUs only"),
            (NO, "no type may migrate"), (UNKNOWN, "cannot tell: no migration_version"),
            ("none", "no type in common"))):
        out.append(f'<rect x="10" y="{y + k * 18 - 11}" width="12" height="12" '
                   f'fill="{COLOURS[status]}" stroke="#9e9e9e"/>'
                   f'<text x="28" y="{y + k * 18}">{escape(text)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _title(p: Plan, i: int, j: int, a: str, b: str) -> str:
    lines = [f"G{i + 1} → G{j + 1}"]
    for t in p.types:
        cell = p.cells.get((a, b, t))
        if cell is not None:
            lines.append(f"{t}: {cell.status} ({cell.accepted}/{cell.pairs}){_graded(cell)}")
            lines += [f"  {r}" for r in cell.reasons]
    return "\n".join(lines)


__all__ = ["plan", "render_text", "render_svg", "to_json", "Plan", "Cell"]
