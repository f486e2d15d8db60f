"""pytest fixtures for testing management software against mdevfs.

Registered through the ``pytest11`` entry point, so installing mdevfs is enough::

    def test_allocate(mdevfs):
        uuid = mdevfs.create("mtty-1")
        assert (mdevfs.root / "bus/mdev/devices" / uuid).is_symlink()
        listed = mdevfs.run(["mdevctl", "list"])      # the tree at the real /sys paths
        assert listed.stdout.startswith(uuid)

* ``mdevfs``: one mount per session of the topology named by the ini option
  ``mdevfs_config`` (default: the embedded one), reset to its initial state before
  each test by removing every device through sysfs, so that a suite of hundreds
  of tests pays for one mount. Definitions that ``run()`` lets mdevctl write go
  to a per-test ``/etc/mdevctl.d``.
* ``mdevfs_factory(config, kernel=None)``: a fresh mount of another topology file (on
  another kernel, ``"5.10"``, when given), unmounted when the test ends.
* ``mdevfs_session``: the shared mount itself, without the reset.
* ``mdevfs_fleet(fleet_file)``: every host of a ``fleet.toml`` mounted for this test
  (``mdevfs fleet up``), taken down when it ends; a :class:`Fleet` whose ``hosts`` are
  mounts by name and whose ``plan()`` is ``mdevfs fleet matrix``'s.

**One test on several kernels**: ``@pytest.mark.mdevfs_kernels("5.10", "6.1", "7.3")`` runs a
test that asks for ``mdevfs`` once per kernel (ids ``[kernel-5.10]`` …), each on a session
mount of that kernel; ``mdevfs_kernel`` is the one a test runs on (None: the topology's own).

Each yields a :class:`mdevfs.testing.Mount`: ``root``, ``read``, ``write``,
``create``, ``remove``, ``devices``, ``reset``, ``run`` and ``environment()``: the variables
a process needs to use the mount's services (NVIDIA's NVML through mdevfs's
``libnvidia-ml.so.1``); ``run`` sets them, so ``mdevfs.run(["nvidia-smi-like-tool"])`` sees
the mount's GPUs through NVML as through sysfs. A test skips, with
the reason, where FUSE cannot be mounted; ``run()`` skips where no private mount
namespace can be made. Every mount is unmounted in teardown, also after a failure.

**Strict mode**, for CI: with ``mdevfs_strict = true`` in the pytest ini or ``MDEVFS_STRICT=1``
in the environment, each of those skips is a failure instead, with the same reason, and a
test marked ``mdevfs_readonly`` gets no static tree: a CI machine that lost ``/dev/fuse``
fails its run instead of going green on skipped tests.

A test marked ``@pytest.mark.mdevfs_readonly`` that asks for ``mdevfs`` does not skip
where FUSE is unavailable: it gets a :class:`StaticTree`, the topology's initial state
exported as plain files (``mdevfs export``), whose ``write``, ``create``, ``remove`` and
``run`` fail the test (a static tree has no kernel behaviour).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from . import namespace, testing
from .errors import MountNotPermitted

#: the environment variable that turns strict mode on (1, true or yes)
STRICT_ENV = "MDEVFS_STRICT"
_strict = False


def strict_from_env() -> bool:
    """True when ``MDEVFS_STRICT`` asks for strict mode."""
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _cannot(reason: str) -> Any:
    """Skip with ``reason``; in strict mode, fail with it."""
    if _strict:
        pytest.fail(f"{reason} (strict mode: {STRICT_ENV}=1 or mdevfs_strict = true turns "
                    f"this skip into a failure)", pytrace=False)
    pytest.skip(reason)


class MdevfsMount(testing.Mount):
    """A :class:`~mdevfs.testing.Mount` whose ``run`` skips the test where it cannot work."""

    def run(self, command: Sequence[str], **kwargs: Any) -> Any:
        reason = namespace.unsupported()
        if reason:
            _cannot(f"mdevfs: {reason}")
        return super().run(command, **kwargs)


class StaticTree(testing.Mount):
    """An exported tree standing in for a mount where FUSE is unavailable: reads only."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, None, root / "no-log")  # type: ignore[arg-type]

    def _static(self, what: str) -> Any:
        pytest.fail(f"mdevfs: {what} needs a mount; this test is marked mdevfs_readonly and "
                    f"runs on a static tree here, because FUSE is unavailable")

    def write(self, rel: str, data: str | bytes) -> int:
        return self._static("write")

    def create(self, type_id: str, uuid: str | None = None, parent: str | None = None) -> str:
        return self._static("create")

    def remove(self, uuid: str) -> None:
        self._static("remove")

    def reset(self) -> None:
        return None  # nothing changes it

    def run(self, command: Sequence[str], **kwargs: Any) -> Any:
        return self._static("run")

    def alive(self) -> bool:
        return True


def pytest_configure(config: pytest.Config) -> None:
    global _strict
    _strict = strict_from_env() or bool(config.getini("mdevfs_strict"))
    config.addinivalue_line("markers", "mdevfs_readonly: the test only reads the mdevfs tree; "
                            "where FUSE is unavailable it runs on an exported static tree")
    config.addinivalue_line("markers", "mdevfs_kernels(*versions): run the test once per "
                            "kernel, its mdevfs fixture a mount of that kernel")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("mdevfs_kernels")
    if marker is not None and "mdevfs" in metafunc.fixturenames:
        metafunc.parametrize("mdevfs_kernel", marker.args,
                             ids=[f"kernel-{v}" for v in marker.args])


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("mdevfs_config", "topology file of the mdevfs fixture, relative to the "
                  "rootdir (default: mdevfs's embedded topology)", default="")
    parser.addini("mdevfs_strict", "fail, instead of skipping, a test that needs an mdevfs "
                  f"mount where FUSE is unavailable (also: {STRICT_ENV}=1)", type="bool",
                  default=False)


@contextlib.contextmanager
def _mounted(config: str | os.PathLike[str] | None,
             kernel: str | None = None) -> Iterator[MdevfsMount]:
    reason = testing.unavailable()
    if reason:
        _cannot(f"mdevfs: {reason}")
    args = ("--kernel", kernel) if kernel else ()
    with contextlib.ExitStack() as stack:
        try:
            mount = stack.enter_context(testing.mounted(config, args=args, handle=MdevfsMount))
        except MountNotPermitted as exc:  # e.g. a container without CAP_SYS_ADMIN
            _cannot(f"mdevfs: mounting FUSE is not permitted here: {exc}")
        yield mount  # type: ignore[misc]


@pytest.fixture(scope="session")
def _mdevfs_mounts(pytestconfig: pytest.Config) -> Iterator[Callable[[str | None], MdevfsMount]]:
    """The session's mounts of the ``mdevfs_config`` topology, one per kernel asked for,
    each made when first needed."""
    name = pytestconfig.getini("mdevfs_config")
    mounts: dict[str | None, MdevfsMount] = {}
    with contextlib.ExitStack() as stack:
        def get(kernel: str | None) -> MdevfsMount:
            if kernel not in mounts:
                mounts[kernel] = stack.enter_context(
                    _mounted(pytestconfig.rootpath / name if name else None, kernel))
            return mounts[kernel]

        yield get


@pytest.fixture
def mdevfs_kernel() -> str | None:
    """The kernel the test's ``mdevfs`` runs (``mdevfs_kernels`` marker); None: the
    topology's own."""
    return None


@pytest.fixture(scope="session")
def mdevfs_session(_mdevfs_mounts: Callable[[str | None], MdevfsMount]) -> MdevfsMount:
    """The session's mount of the ``mdevfs_config`` topology, shared and never reset."""
    return _mdevfs_mounts(None)


@pytest.fixture(scope="session")
def mdevfs_static(pytestconfig: pytest.Config,
                  tmp_path_factory: pytest.TempPathFactory) -> StaticTree:
    """The ``mdevfs_config`` topology's initial state as a static tree (no FUSE needed)."""
    from . import capture

    name = pytestconfig.getini("mdevfs_config")
    root = tmp_path_factory.mktemp("mdevfs-static") / "sys"
    capture.export(str(pytestconfig.rootpath / name) if name else None, None, root, None)
    return StaticTree(root)


@pytest.fixture
def mdevfs(request: pytest.FixtureRequest, tmp_path: Path,
           mdevfs_kernel: str | None) -> Iterator[MdevfsMount]:
    """The session's mount in its initial state: no devices, an empty /etc/mdevctl.d; for a
    test marked mdevfs_readonly where FUSE is unavailable, the static tree."""
    if (request.node.get_closest_marker("mdevfs_readonly") and not _strict
            and testing.unavailable()):
        yield request.getfixturevalue("mdevfs_static")
        return
    mdevfs_session: MdevfsMount = request.getfixturevalue("_mdevfs_mounts")(mdevfs_kernel)
    mdevfs_session.reset()
    mdevfs_session.mdevctl_dir = tmp_path / "mdevctl.d"
    mdevfs_session.mdevctl_dir.mkdir()
    yield mdevfs_session
    mdevfs_session.mdevctl_dir = None


@pytest.fixture
def mdevfs_factory() -> Iterator[Callable[..., MdevfsMount]]:
    """``mdevfs_factory(config, kernel=None)`` mounts the topology file ``config`` (on
    ``kernel``, when given) for this test."""
    with contextlib.ExitStack() as stack:
        def factory(config: str | os.PathLike[str] | None = None,
                    kernel: str | None = None) -> MdevfsMount:
            return stack.enter_context(_mounted(config, kernel))

        yield factory


class FleetHost(MdevfsMount):
    """One host of a fleet: a mount whose daemon the fleet started (by pid, detached)."""

    def __init__(self, host: Any) -> None:
        from .control import Client

        super().__init__(host.root, None, host.log)  # type: ignore[arg-type]
        self.host = host
        self.control = Client(host.control)
        self.uevents = host.uevents

    def alive(self) -> bool:
        return bool(self.host.alive())


class Fleet:
    """A fleet that is up: ``hosts`` (name → :class:`FleetHost`, in file order), its
    directory, and :meth:`plan`, the migration planner's view of it."""

    def __init__(self, directory: Path, mounts: Sequence[Any]) -> None:
        self.dir = directory
        self.hosts = {m.name: FleetHost(m) for m in mounts}

    def plan(self, hosts: Sequence[str] | None = None, graded: bool = False) -> Any:
        from . import planner

        return planner.plan({n: h.root for n, h in self.hosts.items()
                             if hosts is None or n in hosts}, graded=graded)


@pytest.fixture
def mdevfs_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Fleet]]:
    """``mdevfs_fleet(fleet_file)`` brings every host of the fleet up for this test."""
    from . import fleet

    ups: list[Path] = []

    def factory(fleet_file: str | os.PathLike[str]) -> Fleet:
        reason = testing.unavailable()
        if reason:
            _cannot(f"mdevfs: {reason}")
        directory = tmp_path_factory.mktemp("fleet") / "hosts"
        try:
            mounts = fleet.up(fleet_file, directory)
        except MountNotPermitted as exc:
            _cannot(f"mdevfs: mounting FUSE is not permitted here: {exc}")
        ups.append(directory)
        return Fleet(directory, mounts)

    try:
        yield factory
    finally:
        for directory in ups:
            fleet.down(directory)
