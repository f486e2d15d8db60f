"""One error model: every refusal is an OSError carrying the errno the kernel returns."""
from __future__ import annotations

import os
from typing import NoReturn


def fail(errno: int, detail: str | None = None) -> NoReturn:
    """Raise OSError(errno); the FUSE adapter hands the errno to the caller unchanged."""
    raise OSError(errno, detail or os.strerror(errno))
