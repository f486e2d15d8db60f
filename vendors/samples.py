"""The kernel's sample mdev drivers (samples/vfio-mdev), as ABI §3 describes them."""
from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Any

from mdevfs.driver import Attribute, BaseDriver, MdevTypeSpec, Option
from mdevfs.errors import fail
from mdevfs.kernel import MBOCHS_ENOSPC, MDEV_CORE_COUNTER, MTTY_ENFORCES_PORTS, NO_MTTY_PARENT_GROUP
from mdevfs.model import MdevDevice, MdevType

from ._options import whole


class Mtty(BaseDriver):
    """mtty.c: a virtual serial card with MAX_MTTYS = 24 ports in one pool.

    ``mtty-1`` takes one port, ``mtty-2`` two; available_instances is
    ``avail_ports / nr_ports`` (24 and 12 at first); a create that does not fit
    is ENOSPC (from 5.14, "vfio/mtty: Enforce available_instances"; before, every
    create succeeded and the count went negative, divided as C divides). No
    description file. Each device has ``vendor/sample_mdev_dev``; before 5.19 the parent
    has ``mtty_dev/sample_mtty_dev``. Option: ``ports`` (default 24) resizes the pool.
    """

    name = "mtty"
    mdev_driver = "mtty"
    subsystem = ("class", "mtty")
    default_parent = "mtty"
    default_path = "devices/virtual/mtty/mtty"

    _TYPES = (MdevTypeSpec("1", pretty_name="Single port serial"),
              MdevTypeSpec("2", pretty_name="Dual port serial"))
    OPTIONS = (Option("ports", "int", 24, "the serial ports the types share (MAX_MTTYS)"),)

    @staticmethod
    def from_recording(parent: Any) -> dict[str, Any] | None:
        """The pool: what is left and what the bound devices hold."""
        if parent.type_ids() != {"mtty-1", "mtty-2"}:
            return None
        avail, bound = parent.available(), parent.bound()
        return {"ports": avail["mtty-1"] + bound["mtty-1"] + 2 * bound["mtty-2"]}

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.avail_ports = whole(self.options, "ports", 24)

    def types(self) -> Sequence[MdevTypeSpec]:
        return self._TYPES

    @staticmethod
    def _ports(mtype: MdevType) -> int:
        return int(mtype.spec.sysfs_name)

    def available_instances(self, mtype: MdevType) -> int:
        return int(self.avail_ports / self._ports(mtype))  # as C divides: toward zero

    def probe(self, mdev: MdevDevice) -> None:
        ports = self._ports(mdev.mdev_type)
        if ports > self.avail_ports and self.kernel.has(MTTY_ENFORCES_PORTS):
            fail(errno.ENOSPC)
        self.avail_ports -= ports

    def parent_attributes(self) -> Sequence[Attribute]:
        if self.kernel.has(NO_MTTY_PARENT_GROUP):
            return ()
        return (Attribute("mtty_dev/sample_mtty_dev", show=lambda: "This is phy device"),)

    def remove(self, mdev: MdevDevice) -> None:
        self.avail_ports += self._ports(mdev.mdev_type)

    def device_attributes(self, mdev: MdevDevice) -> Sequence[Attribute]:
        return (Attribute("vendor/sample_mdev_dev", show=lambda: f"This is MDEV {mdev.uuid}"),)


class Mdpy(BaseDriver):
    """mdpy.c: a virtual display with three framebuffer sizes (ABI §3).

    Types ``mdpy-vga``, ``mdpy-xga`` and ``mdpy-hd`` (640x480, 1024x768,
    1920x1080), named after their type id, described as ``virtual display, WxH
    framebuffer``. The 6.1+ driver has no ``get_available``: the core's counter,
    ``max_instances`` = module param ``count`` (default 4), is shared by the three
    types and a create past it fails with EUSERS. Up to 6.0 the driver counts itself (from
    create to remove, or before 5.14 from probe to remove) and answers ENOMEM. Each device
    has ``vendor/resolution``. Option: ``count``.
    """

    name = "mdpy"
    mdev_driver = "mdpy"
    subsystem = ("class", "mdpy")
    default_parent = "mdpy"
    default_path = "devices/virtual/mdpy/mdpy"

    _SIZES = {"vga": (640, 480), "xga": (1024, 768), "hd": (1920, 1080)}
    OPTIONS = (Option("count", "int", 4, "the devices the parent holds (mdpy's max_devices)"),)

    @staticmethod
    def from_recording(parent: Any) -> dict[str, Any] | None:
        if parent.type_ids() != {"mdpy-vga", "mdpy-xga", "mdpy-hd"}:
            return None
        return {"count": parent.available()["mdpy-vga"] + len(parent.devices)}

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.count = whole(self.options, "count", 4)
        self.used = 0  # before 6.1: the devices mdpy counts itself

    def types(self) -> Sequence[MdevTypeSpec]:
        return tuple(MdevTypeSpec(t, pretty_name=f"mdpy-{t}",
                                  description=f"virtual display, {w}x{h} framebuffer")
                     for t, (w, h) in self._SIZES.items())

    def max_instances(self) -> int:
        return self.count

    def available_instances(self, mtype: MdevType) -> int | None:
        if self.kernel.has(MDEV_CORE_COUNTER):
            return None  # the core counts
        return self.count - self.used

    def probe(self, mdev: MdevDevice) -> None:
        if not self.kernel.has(MDEV_CORE_COUNTER):
            if self.used >= self.count:
                fail(errno.ENOMEM)
            self.used += 1

    def remove(self, mdev: MdevDevice) -> None:
        if not self.kernel.has(MDEV_CORE_COUNTER):
            self.used -= 1

    def device_attributes(self, mdev: MdevDevice) -> Sequence[Attribute]:
        width, height = self._SIZES[mdev.mdev_type.spec.sysfs_name]
        return (Attribute("vendor/resolution", show=lambda: f"{width}x{height}"),)


class Mbochs(BaseDriver):
    """mbochs.c: a bochs-compatible display carved out of one memory pool (ABI §3).

    Types ``mbochs-small``, ``mbochs-medium`` and ``mbochs-large`` take 4, 16 and
    64 MB of a shared pool of 256 MB; available_instances is ``avail_mbytes /
    type_mbytes`` (64, 16 and 4 at first); a create that does not fit is ENOSPC.
    Descriptions read ``virtual display, N MB video memory``. Each device has
    ``vendor/memory`` = ``N MB``: the spec tags this attribute [rec]; mdevfs
    follows an older mbochs.c (``memory_show`` in the ``vendor`` group).
    Option: the pool size in MB, ``count`` (the name the kernel registers the
    module param under) or ``mem`` (the name its description gives).
    """

    name = "mbochs"
    mdev_driver = "mbochs"
    subsystem = ("class", "mbochs")
    default_parent = "mbochs"
    default_path = "devices/virtual/mbochs/mbochs"

    _MBYTES = {"small": 4, "medium": 16, "large": 64}
    OPTIONS = (Option("count", "int", 256, "the memory pool in MB (the module parameter's "
                      "registered name)"),
               Option("mem", "int", None, "the same, by the name its description gives; "
                      "not with count"))

    @classmethod
    def from_recording(cls, parent: Any) -> dict[str, Any] | None:
        if parent.type_ids() != {f"mbochs-{t}" for t in cls._MBYTES}:
            return None
        bound = parent.bound()
        used = sum(mb * bound[f"mbochs-{t}"] for t, mb in cls._MBYTES.items())
        return {"count": 4 * parent.available()["mbochs-small"] + used}

    def __init__(self, options=None) -> None:
        super().__init__(options)
        if "count" in self.options and "mem" in self.options:
            raise ValueError("give the pool size as 'count' or 'mem', not both")
        key = "mem" if "mem" in self.options else "count"
        self.avail_mbytes = whole(self.options, key, 256)

    def types(self) -> Sequence[MdevTypeSpec]:
        return tuple(MdevTypeSpec(t, pretty_name=f"mbochs-{t}",
                                  description=f"virtual display, {mb} MB video memory")
                     for t, mb in self._MBYTES.items())

    def _mbytes(self, mtype: MdevType) -> int:
        return self._MBYTES[mtype.spec.sysfs_name]

    def available_instances(self, mtype: MdevType) -> int:
        return self.avail_mbytes // self._mbytes(mtype)

    def probe(self, mdev: MdevDevice) -> None:
        mbytes = self._mbytes(mdev.mdev_type)
        if mbytes > self.avail_mbytes:  # ENOMEM before 5.15
            fail(errno.ENOSPC if self.kernel.has(MBOCHS_ENOSPC) else errno.ENOMEM)
        self.avail_mbytes -= mbytes

    def remove(self, mdev: MdevDevice) -> None:
        self.avail_mbytes += self._mbytes(mdev.mdev_type)

    def device_attributes(self, mdev: MdevDevice) -> Sequence[Attribute]:
        mbytes = self._mbytes(mdev.mdev_type)
        return (Attribute("vendor/memory", show=lambda: f"{mbytes} MB"),)

