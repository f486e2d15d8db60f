"""``mdevfs record``, ``import`` and ``export``: the command-line side of :mod:`mdevfs.capture`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .beneath import write_new
from .errors import UsageError


def _write_topology(made: Any, output: str | None) -> int:
    """Write a :class:`mdevfs.infer.Replay`'s topology and say what it kept."""
    if output is None:
        sys.stdout.write(made.text)
    else:
        try:
            write_new(output, made.text.encode())
        except OSError as exc:
            raise UsageError(f"{output}: cannot write: {exc.strerror}") from None
    print(f"mdevfs: recorded {made.summary()}" + (f"; wrote {output}" if output else ""),
          file=sys.stderr)
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    from . import capture

    return _write_topology(capture.record(args.root, args.anonymize), args.output)


def cmd_import(args: argparse.Namespace) -> int:
    from . import capture

    return _write_topology(capture.import_umockdev(args.file, args.anonymize), args.output)


def cmd_export(args: argparse.Namespace) -> int:
    from . import capture

    if not (args.tree or args.umockdev):
        raise UsageError("export: say where: --tree DIR and/or --umockdev FILE")
    entries = capture.export(args.config, Path(args.mount) if args.mount else None,
                             Path(args.tree) if args.tree else None,
                             Path(args.umockdev) if args.umockdev else None)
    print(f"mdevfs: exported {len(entries)} entries"
          + (f" to {args.tree}" if args.tree else "")
          + (f" and {args.umockdev}" if args.tree and args.umockdev else
             f" to {args.umockdev}" if args.umockdev else ""), file=sys.stderr)
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("record", help="write a host's mdev tree as a topology file",
                       description="Read the mdev parents, types, devices and SR-IOV GPUs under "
                       "a sysfs root and write a topology that mounts as that host: known "
                       "drivers where they reproduce it, else the 'recorded' driver, with "
                       "comments saying what was inferred and what could not be read.")
    p.add_argument("--root", default="/sys", help="the sysfs root (default /sys)")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    p.add_argument("--anonymize", action="store_true",
                   help="replace UUIDs and serial-like values (for a bug report)")
    p.set_defaults(func=cmd_record)
    p = sub.add_parser("import", help="turn a umockdev recording into a topology file",
                       description="Lay out a umockdev-record file as a tree and record it "
                       "as `record` does.")
    p.add_argument("file", metavar="FILE.umockdev")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    p.add_argument("--anonymize", action="store_true", help="as for record")
    p.set_defaults(func=cmd_import)
    p = sub.add_parser("export", help="write a topology's state as a static tree or .umockdev",
                       description="For CI without FUSE: the initial state of a topology (no "
                       "mount needed), or the current state of a live mount, as a plain "
                       "directory tree and/or a file for `umockdev-run -d`. A static tree "
                       "has no create/remove semantics and no errnos.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="FILE", help="topology (default: the embedded one)")
    source.add_argument("--mount", metavar="DIR", help="a live mdevfs mount, as it is now")
    p.add_argument("--tree", metavar="DIR", help="write the tree here (missing or empty)")
    p.add_argument("--umockdev", metavar="FILE", help="write a umockdev device file here")
    p.set_defaults(func=cmd_export)
