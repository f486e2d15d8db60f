"""``mdevfs run``: the namespace, its exit status and its teardown .

Other test runs on the same machine may mount and unmount their own mdevfs trees
meanwhile, so comparisons of the mount table leave out fuse.mdevfs mounts other
than this run's (which is found through $MDEVFS_ROOT).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import MTTY_ONLY, needs_fuse, write_topology

from mdevfs import namespace

pytestmark = [needs_fuse, pytest.mark.skipif(namespace.unsupported() is not None,
                                             reason=namespace.unsupported() or "")]

MDEVFS = [sys.executable, "-m", "mdevfs"]
U1 = "11111111-2222-3333-4444-555555555555"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def mdevfs_run(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MDEVFS, "run", *args], capture_output=True, text=True, timeout=60,
                          **kwargs)


def host_mounts() -> set[str]:
    """The mount table without FUSE mounts in temporary directories (this run's own and
    any that another test or benchmark makes meanwhile): everything a run could change."""
    return {line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if not (" - fuse." in line and line.split()[4].startswith(tempfile.gettempdir()))}


def mounted_at(path: str) -> bool:
    return any(line.split()[4] == path
               for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_host_mounts_are_untouched_during_and_after_the_run():
    before, classes = host_mounts(), sorted(os.listdir("/sys/class"))
    proc = subprocess.Popen([*MDEVFS, "run", "--", "sh", "-c", 'echo "$MDEVFS_ROOT"; read x'],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    root = proc.stdout.readline().strip()
    during = host_mounts()
    assert mounted_at(root)  # the FUSE daemon's own mount, in a temporary directory
    proc.communicate("go\n", timeout=30)
    assert proc.returncode == 0
    assert during == before  # all the /sys and /etc changes live in the namespace
    assert host_mounts() == before
    assert not mounted_at(root) and not os.path.exists(root)
    assert sorted(os.listdir("/sys/class")) == classes


def test_the_tree_is_at_the_real_paths_and_the_rest_of_sys_stays():
    script = ("readlink /sys/class/mdev_bus/mtty; readlink /sys/class/mtty/mtty; "
              "ls /sys/bus/mdev; ls /sys/class; echo $SYSTEMD_DEVICE_VERIFY_SYSFS")
    done = mdevfs_run("--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["../../devices/virtual/mtty/mtty"] * 2
    assert lines[2:6] == ["devices", "drivers", "drivers_autoprobe", "drivers_probe"]
    assert set(os.listdir("/sys/class")) | {"mdev_bus", "mtty"} <= set(lines)
    assert lines[-1] == "0"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="drops privileges with setpriv, as root")
def test_a_command_that_drops_privileges_reads_but_cannot_write():
    create = "/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create"
    script = f"cat /sys/bus/mdev/drivers_autoprobe; echo {U1} > {create}"
    done = mdevfs_run("--", *NOBODY, "sh", "-c", script)
    assert (done.returncode, done.stdout) == (2, "1\n")
    assert done.stderr == f"sh: 1: cannot create {create}: Permission denied\n"


@pytest.mark.parametrize("kernel, driver", [("5.10", "vfio_mdev"), ("6.1", "mtty"), ("", "mtty")])
def test_run_emulates_the_kernel_it_is_given(kernel, driver):
    """--kernel picks the era: before 5.14 every mdev binds to vfio_mdev, later to its
    parent's own driver (6.1 by default)."""
    create = "/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create"
    script = f"echo {U1} > {create} && readlink /sys/bus/mdev/devices/{U1}/driver"
    done = mdevfs_run(*(("--kernel", kernel) if kernel else ()), "--", "sh", "-c", script)
    assert (done.returncode, done.stdout.rsplit("/", 1)[-1]) == (0, f"{driver}\n"), done.stderr


def test_run_refuses_a_kernel_outside_the_emulated_eras():
    done = mdevfs_run("--kernel", "4.19", "--", "true")
    assert (done.returncode, done.stderr) == (
        125, "mdevfs run: kernel 4.19: mdevfs emulates 5.10 to 7.3\n")


@pytest.mark.parametrize("script, status", [("exit 0", 0), ("exit 7", 7),
                                            ("kill -KILL $$", 128 + 9)])
def test_the_exit_status_is_the_commands(script, status):
    before = host_mounts()
    assert mdevfs_run("--", "sh", "-c", script).returncode == status
    assert host_mounts() == before


def test_sigterm_to_mdevfs_run_ends_the_command_and_tears_down(tmp_path):
    marker = tmp_path / "inside"
    proc = subprocess.Popen([*MDEVFS, "run", "--", "sh", "-c",
                             f'echo "$MDEVFS_ROOT" > {marker}; exec sleep 60'])
    deadline = time.monotonic() + 30
    while not (marker.exists() and marker.read_text().endswith("\n")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    root = marker.read_text().strip()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert not mounted_at(root) and not os.path.exists(root)


def test_a_private_mdevctl_dir_by_default_and_a_kept_one_on_request(tmp_path):
    host_before = sorted(os.listdir("/etc/mdevctl.d"))
    define = ["--", "mdevctl", "define", "-u", U1, "-p", "mtty", "-t", "mtty-1"]
    assert mdevfs_run(*define).returncode == 0
    assert sorted(os.listdir("/etc/mdevctl.d")) == host_before

    keep = tmp_path / "mdevctl.d"
    keep.mkdir()
    assert mdevfs_run("--mdevctl-dir", str(keep), *define).returncode == 0
    assert (keep / "mtty" / U1).is_file()
    listed = mdevfs_run("--mdevctl-dir", str(keep), "--", "mdevctl", "list", "-d")
    assert listed.stdout == f"{U1} mtty mtty-1 manual\n\n"


def test_the_command_gets_the_signal_dispositions_of_a_shell():
    """Python ignores SIGPIPE and SIGXFSZ; the command must not inherit that (in `yes |
    head -1`, yes would then fail on EPIPE instead of dying quietly)."""
    done = mdevfs_run("--", "grep", "^SigIgn:", "/proc/self/status")
    ignored = int(done.stdout.split()[1], 16)
    assert ignored & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1)) == 0, done.stdout


def test_without_the_forker_one_python_process_serves_the_mount_and_starts_the_command():
    """With no forker (MDEVFS_FORKER=off), the daemon and the command are forked from
    mdevfs run itself, with no interpreter started between (the daemon's command line is
    run's own). With one, tests/test_forker.py."""
    proc = subprocess.Popen([*MDEVFS, "run", "--", "sh", "-c", "echo $PPID; read x"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, MDEVFS_FORKER="off"))
    try:
        assert int(proc.stdout.readline()) == proc.pid
        children = [pid for pid in os.listdir("/proc") if pid.isdigit()
                    and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
                    == str(proc.pid)]
        commands = sorted(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:1]
                          for pid in children)
        run = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[:1]
        assert commands == sorted([[b"sh"], run])
    finally:
        proc.communicate("\n", timeout=30)
    assert proc.returncode == 0


def test_a_command_that_is_not_there_is_127():
    done = mdevfs_run("--", "/nonexistent/tool")
    assert (done.returncode, done.stderr) == (
        127, "mdevfs run: /nonexistent/tool: No such file or directory\n")


def test_no_command_is_a_usage_error_of_mdevfs_run_itself():
    done = mdevfs_run()
    assert (done.returncode, done.stderr) == (
        125, "mdevfs run: name a COMMAND, e.g. mdevfs run -- mdevctl types\n")


def test_no_namespace_is_a_clear_error_before_anything_is_mounted(tmp_path):
    fake = tmp_path / "unshare"
    fake.write_text("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    done = mdevfs_run("--", "true", env=env)
    how = "root (CAP_SYS_ADMIN)" if os.geteuid() == 0 else "root, or unprivileged user namespaces"
    assert done.returncode == namespace.SETUP_FAILED
    assert done.stderr.startswith(
        "mdevfs run: mdevfs run cannot create a private mount namespace ("
        f"{' '.join(namespace._unshare())}: unshare: unshare failed: Operation not permitted); "
        f"it needs {how}")


def test_the_helper_refuses_to_graft_in_its_callers_namespace():
    # Started by sh in a throw-away namespace, so that a broken guard would harm nothing.
    helper = [sys.executable, "-S", namespace.__file__, "/nonexistent", "--", "true"]
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           '"$@"; exit $?', "sh", *helper], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (namespace.SETUP_FAILED, (
        "mdevfs run: the namespace helper works only in a new mount namespace; use mdevfs run\n"))


def test_state_is_restored_and_recorded(tmp_path):
    state = tmp_path / "state.json"
    config = write_topology(tmp_path, MTTY_ONLY)
    start = mdevfs_run("--config", str(config), "--state", str(state), "--",
                       "mdevctl", "start", "-p", "mtty", "-t", "mtty-2", "-u", U1)
    assert start.returncode == 0, start.stderr
    listed = mdevfs_run("--config", str(config), "--state", str(state), "--", "mdevctl", "list")
    assert listed.stdout == f"{U1} mtty mtty-2 manual\n\n"


# --- a user without privileges: a user namespace -------------------------------------------


def as_nobody(stash: Path, command: list[str]) -> list[str]:
    """``command`` as nobody, in a private mount namespace where this Python is reachable:
    a root-only ancestor of its installation (e.g. /root) is covered there by a tmpfs
    that holds just the way to it."""
    python = Path(os.path.realpath(sys.executable))
    blocked = next((p for p in reversed(python.parents) if not p.stat().st_mode & 0o001), None)
    prepare = ""
    if blocked is not None:
        inner = blocked / python.relative_to(blocked).parts[0]
        prepare = (f"mount --bind {inner} {stash} && mount -t tmpfs -o mode=0755 x {blocked} && "
                   f"mkdir {inner} && mount --bind {stash} {inner} && umount {stash} && ")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'{prepare}exec "$@"', "sh", *NOBODY, "env", "HOME=/tmp", *command]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="becomes nobody with setpriv, as root")
def test_a_non_root_user_gets_a_user_namespace(tmp_path):
    stash = tmp_path / "stash"
    stash.mkdir()
    probe = subprocess.run(as_nobody(stash, ["unshare", "--user", "--map-root-user", "--mount",
                                             "true"]), capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no unprivileged user namespaces here: {probe.stderr.strip()}")
    before = host_mounts()
    script = "id -u; mdevctl start -p mtty -t mtty-1 -u " + U1 + " && mdevctl list"
    done = subprocess.run(as_nobody(stash, [*MDEVFS, "run", "--", "sh", "-c", script]),
                          capture_output=True, text=True, timeout=60, cwd="/tmp")
    assert (done.returncode, done.stdout) == (0, f"0\n{U1} mtty mtty-1 manual\n\n"), done.stderr
    assert host_mounts() == before


def test_run_against_a_mount_that_is_already_up(tmp_path):
    """run --mount DIR: mdevctl sees the devices made by hand on a mount of `mdevfs mount`,
    and NVML sees its GPUs; nothing is mounted or taken down; --mount with a topology, or
    on a directory that is no mdevfs mount, is mdevfs run's own error (125)."""
    root = tmp_path / "sys"
    root.mkdir()
    assert subprocess.run([*MDEVFS, "mount", "--log-file", str(tmp_path / "log"), str(root)],
                          capture_output=True, timeout=60).returncode == 0
    try:
        uuid = "6b0a7f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
        (root / "class/mdev_bus/mtty/mdev_supported_types/mtty-2/create").write_text(uuid)
        listed = mdevfs_run("--mount", str(root), "--", "mdevctl", "list")
        assert (listed.returncode, listed.stdout) == (0, f"{uuid} mtty mtty-2 manual\n\n"), \
            listed.stderr
        nvml = mdevfs_run("--mount", str(root), "--", sys.executable, "-c",
                          "import pynvml as n; n.nvmlInit(); print(n.nvmlDeviceGetCount())")
        assert (nvml.returncode, nvml.stdout) == (0, "2\n"), nvml.stderr
        assert os.path.ismount(root)
        assert mdevfs_run("--mount", str(root), "--config", "x.toml", "--", "true"
                          ).returncode == 125
    finally:
        subprocess.run([*MDEVFS, "umount", str(root)], capture_output=True, timeout=60)
    refused = mdevfs_run("--mount", str(root), "--", "true")
    assert refused.returncode == 125 and "is not an mdevfs mount" in refused.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="becomes nobody with setpriv, as root")
def test_allow_other_without_user_allow_other_is_not_permitted(tmp_path):
    """A user's --allow-other where /etc/fuse.conf has no user_allow_other: fusermount3
    refuses, and mount says so with 4 (mounting not permitted), as documented."""
    if any(line.strip() == "user_allow_other"
           for line in Path("/etc/fuse.conf").read_text().splitlines()):
        pytest.skip("/etc/fuse.conf has user_allow_other here")
    stash = tmp_path / "stash"
    stash.mkdir()
    home = Path(tempfile.mkdtemp(prefix="mdevfs-nobody-"))  # /tmp/pytest-of-root is 0700
    try:
        (home / "sys").mkdir()
        for path in (home, home / "sys"):
            os.chown(path, 65534, 65534)
        done = subprocess.run(as_nobody(stash, [*MDEVFS, "mount", "--allow-other", "--log-file",
                                                str(home / "log"), str(home / "sys")]),
                              capture_output=True, text=True, timeout=60, cwd="/tmp")
        assert done.returncode == 4, done.stderr
        assert "user_allow_other" in done.stderr
        assert not os.path.ismount(home / "sys")
    finally:
        shutil.rmtree(home)
