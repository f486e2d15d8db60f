"""An mdevfs daemon that counts FUSE requests, for the benchmark's "where the time goes".

    python -m bench.counting STATS_FILE --config FILE MOUNTPOINT

It wraps every handler of :class:`~mdevfs.fuse.SysfsOperations` in this process
only, counting calls and the time spent inside them, then serves as
``mdevfs mount --foreground`` does. SIGUSR1 writes ``{handler: [calls, ns]}``
as JSON to STATS_FILE. The timed runs never use this daemon.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

HANDLERS = ("lookup", "getattr", "setattr", "readlink", "open", "read", "write", "flush",
            "release", "opendir", "readdir", "releasedir", "statfs", "forget")

_counts: dict[str, list[int]] = {name: [0, 0] for name in HANDLERS}


def _counted(name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def counted(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter_ns()
        try:
            return await fn(*args, **kwargs)
        finally:
            entry = _counts[name]
            entry[0] += 1
            entry[1] += time.perf_counter_ns() - start

    return counted


def _dump(path: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(_counts, f)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    from mdevfs.cli import main as cli_main
    from mdevfs.fuse import SysfsOperations

    stats, rest = argv[0], argv[1:]
    for name in HANDLERS:
        setattr(SysfsOperations, name, _counted(name, getattr(SysfsOperations, name)))
    signal.signal(signal.SIGUSR1, lambda *_: _dump(stats))
    return cli_main(["mount", "--foreground", *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
