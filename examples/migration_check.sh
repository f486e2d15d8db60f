#!/bin/bash
# The 2020 migration_version proposal's userspace check done by hand with cat and echo ("Example Usage" of
# the migration_version series v5, patches 1/4 and 3/4), on any sysfs root: a
# real /sys or an mdevfs mount.
#
#   examples/migration_check.sh SOURCE TARGET
#
# SOURCE and TARGET are mdev device directories ($ROOT/bus/mdev/devices/$UUID)
# or mdev type directories ($ROOT/class/mdev_bus/$PARENT/mdev_supported_types/$TYPE).
# A device paired with a type is checked through its mdev_type link.
# Prints each command as it runs it; exit 0: compatible, 1: not, 2: usage.
set -u
if [ $# -ne 2 ]; then echo "usage: $0 SOURCE TARGET" >&2; exit 2; fi

kind() {  # "type" or "device"; nothing (status 1) for any other path
    if [ "$(basename "$(dirname "$1")")" = mdev_supported_types ]; then echo type
    elif [ -L "$1/mdev_type" ]; then echo device
    else return 1; fi
}
incompatible() { echo "incompatible: $*"; exit 1; }

src=$(readlink -f "$1") tgt=$(readlink -f "$2")
for dir in "$src" "$tgt"; do
    kind "$dir" >/dev/null || { echo "$0: $dir: not an mdev type or device directory" >&2; exit 2; }
done
if [ "$(kind "$src")" != "$(kind "$tgt")" ]; then  # compare at the type level
    [ "$(kind "$src")" = device ] && src=$(readlink -f "$src/mdev_type")
    [ "$(kind "$tgt")" = device ] && tgt=$(readlink -f "$tgt/mdev_type")
fi

# (1) Absence of the attribute means no migration support.
for dir in "$src" "$tgt"; do
    [ -e "$dir/migration_version" ] || incompatible "$dir has no migration_version"
done

# (2) Type nodes: userspace checks the mdev types match (a device's string holds its type).
if [ "$(kind "$src")" = type ]; then
    echo "# basename $src; basename $tgt"
    [ "$(basename "$src")" = "$(basename "$tgt")" ] ||
        incompatible "the types differ: $(basename "$src") and $(basename "$tgt")"
fi

# (3) Retrieve the source migration_version; an error means migration is not possible.
echo "# cat $src/migration_version"
VERSION=$(cat "$src/migration_version") ||
    incompatible "reading the source's migration_version failed"
echo "$VERSION"

# (4) Test it at the target; a failed write means incompatible (or no support there).
echo "# echo $VERSION > $tgt/migration_version"
echo "$VERSION" > "$tgt/migration_version" ||
    incompatible "the target refused the source's migration_version"
echo "compatible"
