"""What each installed vendor driver models and which options it takes (``mdevfs drivers``).

Everything comes from the drivers themselves: the entry points of the ``mdevfs.vendors``
group, the docstrings of each factory and of its module (where the shipped drivers state
their options, defaults and what they model), and the option names the factory accepts,
which it says when handed one it does not know (``_options.known``). Nothing is kept in
a second list that could drift from the code.
"""
from __future__ import annotations

import importlib.metadata
import inspect
import re
import sys
from typing import Any

from attrs import frozen

from .driver import ENTRY_POINT_GROUP

_PROBE = "\x00mdevfs-drivers-probe"  # an option name no driver knows


@frozen
class DriverDoc:
    name: str
    target: str
    summary: str
    options: tuple[str, ...] | None  # None: the factory did not say
    text: str


def _options(factory: Any) -> tuple[str, ...] | None:
    """The option names ``factory`` accepts, from its refusal of an unknown one."""
    try:
        factory({_PROBE: 1})
    except ValueError as exc:
        found = re.search(r"\(known: ([^)]*)\)", str(exc))
        if found:
            return tuple(name.strip() for name in found.group(1).split(",") if name.strip())
    except Exception:  # a driver that needs something else first: say nothing of it
        return None
    return None


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
            found.append(DriverDoc(ep.name, ep.value, f"cannot be loaded: {exc!r}", None, ""))
            continue
        docs = _docs(factory, modules.count(ep.value.partition(":")[0]) > 1)
        summary = docs[0].splitlines()[0] if docs else ""
        found.append(DriverDoc(ep.name, ep.value, summary, _options(factory),
                               "\n\n".join(docs)))
    return found


def render_list(docs: list[DriverDoc]) -> str:
    width = max((len(d.name) for d in docs), default=0)
    lines = []
    for d in docs:
        lines.append(f"{d.name:<{width}}  {d.summary}")
        opts = ", ".join(d.options) if d.options else "(none)" if d.options == () else "?"
        lines.append(f"{'':<{width}}  options: {opts}")
    lines.append("")
    lines.append("`mdevfs drivers NAME` shows what a driver models, its options and their defaults.")
    return "\n".join(lines) + "\n"


def render_one(doc: DriverDoc) -> str:
    opts = ", ".join(doc.options) if doc.options else "(none)" if doc.options == () else "?"
    return (f"{doc.name} ({doc.target})\noptions: {opts}\n\n{doc.text}\n\n"
            f"In a topology:\n\n    [[parent]]\n    driver = \"{doc.name}\"\n"
            f"    [parent.options]      # any of: {opts}\n")
