"""mdevfs: a kernel-faithful emulator of the Linux mediated-device (mdev) sysfs interface.

The names below are imported when first used, so that a light entry point (``mdevfs
run`` forking its daemon from a running service) pays for none of them."""
from __future__ import annotations

import importlib
from typing import Any

#: each public name and the module it lives in
_HOMES = {"Topology": "config", "TopologyError": "config",
          "Attribute": "driver", "BaseDriver": "driver", "MdevTypeSpec": "driver",
          "Migration": "driver", "VendorDriver": "driver",
          "Host": "model", "MdevDevice": "model", "MdevType": "model", "Parent": "model"}

__all__ = sorted(_HOMES)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'mdevfs' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
