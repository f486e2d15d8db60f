"""A newcomer's first hour : --version, drivers, the request trace and `mdevfs log`,
the ready timeout, `run` with a bad topology, strict mode without /dev/fuse, the demo, and a
wheel that holds what the installed commands use."""
from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import MTTY_ONLY, needs_fuse, write_topology

from mdevfs import mounts, process

REPO = Path(__file__).resolve().parent.parent
MTTY_TYPE = "class/mdev_bus/mtty/mdev_supported_types/mtty-1"
MTTY_NODE = "devices/virtual/mtty/mtty/mdev_supported_types/mtty-1"


def mdevfs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mdevfs", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def unmount_if_mounted(directory: Path) -> None:
    if str(directory) in mounts.mountpoints():
        subprocess.run(["fusermount3", "-u", "-z", str(directory)], capture_output=True)


# --- packaging ------------------------------------------------------------------------------

@needs_fuse
def test_the_readmes_first_mount_works_as_written(tmp_path):
    """The README's first block, run as a newcomer would paste it (its /tmp/sys moved into
    tmp_path): every command succeeds, the device exists and the VFs appear."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## A first mount\n", 1)[1]
    block = section.lstrip("\n").split("\n\n", 1)[0]  # the first indented block
    lines = [line[4:].split("  #")[0].rstrip() for line in block.splitlines()]
    assert lines[0] == "mkdir -p /tmp/sys" and lines[-1] == ".venv/bin/mdevfs umount /tmp/sys"
    root = tmp_path / "sys"
    script = "\n".join(line.replace("/tmp/sys", str(root)) for line in lines[:-1])
    script += f"\nls {root}/bus/mdev/devices; ls -d {root}/bus/pci/devices/0000:c1:00.[45]"
    try:
        done = subprocess.run(["bash", "-e", "-c", script], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        out = done.stdout.splitlines()
        assert out[-2:] == [f"{root}/bus/pci/devices/0000:c1:00.4",
                            f"{root}/bus/pci/devices/0000:c1:00.5"]
        assert re.fullmatch(r"[0-9a-f-]{36}", out[-3]), out
        umount = subprocess.run(["bash", "-e", "-c", lines[-1].replace("/tmp/sys", str(root))],
                                cwd=REPO, capture_output=True, text=True, timeout=60)
        assert umount.returncode == 0, umount.stderr
        assert str(root) not in mounts.mountpoints()
    finally:
        unmount_if_mounted(root)


def test_version_is_the_installed_distributions():
    out = mdevfs("--version")
    assert (out.returncode, out.stdout) == (0, f"mdevfs {importlib.metadata.version('mdevfs')}\n")


def test_help_shows_examples_and_exit_statuses():
    out = mdevfs("--help")
    assert out.returncode == 0
    assert "  mdevfs -v mount --config host.toml /tmp/sys" in out.stdout
    assert "exit status: 0 done, 1 refused or incompatible, 2 bad input" in out.stdout


# --- mdevfs drivers -------------------------------------------------------------------------

def test_drivers_lists_every_entry_point_with_its_options():
    out = mdevfs("drivers")
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines()
             if line and not line.startswith(" ") and not line.startswith("`")]
    assert names == sorted(ep.name for ep in importlib.metadata.entry_points(group="mdevfs.vendors"))
    lines = out.stdout.splitlines()
    mtty = lines.index(next(x for x in lines if x.startswith("mtty ")))
    assert lines[mtty].split(None, 1)[1] == ("mtty.c: a virtual serial card with MAX_MTTYS = 24 "
                                             "ports in one pool.")
    assert lines[mtty + 1].strip() == "[[parent]]; options: ports"
    sriov = lines.index(next(x for x in lines if x.startswith("nvidia-sriov ")))
    assert lines[sriov + 1].strip().startswith("[[gpu]]; options: model, vfs,")


def test_drivers_name_shows_the_drivers_own_documentation():
    out = mdevfs("drivers", "mtty")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(
        "mtty (mdevfs_vendors.samples:Mtty): a [[parent]] entry\n\noptions:\n"
        "  ports  int    default 24: the serial ports the types share (MAX_MTTYS)\n\n")
    assert "Option: ``ports`` (default 24) resizes the pool." in out.stdout
    assert out.stdout.endswith('    [[parent]]\n    driver = "mtty"\n'
                               '    [parent.options]\n    ports = 24\n')


def test_drivers_unknown_name_is_bad_input():
    out = mdevfs("drivers", "nope")
    assert out.returncode == 2
    assert out.stderr.startswith("mdevfs: no driver 'nope'; installed: gvt, mbochs, mdpy, mtty")


# --- the request trace, mdevfs log, the ready timeout -----------------------------------------

@needs_fuse
def test_verbose_reaches_the_detached_daemon_and_log_shows_the_trace(tmp_path):
    root = tmp_path / "sys"
    root.mkdir()
    log = tmp_path / "daemon.log"
    out = mdevfs("--debug", "mount", "--log-file", str(log), str(root))
    assert out.returncode == 0, out.stderr
    try:
        with pytest.raises(OSError) as refused:
            (root / MTTY_TYPE / "create").write_text("not-a-uuid\n")
        assert refused.value.errno == 22
        assert (root / MTTY_TYPE / "available_instances").read_text() == "24\n"
        shown = mdevfs("log", "-n", "2", "--log-file", str(log), str(root))
    finally:
        mdevfs("umount", str(root))
        unmount_if_mounted(root)
    assert shown.returncode == 0, shown.stderr
    lines = [line.split(" ", 2)[2] for line in shown.stdout.splitlines()]  # no date, time
    assert lines == [
        f"mdevfs.trace DEBUG: write {MTTY_NODE}/create b'not-a-uuid\\n': EINVAL (Invalid argument)",
        f"mdevfs.trace DEBUG: read {MTTY_NODE}/available_instances: b'24\\n'"]


@needs_fuse
def test_log_finds_a_default_log_and_a_temporary_mounts(tmp_path):
    from mdevfs.testing import mounted

    with mounted(write_topology(tmp_path, MTTY_ONLY), verbose=True) as m:
        (m.root / MTTY_TYPE / "available_instances").read_text()
        out = mdevfs("log", "-n", "1", str(m.root))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(" ", 2)[2] == (f"mdevfs.trace DEBUG: read {MTTY_NODE}/"
                                           "available_instances: b'24\\n'\n")


@needs_fuse
def test_the_trace_names_a_lookup_of_a_missing_name(tmp_path):
    from mdevfs.testing import mounted

    with mounted(write_topology(tmp_path, MTTY_ONLY), verbose=True) as m:
        assert not (m.root / MTTY_NODE / "nope").exists()
        out = mdevfs("log", "-n", "1", str(m.root))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(" ", 2)[2] == f"mdevfs.trace DEBUG: lookup {MTTY_NODE}/nope: ENOENT\n"


def test_log_of_a_directory_never_mounted_says_where_it_looked(tmp_path):
    out = mdevfs("log", str(tmp_path / "sys"))
    assert out.returncode == 2
    assert out.stderr.startswith(f"mdevfs: no mdevfs log for {tmp_path}/sys (looked at ")


@needs_fuse
def test_ready_timeout_is_a_flag_and_named_when_it_runs_out(tmp_path):
    root = tmp_path / "sys"
    root.mkdir()
    try:
        out = mdevfs("mount", "--ready-timeout", "0", "--log-file", str(tmp_path / "log"),
                     str(root))
    finally:
        unmount_if_mounted(root)
    assert out.returncode == 3
    assert out.stderr.startswith(f"mdevfs: the mdevfs daemon did not mount {root} within 0 s "
                                 "(--ready-timeout SECONDS waits longer); its log ")


def test_default_ready_timeout_grows_with_the_state_file(tmp_path):
    state = tmp_path / "state.json"
    assert process.ready_timeout(None) == process.READY_TIMEOUT == 10.0
    assert process.ready_timeout(state) == 10.0  # not there yet: a new file
    state.write_bytes(b"x" * (5 * 2**20))
    assert process.ready_timeout(state) == 10.0 + 5 * process.READY_PER_STATE_MIB == 20.0


def test_run_with_a_bad_topology_prints_the_cause_and_exits_125(tmp_path):
    """The failures of mdevfs run itself are 125 (as env's and timeout's), never a status the
    command could give: a bad topology, a usage error, no COMMAND."""
    bad = write_topology(tmp_path, '[[parent]]\ndriver = "mtty"\n[parent.options]\nports = -1\n')
    out = mdevfs("run", "--config", str(bad), "--", "true")
    assert (out.returncode, out.stdout) == (125, "")
    assert out.stderr == (f"mdevfs run: {bad}: parent #1 (driver 'mtty'): the driver refused its "
                          "options: ValueError: option 'ports' must be a whole number ≥ 0, "
                          "not -1\n")
    assert mdevfs("run", "--no-such-option", "--", "true").returncode == 125
    assert mdevfs("run").returncode == 125
    assert [mdevfs("run", "--", "sh", "-c", f"exit {n}").returncode for n in (0, 2, 3, 125)] \
        == [0, 2, 3, 125]
    assert mdevfs("run", "--", str(tmp_path / "nothing")).returncode == 127
    assert mdevfs("run", "--", str(tmp_path)).returncode == 126


# --- strict mode ----------------------------------------------------------------------------

def _pytest_without_dev_fuse(project: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Pytest on ``project`` in a private mount namespace whose /dev lacks fuse (a tmpfs
    with only null, zero, random and urandom bound in); the host's /dev is untouched."""
    keep = project / "hostdev"
    keep.mkdir()
    script = (f'mount --bind /dev "{keep}" && mount -t tmpfs tmpfs /dev && '
              'for n in null zero random urandom; do touch /dev/$n && '
              f'mount --bind "{keep}/$n" /dev/$n; done && ln -s /proc/self/fd /dev/fd && '
              f'test ! -e /dev/fuse && exec "{sys.executable}" -m pytest -q -p no:cacheprovider '
              f'"{project}/test_x.py"')
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120, env=env, cwd=project)


@pytest.fixture
def project(tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to hide /dev/fuse in a private namespace")
    (tmp_path / "test_x.py").write_text("def test_allocator(mdevfs):\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    return tmp_path


def test_without_dev_fuse_a_mount_test_skips_by_default(project):
    env = {k: v for k, v in os.environ.items() if k != "MDEVFS_STRICT"}
    out = _pytest_without_dev_fuse(project, env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1].startswith("1 skipped in ")


def test_strict_env_makes_a_missing_dev_fuse_fail_the_run(project):
    out = _pytest_without_dev_fuse(project, dict(os.environ, MDEVFS_STRICT="1"))
    assert out.returncode == 1, out.stdout + out.stderr
    assert ("mdevfs: /dev/fuse is missing: load the fuse module (modprobe fuse) or give the "
            "container --device /dev/fuse (strict mode: MDEVFS_STRICT=1 or mdevfs_strict = true "
            "turns this skip into a failure)") in out.stdout
    assert out.stdout.splitlines()[-1].startswith("1 error in ")


def test_strict_ini_option_does_the_same(project):
    (project / "pytest.ini").write_text("[pytest]\nmdevfs_strict = true\n")
    env = {k: v for k, v in os.environ.items() if k != "MDEVFS_STRICT"}
    out = _pytest_without_dev_fuse(project, env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1].startswith("1 error in ")


# --- the demo -------------------------------------------------------------------------------

@needs_fuse
def test_demo_is_a_short_story_with_one_accepted_and_one_refused_migration():
    out = subprocess.run([sys.executable, str(REPO / "examples/demo.py")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) <= 50  # a screen or two
    assert [x for x in lines if x.startswith("== ")] == [
        "== 1. The parents: each device that makes mdevs is a link in class/mdev_bus",
        "== 2. A create with the real mdevctl, which hard-codes /sys: `mdevfs run` gives it the tree",
        "== 3. The same by hand: a UUID written to a type's create, 1 to a device's remove",
        "== 4. Migration, the proposal's check: read the source's migration_version, write it to "
        "the target"]
    assert "  accepted: SRC may migrate to DST" in lines
    assert "  write error: Invalid argument: refused, incompatible" in lines
    assert ("  the driver's reason, in the mount's log (mdevfs log DIR): Migration version "
            "mismatched. Possible reason: migration software version not matched. Local "
            "migration version:8086-1912-GVTg_V5_4-00000001, Remote migration version:"
            "8086-1912-GVTg_V5_4-00000002") in lines
    if shutil.which("mdevctl"):
        assert "  11" in lines  # mtty-2's available_instances after mdevctl's create
    full = subprocess.run([sys.executable, str(REPO / "examples/demo.py"), "--full"],
                          capture_output=True, text=True, timeout=120)
    assert full.returncode == 0, full.stderr
    assert "$ cat class/mdev_bus/mtty/mdev_supported_types/mtty-2/available_instances" in full.stdout


# --- the wheel ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of what the package is made of (never in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    for name in ("mdevfs", "vendors"):
        shutil.copytree(REPO / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = src / "dist"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                            str(out), str(src)], capture_output=True, text=True, timeout=600)
    if built.returncode != 0 and "Could not find a version" in built.stderr:
        pytest.skip(f"no build backend to be had here: {built.stderr.strip()[-300:]}")
    assert built.returncode == 0, built.stderr
    (whl,) = out.glob("mdevfs-*.whl")
    return whl


def test_wheel_holds_the_data_files_the_license_and_the_entry_points(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    version = importlib.metadata.version("mdevfs")
    info = f"mdevfs-{version}.dist-info"
    for needed in ("mdevfs/default.toml", "mdevfs/py.typed", "mdevfs_vendors/nvidia_catalogs.toml",
                   "mdevfs/namespace.py", "mdevfs/trace.py", f"{info}/licenses/LICENSE"):
        assert needed in names
    meta = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert "License-Expression: GPL-2.0-or-later" in meta.splitlines()
    eps = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "mdevfs = mdevfs.cli:console" in eps and "mdevfs = mdevfs.pytest_plugin" in eps


@needs_fuse
def test_wheel_installed_in_a_fresh_venv_mounts_and_runs(wheel, tmp_path):
    """Pip installs the wheel alone (its dependencies come from this venv, by a .pth file:
    building pyfuse3 again would take a minute); then the commands run from that venv."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    vpy = venv / "bin/python"
    site = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-deps", "--no-index",
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    where = subprocess.run([str(vpy), "-c", "import mdevfs; print(mdevfs.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert where.stdout.startswith(site), where.stdout + where.stderr
    exe = venv / "bin/mdevfs"
    assert subprocess.run([str(exe), "--version"], capture_output=True, text=True,
                          cwd=tmp_path).stdout == f"mdevfs {importlib.metadata.version('mdevfs')}\n"
    drivers = subprocess.run([str(exe), "drivers", "nvidia-sriov"], capture_output=True, text=True,
                             cwd=tmp_path)
    assert drivers.returncode == 0 and "a [[gpu]] entry" in drivers.stdout
    root = tmp_path / "sys"
    root.mkdir()
    mounted = subprocess.run([str(exe), "mount", "--log-file", str(tmp_path / "log"), str(root)],
                             capture_output=True, text=True, cwd=tmp_path)
    try:
        assert mounted.returncode == 0, mounted.stderr
        assert sorted(os.listdir(root / "class/mdev_bus")) == [
            "0000:00:02.0", "0000:41:00.0", "mbochs", "mdpy", "mtty"]
        gpu = root / "bus/pci/devices/0000:c1:00.0/sriov_totalvfs"  # the catalog's data
        assert gpu.read_text() == "32\n"
    finally:
        subprocess.run([str(exe), "umount", str(root)], capture_output=True, cwd=tmp_path)
        unmount_if_mounted(root)


# --- the examples beyond Python -------------------------------------------------------------

@needs_fuse
def test_scheme_example_hosts_migrate_one_way(tmp_path):
    """Examples/scheme: driver 2.1's acme-large goes to 2.3, not back (minor target>=source)."""
    from mdevfs.testing import mounted

    kind = "class/mdev_bus/acme/mdev_supported_types/acme-large"
    with mounted(REPO / "examples/scheme/acme_2.1.toml") as a, \
            mounted(REPO / "examples/scheme/acme_2.3.toml") as b:
        forth = mdevfs("check", str(a.root / kind), str(b.root / kind))
        back = mdevfs("check", str(b.root / kind), str(a.root / kind))
        assert not (a.root / "class/mdev_bus/acme/mdev_supported_types/acme-small"
                    / "migration_version").exists()
    assert (forth.returncode, forth.stdout) == (0, f"compatible: {b.root / kind} accepted "
                                                   f"'acme-2.1-large' from {a.root / kind}\n")
    assert back.returncode == 1
    assert back.stdout.splitlines()[-1] == ("the driver says: acme: 'acme-2.3-large' may not "
                                            "migrate to type large: field minor: source 3, "
                                            "target 1, rule target>=source")


@needs_fuse
def test_go_helper_mounts_for_go_test_and_unmounts_in_cleanup(tmp_path):
    """Examples/go: the stdlib-only helper's own tests, run by `go test` (Debian's golang-go,
    which `make` installs; skipped, as the README says, where no Go toolchain is found)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain (Debian: apt install golang-go; `make test` installs it)")
    exe = Path(sys.executable).parent / "mdevfs"
    env = dict(os.environ, MDEVFS=str(exe) if exe.exists() else f"{sys.executable} -m mdevfs",
               GOPROXY="off", GOFLAGS="-mod=mod", TMPDIR=str(tmp_path))
    env.setdefault("GOCACHE", str(Path(env.get("HOME") or tmp_path) / ".cache/go-build"))
    helper = REPO / "examples/go/mdevfstest"
    out = subprocess.run([go, "test", "-count=1", "-v", "./..."], cwd=helper,
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    passed = [line.split()[2] for line in out.stdout.splitlines() if line.startswith("--- PASS")]
    assert passed == ["TestCreateAndRemove", "TestOwnTopologyAndErrno"]
    # another module uses it as Go users do, through a workspace: no replace directive
    user = tmp_path / "user"
    user.mkdir()
    (user / "go.mod").write_text("module example.com/user\n\ngo 1.19\n")
    (user / "user_test.go").write_text(
        'package user\n\nimport (\n\t"testing"\n\n\t"example.com/mdevfstest"\n)\n\n'
        'func TestUses(t *testing.T) {\n\ttree := mdevfstest.Mount(t, "")\n'
        '\tif err := tree.Create("mtty", "mtty-1", "0f3a4e5c-6b7d-4e8f-9a0b-1c2d3e4f5a6c"); '
        'err != nil {\n\t\tt.Fatal(err)\n\t}\n}\n')
    workspace = {k: v for k, v in env.items() if k != "GOFLAGS"}  # -mod=mod: not in a workspace
    for step in (["work", "init", "."], ["work", "use", str(helper)],
                 ["test", "-count=1", "./..."]):
        out = subprocess.run([go, *step], cwd=user, capture_output=True, text=True,
                             timeout=600, env=workspace)
        assert out.returncode == 0, out.stdout + out.stderr
    assert "replace" not in (user / "go.mod").read_text()
    assert not [m for m in mounts.mountpoints() if m.startswith(str(tmp_path))]


def test_subcommand_help_has_examples():
    out = mdevfs("log", "--help")
    assert out.returncode == 0
    assert out.stdout.endswith("examples:\n  mdevfs log /tmp/sys\n"
                               "  mdevfs log -n 0 /tmp/sys              the whole log\n")


@pytest.mark.parametrize(("line", "expected"), [("mdevfs dr", "drivers "),
                                                ("mdevfs mount --re", "--ready-timeout ")])
def test_shell_completion_through_argcomplete(tmp_path, line, expected):
    pytest.importorskip("argcomplete")  # in the test extra; optional for users
    out = tmp_path / "completions"
    env = dict(os.environ, _ARGCOMPLETE="1", COMP_LINE=line, COMP_POINT=str(len(line)),
               _ARGCOMPLETE_IFS=" ", _ARGCOMPLETE_STDOUT_FILENAME=str(out))
    done = mdevfs(env=env)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == expected


@needs_fuse
def test_a_slow_mount_counts_its_seconds_on_a_terminal(tmp_path):
    """A daemon that takes 2.5 s to build its host (this driver sleeps; only the daemon
    builds it): on a terminal, mount counts the seconds waited, then says it mounted."""
    import pty

    (tmp_path / "slow.py").write_text(
        "import time\nfrom mdevfs.driver import BaseDriver\n\n\n"
        "class Driver(BaseDriver):\n"
        "    def __init__(self, options=None):\n"
        "        super().__init__(options)\n"
        "        time.sleep(2.5)\n")
    slow = write_topology(tmp_path, '[[parent]]\ndriver = "slow.py"\n', "slow.toml")
    root = tmp_path / "sys"
    root.mkdir()
    master, slave = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "mdevfs", "mount", "--config", str(slow),
                               "--log-file", str(tmp_path / "log"), str(root)],
                              stdout=subprocess.PIPE, stderr=slave, text=True, timeout=60)
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
        mdevfs("umount", str(root))
        unmount_if_mounted(root)
    assert done.returncode == 0
    text = shown.decode()
    counted = text.removesuffix("\r\n").split("\r")  # the terminal turns \n into \r\n
    assert counted[0] == "" and len(counted) >= 2, text
    for line in counted[1:]:
        assert re.fullmatch(rf"mdevfs: mounting {re.escape(str(root))}: \d+ s…", line), text
    assert done.stdout.startswith(f"mdevfs: {root} mounted (pid ")


@needs_fuse
def test_verbose_run_keeps_the_trace_of_the_requests(tmp_path):
    from mdevfs import namespace

    if namespace.unsupported():
        pytest.skip(namespace.unsupported())
    attr = f"/sys/{MTTY_TYPE}/available_instances"
    out = mdevfs("-v", "run", "--", "cat", attr)
    assert (out.returncode, out.stdout) == (0, "24\n")
    last = out.stderr.splitlines()[-1]
    prefix = "mdevfs run: the daemon's log, a line per request, is kept at "
    assert last.startswith(prefix)
    kept = Path(last.removeprefix(prefix))
    try:
        trace = [line.split(" ", 2)[2] for line in kept.read_text().splitlines()
                 if " mdevfs.trace " in line]
    finally:
        kept.unlink()
    assert f"mdevfs.trace DEBUG: read {MTTY_NODE}/available_instances: b'24\\n'" in trace
