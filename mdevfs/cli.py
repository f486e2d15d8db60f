"""``mdevfs``: mount, unmount, and inspect an emulated mdev sysfs tree.

No domain logic lives here: commands parse, set up logging once, build the
model from a topology and hand it to the FUSE adapter or a library function.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

from . import cli_capture, cli_fleet, mounts, namespace, process, runtime
from .beneath import write_new
from .errors import ControlRefused, MdevfsError, MountError, NamespaceError, UsageError

log = logging.getLogger("mdevfs")

__all__ = ["UsageError", "build_parser", "main"]


def cmd_mount(args: argparse.Namespace) -> int:
    from . import daemon

    directory = Path(os.path.abspath(args.dir))
    control_path = (Path(os.path.abspath(args.control)) if args.control
                    else runtime.default_control(directory))
    if args.foreground:
        daemon.run(directory, config=args.config, kernel=args.kernel, state=args.state,
                   control_path=control_path,
                   uevents_path=args.uevents, allow_other=args.allow_other,
                   trace=args.verbose)
        return 0
    log_file = (Path(os.path.abspath(args.log_file)) if args.log_file
                else runtime.default_log(directory))
    waited = []

    def progress(seconds: float) -> None:  # a large --state takes a while to restore
        waited.append(seconds)
        print(f"\rmdevfs: mounting {directory}: {seconds:.0f} s…", end="", file=sys.stderr,
              flush=True)

    try:
        launched = process.start(directory, control=control_path, log_file=log_file,
                                 config=args.config, state=args.state,
                                 uevents=Path(args.uevents) if args.uevents else None,
                                 allow_other=args.allow_other, timeout=args.ready_timeout,
                                 extra=_kernel_args(args),
                                 verbose=args.verbose, entry=daemon.preloaded(),
                                 progress=progress if sys.stderr.isatty() else None)
    finally:
        if waited:
            print(file=sys.stderr)
    print(f"mdevfs: {directory} mounted (pid {launched.proc.pid}, log {log_file}, "
          f"control {control_path})")
    return 0


def _kernel_args(args: argparse.Namespace) -> tuple[str, ...]:
    """The daemon's ``--kernel`` option, when the command was given one."""
    return ("--kernel", args.kernel) if args.kernel else ()


def cmd_umount(args: argparse.Namespace) -> int:
    """Unmount DIR and return once its daemon has exited (found through its control socket),
    so that a mount on DIR right after it succeeds; ``--lazy`` detaches a busy mount and
    returns at once (its daemon exits when the last user lets go)."""
    directory = Path(os.path.abspath(args.dir))
    if not mounts.is_mdevfs(directory):
        raise UsageError(f"{directory}: no mdevfs mount is there")
    if args.lazy:
        mounts.unmount(directory, lazy=True)
        return 0
    from . import control

    try:
        pid = control.Client(runtime.default_control(directory), timeout=5).status()["pid"]
    except (OSError, ValueError, KeyError):
        pid = None  # mounted with another --control: unmount only
    mounts.unmount(directory)
    if pid is not None:
        process.stop(directory, process.Recorded(pid, process.start_time(pid)))
    return 0


_CTL_FIELDS = ("parent", "path", "op", "error", "once", "seconds", "uuid", "on", "key", "value",
               "address", "since", "source")


def cmd_ctl(args: argparse.Namespace) -> int:
    """One control request; exit 0 done, 1 refused by the daemon, 2 no daemon answers."""
    from . import control

    directory = Path(os.path.abspath(args.dir))
    client = control.Client(args.control or runtime.default_control(directory))
    fields = {k: getattr(args, k) for k in _CTL_FIELDS if getattr(args, k, None) is not None}
    if "path" in fields and os.path.isabs(fields["path"]):
        fields["path"] = os.path.relpath(fields["path"], directory)  # a path into the mount
    if "value" in fields:
        try:
            fields["value"] = json.loads(fields["value"])  # 42, true, "text": a JSON scalar
        except json.JSONDecodeError:
            pass  # anything else is a plain string
    try:
        result = client.request(args.ctl_command, **fields)
    except control.ControlError as exc:
        raise ControlRefused(f"{args.ctl_command}: {exc.strerror} "
                             f"({errno.errorcode.get(exc.errno, exc.errno)})") from None
    except OSError as exc:
        raise UsageError(f"no mdevfs control socket answers at {client.path} ({exc.strerror});"
                         f" is {directory} mounted by mdevfs?") from None
    if result is not None:
        print(result if isinstance(result, str) else json.dumps(result, indent=2))
    return 0


def _ctl_parser(sub: Any) -> None:
    p = sub.add_parser("ctl", help="unplug parents and inject faults in a running mount",
                       description="Send one command to the control socket of the mdevfs "
                       "mount on DIR (owned by the mounting user, mode 0600). PATH is an "
                       "attribute file, relative to DIR or absolute inside it. Exit 0: done, "
                       "1: refused, 2: no daemon answers.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--control", metavar="PATH", help="the socket, if mounted with --control")
    p.set_defaults(func=cmd_ctl)
    cmds = p.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")
    cmds.add_parser("status", help="parents, devices and the faults in force")
    for name, text in (("unplug", "hot-unplug PARENT: its devices vanish"),
                       ("plug", "plug an unplugged PARENT back: its types return")):
        cmds.add_parser(name, help=text).add_argument("parent", metavar="PARENT")
    c = cmds.add_parser("fail", help="make reads or writes of PATH fail with ERRNO")
    c.add_argument("path", metavar="PATH")
    c.add_argument("op", choices=("read", "write"))
    c.add_argument("error", metavar="ERRNO", help="a name (EIO) or a number")
    c.add_argument("--once", action="store_true", help="only the next one (default: until "
                   "cleared)")
    c = cmds.add_parser("latency", help="sleep SECONDS before each read or write of PATH")
    c.add_argument("path", metavar="PATH")
    c.add_argument("seconds", metavar="SECONDS", type=float, help="0 clears")
    c = cmds.add_parser("busy", help="make remove of device UUID fail with EBUSY")
    c.add_argument("uuid", metavar="UUID")
    c.add_argument("--off", dest="on", action="store_false", help="let it be removed again")
    c = cmds.add_parser("open", help="hold the VFIO device of PCI function ADDRESS open, as "
                        "a VM does (an NVIDIA VF then refuses current_vgpu_type: EBUSY)")
    c.add_argument("address", metavar="ADDRESS")
    c.add_argument("--off", dest="on", action="store_false", help="close it again")
    c = cmds.add_parser("clear", help="clear the faults on PATH, or every fault")
    c.add_argument("path", metavar="PATH", nargs="?")
    c = cmds.add_parser("set-option", help="set a driver option of PARENT at run time")
    for name in ("parent", "key", "value"):
        c.add_argument(name, metavar=name.upper())
    cmds.add_parser("reset", help="back to the topology's initial state")
    c = cmds.add_parser("reasons", help="the reasons drivers logged for recent refusals",
                        description="What the vendor drivers logged (WARNING and up) during recent "
                        "reads and writes of attributes, with the attribute and the operation: "
                        "the words behind an errno. Prints {next, reasons}; ask again with "
                        "--since NEXT for newer ones.")
    c.add_argument("path", metavar="PATH", nargs="?", help="only this attribute's")
    c.add_argument("--since", type=int, metavar="N", help="only entries numbered N and up")
    c = cmds.add_parser("grade", help="none, cold or live: how SOURCE may come to PATH",
                        description="mdevfs's graded answer (modelled on NVML's vGPU "
                        "compatibility: a result and the limiting component) for a source's "
                        "migration_version string at the migration_version PATH; drivers "
                        "without one answer by the proposal: live or none.")
    c.add_argument("path", metavar="PATH", help="a type's or device's migration_version")
    c.add_argument("source", metavar="SOURCE", help="the string read at the source")


def cmd_check(args: argparse.Namespace) -> int:
    from . import migration  # not on the path of every mount: it costs 7 ms to import

    try:
        verdict = migration.check(args.source, args.target)
    except migration.NotAnMdevNode as exc:
        raise UsageError(str(exc)) from None
    if verdict.note:
        print(verdict.note)
    print(verdict.message)
    if verdict.reason:
        print(f"the driver says: {verdict.reason}")
    return 0 if verdict.compatible else 1


def cmd_matrix(args: argparse.Namespace) -> int:
    from . import migration

    try:
        matrix = migration.survey(args.topologies)
    except RuntimeError as exc:
        raise UsageError(f"a host did not mount: {exc}") from None
    render = migration.render_text if args.all else migration.render_same_type
    print(render(matrix, why=args.why), end="")
    if args.svg:
        write_new(args.svg, migration.render_svg(matrix).encode())
        print(f"wrote {args.svg}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Mount the topology (restoring and recording ``--state``), run the command in the
    namespace, unmount; the command's exit status. The daemon is tied to this process:
    killed, even by ``kill -9``, it takes the mount and the command with it, and the
    next run removes the temporary directory left behind. As env(1) and timeout(1) do,
    every failure of mdevfs itself is 125, with its reason: the command's own statuses
    keep their meaning (126 and 127: the command could not run)."""
    try:
        return _run(args)
    except NamespaceError:
        raise
    except MdevfsError as exc:
        raise NamespaceError(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        raise UsageError("name a COMMAND, e.g. mdevfs run -- mdevctl types")
    reason = namespace.unsupported()
    if reason:
        raise NamespaceError(reason)
    if args.mount:
        return _run_on_mount(args, command)
    from .forker import Forker

    # The forker, a service of this user's, forks the daemon with everything imported;
    # without one (this run starts it for the next), this process imports and forks it.
    forker = Forker.connect()
    if forker is None:
        from . import daemon

        entry: process.Entry | None = daemon.preloaded()
    else:
        entry = None
    for line in process.clean_leftovers():
        print(f"mdevfs run: {line}", file=sys.stderr)
    # As on a real host, a command that drops privileges (qemu under libvirt) may still
    # read /sys; the sysfs modes keep it from writing. The mount itself lies in a
    # directory only root may enter.
    extra = ("--allow-other",) * (os.geteuid() == 0) + _kernel_args(args)
    try:
        with process.temporary_mount(args.config, args=extra, state=args.state, record=True,
                                     timeout=args.ready_timeout,
                                     verbose=args.verbose, entry=entry, forker=forker,
                                     environment=True) as mount:
            env = dict(os.environ, **mount.environment)
            proc = process.Forked(namespace.spawn(mount.root, command, args.mdevctl_dir,
                                                  mount.root.parent / "uevents.sock", env))
            status = namespace.wait(proc)
            if status != 0:
                _explain_failure(mount, status)
            elif args.verbose:  # the request trace outlives the temporary directory
                print(f"mdevfs run: the daemon's log, a line per request, is kept at "
                      f"{_keep_log(mount)}", file=sys.stderr)
            return status
    except MountError as exc:
        raise NamespaceError(f"cannot mount the emulated tree: {exc}") from None


def _run_on_mount(args: argparse.Namespace, command: list[str]) -> int:
    """``run --mount DIR``: the command in a namespace showing a mount that is already up
    (its devices, made by hand or by another tool, included); nothing is mounted or torn
    down. Its uevents reach the namespace only if the mount was started with --uevents."""
    given = [o for o, v in (("--config", args.config), ("--state", args.state),
                            ("--kernel", args.kernel)) if v]
    if given:
        raise UsageError(f"--mount uses the mount as it is; {', '.join(given)} cannot "
                         f"change it")
    root = Path(os.path.abspath(args.mount))
    if not mounts.is_mdevfs(root):
        raise UsageError(f"{root} is not an mdevfs mount (mdevfs mount {root} first)")
    from .driver import service_environment

    control = runtime.default_control(root)
    env = dict(os.environ, **(service_environment(os.fspath(control))
                              if control.is_socket() else {}))
    proc = process.Forked(namespace.spawn(root, command, args.mdevctl_dir, None, env))
    return namespace.wait(proc)


def _exit_125(parser: argparse.ArgumentParser) -> None:
    """``mdevfs run``'s own usage errors are 125 too, as env(1)'s are."""
    def error(message: str) -> NoReturn:
        parser.print_usage(sys.stderr)
        parser.exit(NamespaceError.exit_status, f"{parser.prog}: error: {message}\n")

    parser.error = error  # type: ignore[method-assign]


def _explain_failure(mount: process.Launched, status: int) -> None:
    """The command failed: if a driver refused something meanwhile, say what it logged and
    keep the daemon's log (its temporary directory goes) where the user can read it."""
    from . import control

    try:
        reasons = control.Client(mount.control, timeout=5).reasons()["reasons"]
    except (OSError, ValueError, KeyError):
        return
    if not reasons:
        return  # nothing was refused by a driver: the command failed on its own
    kept = _keep_log(mount)
    for r in reasons[-10:]:
        print(f"mdevfs run: refused: {r['op']} {r['path']}: {r['reason']}", file=sys.stderr)
    print(f"mdevfs run: the command exited with status {status}; the daemon's log is kept "
          f"at {kept}", file=sys.stderr)


def _keep_log(mount: process.Launched) -> Path:
    """A copy of the daemon's log in the runtime directory (its temporary one goes)."""
    kept = runtime.runtime_dir() / "logs" / f"run-{os.getpid()}.log"
    kept.parent.mkdir(mode=0o700, exist_ok=True)
    kept.write_text(mount.log())
    return kept


def cmd_log(args: argparse.Namespace) -> int:
    """The last LINES lines of the log of the mount on DIR (a detached ``mdevfs mount``'s,
    or a temporary mount's, which sits beside it as ``mdevfs.log``)."""
    directory = Path(os.path.abspath(args.dir))
    candidates = ([Path(args.log_file)] if args.log_file
                  else [runtime.default_log(directory), directory.parent / "mdevfs.log"])
    for path in candidates:
        try:
            with open(path, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UsageError(f"log {path}: {exc.strerror}") from None
        print("\n".join(lines[-args.lines:] if args.lines > 0 else lines))
        return 0
    raise UsageError(f"no mdevfs log for {directory} (looked at "
                     f"{', '.join(map(str, candidates))}); give --log-file FILE if it was "
                     f"mounted with one")


def cmd_drivers(args: argparse.Namespace) -> int:
    from . import driverdoc

    docs = driverdoc.drivers()
    if args.name is None:
        print(driverdoc.render_list(docs), end="")
        return 0
    for doc in docs:
        if doc.name == args.name:
            print(driverdoc.render_one(doc), end="")
            return 0
    raise UsageError(f"no driver {args.name!r}; installed: {', '.join(d.name for d in docs)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdevfs", description="A kernel-faithful emulator of the Linux mdev sysfs interface.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", "--debug", action="store_true",
                        help="log at debug level, with a line for every request the mount "
                        "answers (path, operation, result or errno and reason); a detached "
                        "daemon logs it to its log file (mdevfs log DIR)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("mount", help="mount an emulated sysfs root on DIR",
                       description="Mount a topology's sysfs tree on DIR. Without --foreground "
                       "it returns once the mount answers and the daemon logs to a file.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--config", metavar="FILE", help="topology file (default: the embedded one)")
    p.add_argument("--kernel", metavar="X.Y",
                   help="the kernel emulated, 5.10 to 7.3 (default: the topology's [host] "
                   "kernel, else the newest)")
    p.add_argument("--foreground", "-f", action="store_true", help="serve in this process")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users in (sysfs modes are enforced)")
    p.add_argument("--log-file", metavar="FILE", help="where the detached daemon logs "
                   "(default: in the runtime directory, beside the control socket)")
    p.add_argument("--state", metavar="FILE",
                   help="record every device in FILE and restore them from it at start")
    p.add_argument("--control", metavar="PATH",
                   help="the control socket (default: in the runtime directory, "
                   "$XDG_RUNTIME_DIR/mdevfs or /run/mdevfs for root)")
    _ready_timeout(p)
    p.add_argument("--uevents", metavar="SOCKET",
                   help="send uevents (kernel and udev format) into the network namespace "
                   "of whoever hands a netlink socket over on SOCKET (python -m mdevfs.uevent "
                   "SOCKET; mdevfs run does it); never into the daemon's own (default: none)")
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="unmount DIR", description="Unmount an mdevfs mount.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--lazy", "-z", action="store_true", help="detach even if busy")
    p.set_defaults(func=cmd_umount)
    _ctl_parser(sub)
    cli_fleet.add_parsers(sub)

    p = sub.add_parser("check", help="may an mdev migrate from SOURCE to TARGET?",
                       description="Apply the migration_version conditions of the proposal in "
                       "order to two mdev type or device directories of any sysfs root: both "
                       "have the attribute, type nodes are of the same type, the source's "
                       "string reads, the target accepts it. A device paired with a type is "
                       "checked through its mdev_type. Exit 0: compatible, 1: not, 2: usage.")
    p.add_argument("source", metavar="SOURCE", help="an mdev type or device directory")
    p.add_argument("target", metavar="TARGET", help="an mdev type or device directory")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("matrix", help="which type of which host may migrate to which",
                       description="Mount each host's topology in a temporary directory, check "
                       "the ordered pairs of their types as `check` does, print a table per "
                       "type id of the same-type pairs (--all: the N×N table of every pair), "
                       "unmount. Types are labelled host:parent:type-id, the host being the "
                       "file's stem.")
    p.add_argument("topologies", metavar="TOPOLOGY", nargs="+", help="a host's topology file")
    p.add_argument("--svg", metavar="FILE", help="also draw the table as SVG in FILE")
    p.add_argument("--why", action="store_true", help="list the reason for every ✗")
    p.add_argument("--all", action="store_true", help="every ordered pair of types, not only "
                   "those of the same type id (the SVG always has every pair)")
    p.set_defaults(func=cmd_matrix)

    p = sub.add_parser("run", help="run COMMAND with the emulated tree at the real /sys paths",
                       description="Mount a topology, run COMMAND in private mount and network "
                       "namespaces in which /sys/class/mdev_bus, /sys/bus/mdev, the parents' "
                       "devices and /sys/kernel/iommu_groups are the emulated ones, "
                       "/etc/mdevctl.d and /dev/vfio (if the host has one) are private and "
                       "every change is announced by uevents that libudev clients (libvirt) "
                       "receive, then unmount. The host's /sys and /etc never change and its "
                       "listeners see no event. Exit status, as env(1)'s: COMMAND's (128+N if "
                       "signal N killed it); 125 when mdevfs itself failed (the reason is "
                       "printed); 126 COMMAND cannot run, 127 it is not found.")
    p.add_argument("--config", metavar="FILE", help="topology file (default: the embedded one)")
    p.add_argument("--kernel", metavar="X.Y",
                   help="the kernel emulated, 5.10 to 7.3 (default: the topology's [host] "
                   "kernel, else the newest)")
    p.add_argument("--mount", metavar="DIR",
                   help="run against the mdevfs mount at DIR, which is already up (with the "
                   "devices made there), instead of mounting a topology")
    p.add_argument("--mdevctl-dir", metavar="DIR",
                   help="bind DIR at /etc/mdevctl.d to keep mdevctl's definitions "
                   "(default: an empty private one)")
    p.add_argument("--state", metavar="FILE",
                   help="as for mount: restore the devices from FILE and record them there")
    _ready_timeout(p)
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")
    p.set_defaults(func=cmd_run, own_parser=p)  # its usage errors are its own (exit 125)
    _exit_125(p)
    cli_capture.add_parsers(sub)

    p = sub.add_parser("log", help="show the recent log of the mount on DIR",
                       description="Print the last lines of the log of the mdevfs mount on DIR. "
                       "Mounted with -v (mdevfs -v mount DIR), it holds a line for every "
                       "request: path, operation, result or errno and the driver's reason.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("-n", "--lines", type=int, default=50, metavar="N",
                   help="how many lines (default 50; 0: all)")
    p.add_argument("--log-file", metavar="FILE", help="the log, if mounted with --log-file")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("drivers", help="the vendor drivers, their options and what they model",
                       description="List every installed vendor driver (the mdevfs.vendors "
                       "entry points) with the options it accepts; with NAME, what it models, "
                       "its options and their defaults, from the driver's own documentation.")
    p.add_argument("name", metavar="NAME", nargs="?", help="one driver, e.g. mtty")
    p.set_defaults(func=cmd_drivers)
    for name, text in _SUB_EXAMPLES.items():
        if name in sub.choices:
            sub.choices[name].epilog = "examples:\n" + text
            sub.choices[name].formatter_class = _Formatter
    return parser


class _Formatter(argparse.HelpFormatter):
    """Wraps descriptions as usual; keeps the examples epilog line by line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:\n"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


_SUB_EXAMPLES = {
    "mount": """\
  mdevfs mount /tmp/sys                               the embedded default topology
  mdevfs mount --config host.toml --state s.json /tmp/sys    devices kept across restarts
  mdevfs -v mount /tmp/sys && mdevfs log /tmp/sys     a trace line per request
  mdevfs mount --foreground /tmp/sys                  serve here; Ctrl-C unmounts""",
    "umount": "  mdevfs umount /tmp/sys\n  mdevfs umount --lazy /tmp/sys        detach even if busy",
    "ctl": """\
  mdevfs ctl /tmp/sys status
  mdevfs ctl /tmp/sys unplug mtty
  mdevfs ctl /tmp/sys fail class/mdev_bus/mtty/mdev_supported_types/mtty-1/create write EIO --once
  mdevfs ctl /tmp/sys set-option mtty ports 4""",
    "check": """\
  T=class/mdev_bus/0000:00:02.0/mdev_supported_types/i915-GVTg_V5_4
  mdevfs check /tmp/a/$T /tmp/b/$T                    exit 0 compatible, 1 not""",
    "matrix": """\
  mdevfs matrix examples/two_hosts/host_a.toml examples/two_hosts/host_b.toml --why
  mdevfs matrix a.toml b.toml --all --svg matrix.svg""",
    "run": """\
  mdevfs run -- mdevctl types
  mdevfs run --config host.toml --mdevctl-dir ./mdevctl.d -- sh -c 'mdevctl start -p mtty -t mtty-1'""",
    "record": "  mdevfs record -o host.toml\n  mdevfs record --root /tmp/copy-of-sys --anonymize",
    "import": "  mdevfs import capture.umockdev -o host.toml",
    "export": """\
  mdevfs export --config host.toml --tree /tmp/static-sys
  mdevfs export --mount /tmp/sys --umockdev host.umockdev""",
    "log": "  mdevfs log /tmp/sys\n  mdevfs log -n 0 /tmp/sys              the whole log",
    "drivers": "  mdevfs drivers\n  mdevfs drivers nvidia-sriov",
}


def _ready_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ready-timeout", metavar="SECONDS", type=float,
                   help="how long to wait for the mount to answer (default: "
                   f"{process.READY_TIMEOUT:.0f} s, plus {process.READY_PER_STATE_MIB:.0f} s "
                   "per MiB of --state file to restore)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mdevfs")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from . import __version__

        return __version__


_EXAMPLES = """\
examples:
  mdevfs mount /tmp/sys && ls /tmp/sys/class/mdev_bus     the default topology, detached
  mdevfs -v mount --config host.toml /tmp/sys             a line per request in its log
  mdevfs log /tmp/sys                                     the mount's recent log
  mdevfs ctl /tmp/sys unplug mtty                         hot-unplug a parent
  mdevfs umount /tmp/sys
  mdevfs run -- mdevctl types                             a tool that hard-codes /sys
  mdevfs drivers mtty                                     a driver's options and defaults
  mdevfs check SRC_TYPE_DIR DST_TYPE_DIR                  may an mdev migrate?
  mdevfs record -o host.toml                              this host as a topology

exit status: 0 done, 1 refused or incompatible, 2 bad input, 3 the daemon did not come
up or does not answer, 4 mounting FUSE is not permitted here; run: COMMAND's own, 125
when mdevfs failed, 126/127 COMMAND cannot run / is not found."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # shell completion, where argcomplete is installed
        with contextlib.suppress(ImportError):
            import argcomplete

            argcomplete.autocomplete(parser)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # run's own usage errors are 125 too
        getattr(args, "own_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        return args.func(args)
    except MdevfsError as exc:  # the one place a user-facing error becomes an exit status
        print(f"{exc.prefix}: {exc}", file=sys.stderr)
        return exc.exit_status


def console() -> NoReturn:
    """The ``mdevfs`` command: :func:`main`, then an exit without the interpreter's teardown,
    which has nothing left to close but, once a daemon's modules are imported (``mount``,
    ``run``), costs 80 ms: a fifth of ``mdevfs run -- true``."""
    status = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader that went away (| head)
            stream.flush()
    if threading.active_count() > 1:
        sys.exit(status)  # a thread still runs: let the interpreter end it as usual
    os._exit(status)


if __name__ == "__main__":
    console()
