"""A one-file vendor driver prototyping a migration_version scheme: the ACME accelerator.

A topology names it by path, so it works without packaging::

    [[parent]]
    driver = "custom_driver.py"        # relative to the topology file; factory `Driver`
    [parent.options]
    version = "2.1"                    # the driver's software version, major.minor
    unsupported = ["large"]            # types whose state this build cannot migrate

The scheme: a type's and a device's migration_version is ``acme-<major>.<minor>-<type>``
(a device folds its type in, so the device node needs no separate type check). A
target accepts a source's string when the type is the same, the major equal, and
the target's minor at least the source's: a newer minor release reads older
state, never the reverse. Refusals, logged with their reason as the proposal suggests:

* ENODEV: migration unsupported here (a type listed in ``unsupported``): the
  attribute exists, but reading and writing it fail, as GVT-g does;
* EINVAL: a string not of this format, another type, another major, a newer minor.
"""
from __future__ import annotations

import errno
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mdevfs.driver import BaseDriver, MdevTypeSpec
from mdevfs.errors import fail
from mdevfs.model import MdevDevice, MdevType

log = logging.getLogger("acme")

VERSION = re.compile(r"acme-(\d+)\.(\d+)-(.+)")


class AcmeMigration:
    """The migration_version of one ACME type or device (mdevfs.driver.Migration)."""

    def __init__(self, type_name: str, major: int, minor: int, supported: bool) -> None:
        self.type_name, self.major, self.minor, self.supported = type_name, major, minor, supported

    def version(self) -> str:
        if not self.supported:
            log.warning("migration not supported on type %s", self.type_name)
            fail(errno.ENODEV)
        return f"acme-{self.major}.{self.minor}-{self.type_name}"

    def check(self, source: str) -> None:
        self.version()  # ENODEV when this side cannot migrate
        m = VERSION.fullmatch(source)
        if m is None:
            reason = "wrong string format"
        elif m[3] != self.type_name:
            reason = f"type not matched: {m[3]} is not {self.type_name}"
        elif int(m[1]) != self.major:
            reason = f"major version not matched: {m[1]} is not {self.major}"
        elif int(m[2]) > self.minor:
            reason = f"source minor {m[2]} is newer than ours, {self.minor}"
        else:
            return
        log.warning("refusing %r: %s", source, reason)
        fail(errno.EINVAL)


class Driver(BaseDriver):
    """ACME vAccel: two types sharing the core's per-parent pool of 8 instances."""

    name = "acme"
    mdev_driver = "acme_mdev"
    subsystem = ("bus", "pci")
    default_parent = "0000:81:00.0"
    default_path = "devices/pci0000:80/0000:80:01.0/0000:81:00.0"

    TYPES = (MdevTypeSpec("small", pretty_name="ACME vAccel S", description="1 queue, 256M"),
             MdevTypeSpec("large", pretty_name="ACME vAccel L", description="4 queues, 1024M"))

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        major, _, minor = str(self.options.get("version", "1.0")).partition(".")
        self.major, self.minor = int(major), int(minor or 0)  # ValueError: a bad option
        self.unsupported = set(self.options.get("unsupported", ()))

    def types(self) -> Sequence[MdevTypeSpec]:
        return self.TYPES

    def max_instances(self) -> int:
        return 8

    def migration(self, target: MdevType | MdevDevice) -> AcmeMigration:
        mtype = target.mdev_type if isinstance(target, MdevDevice) else target
        name = mtype.spec.sysfs_name
        return AcmeMigration(name, self.major, self.minor, name not in self.unsupported)
