"""`make demo`: a short tour of an emulated host, told as a story (``--full`` adds the dump).

1. the parents and their types, as management software finds them in class/mdev_bus;
2. a create with the real mdevctl, through ``mdevfs run`` (the tree at /sys for it);
3. a create and a remove by hand, with plain file I/O, and what it does to the counts;
4. the proposal's migration check, read-then-write, on two GVT-g vGPUs: one string accepted,
   one refused with its errno and the reason the driver logs.

Everything is plain file I/O on a mount of the embedded default topology.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

MDEVFS = [sys.executable, "-m", "mdevfs"]
GVT_TYPE = "class/mdev_bus/0000:00:02.0/mdev_supported_types/i915-GVTg_V5_4"
MTTY_TYPE = "class/mdev_bus/mtty/mdev_supported_types/mtty-1"


def say(text: str) -> None:
    print(f"\n== {text}")


def cmd(text: str) -> None:
    print(f"$ {text}")


def value(root: Path, rel: str) -> str:
    return (root / rel).read_text().strip()


def parents(root: Path) -> None:
    say("1. The parents: each device that makes mdevs is a link in class/mdev_bus")
    cmd("ls class/mdev_bus")
    names = sorted(os.listdir(root / "class/mdev_bus"))
    print("  " + "  ".join(names))
    for name in names:
        types = root / "class/mdev_bus" / name / "mdev_supported_types"
        counts = [f"{t} ({(types / t / 'available_instances').read_text().strip()})"
                  for t in sorted(os.listdir(types))]
        shown = ", ".join(counts[:3]) + (f", … {len(counts) - 3} more" if len(counts) > 3 else "")
        print(f"  {name}: {shown}")
    print("  (type (available_instances); a PCI GPU on SR-IOV VFs, the L40S, makes no mdevs "
          "until its VFs are enabled)")


def mdevctl() -> None:
    say("2. A create with the real mdevctl, which hard-codes /sys: `mdevfs run` gives it the tree")
    dev = str(uuid.uuid4())
    script = (f"mdevctl start -u {dev} -p mtty -t mtty-2 && mdevctl list && "
              "cat /sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2/available_instances")
    cmd(f"mdevfs run -- sh -c '{script.replace(dev, '$UUID')}'")
    if shutil.which("mdevctl") is None:
        print("  (mdevctl is not installed here: `make demo` installs it; Debian: apt install mdevctl)")
        return
    done = subprocess.run([*MDEVFS, "run", "--", "sh", "-c", script], capture_output=True,
                          text=True)
    for line in (done.stdout + done.stderr).splitlines():
        if line.strip():
            print(f"  {line}")
    print("  (mtty-2 takes two of mtty's 24 ports: 12 → 11; the temporary mount is gone again)"
          if done.returncode == 0 else f"  (exit status {done.returncode})")


def by_hand(root: Path) -> None:
    say("3. The same by hand: a UUID written to a type's create, 1 to a device's remove")
    dev = str(uuid.uuid4())
    before = value(root, f"{MTTY_TYPE}/available_instances")
    cmd(f"echo $UUID > {MTTY_TYPE}/create")
    (root / MTTY_TYPE / "create").write_text(dev + "\n")
    print(f"  available_instances {before} → {value(root, f'{MTTY_TYPE}/available_instances')}; "
          f"bus/mdev/devices/$UUID -> {os.readlink(root / 'bus/mdev/devices' / dev)}")
    group = os.readlink(root / "bus/mdev/devices" / dev / "iommu_group")
    print(f"  its IOMMU group: {os.path.basename(group)}")
    cmd(f"echo $UUID > {MTTY_TYPE}/create    # the same UUID again")
    try:
        (root / MTTY_TYPE / "create").write_text(dev + "\n")
    except OSError as exc:
        print(f"  write error: {exc.strerror} (as the kernel: a UUID is used once)")
    cmd("echo 1 > bus/mdev/devices/$UUID/remove")
    (root / "bus/mdev/devices" / dev / "remove").write_text("1\n")
    print(f"  available_instances back to {value(root, f'{MTTY_TYPE}/available_instances')}")


def migration(root: Path) -> None:
    say("4. Migration, the proposal's check: read the source's migration_version, write it to the target")
    src, dst = str(uuid.uuid4()), str(uuid.uuid4())
    for dev in (src, dst):
        (root / GVT_TYPE / "create").write_text(dev + "\n")
    print("  two GVT-g vGPUs of type i915-GVTg_V5_4: SRC and DST")
    cmd("cat bus/mdev/devices/SRC/migration_version")
    version = (root / "bus/mdev/devices" / src / "migration_version").read_text()
    print(f"  {version.strip()}")
    newer = version.rsplit("-", 1)[0] + "-00000002\n"  # the same vGPU, another software version
    target = root / "bus/mdev/devices" / dst / "migration_version"
    for text, what in ((version, "the source's own string"),
                       (newer, "a string from a host with GVT software version 2")):
        cmd(f"echo {text.strip()} > bus/mdev/devices/DST/migration_version   # {what}")
        try:
            target.write_text(text)
            print("  accepted: SRC may migrate to DST")
        except OSError as exc:
            print(f"  write error: {exc.strerror}: refused, incompatible")
    log = subprocess.run([*MDEVFS, "log", "-n", "40", str(root)], capture_output=True,
                         text=True).stdout
    reasons = [line.split(": ", 1)[1] for line in log.splitlines()
               if " ERROR: " in line and "igration" in line]
    if reasons:
        print(f"  the driver's reason, in the mount's log (mdevfs log DIR): {reasons[-1]}")
    for dev in (src, dst):
        (root / "bus/mdev/devices" / dev / "remove").write_text("1\n")
    print("  `mdevfs check SRC DST` does the same check; `mdevfs matrix` does it for whole hosts")


def dump(root: Path) -> None:
    say("The full dump (--full): every type's name, device_api, available_instances, description")
    for parent in sorted(os.listdir(root / "class/mdev_bus")):
        types = root / "class/mdev_bus" / parent / "mdev_supported_types"
        for type_id in sorted(os.listdir(types)):
            rel = f"class/mdev_bus/{parent}/mdev_supported_types/{type_id}"
            for attr in ("name", "device_api", "available_instances", "description"):
                if (root / rel / attr).exists():
                    print(f"$ cat {rel}/{attr}\n{(root / rel / attr).read_text()}", end="")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also dump every type's files")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="mdevfs-demo-"))
    subprocess.run([*MDEVFS, "mount", str(root)], check=True, stdout=subprocess.DEVNULL)
    try:
        print(f"mdevfs demo: the embedded default topology, mounted at {root}")
        parents(root)
        mdevctl()
        by_hand(root)
        migration(root)
        if args.full:
            dump(root)
    finally:
        subprocess.run([*MDEVFS, "umount", str(root)], check=True)
        root.rmdir()
    print("\nunmounted. More: examples/README.md; `mdevfs --help`; `make demo DEMO=--full`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
