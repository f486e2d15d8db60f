"""A declarative vendor driver: types and a migration_version scheme from the topology alone.

    [[parent]]
    driver = "scheme"
    [parent.options]
    name = "acme"                                  # type-id prefix, class, parent name
    max_instances = 8                              # the core's counter, shared (EUSERS)
    format = "acme-{major}.{minor}-{build}-{type}" # str.format over the fields and {type}
    fields = { major = 2, minor = 1, build = "x" } # whole numbers ≥ 0 or strings
    rules = { minor = "target>=source" }           # per field; "equal" when not given
    unsupported_errno = "ENODEV"                   # a read where migration is unsupported
    incompatible_errno = "EINVAL"                  # a write of an incompatible string
    migration = "supported"                        # or "unsupported" (read fails) / "absent"
    [[parent.options.types]]
    name = "small"                                 # the type id is acme-small
    pretty_name = "Acme small"                     # optional, as are description,
    description = "1 slice"                        # device_api and migration
    migration = "absent"

The string is ``format`` filled with the fields and ``type`` (the type's name);
a type and its devices show the same string, so put ``{type}`` in the format for
a device's string to name its type, as the proposal asks. A written source string is
parsed back with the format (whole numbers as digits, hex under an ``x``/``X``
spec such as ``{sw:08x}``, a field under ``same-major-minor>=`` as a dotted
version, other strings as the shortest text that fits) and every field is
compared by its rule: ``equal``, ``any``, ``target>=source``, ``target<=source``
(whole numbers) or ``same-major-minor>=`` (dotted versions "M.m[.p]": the same
major, target minor ≥ source minor). ``type`` takes ``equal`` or ``any``. A
string that does not parse or breaks a rule fails with ``incompatible_errno``,
the reason logged. Options are checked at load time: a bad one is a ValueError
naming it. A field changes at run time through ``set_option("fields.<name>", value)``
(``mdevfs ctl DIR set-option PARENT fields.minor 2``).

**Beyond the proposal's yes/no** (mdevfs's model of NVML's answers), optional::

    ranges = { sw = [3, 5] }                       # a source's sw must lie in 3..5 (its rule
                                                   # is then "any" unless rules names it)
    cold_rules = { minor = "any" }                 # what a restart allows (default: rules)
    limits = { minor = "host_driver", board = "gpu" }   # the component a field stands for
    exclude = [{ field = "board", source = "A16", target = "A10" }]   # never, either way

A write of a source string is accepted when no exclusion matches, every ranged field lies
in its range and every rule holds (the proposal's answer, as before). The control socket's
``grade`` says more: ``live`` when the write would be accepted; ``cold`` when only
``cold_rules`` hold; else ``none``; with the limit of the first field that fails
(``limits``, default "gpu" for ``type`` and excluded pairs, else "other").
"""
from __future__ import annotations

import errno
import logging
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from mdevfs.driver import BaseDriver, MdevTypeSpec, Migration, Option
from mdevfs.errors import fail
from mdevfs.model import MdevDevice, MdevType

from ._options import known, text, whole

log = logging.getLogger(__name__)


def _dotted(value: object) -> tuple[int, int]:
    major, minor, *_ = str(value).split(".")
    return int(major), int(minor)


RULES: dict[str, Callable[[Any, Any], bool]] = {
    "equal": lambda source, target: source == target,
    "any": lambda source, target: True,
    "target>=source": lambda source, target: target >= source,
    "target<=source": lambda source, target: target <= source,
    "same-major-minor>=": lambda source, target: (
        _dotted(source)[0] == _dotted(target)[0] and _dotted(target)[1] >= _dotted(source)[1]),
}
_ORDERED = ("target>=source", "target<=source")
_DOTTED = re.compile(r"\d+(?:\.\d+)+")
_INT_SPEC = re.compile(r"(0?\d+)?([dxX]?)")
MODES = ("supported", "unsupported", "absent")
OPTIONS = (
    Option("name", "str", "scheme", "the type-id prefix, class and parent name"),
    Option("max_instances", "int", 16, "the core's counter the types share (EUSERS past it)"),
    Option("format", "str", "{type}", "the migration_version string: str.format over the "
           "fields and {type}"),
    Option("fields", "table", {}, "the format's fields: whole numbers ≥ 0 or strings"),
    Option("rules", "table", {}, "per field, how a target compares to a source: equal (the "
           "default), any, target>=source, target<=source, same-major-minor>="),
    Option("unsupported_errno", "int|str", "ENODEV", "a read where migration is unsupported: "
           "an errno, by name or number"),
    Option("incompatible_errno", "int|str", "EINVAL", "a write of an incompatible string"),
    Option("migration", "str", "supported", "the types' default: supported, unsupported, "
           "absent"),
    Option("types", "list", None, "the types (at least one): tables of name, pretty_name, "
           "description, device_api, migration", example=[{"name": "small"}]),
    Option("ranges", "table", {}, "graded answers: the range a source's field may lie in"),
    Option("cold_rules", "table", {}, "graded answers: what a restart allows (default: rules)"),
    Option("limits", "table", {}, "graded answers: the component each field stands for"),
    Option("exclude", "list", [], "graded answers: pairs of field values never compatible"))
_TYPE_KEYS = ("name", "pretty_name", "description", "device_api", "migration")


def _errno(options: Mapping[str, Any], key: str, default: str) -> int:
    value = options.get(key, default)
    code = getattr(errno, value, None) if isinstance(value, str) else value
    if not isinstance(code, int) or isinstance(code, bool) or code not in errno.errorcode:
        raise ValueError(f"option {key!r} must name an errno such as {default!r}, not {value!r}")
    return code


class Scheme:
    """A parsed ``format`` with its fields and rules: formats and checks strings."""

    def __init__(self, fmt: Any, fields: Any, rules: Any) -> None:
        if not isinstance(fields, dict):
            raise ValueError("option 'fields' must be a table of name = value")
        for name, value in fields.items():
            self._check_value(name, value)
        self.fields: dict[str, int | str] = dict(fields)
        if not isinstance(rules, dict):
            raise ValueError("option 'rules' must be a table of field = rule")
        self.rules = {name: "equal" for name in [*fields, "type"]}
        for name, rule in rules.items():
            where = f"option 'rules.{name}'"
            if name not in self.rules:
                raise ValueError(f"{where}: no field {name!r} (fields: {', '.join(self.rules)})")
            if rule not in RULES or (name == "type" and rule not in ("equal", "any")):
                allowed = ("equal", "any") if name == "type" else tuple(RULES)
                raise ValueError(f"{where}: {rule!r} is not one of {', '.join(allowed)}")
            if rule in _ORDERED and not isinstance(fields[name], int):
                raise ValueError(f"{where}: {rule} needs a whole-number field")
            if rule == "same-major-minor>=" and not _DOTTED.fullmatch(str(fields[name])):
                raise ValueError(f"{where}: {rule} needs a dotted version such as \"2.1\"")
            self.rules[name] = rule
        self.format = fmt
        self.pattern = self._compile(fmt)

    def _check_value(self, name: str, value: Any) -> None:
        if not re.fullmatch(r"[A-Za-z_]\w*", str(name)) or name == "type":
            raise ValueError(f"option 'fields': {name!r} is not a usable field name")
        ok_int = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        ok_str = isinstance(value, str) and value.isascii() and value != ""
        if not (ok_int or ok_str):
            raise ValueError(f"option 'fields.{name}' must be a whole number ≥ 0 or a "
                             f"non-empty ASCII string, not {value!r}")

    def _compile(self, fmt: Any) -> re.Pattern[str]:
        if not isinstance(fmt, str) or not fmt:
            raise ValueError(f"option 'format' must be a non-empty string, not {fmt!r}")
        regex = ""
        self.specs: dict[str, str] = {}  # field → its format spec, in format order
        try:
            parts = list(string.Formatter().parse(fmt))
        except ValueError as exc:
            raise ValueError(f"option 'format' {fmt!r}: {exc}") from None
        for literal, name, spec, conversion in parts:
            regex += re.escape(literal)
            if name is None:
                continue
            where = f"option 'format' {fmt!r}: {{{name}}}"
            if name not in self.rules:
                raise ValueError(f"{where} is not a field (fields: {', '.join(self.rules)})")
            if name in self.specs:
                raise ValueError(f"{where} appears twice")
            if conversion or (spec and not (isinstance(self.fields.get(name), int)
                                            and _INT_SPEC.fullmatch(spec))):
                raise ValueError(f"{where}: only a width and d/x/X suit a whole-number field")
            self.specs[name] = spec
            regex += f"(?P<{name}>{self._field_regex(name, spec)})"
        missing = [n for n in self.fields if n not in self.specs]
        if missing:
            raise ValueError(f"option 'format' {fmt!r} leaves out field(s) {', '.join(missing)}")
        return re.compile(regex, re.DOTALL)

    def _field_regex(self, name: str, spec: str) -> str:
        if isinstance(self.fields.get(name), int):
            return "[0-9a-fA-F]+" if spec[-1:] in ("x", "X") else "[0-9]+"
        return _DOTTED.pattern if self.rules[name] == "same-major-minor>=" else ".+?"

    def render(self, type_name: str) -> str:
        return self.format.format(type=type_name, **self.fields)

    def parse(self, source: str) -> dict[str, int | str] | None:
        """The fields of a source string, or None when it does not fit the format."""
        match = self.pattern.fullmatch(source)
        if match is None:
            return None
        values: dict[str, int | str] = {}
        for name, raw in match.groupdict().items():
            if isinstance(self.fields.get(name), int):
                values[name] = int(raw, 16 if self.specs[name][-1:] in ("x", "X") else 10)
            else:
                values[name] = raw
        return values

    def incompatibility(self, source: str, type_name: str) -> str | None:
        """Why ``source`` may not migrate to this target, or None when it may."""
        theirs = self.parse(source)
        if theirs is None:
            return f"does not fit the format {self.format!r}"
        ours = {**self.fields, "type": type_name}
        for name, value in theirs.items():
            rule = self.rules[name]
            if not RULES[rule](value, ours[name]):
                return f"field {name}: source {value!r}, target {ours[name]!r}, rule {rule}"
        return None

    def roundtrips(self, type_name: str) -> bool:
        """Whether the type's own string parses back to exactly its own fields."""
        ours = {**self.fields, "type": type_name}
        theirs = self.parse(self.render(type_name))
        return theirs is not None and all(ours[k] == v for k, v in theirs.items())

    def set_field(self, name: str, value: int | str) -> None:
        if name not in self.fields:
            raise ValueError(f"no field {name!r} (fields: {', '.join(self.fields)})")
        if isinstance(value, int) != isinstance(self.fields[name], int):
            raise ValueError(f"field {name!r} takes a {type(self.fields[name]).__name__}")
        self._check_value(name, value)
        if self.rules[name] == "same-major-minor>=" and not _DOTTED.fullmatch(str(value)):
            raise ValueError(f"field {name!r} takes a dotted version such as \"2.1\"")
        self.fields[name] = value


class Grading:
    """Ranges, cold rules, limits and exclusions over a :class:`Scheme`'s fields."""

    def __init__(self, scheme: Scheme, ranges: Any, cold_rules: Any, limits: Any,
                 exclude: Any, rules: Mapping[str, str]) -> None:
        self.scheme = scheme
        self.ranges = self._ranges(ranges)
        for name in self.ranges:  # a ranged field's range decides, unless a rule is given
            if name not in rules:
                scheme.rules[name] = "any"
        self.cold = dict(scheme.rules)
        try:
            cold = Scheme(scheme.format, scheme.fields, cold_rules) if cold_rules else None
        except ValueError as exc:
            raise ValueError(str(exc).replace("option 'rules", "option 'cold_rules")) from None
        if cold is not None:
            self.cold.update({k: cold.rules[k] for k in cold_rules})
        if not isinstance(limits, dict) or not all(
                k in scheme.rules and isinstance(v, str) for k, v in limits.items()):
            raise ValueError("option 'limits' must be a table of field = component name")
        self.limits = {"type": "gpu", **limits}
        if not isinstance(exclude, list) or not all(
                isinstance(e, dict) and set(e) == {"field", "source", "target"}
                and e["field"] in scheme.rules for e in exclude):
            raise ValueError("option 'exclude' must be a list of { field, source, target } "
                             "tables naming fields")
        self.exclude = exclude

    def _ranges(self, raw: Any) -> dict[str, tuple[int, int]]:
        if not isinstance(raw, dict):
            raise ValueError("option 'ranges' must be a table of field = [min, max]")
        found = {}
        for name, pair in raw.items():
            if not isinstance(self.scheme.fields.get(name), int) or not (
                    isinstance(pair, list) and len(pair) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
                    and pair[0] <= pair[1]):
                raise ValueError(f"option 'ranges.{name}' must be [min, max] of a whole-number "
                                 "field")
            found[name] = (pair[0], pair[1])
        return found

    def _problem(self, theirs: Mapping[str, Any], ours: Mapping[str, Any],
                 rules: Mapping[str, str]) -> tuple[str, str] | None:
        """(field, why) of the first thing that stops ``theirs`` here, or None."""
        for e in self.exclude:
            if theirs[e["field"]] == e["source"] and ours[e["field"]] == e["target"]:
                return e["field"], (f"field {e['field']}: {e['source']!r} never migrates to "
                                    f"{e['target']!r} (excluded)")
        for name, (low, high) in self.ranges.items():
            if not low <= theirs[name] <= high:
                return name, f"field {name}: source {theirs[name]!r} is outside {low}..{high}"
        for name, value in theirs.items():
            if not RULES[rules[name]](value, ours[name]):
                return name, (f"field {name}: source {value!r}, target {ours[name]!r}, "
                              f"rule {rules[name]}")
        return None

    def incompatibility(self, source: str, type_name: str) -> str | None:
        """The proposal's answer: why ``source`` may not migrate here, or None."""
        theirs = self.scheme.parse(source)
        if theirs is None:
            return f"does not fit the format {self.scheme.format!r}"
        problem = self._problem(theirs, {**self.scheme.fields, "type": type_name},
                                self.scheme.rules)
        return None if problem is None else problem[1]

    def grade(self, source: str, type_name: str) -> dict[str, str]:
        """``{"result": live|cold|none, "limit", "reason"}``."""
        theirs = self.scheme.parse(source)
        if theirs is None:
            return {"result": "none", "limit": "other",
                    "reason": f"does not fit the format {self.scheme.format!r}"}
        ours = {**self.scheme.fields, "type": type_name}
        live = self._problem(theirs, ours, self.scheme.rules)
        if live is None:
            return {"result": "live", "limit": "none", "reason": "every rule holds"}
        cold = self._problem(theirs, ours, self.cold)
        field, why = live if cold is None else cold
        return {"result": "cold" if cold is None else "none",
                "limit": self.limits.get(field, "gpu" if "excluded" in why else "other"),
                "reason": why}


class SchemeDriver(BaseDriver):
    """A parent whose types and migration_version scheme come from its options."""

    OPTIONS = OPTIONS

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.name = text(self.options, "name", "scheme")
        if not re.fullmatch(r"[\w.:-]+", self.name):
            raise ValueError(f"option 'name' {self.name!r} must be a plain word")
        self.mdev_driver = self.name
        self.subsystem = ("class", self.name)
        self.default_parent = self.name
        self.default_path = f"devices/virtual/{self.name}/{self.name}"
        self.count = whole(self.options, "max_instances", 16)
        self.unsupported = _errno(self.options, "unsupported_errno", "ENODEV")
        self.incompatible = _errno(self.options, "incompatible_errno", "EINVAL")
        self.scheme = Scheme(self.options.get("format", "{type}"),
                             self.options.get("fields", {}), self.options.get("rules", {}))
        self.grading = Grading(self.scheme, self.options.get("ranges", {}),
                               self.options.get("cold_rules", {}),
                               self.options.get("limits", {}), self.options.get("exclude", []),
                               self.options.get("rules", {}))
        mode = text(self.options, "migration", "supported", allowed=MODES)
        self._types, self.modes = self._parse_types(self.options.get("types"), mode)

    def _parse_types(self, raw: Any, mode: str) -> tuple[list[MdevTypeSpec], dict[str, str]]:
        if not isinstance(raw, list) or not raw or not all(isinstance(t, dict) for t in raw):
            raise ValueError("option 'types' must be a non-empty list of tables")
        specs, modes = [], {}
        for i, entry in enumerate(raw):
            where = f"option 'types' #{i + 1}"
            try:
                known(entry, _TYPE_KEYS)
                name = text(entry, "name", "")
                if not re.fullmatch(r"[\w.:-]+", name) or name in modes:
                    raise ValueError(f"name {name!r} must be a plain word, used once")
                modes[name] = text(entry, "migration", mode, allowed=MODES)
                optional = {k: entry[k] for k in ("pretty_name", "description") if k in entry}
                for key in optional:
                    text(entry, key, "")
                specs.append(MdevTypeSpec(name, text(entry, "device_api", "vfio-pci"),
                                          **optional))
                if modes[name] == "supported" and not self.scheme.roundtrips(name):
                    raise ValueError(f"its string {self.scheme.render(name)!r} does not parse "
                                     "back to its own fields; separate the fields in 'format' "
                                     "by text that they do not contain")
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        return specs, modes

    def types(self) -> Sequence[MdevTypeSpec]:
        return tuple(self._types)

    def max_instances(self) -> int:
        return self.count

    def set_field(self, name: str, value: int | str) -> None:
        """Change a version field at run time (its kind stays the same)."""
        old = self.scheme.fields.get(name)
        self.scheme.set_field(name, value)
        bad = [t for t, mode in self.modes.items()
               if mode == "supported" and not self.scheme.roundtrips(t)]
        if bad:
            self.scheme.fields[name] = old  # type: ignore[assignment]
            raise ValueError(f"with {name} = {value!r} the string of type {bad[0]} would not "
                             "parse back to its own fields")

    def set_option(self, key: str, value: object) -> None:
        """Run-time options (``mdevfs ctl DIR set-option``): a field, as ``fields.<name>``."""
        if not key.startswith("fields."):
            return super().set_option(key, value)  # EINVAL: no such run-time option
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            raise ValueError(f"field {key[7:]!r} takes a whole number or a string, not {value!r}")
        self.set_field(key[7:], value)

    def migration(self, target: MdevType | MdevDevice) -> Migration | None:
        mtype = target.mdev_type if isinstance(target, MdevDevice) else target
        if self.modes[mtype.spec.sysfs_name] == "absent":
            return None
        return SchemeMigration(self, mtype.spec.sysfs_name)


class SchemeMigration:
    def __init__(self, driver: SchemeDriver, type_name: str) -> None:
        self.driver = driver
        self.type_name = type_name

    def _unsupported(self) -> NoReturn:
        log.error("%s: migration is not supported on type %s", self.driver.name, self.type_name)
        fail(self.driver.unsupported)

    def version(self) -> str:
        if self.driver.modes[self.type_name] != "supported":
            self._unsupported()
        return self.driver.scheme.render(self.type_name)

    def check(self, source: str) -> None:
        if self.driver.modes[self.type_name] != "supported":
            self._unsupported()
        reason = self.driver.grading.incompatibility(source, self.type_name)
        if reason is not None:
            log.error("%s: %r may not migrate to type %s: %s", self.driver.name, source,
                      self.type_name, reason)
            fail(self.driver.incompatible)

    def grade(self, source: str) -> dict[str, str]:
        """mdevfs's graded answer (control ``grade``): see the module's docstring."""
        if self.driver.modes[self.type_name] != "supported":
            return {"result": "none", "limit": "other",
                    "reason": f"migration is not supported on type {self.type_name}"}
        return self.driver.grading.grade(source, self.type_name)
