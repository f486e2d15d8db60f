"""The pytest plugin : fixtures, reset, skips and teardown, run with pytester
in a separate pytest process that finds the plugin through its pytest11 entry point; and the
examples/mgmt suite that uses it."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from conftest import needs_fuse

pytest_plugins = ["pytester"]
pytestmark = needs_fuse

EXAMPLE_SUITE = Path(__file__).resolve().parent.parent / "examples" / "mgmt"


def mounted_at(path: str) -> bool:
    return any(line.split()[4] == path
               for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_the_fixture_shares_one_mount_and_resets_it_between_tests(pytester):
    pytester.makepyfile('''
        def test_a(mdevfs, mdevfs_session):
            assert mdevfs is mdevfs_session
            uuid = mdevfs.create("mtty-1")
            assert mdevfs.devices() == [uuid]
            assert mdevfs.read(f"bus/mdev/devices/{uuid}/mdev_type/name") == "Single port serial\\n"
            assert mdevfs.run(["mdevctl", "list"]).stdout == f"{uuid} mtty mtty-1 manual\\n\\n"

        def test_b(mdevfs):
            assert mdevfs.devices() == []
            avail = "class/mdev_bus/mtty/mdev_supported_types/mtty-1/available_instances"
            assert mdevfs.read(avail) == "24\\n"
    ''')
    pytester.runpytest_subprocess().assert_outcomes(passed=2)


def test_the_factory_and_the_ini_option_mount_other_topologies(pytester):
    pytester.makefile(".toml", small='[[parent]]\ndriver = "mtty"\n[parent.options]\nports = 2\n')
    pytester.makeini("[pytest]\nmdevfs_config = small.toml\n")
    pytester.makepyfile('''
        from pathlib import Path
        AVAILABLE = "class/mdev_bus/mtty/mdev_supported_types/mtty-1/available_instances"

        def test_ini(mdevfs):
            assert mdevfs.read(AVAILABLE) == "2\\n"

        def test_factory(mdevfs_factory, tmp_path):
            topology = tmp_path / "big.toml"
            topology.write_text('[[parent]]\\ndriver = "mtty"\\n[parent.options]\\nports = 8\\n')
            a, b = mdevfs_factory(topology), mdevfs_factory(topology)
            a.create("mtty-1")
            assert (a.read(AVAILABLE), b.read(AVAILABLE)) == ("7\\n", "8\\n")
    ''')
    pytester.runpytest_subprocess().assert_outcomes(passed=2)


def test_one_test_runs_on_every_kernel_its_marker_names(pytester):
    """Mdevfs_kernels: one run per kernel, each on its own session mount: on 5.10 every mdev
    binds to vfio_mdev and has no vfio-dev, on 7.3 it binds to its parent's driver; the
    factory takes a kernel too."""
    pytester.makepyfile('''
        import os
        import pytest

        @pytest.mark.mdevfs_kernels("5.10", "7.3")
        def test_driver(mdevfs, mdevfs_kernel):
            uuid = mdevfs.create("mtty-1")
            driver = os.readlink(mdevfs.root / f"bus/mdev/devices/{uuid}/driver")
            assert driver.endswith({"5.10": "/vfio_mdev", "7.3": "/mtty"}[mdevfs_kernel])
            vfio_dev = (mdevfs.root / f"bus/mdev/devices/{uuid}/vfio-dev").exists()
            assert vfio_dev == (mdevfs_kernel == "7.3")

        def test_unmarked(mdevfs, mdevfs_kernel):
            assert mdevfs_kernel is None

        @pytest.mark.mdevfs_kernels("5.10")
        def test_marked_without_asking_which(mdevfs):
            assert os.listdir(mdevfs.root / "bus/mdev/drivers") == ["vfio_mdev"]

        def test_factory(mdevfs_factory):
            old = mdevfs_factory(None, "5.10")
            assert os.listdir(old.root / "bus/mdev/drivers") == ["vfio_mdev"]
    ''')
    result = pytester.runpytest_subprocess("-v")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*test_driver?kernel-5.10? PASSED*",
                                 "*test_driver?kernel-7.3? PASSED*"])


def test_every_mount_is_gone_after_its_test_even_when_the_test_fails(pytester, tmp_path):
    record = tmp_path / "mounts"
    pytester.makepyfile(f'''
        import os, pytest
        RECORD = {str(record)!r}

        def note(m):
            with open(RECORD, "a") as f:
                f.write(f"{{m.root}} {{m.proc.pid}}\\n")

        def test_session_mount_fails(mdevfs):
            note(mdevfs)
            mdevfs.create("mtty-1")
            assert False, "a failing test"

        def test_factory_mount_crashes(mdevfs_factory):
            note(mdevfs_factory())
            raise RuntimeError("a crashing test")

        def test_the_factory_mount_is_already_gone():
            factory_root = open(RECORD).read().split()[2]
            assert not os.path.ismount(factory_root)
    ''')
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, failed=2)
    notes = [line.split() for line in record.read_text().splitlines()]
    assert len(notes) == 2
    for root, pid in notes:
        assert not mounted_at(root) and not os.path.exists(root)
        assert not Path(f"/proc/{pid}").exists()


def test_no_fuse_device_skips_with_the_reason(pytester):
    pytester.makeconftest('import mdevfs.testing\nmdevfs.testing.FUSE_DEVICE = "/nonexistent/fuse"\n')
    pytester.makepyfile('''
        def test_session(mdevfs):
            pass

        def test_factory(mdevfs_factory):
            mdevfs_factory()
    ''')
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(skipped=2)
    reason = ("mdevfs: /nonexistent/fuse is missing: load the fuse module (modprobe fuse) or "
              "give the container --device /dev/fuse\n")
    assert result.stdout.str().count(f": {reason}") == 2


def test_strict_mode_fails_where_fuse_is_missing(pytester, monkeypatch):
    """What .ci/run relies on: with MDEVFS_STRICT=1 a machine without FUSE fails, with the
    same reason, instead of going green on skips."""
    monkeypatch.setenv("MDEVFS_STRICT", "1")
    pytester.makeconftest('import mdevfs.testing\nmdevfs.testing.FUSE_DEVICE = "/nonexistent/fuse"\n')
    pytester.makepyfile('''
        def test_session(mdevfs):
            pass
    ''')
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(errors=1)
    assert result.ret != 0
    assert "mdevfs: /nonexistent/fuse is missing" in result.stdout.str()


def test_a_mount_that_is_not_permitted_skips_by_its_type(pytester):
    """The plugin skips on MountNotPermitted (which the launcher raises
    where libfuse says the mount is not permitted), whatever the message; another
    MountError fails the test."""
    pytester.makeconftest(
        'import contextlib, mdevfs.testing\n'
        'from mdevfs.errors import MountError, MountNotPermitted\n'
        '@contextlib.contextmanager\n'
        'def refused(config=None, **kwargs):\n'
        '    raise (MountNotPermitted if config is None else MountError)("mount says no")\n'
        '    yield\n'
        'mdevfs.testing.mounted = refused\n')
    pytester.makepyfile('''
        def test_session(mdevfs):
            pass

        def test_other(mdevfs_factory):
            mdevfs_factory("x.toml")
    ''')
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(skipped=1, errors=0, failed=1)
    assert "mdevfs: mounting FUSE is not permitted here: mount says no" in result.stdout.str()


def test_run_skips_where_no_namespace_can_be_made(pytester):
    pytester.makeconftest('import mdevfs.namespace\n'
                          'mdevfs.namespace.unsupported = lambda: "no namespaces for you"\n')
    pytester.makepyfile('''
        def test_run(mdevfs):
            mdevfs.create("mtty-1")
            mdevfs.run(["mdevctl", "list"])
            raise AssertionError("not reached")
    ''')
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(skipped=1)
    assert "SKIPPED [1] " in result.stdout.str()
    assert ": no namespaces for you\n" in result.stdout.str()


def test_reset_restores_the_initial_state(mdevfs_session):
    """Devices on every parent of the default topology, then reset: every type offers what it
    offered at first. The time is the fixture's per-test cost."""
    m = mdevfs_session
    m.reset()
    types = sorted(m.root.glob("class/mdev_bus/*/mdev_supported_types/*"))
    initial = {t: (t / "available_instances").read_text() for t in types}
    for t in types:
        for _ in range(min(int(initial[t]), 8)):
            try:
                m.write(str(t / "create"), str(uuid.uuid4()))
            except OSError:
                break  # the parent's shared pool ran out first
    created = len(m.devices())
    assert created >= len({t.parent.parent for t in types})
    start = time.perf_counter()
    m.reset()
    took = time.perf_counter() - start
    start = time.perf_counter()
    m.reset()
    idle = time.perf_counter() - start
    assert m.devices() == []
    assert {t: (t / "available_instances").read_text() for t in types} == initial
    # how long it takes is make bench's to say, not a test's
    print(f"reset: {created} devices in {took * 1000:.1f} ms, none in {idle * 1000:.2f} ms")


def test_the_example_suite_passes():
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(EXAMPLE_SUITE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "\n6 passed in " in done.stdout

