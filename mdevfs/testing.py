"""Mount a topology for a test: in a subprocess, unmounted in every teardown.

    with mounted() as m:
        uuid = m.create("mtty-1")
        assert m.read(f"bus/mdev/devices/{uuid}/mdev_type/name") == "Single port serial\\n"

pyfuse3 serves one mount per process, so the filesystem always runs in a
child; the context manager waits until the mount answers (watching that the
child has not died), and in ``finally`` unmounts, then terminates, then kills.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

from .cli import UsageError, wait_ready


class Mount:
    """A live mount: the sysfs root and small helpers around plain file I/O."""

    def __init__(self, root: Path, proc: subprocess.Popen[bytes], log_file: Path) -> None:
        self.root = root
        self.proc = proc
        self.log_file = log_file

    def path(self, rel: str) -> Path:
        return self.root / rel

    def read(self, rel: str) -> str:
        with open(self.root / rel) as f:
            return f.read()

    def write(self, rel: str, data: str | bytes) -> int:
        """One open(O_WRONLY) + one write(2) + close, as a sysfs client does."""
        raw = data.encode() if isinstance(data, str) else data
        fd = os.open(self.root / rel, os.O_WRONLY)
        try:
            return os.write(fd, raw)
        finally:
            os.close(fd)

    def type_dir(self, type_id: str, parent: str | None = None) -> Path:
        """``class/mdev_bus/<parent>/mdev_supported_types/<type_id>``; the parent is found
        when only one offers the type."""
        if parent is None:
            found = sorted((self.root / "class/mdev_bus").glob(f"*/mdev_supported_types/{type_id}"))
            if len(found) != 1:
                raise LookupError(f"{len(found)} parents offer {type_id}; name one")
            return found[0]
        return self.root / "class/mdev_bus" / parent / "mdev_supported_types" / type_id

    def create(self, type_id: str, uuid: str | None = None, parent: str | None = None) -> str:
        uuid = uuid or str(uuidlib.uuid4())
        self.write(str(self.type_dir(type_id, parent) / "create"), uuid)
        return uuid.lower()

    def remove(self, uuid: str) -> None:
        self.write(f"bus/mdev/devices/{uuid}/remove", "1")

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None


@contextlib.contextmanager
def mounted(config: str | os.PathLike[str] | None = None, *, args: tuple[str, ...] = (),
            timeout: float = 10.0) -> Iterator[Mount]:
    """Mount ``config`` (default: the embedded topology) in a fresh temporary directory."""
    workdir = Path(tempfile.mkdtemp(prefix="mdevfs-"))
    root = workdir / "sys"
    root.mkdir()
    log_file = workdir / "mdevfs.log"
    cmd = [sys.executable, "-m", "mdevfs", "mount", "--foreground", *args]
    if config is not None:
        cmd += ["--config", str(config)]
    cmd.append(str(root))
    with open(log_file, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        try:
            wait_ready(root, proc, timeout)
        except UsageError as exc:
            raise RuntimeError(f"{exc}\n{log_file.read_text(errors='replace')}") from None
        yield Mount(root, proc, log_file)
    finally:
        _teardown(root, proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _teardown(root: Path, proc: subprocess.Popen[bytes]) -> None:
    if os.path.ismount(root) or proc.poll() is None:
        subprocess.run(["fusermount3", "-u", str(root)], capture_output=True)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if os.path.ismount(root):
        subprocess.run(["fusermount3", "-u", "-z", str(root)], capture_output=True)
