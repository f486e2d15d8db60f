"""From samples to the report: medians, ratios, each target and whether it
is met; a Markdown document and an SVG plot of listing latency against device count."""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from typing import Any

from attrs import frozen

from .suite import LIST_SIZES, OPS, Results

#: every row the report always has, in order (the smoke test checks each one)
ROW_KEYS = (*OPS, *(f"list-{n}" for n in LIST_SIZES), "list-100000", "mount", "run",
            "reset", "suite", "state-write", "state-restore", "rss-10000", "rss-100000",
            "removed", "mdevctl-list", "mdevctl-types")

WHAT = {
    "read": "attribute read: open + read + close of `available_instances`",
    "write": "accepted write: open + write + close (`power/control` ← on; floor: "
             "migration_version)",
    "writebad": "rejected write (EINVAL): the same with `bogus`",
    "stat": "stat of an attribute",
    "statmiss": "stat of a missing name (ENOENT)",
    "create": "create: write a UUID to `create` (the device appears)",
    "remove": "remove: write `1` to `<uuid>/remove` (Python loop on both; the floor "
              "cannot remove, so its figure is the same syscalls on a file that accepts them, "
              "with its names uncached, as a fresh device's names are new to the kernel)",
    "read-deep": "attribute read by the full path `class/mdev_bus/mtty/…/available_instances` "
                 "(floor: its flat read; no target)",
    "list-100000": "100,000 devices mounted and listed (`bus/mdev/devices`, mdevfs alone)",
    "mount": "spawn to a mount that answers (`mdevfs.testing.mounted()`, default topology; "
             "the daemon forked from the caller after its first mount)",
    "suite": "a 100-test pytest suite (create, read, remove) on the `mdevfs` fixture (floor: the "
             "same tests on trees each makes by hand in tmp_path), a whole pytest run",
    "removed": "every device removed at once (the fixture's reset)",
    "state-write": "`--state`: one create recorded (a journal line and an fsync; "
                   "floor column: the same at 10 devices)",
    "state-restore": "`--state`: spawn to ready, restoring",
    "run": "`mdevfs run -- true`, default topology (the console script, start to exit), "
           "its daemon forked by the forker a first run started",
    "run-cold": "the same without a forker (`MDEVFS_FORKER=off`): run imports and forks "
                "its daemon itself, as a first run does",
    "mdevctl-list": "`mdevctl list` (floor: the same tree as plain files on tmpfs)",
    "mdevctl-types": "`mdevctl types` (floor: the same tree on tmpfs; no target)",
}
#: ratio targets: key → the most mdevfs / floor may be
RATIO_TARGETS = {"read": 1.5, "write": 1.5, "stat": 1.5, "statmiss": 1.5, "create": 2.0, "remove": 2.0,
                 "list-10000": 1.5, "mdevctl-list": 1.5, "mdevctl-types": 1.5}
#: absolute targets: key → the most the median may be (ms, or bytes per name)
LIMITS = {"suite": 1.10, "mount": 100.0, "run": 150.0, "reset": 1.0, "rss-10000": 150.0, "rss-100000": 150.0,
          "state-restore": 2000.0, "state-write": 1.5}
TARGET_TEXT = {"statmiss": "≤ 1.5× (stat)", "list-10000": "≤ 1.5× C+plus",
               "mdevctl-list": "≤ 1.5× tmpfs", "mdevctl-types": "≤ 1.5× tmpfs",
               "mount": "≤ 100 ms median", "run": "≤ 150 ms median", "reset": "≤ 1 ms",
               "rss-10000": "≤ 150 B/name", "rss-100000": "≤ 150 B/name",
               "list-100000": "mounted and listed", "suite": "≤ 1.1× (within 10 %)",
               "removed": "mounted, listed and removed",
               "state-restore": "≤ 2 s at 100,000",
               "state-write": "≤ 1.5× its cost at 10 devices: O(1)"}


@frozen
class Row:
    key: str
    what: str
    mdevfs: str
    floor: str
    ratio: str
    target: str
    met: str


def median(values: Sequence[float] | None) -> float | None:
    return statistics.median(values) if values else None


def us(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 10_000:
        return f"{value / 1000:,.1f} ms"
    return f"{value:,.1f} µs" if value < 1000 else f"{value:,.0f} µs"


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f} ms"


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**NO**")


def target_text(key: str) -> str:
    limit = RATIO_TARGETS.get(key)
    return TARGET_TEXT.get(key, f"≤ {limit:g}×" if limit else "—")


def ratio_row(key: str, what: str, m: list[float] | None, f: list[float] | None,
              fmt: Any = us) -> Row:
    """Medians of both sides, the ratio of the medians, and the spread of the paired
    per-repetition ratios."""
    mm, fm = median(m), median(f)
    limit = RATIO_TARGETS.get(key)
    if mm is None or fm is None:
        return Row(key, what, fmt(mm), fmt(fm), "—", target_text(key), "—")
    r = mm / fm
    text = f"{r:.2f}×"
    if m and f and len(m) == len(f) and len(m) > 1:
        paired = [a / b for a, b in zip(m, f)]
        text += f" ({min(paired):.2f}–{max(paired):.2f})"
    return Row(key, what, fmt(mm), fmt(fm), text, target_text(key),
               verdict(None if limit is None else r <= limit))


def rows(res: Results) -> list[Row]:
    out: list[Row] = []
    skip = res.skipped

    def missing(key: str, phase: str) -> Row:
        reason = skip.get(phase, "not measured")
        what = WHAT.get(key) or f"list `bus/mdev/devices` with {int(key[5:]):,} devices"
        return Row(key, what, f"skipped: {reason}", "—", "—", target_text(key), "—")

    for op in OPS:
        if op not in res.ops:
            out.append(missing(op, "ops"))
            continue
        floor = res.ops.get("read" if op == "read-deep" else op, {}).get("C+plus")
        mine = res.ops[op].get("mdevfs")
        if op == "read-deep":  # not paired: the floor has no deep path
            row = ratio_row(op, WHAT[op], mine, None)
            mm, fm = median(mine), median(floor)
            ratio = f"{mm / fm:.2f}×" if mm and fm else "—"
            out.append(Row(op, WHAT[op], row.mdevfs, us(fm), ratio, "—", "—"))
        else:
            out.append(ratio_row(op, WHAT[op], mine, floor))
    for n in LIST_SIZES:
        key = f"list-{n}"
        sides = res.listing.get(n)
        if not sides:
            out.append(missing(key, "listing"))
            continue
        plain = median(sides.get("C"))
        what = (f"list `bus/mdev/devices` with {n:,} devices (floor: d{n} with readdirplus; "
                f"C without it: {us(plain)})")
        out.append(ratio_row(key, what, sides.get("mdevfs"), sides.get("C+plus")))
    big = res.listing.get(100_000, {}).get("mdevfs")
    if big:
        out.append(Row("list-100000", WHAT["list-100000"], us(median(big)), "—", "—",
                       TARGET_TEXT["list-100000"], "yes"))
    else:
        out.append(missing("list-100000", "listing" if "listing" in skip else "scale"))
    if res.mount:
        row = ratio_row("mount", WHAT["mount"], res.mount.get("mdevfs"),
                        res.mount.get("C+plus"), ms)
        mm = median(res.mount.get("mdevfs"))
        out.append(Row("mount", row.what, row.mdevfs, row.floor, row.ratio,
                       TARGET_TEXT["mount"], verdict(mm is not None and mm <= LIMITS["mount"])))
    else:
        out.append(missing("mount", "mount"))
    rm = median(res.run)
    out.append(Row("run", WHAT["run"], ms(rm), "—", "—", TARGET_TEXT["run"],
                   verdict(rm <= LIMITS["run"])) if rm is not None else missing("run", "mount"))
    rc = median(res.run_cold)
    if rc is not None:
        out.append(Row("run-cold", WHAT["run-cold"], ms(rc), "—", "—", "—", "—"))
    out.extend(reset_rows(res))
    sm, st = median(res.suite.get("mdevfs")), median(res.suite.get("tmpfs"))
    if sm is not None and st is not None:
        out.append(Row("suite", WHAT["suite"], f"{sm:.2f} s", f"{st:.2f} s", f"{sm / st:.2f}×",
                       TARGET_TEXT["suite"], verdict(sm / st <= LIMITS["suite"])))
    else:
        out.append(missing("suite", "suite"))
    out.extend(state_rows(res))
    out.extend(memory_rows(res))
    if res.removed:
        (n, secs), = res.removed.items()
        out.append(Row("removed", f"{WHAT['removed']}: {n:,} devices", f"{secs:.2f} s", "—",
                       "—", TARGET_TEXT["removed"], "yes"))
    else:
        out.append(missing("removed", "listing"))
    for cmd, key in (("mdevctl list", "mdevctl-list"), ("mdevctl types", "mdevctl-types")):
        sides = res.mdevctl.get(cmd)
        if not sides:
            out.append(missing(key, "mdevctl"))
            continue
        n = res.mdevctl_info.get("devices", "?")
        what = WHAT[key] + f", {n:,} devices" if isinstance(n, int) else WHAT[key]
        out.append(ratio_row(key, what, [v * 1e3 for v in sides["mdevfs"]],
                             [v * 1e3 for v in sides["tmpfs"]], ms))
    return out


def reset_rows(res: Results) -> list[Row]:
    """``reset``: the fixture's reset (Mount.reset() where it exists); the other ways
    measured in the same run follow as ``reset-control`` and ``reset-sysfs``."""
    if not res.reset:
        why = res.skipped.get("reset", "not measured")
        return [Row("reset", "the fixture's reset between tests", f"skipped: {why}", "—", "—",
                    TARGET_TEXT["reset"], "—")]
    ways = list(res.reset)
    main = next((w for w in ways if w.startswith("Mount.reset")), ways[0])
    out = []
    for way in [main] + [w for w in ways if w != main]:
        value = median(res.reset[way])
        key = ("reset" if way == main else "reset-control" if "control" in way
               else "reset-sysfs")
        out.append(Row(key, f"per-test reset with 5 devices: {way}", ms(value), "—", "—",
                          TARGET_TEXT["reset"] if key == "reset" else "—",
                       verdict(value <= LIMITS["reset"]) if key == "reset" and value is not None
                       else "—"))
    return out


def state_rows(res: Results) -> list[Row]:
    """``--state``: one create recorded at 10 and at the largest count, against each other;
    a mount restoring the largest count, less a plain mount."""
    if not res.state_write or not res.state_restore:
        why = res.skipped.get("state", "not measured")
        return [Row(k, WHAT[k], f"skipped: {why}", "—", "—", TARGET_TEXT[k], "—")
                for k in ("state-write", "state-restore")]
    (few, small), (many, large) = sorted(res.state_write.items())
    r = median(large) / median(small)
    (n, spawns), = res.state_restore.items()
    restore = median(spawns)
    plain = median(res.mount.get("mdevfs"))
    extra = f"; {ms(restore - plain)} more than a plain mount" if plain else ""
    return [Row("state-write", f"{WHAT['state-write']}: at {few:,} / {many:,} devices",
                f"{us(median(large))}", f"{us(median(small))}", f"{r:.2f}×",
                TARGET_TEXT["state-write"], verdict(r <= LIMITS["state-write"])),
            Row("state-restore", f"{WHAT['state-restore']}, {n:,} devices{extra}",
                ms(restore), "—", "—", TARGET_TEXT["state-restore"],
                verdict(restore <= LIMITS["state-restore"] if n >= 100_000 else None))]


def memory_rows(res: Results) -> list[Row]:
    out = []
    base = next((m for m in res.memory if m[0] == 0), None)
    for n in (10_000, 100_000):
        key = f"rss-{n}"
        point = next((m for m in res.memory if m[0] == n), None)
        if base is None or point is None:
            reason = res.skipped.get("listing") or res.skipped.get("scale", "not measured")
            out.append(Row(key, f"resident memory at {n:,} devices", f"skipped: {reason}",
                           "—", "—", TARGET_TEXT[key], "—"))
            continue
        per_node = (point[1] - base[1]) / max(point[2] - base[2], 1)
        per_device = (point[1] - base[1]) / n
        what = (f"resident memory at {n:,} devices: {point[1] / 2**20:,.1f} MiB "
                f"(at 0: {base[1] / 2**20:,.1f} MiB), {per_device:,.0f} B per device; "
                f"per name: {res.nodes_per_device} names per device (its directory and the "
                f"names that lead to it, made as nodes only when looked up)")
        out.append(Row(key, what, f"{per_node:,.0f} B/name", "—", "—", TARGET_TEXT[key],
                       verdict(per_node <= LIMITS[key])))
    return out


# --- the machine -------------------------------------------------------------------------

def machine() -> dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), model)
    except OSError:
        pass
    libfuse = subprocess.run(["pkg-config", "fuse3", "--modversion"], capture_output=True,
                             text=True, check=False).stdout.strip()

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "nproc": str(os.cpu_count()), "cpu": model,
            "kernel": platform.release(), "python": platform.python_version(),
            "libfuse": libfuse or "?", "pyfuse3": f"{version('pyfuse3')} ({_session_loop()} loop)",
            "trio": version("trio")}


# --- Markdown ---------------------------------------------------------------------------

def table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def requests_table(res: Results) -> str:
    """Requests per op on both sides; mdevfs's p50 split into the time inside its handlers
    (from the counting mount) and the rest (pyfuse3, trio, the kernel), per request."""
    body = []
    for key, sides in res.requests.items():
        m, f = sides.get("mdevfs"), sides.get("C+plus")
        if m is None:
            continue
        lat_m, lat_f = latency(res, key, "mdevfs"), latency(res, key, "C+plus")
        n_m = sum(v for k, v in m["per_op"].items() if k != "forget")
        n_f = sum(v for k, v in f["per_op"].items() if k != "forget") if f else 0
        inside = m["handler_ns"] / m["ops"] / 1000
        # an op served from the kernel's caches (under one request per op) has no per-request
        # cost worth dividing out
        rest = us(max(lat_m - inside, 0.0) / n_m) if lat_m and n_m >= 0.5 else "—"
        per_f = us(lat_f / n_f) if lat_f and n_f >= 0.5 else "—"
        body.append([f"`{key}`", breakdown(m["per_op"]), breakdown(f["per_op"]) if f else "—",
                     us(lat_m), us(inside), rest, per_f])
    return table(["op", "mdevfs requests per op", "floor requests per op", "mdevfs p50",
                  "of which in mdevfs handlers", "mdevfs rest per request",
                  "floor per request"], body)


def latency(res: Results, key: str, side: str) -> float | None:
    if key.startswith("mdevctl-"):
        runs = res.mdevctl.get(key.replace("-", " "), {}).get(side)
        return median([v * 1e6 for v in runs]) if runs else None
    if key.startswith("list-"):
        return median(res.listing.get(int(key[5:]), {}).get(side))
    return median(res.ops.get("read" if key == "read-deep" and side != "mdevfs" else key,
                              {}).get(side))


def count(v: float) -> str:
    return f"{v:,.0f}" if v >= 1000 else f"{v:.3g}"


def breakdown(per_op: dict[str, float]) -> str:
    parts = [f"{k.upper()} {count(v)}" for k, v in per_op.items()
             if k != "forget" and v >= 0.005]
    total = sum(v for k, v in per_op.items() if k != "forget")
    forget = per_op.get("forget")
    text = f"**{count(total)}**: " + ", ".join(parts)
    return text + (f" (+FORGET {forget:.2g})" if forget else "")


def listing_table(res: Results) -> str:
    body = []
    for n in sorted(res.listing):
        s = res.listing[n]
        m, p, c = median(s.get("mdevfs")), median(s.get("C+plus")), median(s.get("C"))
        body.append([f"{n:,}", us(m), us(p), us(c), f"{m / p:.2f}×" if m and p else "—",
                     f"{m / c:.2f}×" if m and c else "—",
                     f"{m * 1000 / n:,.0f} ns" if m else "—"])
    return table(["devices", "mdevfs", "C+plus", "C", "mdevfs / C+plus", "mdevfs / C",
                  "mdevfs per entry"], body)


def render(res: Results, report_rows: list[Row], info: dict[str, str], svg_name: str) -> str:
    plan = res.plan
    from mdevfs import fuse

    machine_line = (f"{info['date']} · {info['nproc']} CPUs ({info['cpu']}) · kernel "
                    f"{info['kernel']} · Python {info['python']}, pyfuse3 {info['pyfuse3']}, "
                    f"trio {info['trio']}, libfuse {info['libfuse']}")
    pinning = (f"Every process of the run (daemons, floors, driver, mdevctl) is pinned to CPU "
               f"{res.pinned}, so no round trip pays a cross-CPU wake-up."
               if res.pinned is not None else "Processes were not pinned (--no-pin).")
    method = (f"Method: mdevfs and the C floor (`tests/bench/c/floor.c`) mounted side by "
              f"side in the same caching mode (direct_io, entry_timeout "
              f"{fuse.ENTRY_TIMEOUT:g} s for every name, attr_timeout "
              f"{fuse.ATTR_TIMEOUT:g} s, READDIRPLUS "
              f"forced on the floor as pyfuse3 forces it: `C+plus`), each op run by "
              f"`tests/bench/c/driver.c` on both in turns, {plan.reps} repetition(s) × "
              f"{plan.budget_ms:g} ms; each cell is the median of the per-repetition p50 "
              f"latencies, the ratio is mdevfs / floor (in brackets: the spread of the paired "
              f"per-repetition ratios). Attribute ops run from the directory that holds the "
              f"file, so both sides see the same requests per op. {pinning}")
    out = [
        "# mdevfs benchmark",
        "",
        machine_line,
        "",
        method,
        "",
        table(["", "what", "mdevfs", "floor", "ratio", "target", "met"],
              [[f"`{r.key}`", r.what, r.mdevfs, r.floor, r.ratio, r.target, r.met]
               for r in report_rows]),
        "",
    ]
    if res.requests:
        out += ["## Where the time goes: FUSE requests per operation", "",
                ("Requests counted on a separate mount whose handlers are wrapped with "
                 "counters (`bench.counting`) and by the floor's own counters; "
                 "*in mdevfs handlers* is the time inside `SysfsOperations` methods per op "
                 "on that mount; the rest of the timed p50 (pyfuse3, trio, the kernel and "
                 "the client) is divided by mdevfs's requests, the floor's p50 by the "
                 "floor's."), "", requests_table(res), ""]
    if res.listing:
        out += ["## Listing against device count", "", listing_table(res), "",
                f"![listing latency against device count]({svg_name})", ""]
    if res.memory:
        base = res.memory[0]
        out += ["## Resident memory of the daemon", "",
                table(["devices", "names", "VmRSS", "bytes per device since 0 devices",
                       "bytes per name"],
                      [[f"{d:,}", f"{nodes:,}", f"{rss / 2**20:,.1f} MiB",
                        f"{(rss - base[1]) / d:,.0f}" if d else "—",
                        f"{(rss - base[1]) / (nodes - base[2]):,.0f}" if d else "—"]
                       for d, rss, nodes in res.memory]), ""]
    if res.mount_parts:
        out += ["## What a mount costs", "",
                table(["step", "median"],
                      [[k, ms(median(v))] for k, v in res.mount_parts.items()]
                      + [["mdevfs spawn to ready (above)", ms(median(res.mount.get("mdevfs")))]]),
                ""]
    if res.mdevctl_info:
        i = res.mdevctl_info
        out += [(f"mdevctl workload ({i.get('how')}): {i.get('devices')} devices; the tmpfs "
                f"copy holds "
                f"{i.get('copied_nodes'):,} nodes and took {i.get('copy_s', 0):.1f} s to make; "
                f"each command run {plan.mdevctl_runs} time(s) per tree after one warm-up."), ""]
    notes = res.notes + [f"{phase}: {why}" for phase, why in res.skipped.items()]
    if notes:
        out += ["## Notes", ""] + [f"* {n}" for n in notes] + [""]
    return "\n".join(out)


# --- the plot --------------------------------------------------------------------------

def svg(res: Results) -> str:
    """p50 of listing against device count, log–log, one line per filesystem."""
    import math

    series = {side: sorted((n, median(v)) for n, sides in res.listing.items()
                           for s, v in sides.items() if s == side and v)
              for side in ("mdevfs", "C+plus", "C")}
    series = {k: v for k, v in series.items() if v}
    width, height, left, right, top, bottom = 700, 400, 70, 190, 40, 50
    points = [p for s in series.values() for p in s]
    if not points:
        return ('<svg xmlns="http://www.w3.org/2000/svg" width="320" height="40">'
                '<text x="10" y="25">no listing measured</text></svg>')
    x_lo, x_hi = 1, math.ceil(math.log10(max(n for n, _ in points)))
    y_lo = math.floor(math.log10(min(v for _, v in points)))
    y_hi = math.ceil(math.log10(max(v for _, v in points)))
    y_hi += y_hi == y_lo

    def x(n: float) -> float:
        return left + (math.log10(n) - x_lo) / max(x_hi - x_lo, 1) * (width - left - right)

    def y(v: float) -> float:
        return top + (y_hi - math.log10(v)) / (y_hi - y_lo) * (height - top - bottom)

    colors = {"mdevfs": "#c0392b", "C+plus": "#2471a3", "C": "#7f8c8d"}
    labels = {"mdevfs": "mdevfs", "C+plus": "C floor, readdirplus", "C": "C floor, readdir"}
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">'),
             f'<rect width="{width}" height="{height}" fill="white"/>',
             (f'<text x="{left}" y="22" font-size="14">Listing bus/mdev/devices: p50 latency '
             f'against device count</text>')]
    for e in range(x_lo, x_hi + 1):
        parts.append(f'<line x1="{x(10**e):.1f}" y1="{top}" x2="{x(10**e):.1f}" '
                     f'y2="{height - bottom}" stroke="#ddd"/>')
        parts.append(f'<text x="{x(10**e):.1f}" y="{height - bottom + 16}" '
                     f'text-anchor="middle">{10**e:,}</text>')
    for e in range(y_lo, y_hi + 1):
        label = (f"{10**e:g} µs" if e < 3 else f"{10**(e - 3):g} ms" if e < 6
                 else f"{10**(e - 6):g} s")
        parts.append(f'<line x1="{left}" y1="{y(10**e):.1f}" x2="{width - right}" '
                     f'y2="{y(10**e):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y(10**e) + 4:.1f}" '
                     f'text-anchor="end">{label}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" '
                 f'text-anchor="middle">devices (entries listed)</text>')
    for i, (side, pts) in enumerate(series.items()):
        c = colors[side]
        path = " ".join(f"{x(n):.1f},{y(v):.1f}" for n, v in pts)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
        parts += [f'<circle cx="{x(n):.1f}" cy="{y(v):.1f}" r="3.5" fill="{c}"/>'
                  for n, v in pts]
        ly = top + 20 + 20 * i
        parts.append(f'<line x1="{width - right + 12}" y1="{ly}" x2="{width - right + 32}" '
                     f'y2="{ly}" stroke="{c}" stroke-width="2"/>')
        parts.append(f'<text x="{width - right + 38}" y="{ly + 4}">{labels[side]}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _session_loop() -> str:
    """Which request loop the pyfuse3 in use has: mdevfs's patch, or the stock one."""
    import pyfuse3

    return getattr(pyfuse3, "SESSION_LOOP", "stock")
