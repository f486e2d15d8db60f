"""Shared fixtures: topologies written to files, and mounts that always unmount; and the
tier of every test module.

Tiers, fastest first (``pytest -m TIER``; ``make check`` runs unit and adapter):

- ``unit``: the pure core, no FUSE (model, parsers, kernels' table, layers);
- ``adapter``: the FUSE adapter driven without a mount;
- ``mount``: through a real mount, with plain file I/O;
- ``clients``: real software against a mount (mdevctl, libvirt, NVIDIA's NVML bindings,
  umockdev, a namespace of mdevfs run);
- ``slow``: whole-system runs (the kernels' dumps, fuzzing, stress, fleets, a wheel built and
  installed, the benchmark's instruments).
"""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest

from mdevfs.pytest_plugin import STRICT_ENV, strict_from_env
from mdevfs.testing import mounted

MTTY_ONLY = '[[parent]]\ndriver = "mtty"\n'

#: the two hosts of examples/two_hosts: the same GPU type, vendor strings that disagree
TWO_HOSTS = Path(__file__).resolve().parent.parent / "examples" / "two_hosts"


@pytest.fixture(scope="module")
def hosts():
    """examples/two_hosts mounted: (host a, host b), for a module's tests."""
    with mounted(TWO_HOSTS / "host_a.toml") as a, mounted(TWO_HOSTS / "host_b.toml") as b:
        yield a, b
        assert a.alive() and b.alive(), a.log() + b.log()


# MDEVFS_STRICT=1 (as .ci/run sets it): a machine without FUSE fails these tests, never skips
STRICT = strict_from_env()
needs_fuse = pytest.mark.skipif((not os.path.exists("/dev/fuse") or os.geteuid() != 0)
                                and not STRICT, reason="needs /dev/fuse and root")

#: every test module's tier (a module missing here is an error: each must say)
TIERS = {
    "unit": {"test_core", "test_kernels", "test_imports"},
    "adapter": {"test_adapter"},
    "mount": {"test_abi", "test_check", "test_cli", "test_drivers", "test_faults", "test_graded",
              "test_matrix", "test_migration_version", "test_pci", "test_permissions",
              "test_readers", "test_reasons", "test_security", "test_state", "test_untrusted",
              "test_vendor_gvt", "test_vendor_nvidia", "test_vendor_nvidia_sriov",
              "test_vendor_samples", "test_vendor_scheme", "test_plugin"},
    "clients": {"test_mdevctl", "test_libvirt", "test_nvml", "test_run", "test_forker", "test_record",
                "test_uevent"},
    "slow": {"test_conformance", "test_fuzz", "test_fuzz_state", "test_stress", "test_fleet",
             "test_newcomer", "test_examples", "test_bench"},
}
_TIER_OF = {module: tier for tier, modules in TIERS.items() for module in modules}


def pytest_configure(config: pytest.Config) -> None:
    for tier in TIERS:
        config.addinivalue_line("markers", f"{tier}: a test of the {tier} tier (tests/conftest.py)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module.startswith("test_") and module not in _TIER_OF:
            raise pytest.UsageError(f"{module}: no tier; add it to TIERS in tests/conftest.py")
        if module in _TIER_OF:
            item.add_marker(getattr(pytest.mark, _TIER_OF[module]))


@pytest.fixture
def pytester(pytester, monkeypatch):
    """The inner pytest runs decide strict mode for themselves: .ci/run's MDEVFS_STRICT=1 is
    for this suite, and would turn the skips the plugin's tests expect into failures."""
    monkeypatch.delenv(STRICT_ENV, raising=False)
    return pytester


# A driver whose device attribute keeps its value in mdev.vendor, as the state file needs.
KEEPER = '''
from mdevfs.driver import Attribute, BaseDriver, MdevTypeSpec

class Driver(BaseDriver):
    name = "keeper"
    def types(self):
        return (MdevTypeSpec("t"),)
    def max_instances(self):
        return {max_instances}
    def probe(self, mdev):
        mdev.vendor.setdefault("label", "none")
    def device_attributes(self, mdev):
        def store(buf):
            mdev.vendor["label"] = buf.decode().strip()
        return (Attribute("label", show=lambda: mdev.vendor["label"], store=store),)
'''


def keeper(max_instances: int = 2) -> str:
    """The keeper driver's source, its core counter allowing ``max_instances``."""
    return KEEPER.replace("{max_instances}", str(max_instances))


@contextlib.contextmanager
def small_disk(directory: Path, size: str):
    """A tmpfs of ``size`` at ``directory`` (a disk that fills up), unmounted at the end."""
    directory.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                    str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def fill(disk: Path) -> Path:
    """Fill ``disk`` (a :func:`small_disk`) up to ENOSPC with a file ``filler``; returns it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def write_topology(directory: Path, text: str, name: str = "topology.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def errno_of(fn, *args) -> int:
    """The errno with which ``fn(*args)`` fails (the test fails if it does not)."""
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def shared_mount(topology: str, name: str = "topology", mount_name: str = "mount"):
    """Fixtures for a module: ``mount_name``, one mount of ``topology`` (TOML text) for
    all its tests, and a per-test view of it that starts with no devices and removes
    the ones the test made. Use: ``mount, m = shared_mount(TEXT)``."""

    @pytest.fixture(scope="module", name=mount_name)
    def mount(tmp_path_factory):
        if (not os.path.exists("/dev/fuse") or os.geteuid() != 0) and not STRICT:
            pytest.skip("needs /dev/fuse and root")
        config = write_topology(tmp_path_factory.mktemp(name), topology, f"{name}.toml")
        with mounted(config) as m:
            yield m
            assert m.alive(), m.log()

    @pytest.fixture
    def view(request):
        mount = request.getfixturevalue(mount_name)
        assert os.listdir(mount.root / "bus/mdev/devices") == []
        yield mount
        for uuid in os.listdir(mount.root / "bus/mdev/devices"):
            mount.remove(uuid)
        assert mount.alive(), mount.log()

    return mount, view


#: a host with only the mtty sample; each test starts from 24 free ports
mtty_mount, mtty = shared_mount(MTTY_ONLY, "mtty", "mtty_mount")


# --- running file operations as an unprivileged user -----------------------------

NOBODY = 65534
#: a Python that uid 65534 may run (the venv's may live under a 0700 home)
SYSTEM_PYTHON = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3")
                      if os.path.exists(p)), None)
needs_nobody = pytest.mark.skipif(SYSTEM_PYTHON is None or os.geteuid() != 0,
                                  reason="needs root and a system python3 to run as nobody")

_PROBE = r'''
import errno, json, os, socket, sys
out = []
for op, path, *data in json.loads(sys.argv[1]):
    try:
        if op == "read":
            with open(path, "rb") as f:
                out.append(f.read().decode("latin-1"))
        elif op == "write":
            fd = os.open(path, os.O_WRONLY)
            try:
                out.append(os.write(fd, data[0].encode()))
            finally:
                os.close(fd)
        elif op == "listdir":
            out.append(sorted(os.listdir(path)))
        elif op == "request":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
                try:
                    s.sendall(data[0].encode() + b"\n")
                except BrokenPipeError:
                    pass  # refused before it read: the refusal waits to be read
                out.append(json.loads(s.makefile().readline()))
    except OSError as exc:
        out.append(errno.errorcode[exc.errno])
print(json.dumps(out))
'''


def as_nobody(*ops: tuple) -> list:
    """Run ``(op, path, *data)`` file operations as uid/gid 65534 without groups; each
    gives its result (read text, bytes written, names, a control reply) or an errno name."""
    import json
    import subprocess
    out = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                          SYSTEM_PYTHON, "-I", "-S", "-c", _PROBE,
                          json.dumps([[op, str(path), *data] for op, path, *data in ops])],
                         capture_output=True, text=True, timeout=30, cwd="/")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)
