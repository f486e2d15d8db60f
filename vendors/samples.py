"""The kernel's sample mdev drivers (samples/vfio-mdev), as spec §3 describes them."""
from __future__ import annotations

import errno
from collections.abc import Sequence

from mdevfs.driver import Attribute, BaseDriver, MdevTypeSpec
from mdevfs.errors import fail
from mdevfs.model import MdevDevice, MdevType

from ._options import known, whole


class Mtty(BaseDriver):
    """mtty.c: a virtual serial card with MAX_MTTYS = 24 ports in one pool.

    ``mtty-1`` takes one port, ``mtty-2`` two; available_instances is
    ``avail_ports / nr_ports`` (24 and 12 at first); a create that does not fit
    is ENOSPC (since "vfio/mtty: Enforce available_instances", 2021). No
    description file. Each device has ``vendor/sample_mdev_dev``.
    Option: ``ports`` (default 24) resizes the pool.
    """

    name = "mtty"
    mdev_driver = "mtty"
    subsystem = ("class", "mtty")
    default_parent = "mtty"
    default_path = "devices/virtual/mtty/mtty"

    _TYPES = (MdevTypeSpec("1", pretty_name="Single port serial"),
              MdevTypeSpec("2", pretty_name="Dual port serial"))

    def __init__(self, options=None) -> None:
        super().__init__(options)
        known(self.options, ["ports"])
        self.avail_ports = whole(self.options, "ports", 24)

    def types(self) -> Sequence[MdevTypeSpec]:
        return self._TYPES

    @staticmethod
    def _ports(mtype: MdevType) -> int:
        return int(mtype.spec.sysfs_name)

    def available_instances(self, mtype: MdevType) -> int:
        return self.avail_ports // self._ports(mtype)

    def probe(self, mdev: MdevDevice) -> None:
        ports = self._ports(mdev.mdev_type)
        if ports > self.avail_ports:
            fail(errno.ENOSPC)
        self.avail_ports -= ports

    def remove(self, mdev: MdevDevice) -> None:
        self.avail_ports += self._ports(mdev.mdev_type)

    def device_attributes(self, mdev: MdevDevice) -> Sequence[Attribute]:
        return (Attribute("vendor/sample_mdev_dev", show=lambda: f"This is MDEV {mdev.uuid}"),)


class Mdpy(BaseDriver):
    """mdpy.c: a virtual display with three framebuffer sizes (spec §3).

    Types ``mdpy-vga``, ``mdpy-xga`` and ``mdpy-hd`` (640x480, 1024x768,
    1920x1080), named after their type id, described as ``virtual display, WxH
    framebuffer``. The 6.1+ driver has no ``get_available``: the core's counter,
    ``max_instances`` = module param ``count`` (default 4), is shared by the three
    types and a create past it fails with EUSERS. (Up to 6.0 the driver counted
    itself and answered ENOMEM; not emulated.) Each device has ``vendor/resolution``.
    Option: ``count``.
    """

    name = "mdpy"
    mdev_driver = "mdpy"
    subsystem = ("class", "mdpy")
    default_parent = "mdpy"
    default_path = "devices/virtual/mdpy/mdpy"

    _SIZES = {"vga": (640, 480), "xga": (1024, 768), "hd": (1920, 1080)}

    def __init__(self, options=None) -> None:
        super().__init__(options)
        known(self.options, ["count"])
        self.count = whole(self.options, "count", 4)

    def types(self) -> Sequence[MdevTypeSpec]:
        return tuple(MdevTypeSpec(t, pretty_name=f"mdpy-{t}",
                                  description=f"virtual display, {w}x{h} framebuffer")
                     for t, (w, h) in self._SIZES.items())

    def max_instances(self) -> int:
        return self.count

    def device_attributes(self, mdev: MdevDevice) -> Sequence[Attribute]:
        width, height = self._SIZES[mdev.mdev_type.spec.sysfs_name]
        return (Attribute("vendor/resolution", show=lambda: f"{width}x{height}"),)


class Mbochs(BaseDriver):
    """mbochs.c: a bochs-compatible display carved out of one memory pool (spec §3).

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

    def __init__(self, options=None) -> None:
        super().__init__(options)
        known(self.options, ["count", "mem"])
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
        if mbytes > self.avail_mbytes:
            fail(errno.ENOSPC)
        self.avail_mbytes -= mbytes

    def remove(self, mdev: MdevDevice) -> None:
        self.avail_mbytes += self._mbytes(mdev.mdev_type)

    def device_attributes(self, mdev: MdevDevice) -> Sequence[Attribute]:
        mbytes = self._mbytes(mdev.mdev_type)
        return (Attribute("vendor/memory", show=lambda: f"{mbytes} MB"),)

