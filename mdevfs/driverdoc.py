"""What each installed vendor driver models and which options it takes (``mdevfs drivers``).

Everything comes from the drivers themselves: the entry points of the ``mdevfs.vendors``
group, each factory's kind and declared options (:class:`mdevfs.driver.Option`: name, type,
default, what it does), and the docstrings of the factory and its module. The example entry
a driver's page ends with is built from the same declarations, and mounts as it is.
"""
from __future__ import annotations

import importlib.metadata
import inspect
import sys
from typing import Any

import tomli_w
from attrs import frozen

from .driver import ENTRY_POINT_GROUP, GPU, Option, kind_of, options_of


@frozen
class DriverDoc:
    name: str
    target: str
    kind: str
    summary: str
    options: tuple[Option, ...] | None  # None: the factory declares none
    text: str


def _docs(factory: Any, shared: bool) -> list[str]:
    """The module's docstring, then the factory's; the factory's first where several
    drivers share the module (the kernel samples)."""
    module = sys.modules.get(getattr(factory, "__module__", ""), None)
    parts = [inspect.getdoc(module) if module is not None else None, inspect.getdoc(factory)]
    return [p for p in (parts[::-1] if shared else parts) if p]


def drivers() -> list[DriverDoc]:
    """Every driver of the ``mdevfs.vendors`` group, by name; one that cannot be loaded
    is listed with the reason as its summary."""
    found = []
    eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    modules = [ep.value.partition(":")[0] for ep in eps]
    for ep in sorted(eps, key=lambda e: e.name):
        try:
            factory = ep.load()
        except Exception as exc:  # a broken third-party plugin must not hide the others
            found.append(DriverDoc(ep.name, ep.value, "parent", f"cannot be loaded: {exc!r}",
                                   None, ""))
            continue
        docs = _docs(factory, modules.count(ep.value.partition(":")[0]) > 1)
        summary = docs[0].splitlines()[0] if docs else ""
        found.append(DriverDoc(ep.name, ep.value, kind_of(factory), summary,
                               options_of(factory), "\n\n".join(docs)))
    return found


def _names(doc: DriverDoc) -> str:
    if doc.options is None:
        return "(not declared)"
    return ", ".join(o.name for o in doc.options) or "(none)"


def render_list(docs: list[DriverDoc]) -> str:
    width = max((len(d.name) for d in docs), default=0)
    lines = []
    for d in docs:
        lines.append(f"{d.name:<{width}}  {d.summary}")
        lines.append(f"{'':<{width}}  [[{d.kind}]]; options: {_names(d)}")
    lines.append("")
    lines.append("`mdevfs drivers NAME` shows what a driver models, its options and their defaults.")
    return "\n".join(lines) + "\n"


def example(doc: DriverDoc) -> str:
    """The driver's entry in a topology, with every option that has a plain default set to
    it: a file that mounts as it is (mdevfs's own test mounts each shipped driver's)."""
    entry: dict[str, Any] = {"driver": doc.name}
    if doc.kind == GPU:
        entry["address"] = "0000:41:00.0"
    text = f"[[{doc.kind}]]\n" + tomli_w.dumps(entry)
    options = {o.name: o.example if o.example is not None else o.default
               for o in doc.options or ()
               if o.example is not None or o.default not in (None, [], {})}
    if options:
        text += f"[{doc.kind}.options]\n" + tomli_w.dumps(options)
    return text


def render_one(doc: DriverDoc) -> str:
    lines = [f"{doc.name} ({doc.target}): a [[{doc.kind}]] entry", ""]
    if doc.options is None:
        lines.append("options: not declared by the driver (it checks them itself)")
    elif not doc.options:
        lines.append("options: none")
    else:
        lines.append("options:")
        width = max(len(o.name) for o in doc.options)
        for o in doc.options:
            default = "(none)" if o.default is None else repr(o.default)
            lines.append(f"  {o.name:<{width}}  {o.kind:<5}  default {default}: {o.doc}")
    lines += ["", doc.text, "", "In a topology (every option at its default):", ""]
    lines += ["    " + line for line in example(doc).splitlines()]
    return "\n".join(lines) + "\n"
