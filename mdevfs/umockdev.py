"""umockdev's device description format (``umockdev-record`` writes it, ``umockdev-run -d``
loads it): an exported tree written as one, and a recording read back as a tree.

A block is ``P: /devices/<path>`` then ``E: KEY=value`` (udev properties), ``A: name=text``
(``\\n`` escaped), ``H: name=hex`` and ``L: name=target``, ending at an empty line. The
writer gives one block per device directory (one with a ``uevent`` file); the names outside
``devices/`` (``class/mdev_bus``, ``bus/mdev``, ``kernel/iommu_groups``…) go in the block of
the device they point into (else the first), with a name that climbs to the sysfs root:
umockdev makes a name's directories as it needs them. Empty directories are not in the
format.
"""
from __future__ import annotations

import posixpath
from collections.abc import Iterable
from pathlib import Path

from .beneath import write_new
from .export import Entry


def write_umockdev(entries: Iterable[Entry], out: Path) -> None:
    """The entries in umockdev-record's format, for ``umockdev-run -d FILE``, written as a new
    file (:func:`mdevfs.beneath.write_new`). A name or link with a line break cannot be said
    in the format: UmockdevError."""
    entries = list(entries)
    for e in entries:
        if "\n" in e.path or "\n" in (e.target or ""):
            raise UmockdevError(f"{e.path!r}: a name or link target with a line break cannot "
                                f"be written in umockdev's format")
    by_path = {e.path: e for e in entries}
    devices = sorted(posixpath.dirname(e.path) for e in entries
                     if e.kind == "file" and e.path.endswith("/uevent")
                     and e.path.startswith("devices/") and e.path.count("/") > 2)
    blocks: dict[str, list[str]] = {d: [] for d in devices}
    made = _made_by_umockdev(devices, by_path)
    for e in entries:
        if e.kind == "dir" or e.path in devices or e.path in made:
            continue
        holder = _owner(e.path, devices)
        if holder is None and e.kind == "link":  # class/mdev_bus/<p>: from <p>'s own block
            pointed = posixpath.normpath(posixpath.join(posixpath.dirname(e.path), e.target or ""))
            holder = _owner(pointed, devices)
        holder = holder or (devices[0] if devices else None)
        if holder is not None:
            blocks[holder].append(_attr_line(e, posixpath.relpath(e.path, holder)))
    lines = []
    for device in devices:
        lines.append(f"P: /{device}")
        uevent = by_path[f"{device}/uevent"].content or b""
        props = uevent.decode(errors="replace").splitlines()
        subsystem = by_path.get(f"{device}/subsystem")
        if subsystem is not None and subsystem.target:
            props.append(f"SUBSYSTEM={posixpath.basename(subsystem.target)}")
        lines += [f"E: {line}" for line in props] + blocks[device] + [""]
    write_new(out, "".join(f"{line}\n" for line in lines).encode())


def _made_by_umockdev(devices: list[str], by_path: dict[str, Entry]) -> set[str]:
    """What umockdev makes for each device itself: its ``uevent`` and ``subsystem``, and the
    link in ``class/<subsystem>`` or ``bus/<subsystem>/devices``."""
    made = set()
    for device in devices:
        made |= {f"{device}/uevent", f"{device}/subsystem"}
        link = by_path.get(f"{device}/subsystem")
        if link is not None and link.target:
            sub = posixpath.basename(link.target)
            name = posixpath.basename(device)
            made |= {f"class/{sub}/{name}", f"bus/{sub}/devices/{name}"}
    return made


def _owner(path: str, devices: list[str]) -> str | None:
    best = None
    for device in devices:
        if path == device or path.startswith(device + "/"):
            if best is None or len(device) > len(best):
                best = device
    return best


def _attr_line(e: Entry, name: str) -> str:
    if e.kind == "link":
        return f"L: {name}={e.target}"
    data = e.content or b""
    try:
        text = data.decode("ascii")
        if all(c.isprintable() or c == "\n" for c in text):
            return f"A: {name}={text.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}"
    except UnicodeDecodeError:
        pass
    return f"H: {name}={data.hex().upper()}"


#: subsystems that are buses (their devices' ``subsystem`` links point into ``bus/``)
_BUSES = {"pci", "mdev", "usb", "platform", "virtio", "i2c", "spi", "pci_express"}


class UmockdevError(ValueError):
    """A line of a ``.umockdev`` file that is not of the format."""


def read_umockdev(text: str, source: str = "<umockdev>") -> list[Entry]:
    """The tree a ``.umockdev`` file describes: each device's directory, ``uevent`` (its
    properties but SUBSYSTEM), ``subsystem`` link, attributes and links, and the
    ``class/mdev_bus`` link of every device that is an mdev parent (one with
    ``mdev_supported_types/`` or with mdev devices below it), which umockdev-record does
    not keep. Raises UmockdevError naming the line."""
    entries: dict[str, Entry] = {}
    links: dict[str, int] = {}  # each L: line's path → its line
    device: str | None = None
    props: list[str] = []
    parents: set[str] = set()

    def close() -> None:
        if device is None:
            return
        subsystem = next((p.split("=", 1)[1] for p in props if p.startswith("SUBSYSTEM=")), "")
        body = "".join(f"{p}\n" for p in props if not p.startswith(("SUBSYSTEM=", "DEVPATH=")))
        _add(entries, Entry(f"{device}/uevent", "file", 0o644, body.encode()))
        if subsystem:
            kind = "bus" if subsystem in _BUSES else "class"
            _add(entries, Entry(f"{device}/subsystem", "link", 0o777,
                                target=posixpath.relpath(f"{kind}/{subsystem}", device)))
        if subsystem == "mdev":
            parents.add(posixpath.dirname(device))

    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            close()
            device, props = None, []
            continue
        key, sep, value = line.partition(": ")
        if not sep or key not in "PNSEAHLI" or len(key) != 1:
            raise UmockdevError(f"{source}: line {n}: not 'X: value' (P, N, S, E, A, H, L)")
        if key == "P":
            close()
            device, props = value.strip("/"), []
            if not device.startswith("devices/") or ".." in device.split("/"):
                raise UmockdevError(f"{source}: line {n}: a device path under /devices")
            _dirs(entries, device)
            continue
        if device is None:
            raise UmockdevError(f"{source}: line {n}: {key}: before any 'P:' line")
        if key == "E":
            props.append(value)
        elif key in "AHL":
            name, eq, data = value.partition("=")
            if not eq or not name:
                raise UmockdevError(f"{source}: line {n}: not 'name=value'")
            path = posixpath.normpath(f"{device}/{name}")
            if path.startswith("../") or path == "..":
                raise UmockdevError(f"{source}: line {n}: {name!r} leaves the sysfs root")
            _through_links(links, path, name, device, f"{source}: line {n}")
            if key == "L":
                links[path] = n
            if "mdev_supported_types/" in name:
                parents.add(device)
            _dirs(entries, posixpath.dirname(path))
            if key == "L":
                _add(entries, Entry(path, "link", 0o777, target=data))
            else:
                try:
                    raw = bytes.fromhex(data) if key == "H" else _unescape(data)
                except ValueError:
                    raise UmockdevError(f"{source}: line {n}: not hexadecimal bytes") from None
                _add(entries, Entry(path, "file", 0o444, raw))
    close()
    for parent in sorted(parents):
        _dirs(entries, "class/mdev_bus")
        link = f"class/mdev_bus/{posixpath.basename(parent)}"
        _add(entries, Entry(link, "link", 0o777, target=posixpath.relpath(parent, "class/mdev_bus")))
    return sorted(entries.values(), key=lambda e: e.path)


def _through_links(links: dict[str, int], path: str, name: str, device: str, where: str) -> None:
    """Refuse a name below one of the file's own links (the link would be written first and
    the name then through it, anywhere), or a link above names already given."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        line = links.get("/".join(parts[:i]))
        if line is not None:
            link = posixpath.relpath("/".join(parts[:i]), device)
            raise UmockdevError(f"{where}: {name!r} passes through the link {link!r} of "
                                f"line {line}")


def _unescape(text: str) -> bytes:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append({"n": "\n", "\\": "\\", "t": "\t"}.get(text[i + 1], text[i:i + 2]))
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out).encode("utf-8", errors="surrogateescape")


def _dirs(entries: dict[str, Entry], path: str) -> None:
    while path and path not in entries:
        entries[path] = Entry(path, "dir", 0o755)
        path = posixpath.dirname(path)


def _add(entries: dict[str, Entry], entry: Entry) -> None:
    entries.setdefault(entry.path, entry)
