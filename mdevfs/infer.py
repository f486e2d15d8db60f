"""From a :class:`~mdevfs.record.Recording` to a topology file that mounts as that host.

Each parent goes to a known driver when, with options inferred from the recording, it shows
what was recorded (checked on a scratch host, :func:`mismatch`); else to the ``recorded``
driver with inferred pool arithmetic (:func:`pool`). The file is built in-process before it
is returned; what it does not reproduce (vfio numbers, IOMMU groups) is said in its header.
"""
from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from typing import Any

import tomli_w
from attrs import frozen

from .config import Topology, TopologyError, device_entry
from .driver import GPU, PARENT, installed, load_factory
from .kernel import Kernel
from .model import Host
from .record import RecDevice, RecFunction, Recording, RecParent, comment, device_order, kernel_of

Candidate = tuple[str, dict[str, Any]]


#: one entry of the file: the comment above it, its array of tables, the table
Block = tuple[list[str], str, dict[str, Any]]


@frozen
class Replay:
    """A recording as a topology: its text, and what it kept of what was recorded."""

    text: str
    parents: tuple[str, ...]
    devices: int
    recorded_devices: int
    gpus: int
    problems: int

    def summary(self) -> str:
        left = self.recorded_devices - self.devices
        return (f"{len(self.parents)} parent(s) ({', '.join(self.parents) or 'none'}), "
                f"{self.devices} device(s)"
                + (f" of {self.recorded_devices} ({left} left out, said why in the file)"
                   if left else "")
                + f", {self.gpus} [[gpu]] device(s)"
                + (f"; {self.problems} read problem(s), listed in the file"
                   if self.problems else ""))


def replay(rec: Recording, source: str = "") -> Replay:
    """The topology of ``rec``, with comments; always one that builds (devices that do not fit
    are left out, and said so). Written by a TOML library, every name from the recording in a
    TOML string or escaped in a comment: nothing the recorded tree holds can add a table."""
    notes: list[str] = []
    kernel, why = kernel_of(rec)
    era = Kernel.parse(kernel) if kernel is not None else Kernel()
    blocks = [b for fn in rec.functions if (b := _function_block(fn, notes)) is not None]
    parents = sorted(rec.parents, key=lambda p: (p.iommu_group is not None,
                                                  p.iommu_group or 0, p.name))
    vendors: dict[str, dict[str, Any]] = {}  # each device's [[device]] vendor table
    blocks += [_parent_block(p, vendors, era) for p in parents]
    devices = sorted(((p, d) for p in parents for d in p.devices if d.type_id != "?"),
                     key=lambda pd: device_order(pd[1]))
    groups = [g for g in [x.iommu_group for x in [*rec.functions, *parents]]
              + [d.iommu_group for _, d in devices] if g is not None]
    head: dict[str, Any] = {"iommu_group_base": min(groups, default=0),
                            "pm_advanced_debug": rec.pm_advanced_debug}
    if kernel is not None:
        head["kernel"] = kernel
    entries = [_device_entry(p, d, vendors.get(d.uuid)) for p, d in devices]
    kept, host = _buildable(head, blocks, entries, notes)
    if host is not None:
        notes += _differences(host, parents)
    header = [f"mdevfs record of {source or rec.root}, "
              f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
              "Mount it: mdevfs mount --config THIS_FILE DIR (the devices below exist at start,",
              "and again after a reset).",
              f"Kernel: {kernel or 'the newest mdevfs knows'} ({why})."]
    if rec.problems:
        header += ["", "Read problems (these parts are missing from the replay):"]
        header += [f"  {p}" for p in rec.problems]
    if notes:
        header += ["", "Not reproduced:"] + [f"  {n}" for n in notes]
    header += ["", "How each GPU and parent is replayed:"]
    for lines, _, _ in blocks:
        header += [f"  {lines[0]}", *(f"    {line}" for line in lines[1:])]
    return Replay(comment(header) + "\n" + _render(head, blocks, kept),
                  tuple(entry["name"] for _, kind, entry in blocks if kind == "parent"),
                  len(kept), len(entries), sum(kind == "gpu" for _, kind, _ in blocks),
                  len(rec.problems))


def _render(head: dict[str, Any], blocks: list[Block], devices: list[dict[str, Any]]) -> str:
    """The whole document, in one piece from the TOML library."""
    doc: dict[str, Any] = {"host": head}
    for kind in ("gpu", "parent"):
        entries = [entry for _, k, entry in blocks if k == kind]
        if entries:
            doc[kind] = entries
    if devices:
        doc["device"] = devices
    return tomli_w.dumps(doc)


def _buildable(head: dict[str, Any], blocks: list[Block], devices: list[dict[str, Any]],
               notes: list[str]) -> tuple[list[dict[str, Any]], Host | None]:
    """The devices that build, each tried once on one host (a device that does not is left
    out, noted), and the host of the whole file, parsed back and built: the file is checked
    as a user's mount will read it, with exactly the drivers chosen here."""
    chosen = {entry["driver"] for _, _, entry in blocks}
    try:  # with every device in the file, so that their groups are kept for them
        topology = Topology.from_text(_render(head, blocks, devices), "<recording>")
        host = topology.populate(topology.empty_host(), devices=False)
    except TopologyError as exc:
        notes.append(f"the file does not build: {exc}")
        return [], None
    kept = []
    for entry in devices:
        try:
            topology.add_device(host, device_entry(entry, "<recording>"))
        except TopologyError as exc:
            notes.append(f"device left out: {str(exc).removeprefix('<recording>: ')}")
            continue
        kept.append(entry)
    final = Topology.from_text(_render(head, blocks, kept), "<recording>")
    named = {e.driver for e in (*final.parents, *final.gpus)}
    if named != chosen:  # cannot happen: a library wrote the file
        raise AssertionError(f"the recording names drivers {sorted(named - chosen)}")
    return kept, final.build()


def _differences(host: Host, parents: list[RecParent]) -> list[str]:
    """IOMMU groups and vfio numbers the replay gives otherwise than the recording."""
    notes = []
    for parent in parents:
        for dev in parent.devices:
            mdev = host.devices.get(dev.uuid)
            if mdev is None or mdev.binding is None:
                continue
            if dev.vfio_index is not None and mdev.binding.vfio_index != dev.vfio_index:
                notes.append(f"device {dev.uuid}: vfio-dev/vfio{mdev.binding.vfio_index}, "
                             f"recorded vfio{dev.vfio_index} (numbered in creation order)")
        fn = host.pci.get(parent.name)
        if fn is not None and parent.iommu_group is not None and fn.iommu_group != parent.iommu_group:
            notes.append(f"parent {parent.name}: IOMMU group {fn.iommu_group}, recorded "
                         f"{parent.iommu_group} (PCI functions are numbered from the base)")
    return notes


# --- parents -----------------------------------------------------------------------------

def _parent_block(parent: RecParent, vendors: dict[str, dict[str, Any]],
                  kernel: Kernel) -> Block:
    """The parent's entry, as the driver shows it on ``kernel``; fills ``vendors`` with its
    devices' per-device driver state."""
    tried = []
    for driver, options in candidates(parent):
        problem = mismatch(driver, options, parent, vendors, kernel)
        if problem is None:
            lines = [f"{parent.name}: the {driver} driver, with options inferred from the "
                     f"recording, shows what was recorded (types, names, counts, attributes)."]
            return lines, "parent", _parent_entry(driver, parent, options)
        tried.append(f"the {driver} driver does not reproduce it: {problem}")
    options, why = recorded_options(parent)
    vendors.update({d.uuid: _own_values(parent, d) for d in parent.devices})
    return ([f"{parent.name}: replayed by the recorded driver.", *tried, *why], "parent",
            _parent_entry("recorded", parent, options))


def _parent_entry(driver: str, parent: RecParent, options: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"driver": driver, "name": parent.name, "path": parent.path}
    if options:
        entry["options"] = options
    return entry


def _device_entry(parent: RecParent, dev: RecDevice,
                  vendor: dict[str, Any] | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"uuid": dev.uuid, "parent": parent.name, "type": dev.type_id}
    if dev.mdev_driver is None:
        entry["bound"] = False
        return entry
    if dev.iommu_group is not None:
        entry["iommu_group"] = dev.iommu_group
    if vendor:
        entry["vendor"] = vendor
    return entry


def _own_values(parent: RecParent, dev: RecDevice) -> dict[str, str]:
    """A device's attribute values that its type's template (the first device's) does not
    give; only the recorded driver reads them."""
    template = _device_templates(parent).get(dev.type_id, {})
    return {k: v for k, (v, _) in dev.attrs.items()
            if template.get(k, "").replace("{uuid}", dev.uuid) != v}


def _device_templates(parent: RecParent) -> dict[str, dict[str, str]]:
    templates: dict[str, dict[str, str]] = {}
    for dev in sorted(parent.devices, key=device_order):
        if dev.mdev_driver is not None and dev.type_id not in templates:
            templates[dev.type_id] = {k: v.replace(dev.uuid, "{uuid}")
                                      for k, (v, _) in dev.attrs.items()}
    return templates


# --- known drivers -----------------------------------------------------------------------

def candidates(parent: RecParent) -> list[Candidate]:
    """The installed drivers that recognise ``parent`` (their ``from_recording``), with the
    options each inferred; none where a type's available_instances could not be read."""
    if None in parent.available().values():
        return []
    return [(name, dict(options)) for name, options in _recognised(PARENT, parent)]


def _recognised(kind: str, recorded: Any) -> Iterator[tuple[str, Any]]:
    """Each installed driver of ``kind`` whose ``from_recording`` recognises ``recorded``,
    with what it inferred, in the installed order."""
    for name, factory in installed(kind):
        recognise = getattr(factory, "from_recording", None)
        found = recognise(recorded) if recognise is not None else None
        if found is not None:
            yield name, found


def mismatch(driver: str, options: dict[str, Any], parent: RecParent,
             vendors: dict[str, dict[str, Any]], kernel: Kernel) -> str | None:
    """Why ``driver`` with ``options`` does not show on ``kernel`` what ``parent`` recorded,
    or None; then
    ``vendors`` gets each device's driver state, once the recorded values of its writable
    attributes (e.g. NVIDIA's vgpu_params) are written back."""
    try:
        drv = load_factory(driver)(options)
        host = Host(kernel=kernel)
        made = host.add_parent(parent.name, parent.path, drv)
        for dev in sorted(parent.devices, key=device_order):
            mdev = host.restore(made.types[dev.type_id], dev.uuid, dev.iommu_group,
                                bound=dev.mdev_driver is not None)
            if mdev.binding is not None:
                _write_back(drv, mdev, dev)
    except Exception as exc:  # a driver refusing the options or a device: not this driver
        return f"{type(exc).__name__}: {exc}"
    problem = _compare_types(made, parent) or _compare_devices(host, parent)
    if problem is None:
        vendors.update({uuid: dict(mdev.vendor) for uuid, mdev in host.devices.items()})
    return problem


def _write_back(drv: Any, mdev: Any, dev: RecDevice) -> None:
    for attr in drv.device_attributes(mdev):
        recorded = dev.attrs.get(attr.name)
        if attr.store is not None and recorded is not None and _safe(attr.show) != recorded[0]:
            try:
                attr.store(recorded[0].encode())
            except OSError:
                pass  # the comparison says what differs


def _compare_types(made: Any, parent: RecParent) -> str | None:
    if set(made.types) != {t.type_id for t in parent.types}:
        return f"types {sorted(made.types)}"
    for rec in parent.types:
        mtype = made.types[rec.type_id]
        drv = made.driver
        migration = drv.migration(mtype)
        shown = {"name": mtype.spec.pretty_name or mtype.spec.sysfs_name,
                 "description": mtype.spec.description, "device_api": mtype.spec.device_api,
                 "available_instances": mtype.available_instances,
                 "migration_version": _safe(migration.version) if migration else None,
                 **{a.name: _safe(a.show) for a in drv.type_attributes(mtype)}}
        wanted = {"name": rec.name, "description": rec.description, "device_api": rec.device_api,
                  "available_instances": rec.available, "migration_version": rec.migration,
                  **rec.extra}
        for key, value in wanted.items():
            if shown.get(key) != value:
                return f"{rec.type_id}/{key} would be {shown.get(key)!r}, recorded {value!r}"
    return None


def _compare_devices(host: Host, parent: RecParent) -> str | None:
    for dev in parent.devices:
        mdev = host.devices[dev.uuid]
        drv = mdev.parent.driver
        if dev.mdev_driver is None:
            continue
        if dev.mdev_driver != host.mdev_driver_of(mdev.parent):
            return f"devices bind to {host.mdev_driver_of(mdev.parent)}, recorded {dev.mdev_driver}"
        shown = {a.name: _safe(a.show) or "" for a in drv.device_attributes(mdev)}
        if shown != {k: v for k, (v, _) in dev.attrs.items()}:
            return f"device {dev.uuid} would have {shown}"
    if "uevent" in parent.pci or "PCI_ID" in parent.uevent:
        shown_id = host.parents[parent.name].driver.parent_uevent().get("PCI_ID")
        if shown_id != parent.uevent.get("PCI_ID"):
            return f"PCI_ID would be {shown_id}, recorded {parent.uevent.get('PCI_ID')}"
    return None


def _safe(show: Callable[[], Any] | None) -> Any:
    if show is None:
        return None
    try:
        return show()
    except OSError as exc:
        return f"!{exc.errno}"


# --- the recorded driver's options ---------------------------------------------------------

def recorded_options(parent: RecParent) -> tuple[dict[str, Any], list[str]]:
    """The ``recorded`` driver's options for ``parent``, and what was inferred, as comments."""
    prefix = _prefix(parent)
    options: dict[str, Any] = {"prefix": prefix}
    drivers = {d.mdev_driver for d in parent.devices if d.mdev_driver}
    options["mdev_driver"] = drivers.pop() if len(drivers) == 1 else "vfio_mdev"
    if parent.subsystem is not None:
        options["subsystem"] = "/".join(parent.subsystem)
    if parent.uevent:
        options["uevent"] = parent.uevent
    pool_size, per_type, why = pool(parent)
    if pool_size is not None:
        options["pool"] = pool_size
    templates = _device_templates(parent)
    writable = {k for d in parent.devices for k, (_, w) in d.attrs.items() if w}
    types = []
    for rec in parent.types:
        entry: dict[str, Any] = {"id": rec.type_id}
        if rec.name is not None and rec.name != rec.type_id.removeprefix(prefix + "-"):
            entry["name"] = rec.name
        if rec.description is not None:
            entry["description"] = rec.description
        entry["device_api"] = rec.device_api or "vfio-pci"
        entry["cost" if pool_size is not None else "capacity"] = per_type[rec.type_id]
        if rec.migration is not None:
            entry["migration_version"] = rec.migration
        if rec.extra:
            entry["attributes"] = rec.extra
        template = templates.get(rec.type_id)
        if template:
            entry["device_attributes"] = template
            if writable & set(template):
                entry["writable"] = sorted(writable & set(template))
        types.append(entry)
    options["type"] = types
    why += ["Errnos are not in a recording: a create that does not fit answers ENOSPC.",
            "migration_version (where recorded) accepts only the recorded string (EINVAL",
            "otherwise): the vendor's compatibility rules are not in a recording."]
    if not drivers and not parent.devices:
        why.append("No device was recorded: devices bind to 'vfio_mdev' and have no vendor files.")
    return options, why


def _prefix(parent: RecParent) -> str:
    """dev_driver_string(parent): the part of every type id before '-<sysfs name>'."""
    ids = [t.type_id for t in parent.types]
    guesses = [parent.uevent.get("DRIVER"), parent.subsystem[1] if parent.subsystem else None]
    if len(ids) > 1:
        common = ids[0]
        for i in ids[1:]:
            while not i.startswith(common):
                common = common[:-1]
        guesses.insert(0, common.rpartition("-")[0])
    for guess in guesses:
        if guess and all(i.startswith(guess + "-") for i in ids):
            return guess
    return ids[0].partition("-")[0] if ids else parent.name


def pool(parent: RecParent) -> tuple[int | None, dict[str, int], list[str]]:
    """One pool all types draw on, when the counts fit one (a free amount F, each type a
    cost c with F // c = its available_instances); else a count per type. Returns the pool
    (None: per type), each type's cost or capacity, and the reasoning as comment lines."""
    avail = {t.type_id: t.available or 0 for t in parent.types}
    bound = parent.bound()
    free = max(avail.values(), default=0)
    costs = {}
    for type_id, count in avail.items():
        cost = free // (count + 1) + 1 if count else free + 1
        if free // cost != count:
            break
        costs[type_id] = cost
    else:
        if free and len(avail) > 1:
            size = free + sum(costs[t] * n for t, n in bound.items())
            why = [f"Pool inferred: the types' available_instances fit one pool of {size} units "
                   f"({free} free + the bound devices' costs), each type taking "
                   + ", ".join(f"{t} {c}" for t, c in costs.items()) + "."]
            if not parent.devices:
                why.append("No device was recorded, so that the types share it is a guess "
                           "(mdev types of one parent usually do).")
            if any(avail[t] == 0 for t in avail):
                why.append("A type showing 0 was given a cost just above the free amount; "
                           "its true cost could not be seen.")
            return size, costs, why
    capacity = {t: avail[t] + bound[t] for t in avail}
    return None, capacity, ["Counts per type inferred: capacity = available_instances + the "
                            "type's bound devices; the types' counts do not fit one pool."]


# --- SR-IOV GPUs ---------------------------------------------------------------------------

def _function_block(fn: RecFunction, notes: list[str]) -> Block | None:
    """The ``[[gpu]]`` entry of the first installed driver that recognises ``fn``."""
    for name, (options, lines) in _recognised(GPU, fn):
        return (lines, "gpu", {"driver": name, "address": fn.address, "path": fn.path,
                               "options": dict(options)})
    notes.append(f"PCI function {fn.address} ({fn.vendor:04x}:{fn.device:04x}, SR-IOV, "
                 f"{fn.num_vfs} VFs): no installed driver recognises it; left out")
    return None
