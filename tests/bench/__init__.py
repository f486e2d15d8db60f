"""``make bench``: mdevfs against the C FUSE floor, in one interleaved run.

At run time the benchmark builds its own ``c/driver.c`` (a tight-loop syscall
driver) and ``c/floor.c`` (a C libfuse3 filesystem serving a small mdev-like
tree) into a scratch directory, mounts mdevfs and the floor side by
side in the same kernel caching mode, and runs every operation on each in
turns (A B A B …, the order rotating between repetitions). It reports the
median of the per-repetition p50 latencies and the ratio mdevfs / floor, with
the target of the issue and whether it is met, writes a Markdown table and an
SVG plot to ``bench-results/``, and prints the table.

    python -m bench            # the full run (a few minutes on 2 cores)
    python -m bench --quick    # every row on a tiny budget (a smoke test)

Every mount lives under a temporary directory and is unmounted on the way
out, also on failure; only processes started here are ever signalled.
"""
from __future__ import annotations

from .main import main

__all__ = ["main"]
