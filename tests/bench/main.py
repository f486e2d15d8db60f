"""``python -m bench``: build the instruments, run every phase, write the report."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from . import report, requests, suite
from .tools import BENCH_PATH, C_SOURCES, REPO_ROOT, BenchError, build, floor_mounted

PHASES = ("ops", "listing", "requests", "mount", "reset", "state", "suite", "mdevctl")


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds every `with`, so every mount is unmounted


def main(argv: list[str] | None = None) -> int:
    # its own subprocesses (python -m bench.counting, bench.workload) import it too
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [BENCH_PATH, os.environ.get("PYTHONPATH")]))
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="every row on a tiny budget, no 100,000-device step (a smoke test)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results",
                        help="where the report goes (default: bench-results/ in the repository)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"a comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)),
                        help="the CPU that every process of the run is pinned to "
                             "(default: the highest one this process may use)")
    parser.add_argument("--no-pin", action="store_true",
                        help="let the scheduler place the daemons and the driver")
    args = parser.parse_args(argv)
    chosen = [p.strip() for p in args.phases.split(",") if p.strip()]
    if set(chosen) - set(PHASES):
        parser.error(f"unknown phase(s): {', '.join(sorted(set(chosen) - set(PHASES)))}")
    signal.signal(signal.SIGTERM, _terminate)
    plan = suite.QUICK if args.quick else suite.FULL
    res = suite.Results(plan)
    if not args.no_pin:
        # Children inherit the affinity: the daemons, the floors, the driver and mdevctl
        # all share one CPU, so no FUSE round trip pays a cross-CPU wake-up (on an idle
        # VM that costs ~35 µs per hop and swamps the figures; docs/performance.md).
        os.sched_setaffinity(0, {args.cpu})
        res.pinned = args.cpu
    started = time.monotonic()
    failed = 0
    with tempfile.TemporaryDirectory(prefix="mdevfs-bench-") as scratch, \
            contextlib.ExitStack() as stack:
        suite.log(f"building {C_SOURCES.relative_to(REPO_ROOT)}/driver.c and floor.c")
        try:
            tools = build(Path(scratch))
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        config = Path(scratch) / "bench.toml"
        config.write_text(suite.BENCH_TOPOLOGY)
        floors = {name: stack.enter_context(floor_mounted(tools, suite.floor_knobs(*mode)))
                  for name, mode in suite.FLOORS.items()}
        phases: dict[str, Callable[[], None]] = {
            "ops": lambda: suite.phase_ops(res, tools, config, floors),
            "listing": lambda: suite.phase_listing(
                res, tools, config, {k: floors[k] for k in ("C+plus", "C")}),
            "requests": lambda: requests.phase_requests(res, config, floors),
            "mount": lambda: suite.phase_mount(res, tools),
            "reset": lambda: suite.phase_reset(res, config),
            "state": lambda: suite.phase_state(res, config),
            "suite": lambda: suite.phase_suite(res),
            "mdevctl": lambda: suite.phase_mdevctl(res, config),
        }
        for name in PHASES:
            if name not in chosen:
                res.skipped[name] = "not chosen (--phases)"
                continue
            suite.log(f"phase {name} ({time.monotonic() - started:.0f} s so far)")
            try:
                phases[name]()
            except (BenchError, OSError, RuntimeError, ValueError) as exc:
                failed += 1
                res.skipped[name] = f"failed: {exc}"
                suite.log(f"phase {name} failed: {exc}")
    if 100_000 not in plan.scale:
        res.skipped.setdefault("scale", "--quick: the 100,000-device step takes about a minute; "
                                        "run the full benchmark")
    res.notes.append(f"the whole run took {time.monotonic() - started:.0f} s")
    write(res, args.out)
    return 1 if failed else 0


def write(res: suite.Results, out: Path) -> None:
    info = report.machine()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    svg_name = f"listing-{stamp}.svg"
    text = report.render(res, report.rows(res), info, svg_name)
    out.mkdir(parents=True, exist_ok=True)
    (out / svg_name).write_text(report.svg(res))
    (out / f"bench-{stamp}.md").write_text(text)
    (out / "latest.md").write_text(text)
    (out / f"bench-{stamp}.json").write_text(json.dumps(
        {"machine": info, "results": attrs.asdict(res)}, indent=1, default=str))
    print(text)
    print(f"\nwritten: {out / f'bench-{stamp}.md'} (also latest.md), {out / svg_name}")
