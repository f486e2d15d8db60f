"""The state file's lines (:mod:`mdevfs.state` has the format and what each op means): a
device and a change as JSON, a line parsed, and the devices of a whole journal read back
without locking it, for tests and tools."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import pcistate
from .model import MdevDevice


def read_devices(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The devices a state file records, in creation order (for tests and tools);
    reads a journal without locking or changing it."""
    text = Path(path).read_text()
    first, _, rest = text.partition("\n")
    header = json.loads(first) if first.strip() else {"devices": []}
    if header.get("version") == 1:
        return json.loads(text)["devices"]
    by_uuid = {d["uuid"]: d for d in header["devices"]}
    for line in rest.split("\n"):
        if not line:
            continue
        change = json.loads(line)
        if change["op"] == "pci":
            continue  # a PF's VFs: not a device
        if change["op"] == "add":
            by_uuid[change["uuid"]] = {k: v for k, v in change.items() if k != "op"}
        elif change["op"] == "remove":
            del by_uuid[change["uuid"]]
        elif change["op"] in ("bind", "unbind"):
            by_uuid[change["uuid"]] = dict(by_uuid[change["uuid"]],
                                           iommu_group=change.get("iommu_group"))
        else:
            by_uuid[change["uuid"]] = dict(by_uuid[change["uuid"]], vendor=change["vendor"])
    return list(by_uuid.values())


def device_line(mdev: MdevDevice) -> dict[str, Any]:
    return {"uuid": mdev.uuid, "parent": mdev.parent.name, "type": mdev.mdev_type.type_id,
            "iommu_group": mdev.iommu_group, "vendor": mdev.vendor}


def change_line(op: str, mdev: MdevDevice) -> dict[str, Any]:
    if op == "pci":
        return {"op": "pci", "bdf": mdev.bdf, "pci": pcistate.record(mdev)}  # type: ignore[arg-type]
    if op == "add":
        return {"op": "add", **device_line(mdev)}
    if op == "vendor":
        return {"op": "vendor", "uuid": mdev.uuid, "vendor": mdev.vendor}
    if op == "bind":
        return {"op": "bind", "uuid": mdev.uuid, "iommu_group": mdev.iommu_group}
    return {"op": op, "uuid": mdev.uuid}


def dumps(value: Any) -> str:
    if value == {}:  # most devices' vendor state: a restore of 100,000 spent a tenth here
        return "{}"
    return json.dumps(value, separators=(",", ":"))


def parse_line(text: str) -> Any:
    """The JSON value of ``text``, or the exception that says why it is not one."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return exc
    except RecursionError:
        return ValueError("nested too deeply")
