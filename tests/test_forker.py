"""The forker: a per-user service that forks ``mdevfs run``'s daemons with everything
imported, so that a run imports nothing of the daemon. Each test has a runtime directory
of its own (so a forker of its own), and ends that forker by its pid."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import needs_fuse

from mdevfs import forker

pytestmark = needs_fuse

MDEVFS = [sys.executable, "-m", "mdevfs"]
HOLD = ["sh", "-c", "echo $PPID; read x"]  # says run's pid, then waits for a line


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    """A private runtime directory; the environment that uses it."""
    directory = tmp_path / "runtime"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    tmp_path.chmod(0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path), MDEVFS_FORKER_IDLE="60")
    yield env
    for pid in forkers(tmp_path):
        os.kill(pid, signal.SIGTERM)


def forkers(under: Path) -> list[int]:
    """The forkers listening below ``under``: ours."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mdevfs.forker" in argv and any(a.startswith(os.fsencode(under)) for a in argv):
            found.append(int(pid))
    return found


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def children(pid: int) -> list[int]:
    return [int(p) for p in filter(str.isdigit, os.listdir("/proc"))
            if Path(f"/proc/{p}/stat").exists() and _ppid_or_none(int(p)) == pid]


def _ppid_or_none(pid: int) -> int | None:
    try:
        return ppid(pid)
    except OSError:
        return None


def forker_up(env: dict[str, str]) -> Path:
    """Start the forker with a first run, and wait until it listens."""
    assert subprocess.run([*MDEVFS, "run", "--", "true"], env=env, timeout=60).returncode == 0
    path = forker.socket_path()
    deadline = time.monotonic() + 30
    while not path.is_socket():
        assert time.monotonic() < deadline, "no forker came up"
        time.sleep(0.05)
    return path


def daemon_of_a_run(env: dict[str, str], prefix: tuple[str, ...] = ()
                    ) -> tuple[int, int, list[str]]:
    """(run's pid, the pid of its daemon's parent, the commands of run's children) while a
    run holds."""
    proc = subprocess.Popen([*prefix, *MDEVFS, "run", "--", *HOLD], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert int(proc.stdout.readline()) == proc.pid
        runs = Path(env["XDG_RUNTIME_DIR"]) / "mdevfs" / "runs"
        daemon = json.loads((runs / f"{proc.pid}.json").read_text())["daemon"]
        return proc.pid, ppid(daemon), [cmdline(k)[0] for k in children(proc.pid)]
    finally:
        proc.communicate("\n", timeout=30)
        assert proc.returncode == 0


def test_a_run_after_the_first_gets_its_daemon_from_the_forker(runtime):
    """The first run starts the forker (and forks its own daemon); the next one's daemon
    is the forker's child, and run's one child is the command."""
    path = forker_up(runtime)
    run, parent, kids = daemon_of_a_run(runtime)
    assert cmdline(parent) == [sys.executable, "-P", "-m", "mdevfs.forker", str(path)]
    assert kids == ["sh"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_run_with_descriptors_of_its_own_gets_its_daemon_from_the_forker(runtime):
    """The run's descriptors and the forker's are numbered differently (here, a run started
    with 3 to 5 open): the daemon is told the number of its readiness socket in the
    forker, and the run gets its daemon from the forker all the same."""
    path = forker_up(runtime)
    proc = subprocess.Popen(["sh", "-c", 'exec 3</dev/null 4</dev/null 5</dev/null; exec "$@"',
                             "sh", *MDEVFS, "run", "--", *HOLD], env=runtime, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert int(proc.stdout.readline()) == proc.pid
        runs = Path(runtime["XDG_RUNTIME_DIR"]) / "mdevfs" / "runs"
        daemon = json.loads((runs / f"{proc.pid}.json").read_text())["daemon"]
        assert cmdline(ppid(daemon)) == [sys.executable, "-P", "-m", "mdevfs.forker", str(path)]
    finally:
        proc.communicate("\n", timeout=30)
    assert proc.returncode == 0


def test_the_daemon_gets_the_runs_umask_and_environment(runtime, tmp_path):
    """What the run's daemon creates, it creates with the run's umask (a new state file:
    0644 less the umask), whatever the forker's own; and the services' environment it
    reports is worked out from the run's (the NVML library under its XDG_CACHE_HOME)."""
    forker_up(runtime)
    cache = tmp_path / "cache"
    for mask, mode in (("077", 0o600), ("027", 0o640)):
        state = tmp_path / f"state-{mask}.json"
        out = subprocess.run(
            ["sh", "-c", f'umask {mask}; exec "$@"', "sh", *MDEVFS, "run", "--state",
             str(state), "--", "sh", "-c", "echo $LD_LIBRARY_PATH"],
            env=dict(runtime, XDG_CACHE_HOME=str(cache)), capture_output=True, text=True,
            timeout=120)
        assert out.returncode == 0, out.stderr
        assert state.stat().st_mode & 0o777 == mode
        assert out.stdout.startswith(f"{cache}/mdevfs/nvml-"), out.stdout


def test_another_python_path_gets_another_forker(monkeypatch):
    """The forker's name is a fingerprint of what it imported: a run with another
    PYTHONPATH (code it would import from elsewhere) never reaches this one."""
    here = forker.socket_path()
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert forker.socket_path() != here
    monkeypatch.delenv("PYTHONPATH")
    assert forker.socket_path() == here


def test_a_run_in_another_mount_namespace_forks_its_own_daemon(runtime):
    """The forker's daemon would mount where the run cannot see it: the forker refuses,
    and run forks the daemon itself."""
    forker_up(runtime)
    run, parent, _ = daemon_of_a_run(runtime, ("unshare", "--mount", "--propagation", "private"))
    assert parent == run


def test_a_request_that_is_not_one_is_answered_with_an_error_and_the_forker_goes_on(runtime):
    path = forker_up(runtime)
    for junk in (b"not json", b'{"argv": ["sh", "-c", "id"], "env": {}, "umask": 0}', b"[]"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(os.fspath(path))
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            assert "error" in json.loads(sock.recv(65536))
    _, parent, _ = daemon_of_a_run(runtime)
    assert cmdline(parent)[3] == "mdevfs.forker"


def test_a_file_planted_where_the_forker_listens_is_left_alone(runtime, tmp_path):
    """Something that is not a socket at the forker's name (a link to another file): no
    forker replaces or follows it, and every run forks its own daemon."""
    target = tmp_path / "target"
    target.write_text("keep\n")
    path = forker.socket_path()
    path.symlink_to(target)
    for _ in range(2):
        run, parent, _ = daemon_of_a_run(runtime)
        assert parent == run
    deadline = time.monotonic() + 60  # a forker each run started looks at the name, leaves
    while forkers(tmp_path):
        assert time.monotonic() < deadline, "a forker stayed"
        time.sleep(0.05)
    assert path.is_symlink() and target.read_text() == "keep\n"


def test_without_a_forker_when_it_is_turned_off(runtime):
    env = dict(runtime, MDEVFS_FORKER="off")
    for _ in range(2):
        run, parent, _ = daemon_of_a_run(env)
        assert parent == run
    assert not forker.socket_path().exists() and forkers(Path(env["XDG_RUNTIME_DIR"])) == []
