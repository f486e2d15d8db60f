"""The kernel's parsers of what is written to sysfs: kstrtoul and its kin, as lib/kstrtox.c
has them, and the stores' own (a UUID, sriov_numvfs). Pure: a bad buffer is the errno the
kernel answers (:func:`mdevfs.errors.fail`)."""
from __future__ import annotations

import errno
import re
import string
from collections.abc import Callable, Mapping
from typing import TypeVar

from .errors import fail

T = TypeVar("T")

UUID_STRING_LEN = 36
_HEX = frozenset(string.hexdigits)
#: uuid_is_valid()'s form: hyphens at 8, 13, 18 and 23, hex digits (either case) elsewhere
UUID_PATTERN = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_UUID = re.compile(UUID_PATTERN.encode())
_ULONG_MAX = 2**64 - 1


def parse_uuid(buf: bytes) -> str:
    """``create_store`` input → the canonical lower-case UUID (ABI §2.2 rows 1 and 3).

    36 or 37 bytes; ``uuid_is_valid()`` checks only the first 36: hyphens at
    8, 13, 18, 23 and hex digits (either case) elsewhere. The 37th byte is not
    looked at, so ``"<uuid>\\n"`` and ``"<uuid>X"`` both pass.
    """
    if not UUID_STRING_LEN <= len(buf) <= UUID_STRING_LEN + 1:
        fail(errno.EINVAL)
    head = buf[:UUID_STRING_LEN]
    if not uuid_is_valid(head):
        fail(errno.EINVAL)
    return head.decode("ascii").lower()


def uuid_is_valid(text: bytes) -> bool:
    """``uuid_is_valid()``: 36 characters, hyphens at 8, 13, 18 and 23, hex digits (either
    case) elsewhere."""
    return _UUID.fullmatch(text) is not None


def kstrtoul(buf: bytes, base: int = 0) -> int:
    """The kernel's ``kstrtoul(buf, base, &val)`` on a sysfs store buffer.

    sysfs NUL-terminates the buffer, so parsing stops at the first NUL. An optional
    ``+``; base 0 means ``0x`` hex when a hex digit follows, leading ``0`` octal, else
    decimal (base 16 also takes a ``0x`` prefix); one trailing newline. Anything else is
    EINVAL, a value past ULONG_MAX is ERANGE (lib/kstrtox.c ``_kstrtoull``); callers that,
    like ``remove_store``, turn every failure into EINVAL catch it.
    """
    s = buf.split(b"\0", 1)[0].decode("latin-1")
    if s.startswith("+"):
        s = s[1:]
    if base in (0, 16) and s[:2] in ("0x", "0X") and s[2:3] and s[2:3] in _HEX:
        base, s = 16, s[2:]
    elif base == 0:
        base = 8 if s.startswith("0") else 10
    if s.endswith("\n"):
        s = s[:-1]
    if not s:
        fail(errno.EINVAL)
    value = 0
    for ch in s:
        digit = int(ch, 16) if ch in _HEX else 99
        if digit >= base:
            fail(errno.EINVAL)
        value = value * base + digit
        if value > _ULONG_MAX:
            fail(errno.ERANGE)
    return value


def sysfs_word(buf: bytes) -> str:
    """A store buffer as ``sysfs_streq`` (and ``bus_find_device_by_name``, which uses it)
    compares it: its text up to the first NUL, less one trailing newline."""
    return buf.split(b"\0", 1)[0].decode("latin-1").removesuffix("\n")


def device_named(devices: Mapping[str, T], buf: bytes) -> T:
    """``bus_find_device_by_name()`` on a bind, unbind or drivers_probe store: the device
    that ``buf`` names (compared as :func:`sysfs_word`), else ENODEV."""
    found = devices.get(sysfs_word(buf))
    if found is None:
        fail(errno.ENODEV)
    return found


def kstrtoint(buf: bytes) -> int:
    """kstrtoint(buf, 0): an optional sign, then kstrtoul's digits, within an int (after
    a ``-``, kstrtoll parses with ``_kstrtoull``, which takes no ``+``: "-+5" is EINVAL)."""
    negative = buf[:1] == b"-"
    if negative and buf[1:2] == b"+":
        fail(errno.EINVAL)
    value = kstrtoul(buf[1:] if negative else buf)
    value = -value if negative else value
    if not -2**31 <= value < 2**31:
        fail(errno.ERANGE)
    return value


def kstrtou16(buf: bytes) -> int:
    """kstrtou16(buf, 0): kstrtoul's, within 16 bits (ERANGE past 65535)."""
    value = kstrtoul(buf)
    if value > 0xFFFF:
        fail(errno.ERANGE)
    return value


def pci_store_parse(parse: Callable[[bytes], int], buf: bytes, einval: bool) -> int:
    """A parse in one of the PCI stores 36f354ec7bf9 changed (enable, reset, numa_node,
    sriov_numvfs, sriov_vf_msix_count): with ``einval`` (from 5.16) every failure is EINVAL;
    before, the parser's own errno passes (ERANGE past the type's range)."""
    try:
        return parse(buf)
    except OSError:
        if not einval:
            raise
        fail(errno.EINVAL)


def sysfs_number(name: str) -> int | None:
    """The number a sysfs name is, as the kernel prints one (``%d``: ASCII digits, no
    leading zero), or None: ``7`` is 7; ``07``, ``²`` (a digit to str.isdigit, which int()
    refuses) and ``+7`` are no number."""
    if name.isascii() and name.isdigit() and (name == "0" or name[0] != "0"):
        return int(name)
    return None


def parse_ulong(buf: bytes) -> int:
    """kstrtoul, every failure EINVAL (remove, rescan)."""
    return pci_store_parse(kstrtoul, buf, einval=True)
