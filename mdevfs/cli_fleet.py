"""``mdevfs fleet``: the command-line side of :mod:`mdevfs.fleet` and :mod:`mdevfs.planner`."""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

from . import namespace
from .beneath import write_new
from .errors import NamespaceError, UsageError


def cmd_fleet(args: argparse.Namespace) -> int:
    """``mdevfs fleet up|down|status|run|matrix``: many hosts, each a mount of its own."""
    from . import fleet

    if args.fleet_command == "up":
        began = time.monotonic()
        mounts = fleet.up(args.fleet_file, args.dir, launcher=args.launcher)
        print(f"mdevfs fleet: {len(mounts)} hosts up in {args.dir} "
              f"({time.monotonic() - began:.1f} s)")
    elif args.fleet_command == "down":
        fleet.down(args.dir)
    elif args.fleet_command == "status":
        rows = fleet.status(args.dir)
        print(json.dumps(rows, indent=1) if args.json else fleet.render_status(rows), end="")
        return 0 if all(r["parents"] is not None for r in rows) else 1
    elif args.fleet_command == "run":
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not command:
            raise UsageError("fleet run: name a COMMAND, e.g. mdevfs fleet run DIR HOST -- "
                             "mdevctl types")
        reason = namespace.unsupported()
        if reason:
            raise NamespaceError(reason)
        return fleet.run(args.dir, args.host, command, args.mdevctl_dir)
    else:
        return _fleet_matrix(args)
    return 0


def _fleet_matrix(args: argparse.Namespace) -> int:
    from . import fleet, planner

    found = fleet.hosts(args.dir)
    chosen = [m for m in found if not args.hosts or m.name in args.hosts]
    plan = planner.plan({m.name: m.root for m in chosen}, graded=args.graded)
    print(planner.render_text(plan, why=args.why), end="")
    if args.json:
        write_new(args.json, (json.dumps(planner.to_json(plan), indent=1) + "\n").encode())
        print(f"wrote {args.json}")
    if args.svg:
        write_new(args.svg, planner.render_svg(plan).encode())
        print(f"wrote {args.svg}")
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("fleet", help="many emulated hosts from a fleet.toml",
                       description="Mount every host of a fleet file (a topology each, or a "
                       "shared one with per-host driver options and GPU counts) under DIR, "
                       "each with its own sysfs root DIR/HOST/sys, control socket and log; "
                       "see the README, 'Fleets'.")
    p.set_defaults(func=cmd_fleet)
    cmds = p.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")
    c = cmds.add_parser("up", help="mount every host of FLEET under DIR")
    c.add_argument("fleet_file", metavar="FLEET")
    c.add_argument("dir", metavar="DIR")
    c.add_argument("--launcher", choices=("zygote", "exec"), default="zygote",
                   help="zygote (default): fork every daemon from one process that imported "
                   "mdevfs once; exec: start each as `mdevfs mount` does")
    c = cmds.add_parser("down", help="unmount every host of the fleet in DIR, remove DIR")
    c.add_argument("dir", metavar="DIR")
    c = cmds.add_parser("status", help="each host: daemon, parents, devices (exit 1: one is "
                        "not up)")
    c.add_argument("dir", metavar="DIR")
    c.add_argument("--json", action="store_true", help="as JSON")
    c = cmds.add_parser("run", help="run COMMAND with HOST's tree at the real /sys paths")
    c.add_argument("dir", metavar="DIR")
    c.add_argument("host", metavar="HOST")
    c.add_argument("--mdevctl-dir", metavar="DIR2", help="bind DIR2 at /etc/mdevctl.d")
    c.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")
    c = cmds.add_parser("matrix", help="which host's types may migrate to which host",
                        description="Read every migration_version at every host (types and "
                        "devices) and write each string to every target type node of its type, "
                        "as the proposal says userspace does; print the hosts grouped by identical "
                        "answers and the table of groups.")
    c.add_argument("dir", metavar="DIR")
    c.add_argument("hosts", metavar="HOST", nargs="*", help="only these hosts (default: all)")
    c.add_argument("--why", action="store_true", help="every refusal with its reason")
    c.add_argument("--graded", action="store_true", help="also ask each target mdevfs's graded "
                   "question (none, cold or live, and the limiting component)")
    c.add_argument("--json", metavar="FILE", help="write the plan as JSON to FILE")
    c.add_argument("--svg", metavar="FILE", help="draw the group table as SVG in FILE")
