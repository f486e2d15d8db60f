#!/usr/bin/env python3
"""compare-sriov.py KERNEL_DUMP MDEVFS_DUMP: sriov-probe.sh's dump of a real kernel's
igb PF (record-sriov: QEMU's igb in a q35 VM) against mdevfs's (mdevfs-dump.sh --sriov: the same
machine, sriov.toml with igb.py), line by line: every path's type, mode, size, link count, owner,
link target and content, every operation's result, every raw IOMMU group and vfio number.

Set aside on both sides, because they belong to the NIC and its firmware and not to the PCI core
mdevfs emulates: a function's net/, ptp/, msi_irqs/, wakeup/, aer_dev_*, ASPM link/,
firmware_node and waiting_for_supplier (which fw_devlink keeps while a function with a firmware
node has no driver), power/wakeup*, and AER's aer_dev_* and aer/ (mdevfs's functions have no AER
capability). Both from `ls` results too. config's content is compared by its length (QEMU's igb
has its own capability layout), and vfio's major by its presence (alloc_chrdev_region gives
whatever is free: 244 to 248 on these kernels).
Prints the differences; exit 0 when there are none, 1 otherwise.
"""
import re
import sys

#: a function's own entries that are the NIC's or its firmware's, not the PCI core's
NIC_OWN = re.compile(r"^<(?:PF|VF\d+)>/(?:net|ptp|msi_irqs|wakeup|link|firmware_node|"
                     r"waiting_for_supplier|aer|aer_dev_[a-z]+|power/wakeup[a-z_]*)(?:/|$)")
NIC_WORDS = {"net", "ptp", "msi_irqs", "wakeup", "link", "firmware_node", "waiting_for_supplier",
             "aer", "aer_dev_correctable", "aer_dev_fatal", "aer_dev_nonfatal"}
CONFIG = re.compile(r"#len=(\d+),fnv=[0-9a-f]+")
VFIO_MAJOR = re.compile(r"(MAJOR=|=|@)\d+(\\nMINOR=|:)")


def load(path):
    """{key: value}: ("T", state, path) → the fields, ("E", id) → (operation, result),
    ("I", kind, state) → the line (numbers: IOMMU groups per state, vfio's)."""
    out = {}
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        kind = line[:2]
        if kind == "T|":
            _, state, p, *fields = line.split("|")
            if NIC_OWN.match(p):
                continue
            fields = CONFIG.sub(r"#len=\1", "|".join(fields))
            if p.startswith("devices/virtual/vfio/"):
                fields = VFIO_MAJOR.sub(r"\1<major>\2", fields)
            out[("T", state, p)] = fields
        elif kind == "E|":
            _, eid, op, result = line.split("|", 3)
            if op.startswith("ls ") and result.startswith("OK"):
                result = " ".join(w for w in result.split() if w not in NIC_WORDS)
            result = CONFIG.sub(r"#len=\1", result)
            out[("E", eid)] = (op, result)
        elif kind == "I|":
            parts = line.split("|")
            key = ("I", parts[1], parts[2] if parts[1] == "groups" else "")  # groups: per state
            out[key] = VFIO_MAJOR.sub(r"\1<major>\2", line)
    return out


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    kernel, mdevfs = (load(p) for p in argv[:2])
    differ = 0
    for key in dict.fromkeys([*kernel, *mdevfs]):
        a, b = kernel.get(key), mdevfs.get(key)
        if a == b:
            continue
        differ += 1
        where = "|".join(key[1:])
        print(f"{where}\n    kernel: {a if a is not None else '(absent)'}\n"
              f"    mdevfs: {b if b is not None else '(absent)'}")
    paths = sum(k[0] == "T" for k in kernel)
    ops = sum(k[0] == "E" for k in kernel)
    print(f"{argv[0]} ({paths} paths, {ops} operations) vs {argv[1]}: {differ} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
