"""The kernel a host runs: every behaviour mdevfs emulates that changed between 5.10 and 7.3.

    kernel = Kernel.parse("5.10")
    kernel.has(PER_PARENT_MDEV_DRIVER)      # False: every mdev binds to vfio_mdev

Each change is in :data:`CHANGES`, once: the first mainline release with the newer behaviour,
what it is, and the commit and source it comes from. A version between two known ones has what
the table says of it. The dumps of real Debian kernels in ``tests/conformance/golden`` (5.10,
6.1, 6.12, 7.3) check the ends; releases in between follow the commits (``docs/kernels.md``).
The model, the tree and the vendor drivers ask :meth:`Kernel.has`; nothing else compares
versions.
"""
from __future__ import annotations

import re

from attrs import field, frozen


@frozen(order=True)
class Version:
    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> Version:
        """``"5.10"`` (or ``"5.10.0-46-amd64"``: the release's first two numbers)."""
        match = re.match(r"(\d+)\.(\d+)", text.strip())
        if match is None:
            raise ValueError(f"a kernel version looks like 6.1, not {text!r}")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


@frozen
class Change:
    """A behaviour the kernel changed: ``since`` is the first release that has the new one."""

    since: Version
    what: str
    source: str


def _change(since: str, what: str, source: str) -> Change:
    return Change(Version.parse(since), what, source)


# --- the table: one row per change, oldest first ----------------------------------------------
GROUP_TYPE_WRITABLE = "group_type_writable"
VF_MSIX_FILES = "vf_msix_files"
PER_PARENT_MDEV_DRIVER = "per_parent_mdev_driver"
BIND_BOUND_EBUSY = "bind_bound_ebusy"
MTTY_ENFORCES_PORTS = "mtty_enforces_ports"
MBOCHS_ENOSPC = "mbochs_enospc"
GROUP_TYPE_DMA_FQ = "group_type_dma_fq"
RESET_METHOD = "reset_method"
MDEV_GROUP_NAMED = "mdev_group_named"
PCI_STORE_EINVAL = "pci_store_einval"
VFIO_PCI_ID_TABLE = "vfio_pci_id_table"
VFIO_PCI_RUNTIME_PM = "vfio_pci_runtime_pm"
NO_VFIO_MDEV_DRIVER = "no_vfio_mdev_driver"
NO_MTTY_PARENT_GROUP = "no_mtty_parent_group"
KSTRTOBOOL_TRUE_FALSE = "kstrtobool_true_false"
KSTRTOBOOL_ENABLED_DISABLED = "kstrtobool_enabled_disabled"
VFIO_DEV_CLASS = "vfio_dev_class"
MDEV_CORE_COUNTER = "mdev_core_counter"
UNBOUND_POWER_D0 = "unbound_power_d0"
REMOVED_NLINK_ZERO = "removed_nlink_zero"

CHANGES: dict[str, Change] = {
    GROUP_TYPE_WRITABLE: _change(
        "5.11", "an IOMMU group's type file is 0644 (0444 before)",
        "08a27c1c3ecf iommu: Add support to change default domain of an iommu group; "
        "drivers/iommu/iommu.c iommu_group_store_type"),
    VF_MSIX_FILES: _change(
        "5.13", "a PF has sriov_vf_total_msix and each VF sriov_vf_msix_count",
        "c3d5c2d96d69 PCI/IOV: Add sysfs MSI-X vector assignment interface; drivers/pci/iov.c"),
    PER_PARENT_MDEV_DRIVER: _change(
        "5.14", "an mdev binds to its parent's own mdev driver when it is created, which owns "
                "its resources: unbind frees them, bind is ENODEV, drivers_autoprobe does not "
                "matter (before: every mdev binds to vfio_mdev, resources belong to the device "
                "from create to remove, and a new mdev stays unbound while drivers_autoprobe is 0)",
        "88a21f265ce5 vfio/mdev: Allow the mdev_parent_ops to specify the device driver to "
        "bind; drivers/vfio/mdev/mdev_core.c mdev_device_create, mdev_driver.c mdev_match"),
    BIND_BOUND_EBUSY: _change(
        "5.14", "bind of a device that has a driver is EBUSY, and of one whose probe fails "
                "the probe's errno (both ENODEV before)",
        "204db60c8357 driver core: Pull required checks into driver_probe_device(), "
        "ef6dcbdd8eb2 driver core: Flow the return code from ->probe() through to sysfs bind; "
        "drivers/base/bus.c bind_store, drivers/base/dd.c driver_probe_device"),
    MTTY_ENFORCES_PORTS: _change(
        "5.14", "mtty refuses a create past its ports with ENOSPC (before, available_instances "
                "went negative)",
        "97d0a6874478 vfio/mtty: Enforce available_instances; samples/vfio-mdev/mtty.c"),
    MBOCHS_ENOSPC: _change(
        "5.15", "mbochs refuses a create past its memory with ENOSPC (ENOMEM before)",
        "de5494af4815 vfio/mbochs: Fix missing error unwind of mbochs_used_mbytes; "
        "samples/vfio-mdev/mbochs.c"),
    VFIO_PCI_ID_TABLE: _change(
        "5.15", "vfio-pci has an id table (one override-only entry, driver_data 0): new_id "
                "takes only driver_data 0 (any before, when it had none)",
        "cc6711b0bf36 PCI / VFIO: Add 'override_only' support for VFIO PCI sub system; "
        "drivers/vfio/pci/vfio_pci.c vfio_pci_table, drivers/pci/pci-driver.c new_id_store"),
    GROUP_TYPE_DMA_FQ: _change(
        "5.15", "a PCI function's IOMMU group type reads DMA-FQ in the default lazy mode (DMA "
                "before)", "26225bea1d84 iommu: Expose DMA domain strictness via sysfs"),
    RESET_METHOD: _change(
        "5.15", "every function that can be reset has reset_method",
        "d88f521da3ef PCI: Allow userspace to query and set device reset mechanism; "
        "drivers/pci/pci.c reset_method_show/store"),
    MDEV_GROUP_NAMED: _change(
        "5.16", "an mdev's IOMMU group has name = vfio-noiommu",
        "c04ac34078a4 vfio: simplify iommu group allocation for mediated devices; "
        "drivers/vfio/vfio.c vfio_noiommu_group_alloc"),
    PCI_STORE_EINVAL: _change(
        "5.16", "enable, reset, numa_node, sriov_numvfs and sriov_vf_msix_count answer EINVAL "
                "for every parse error (kstrto*'s own ERANGE before: sriov_numvfs 65536, "
                "numa_node past INT_MAX)",
        "36f354ec7bf9 PCI/sysfs: Return -EINVAL consistently from \"store\" functions; "
        "drivers/pci/pci-sysfs.c enable_store, numa_node_store, reset_store; drivers/pci/iov.c "
        "sriov_numvfs_store, sriov_vf_msix_count_store"),
    NO_VFIO_MDEV_DRIVER: _change(
        "5.19", "bus/mdev/drivers no longer holds vfio_mdev",
        "6c7f98b334a3 vfio/mdev: Remove vfio_mdev.c"),
    VFIO_PCI_RUNTIME_PM: _change(
        "5.19", "vfio-pci idles an unused function through runtime PM (power/control auto, "
                "runtime_status suspended, usage 0, D3hot); before, its probe put it in D3hot "
                "itself, runtime PM forbidden (control on, status active, usage 2)",
        "7ab5e10eda02 vfio/pci: Move the unused device into low power state with runtime PM; "
        "drivers/vfio/pci/vfio_pci_core.c vfio_pci_core_register_device"),
    NO_MTTY_PARENT_GROUP: _change(
        "5.19", "mtty's parent has no mtty_dev/sample_mtty_dev",
        "e6486939d8ea vfio/mdev: Remove mdev_parent_ops dev_attr_groups"),
    KSTRTOBOOL_TRUE_FALSE: _change(
        "5.19", "kstrtobool takes true and false (a first character t or f)",
        "0d6ea3ac94ca lib/kstrtox.c: add \"false\"/\"true\" support to kstrtobool()"),
    VFIO_DEV_CLASS: _change(
        "6.1", "a VFIO device has vfio-dev/vfio<N> and class/vfio-dev",
        "3c28a76124b2 vfio: Add struct device to vfio_device; drivers/vfio/vfio_main.c"),
    MDEV_CORE_COUNTER: _change(
        "6.1", "the mdev core counts a parent's instances for drivers that do not (EUSERS past "
               "max_instances); mdpy uses it (ENOMEM from mdpy itself before)",
        "9c799c224d6e vfio/mdev: add mdev available instance checking to the core"),
    UNBOUND_POWER_D0: _change(
        "6.16", "a PCI function reads power_state D0 from its enumeration until a driver lets "
                "go of it (unknown before)",
        "4d4c10f763d7 PCI: Explicitly put devices into D0 when initializing; drivers/pci/pci.c "
        "pci_pm_init"),
    KSTRTOBOOL_ENABLED_DISABLED: _change(
        "6.16", "kstrtobool takes enabled and disabled (a first character e or d)",
        "ae5b3500856f kstrtox: add support for enabled and disabled in kstrtobool() (absent "
        "from 6.12, present in 7.3; 6.16 is the release the series points to, not pinned)"),
    REMOVED_NLINK_ZERO: _change(
        "7.1", "a removed node held open stats with nlink 0 (before: a file 1, a directory 2)",
        "eea5d2bb34ba kernfs: Send IN_DELETE_SELF and IN_IGNORED, 507d8ce13f5b kernfs: Don't "
        "set_nlink for directories being removed; fs/kernfs/dir.c kernfs_clear_inode_nlink"),
}

#: the kernels whose dumps tests/conformance keeps; the default is the newest
KNOWN = ("5.10", "6.1", "6.12", "7.3")
NEWEST = Version.parse(KNOWN[-1])
OLDEST = Version.parse(KNOWN[0])


@frozen
class Kernel:
    """The kernel version a host emulates."""

    version: Version = NEWEST
    #: the keys of CHANGES this kernel has, worked out once (has() is asked on every read)
    _newer: frozenset[str] = field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_newer", frozenset(
            key for key, change in CHANGES.items() if self.version >= change.since))

    @classmethod
    def parse(cls, text: str) -> Kernel:
        """A kernel from ``"X.Y"``; ValueError for one mdevfs cannot emulate (before 5.10 or
        after the newest it knows)."""
        version = Version.parse(text)
        if not OLDEST <= version <= NEWEST:
            raise ValueError(f"kernel {text}: mdevfs emulates {OLDEST} to {NEWEST}")
        return cls(version)

    def has(self, change: str) -> bool:
        """Whether this kernel has the newer behaviour of ``change`` (a key of CHANGES)."""
        if change in self._newer:
            return True
        if change not in CHANGES:
            raise KeyError(change)
        return False

    def __str__(self) -> str:
        return str(self.version)
