"""Refusal reasons, visible : what a vendor driver logs when it refuses reaches
`mdevfs ctl DIR reasons`, `mdevfs check` and `matrix --why`, not only the daemon log."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from conftest import TWO_HOSTS, needs_fuse

from mdevfs.cli import main
from mdevfs.migration import check

pytestmark = needs_fuse
ATTR = "class/mdev_bus/0000:81:00.0/mdev_supported_types/acme-small/migration_version"
#: where ATTR's links lead: the path the daemon names an attribute by
REAL = "devices/pci0000:80/0000:80:01.0/0000:81:00.0/mdev_supported_types/acme-small/" \
    "migration_version"


def test_a_refused_write_keeps_the_drivers_words_for_that_attribute(hosts):
    """The store fails with the driver's errno; the control socket gives its reason, the
    attribute's canonical path and the operation; an accepted write adds nothing."""
    a, b = hosts
    start = a.control.reasons()["next"]
    a.write(ATTR, a.read(ATTR))  # its own string: accepted
    with pytest.raises(OSError) as refused:
        a.write(ATTR, b.read(ATTR))
    assert refused.value.errno == errno.EINVAL
    got = a.control.reasons(since=start)
    assert [(r["seq"], r["path"], r["op"], r["reason"]) for r in got["reasons"]] == [
        (start, REAL, "write", "refusing 'acme-2.3-small': source minor 3 is newer than ours, 1")]
    assert got["next"] == start + 1
    assert a.control.reasons(since=got["next"]) == {"next": start + 1, "reasons": []}
    assert "source minor 3 is newer than ours, 1" in a.log()  # the log keeps it too


def test_reasons_by_path_and_through_a_link(hosts):
    """``path`` selects one attribute; a path through symlinks names the same file."""
    a, b = hosts
    start = a.control.reasons()["next"]
    with pytest.raises(OSError):
        a.write(ATTR, "acme-9.9-small")
    via = "class/mdev_bus/0000:81:00.0/mdev_supported_types/acme-large/migration_version"
    assert a.control.reasons(since=start, path=via)["reasons"] == []
    got = a.control.reasons(since=start, path=ATTR)["reasons"]
    assert [r["reason"] for r in got] == [
        "refusing 'acme-9.9-small': major version not matched: 9 is not 2"]


def test_ctl_reasons_prints_them(hosts, capsys):
    a, b = hosts
    start = a.control.reasons()["next"]
    with pytest.raises(OSError):
        a.write(ATTR, b.read(ATTR))
    assert main(["ctl", str(a.root), "--control", str(a.control.path), "reasons",
                 "--since", str(start), ATTR]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [(r["op"], r["reason"]) for r in printed["reasons"]] == [
        ("write", "refusing 'acme-2.3-small': source minor 3 is newer than ours, 1")]


def test_check_gives_the_reason_and_none_on_a_plain_tree(hosts, tmp_path):
    """On an mdevfs mount the verdict carries the driver's reason; on another filesystem
    (here a source whose attribute cannot be read) there is no daemon to ask."""
    a, b = hosts
    src, tgt = b.type_dir("acme-small"), a.type_dir("acme-small")
    verdict = check(src, tgt)
    assert (verdict.condition, verdict.reason) == (
        4, "refusing 'acme-2.3-small': source minor 3 is newer than ours, 1")
    plain = tmp_path / "t" / "mdev_supported_types" / "acme-small"
    plain.mkdir(parents=True)
    (plain / "migration_version").mkdir()  # read(2) fails: EISDIR
    verdict = check(plain, tgt)
    assert (verdict.condition, verdict.reason) == (3, None)
    assert verdict.message.endswith("failed: Is a directory (EISDIR)")


def test_mdevfs_run_says_what_the_driver_refused_and_keeps_the_log(tmp_path):
    """A command that fails after a driver refused something: the reasons on stderr and the
    daemon's log kept (its temporary directory is gone). A command that fails on its own
    gets no such note."""
    import re
    import subprocess
    import sys

    write = ("import os; fd = os.open('/sys/" + ATTR + "', os.O_WRONLY)\n"
             "try: os.write(fd, b'acme-2.3-small\\n')\n"
             "except OSError as e: raise SystemExit(f'refused: {e.strerror}')")
    run = [sys.executable, "-m", "mdevfs", "run", "--config", str(TWO_HOSTS / "host_a.toml"), "--"]
    done = subprocess.run([*run, sys.executable, "-c", write], capture_output=True, text=True,
                          timeout=60)
    match = re.fullmatch(
        "refused: Invalid argument\n"
        f"mdevfs run: refused: write {REAL}: refusing 'acme-2.3-small': source minor 3 is "
        "newer than ours, 1\n"
        "mdevfs run: the command exited with status 1; the daemon's log is kept at (.*)\n",
        done.stderr)
    assert done.returncode == 1 and match, done.stderr
    kept = Path(match[1])
    try:
        assert "source minor 3 is newer than ours, 1" in kept.read_text()
    finally:
        kept.unlink()
    alone = subprocess.run([*run, "sh", "-c", "exit 3"], capture_output=True, text=True,
                           timeout=60)
    assert (alone.returncode, alone.stderr) == (3, "")


def test_two_refusals_of_one_attribute_in_a_row_get_one_reason_each(hosts):
    """Within one millisecond too: each daemon has a cursor in its reasons (the planner writes
    several strings to one target node in a row)."""
    from mdevfs.migration import Reasons, _write, driver_reasons

    a, _ = hosts
    reasons = Reasons()
    reasons.watch(a.root)
    attr = a.root / ATTR
    got = []
    for version in (b"acme-2.3-small", b"acme-9.9-small", b"acme-2.4-small"):
        with pytest.raises(OSError) as refused:
            driver_reasons(attr, lambda v=version: _write(attr, v), reasons)
        got.append(refused.value.reason)
    assert got == ["refusing 'acme-2.3-small': source minor 3 is newer than ours, 1",
                   "refusing 'acme-9.9-small': major version not matched: 9 is not 2",
                   "refusing 'acme-2.4-small': source minor 4 is newer than ours, 1"]


def test_a_driver_without_grades_is_graded_by_the_proposal(hosts):
    """The control socket's ``grade`` for a driver that has no ``grade``: live when its check
    accepts the string, else none, limited by "other", with the errno's text."""
    a, _ = hosts
    assert a.control.grade(ATTR, "acme-2.1-small") == {
        "result": "live", "limit": "none", "reason": "the proposal's check accepts it"}
    assert a.control.grade(ATTR, "acme-2.3-small") == {
        "result": "none", "limit": "other", "reason": "Invalid argument"}
