#!/bin/sh
# probe.sh SYSROOT MDEVOP: mdevfs's conformance probe of the mdev surface. POSIX sh (busybox sh in the VM, also on the host).
# Prints a canonical dump on stdout:
#   T|state|path|type|mode|size|nlink|uid:gid|link target|=content or !ERRNO@step   (tree walk)
#   E|id|operation and arguments|result                                            (errno matrix)
# Every path is relative to SYSROOT, so the same probe run against a real /sys (in the VM) and
# against an mdevfs mount (on the host) prints comparable lines. Fixed UUIDs are used throughout.
R=${1:-/sys}
H=${2:-mdevop}
SYSROOT=$R
export SYSROOT

h() { "$H" "$@"; }
# e ID OP ARGS...: run one operation, print one E line
e() {
	_id=$1
	shift
	printf 'E|%s|%s|%s\n' "$_id" "$*" "$("$H" "$@")"
}

parents() { h ls class/mdev_bus | sed 's/^OK//'; }

walk_all() {
	_st=$1
	h walk "$_st" class/mdev_bus
	for _p in $(parents); do
		_d=$(h realpath "class/mdev_bus/$_p")
		h walk "$_st" "${_d%/*}"
		_s=$(h realpath "$_d/subsystem")
		h walk "$_st" "$_s"
	done
	h walk "$_st" bus/mdev kernel/iommu_groups
	# the vfio classes: outside what mdevfs declares it serves; walked to document the kernel
	h walk "$_st" class/vfio-dev class/vfio
}

# remove every mdev that exists (through /sys/bus/mdev/devices/<uuid>/remove)
cleanup() {
	for _u in $(h ls bus/mdev/devices | sed 's/^OK//'); do
		e "$1-$_u" write "bus/mdev/devices/$_u/remove" 1
	done
	e "$1-left" ls bus/mdev/devices
}

PM=$(h realpath class/mdev_bus/mtty)     # devices/virtual/mtty/mtty
PD=$(h realpath class/mdev_bus/mdpy)
PB=$(h realpath class/mdev_bus/mbochs)
T1=$PM/mdev_supported_types/mtty-1
T2=$PM/mdev_supported_types/mtty-2
TV=$PD/mdev_supported_types/mdpy-vga
TX=$PD/mdev_supported_types/mdpy-xga
TH=$PD/mdev_supported_types/mdpy-hd
TS=$PB/mdev_supported_types/mbochs-small
TMd=$PB/mdev_supported_types/mbochs-medium
TL=$PB/mdev_supported_types/mbochs-large

UA=11111111-1111-4111-8111-111111111111
UB=22222222-2222-4222-8222-222222222222
UC=33333333-3333-4333-8333-333333333333
UD=44444444-4444-4444-8444-444444444444

echo "I|parents|$(parents)"
echo "I|paths|$PM $PD $PB"

# ---- 0: the empty tree
walk_all s0-empty

# ---- 1: one device of each kind, then the populated tree
e a01 write "$T1/create" "$UA\n"
e a02 write "$T2/create" "$UB\n"
e a03 write "$TV/create" "$UC\n"
e a04 write "$TS/create" "$UD\n"
walk_all s1-populated

# ---- 2: create matrix (all on mtty-1 unless said)
e c01-valid-nl         write "$T1/create" 'aaaaaaaa-5555-4555-8555-55555555abcd\n'
e c02-same-again       write "$T1/create" 'aaaaaaaa-5555-4555-8555-55555555abcd\n'
e c03-upper-dup        write "$T1/create" 'AAAAAAAA-5555-4555-8555-55555555ABCD\n'
e c03b-upper-dup-mdpy  write "$TV/create" 'AAAAAAAA-5555-4555-8555-55555555ABCD\n'
e c04-36-no-nl         write "$T1/create" 'bbbbbbbb-6666-4666-8666-666666666666'
e c04b-exists          stat "$PM/bbbbbbbb-6666-4666-8666-666666666666"
e c05-37-trailing-x    write "$T1/create" 'bbbbbbbb-7777-4777-8777-777777777777x'
e c05b-exists          stat "$PM/bbbbbbbb-7777-4777-8777-777777777777"
e c06-35-chars         write "$T1/create" 'bbbbbbbb-8888-4888-8888-88888888888'
e c07-38-two-nl        write "$T1/create" 'bbbbbbbb-8888-4888-8888-888888888888\n\n'
e c07b-38-nl-x         write "$T1/create" 'bbbbbbbb-8888-4888-8888-888888888888\nx'
e c08-bad-hex          write "$T1/create" 'gggggggg-8888-4888-8888-888888888888\n'
e c08b-bad-dash        write "$T1/create" 'bbbbbbbb_8888-4888-8888-888888888888\n'
e c09-empty            write "$T1/create" @empty
e c10-other-parent     write "$T1/create" "$UC\n"
e c10b-other-parent2   write "$TL/create" "$UA\n"
e c11-other-type       write "$T1/create" "$UB\n"
e c12-upper-new        write "$T1/create" 'CCCCCCCC-9999-4999-8999-99999999ABCD\n'
e c12b-lower-dir       stat "$PM/cccccccc-9999-4999-8999-99999999abcd"
e c12c-upper-dir       stat "$PM/CCCCCCCC-9999-4999-8999-99999999ABCD"
e c12d-bus-link        stat "bus/mdev/devices/cccccccc-9999-4999-8999-99999999abcd"
e c13-leading-space    write "$T1/create" ' bbbbbbbb-8888-4888-8888-88888888888\n'
e c14-nil-uuid         write "$T1/create" '00000000-0000-0000-0000-000000000000\n'
e c14b-nil-exists      stat "$PM/00000000-0000-0000-0000-000000000000"
e c15-no-dashes-36     write "$T1/create" '0123456789abcdef0123456789abcdef0123'
e c16-braces           write "$T1/create" '{bbbbbbbb-8888-4888-8888-888888888888}'
e c17-pwrite-off10     pwrite "$T1/create" 10 'dddddddd-1010-4010-8010-101010101010\n'
e c17b-exists          stat "$PM/dddddddd-1010-4010-8010-101010101010"
e c18-5000-bytes       write "$T1/create" @rep:5000:a
e c19-trailing-nul     write "$T1/create" 'dddddddd-1919-4919-8919-191919191919\0'
e c19b-exists          stat "$PM/dddddddd-1919-4919-8919-191919191919"
e c20-nul-then-junk    write "$T1/create" 'dddddddd-2020-4020-8020-202020202020\0zz'
e c21-rdwr             writerw "$T1/create" 'dddddddd-2121-4121-8121-212121212121\n'
e c22-open-rdonly      open "$T1/create" rdonly
e c23-open-trunc       open "$T1/create" trunc
e c24-open-creat       open "$T1/create" creat
e c25-open-excl        open "$T1/create" excl
e c26-read             read "$T1/create"
e c27-avail-mtty1      read "$T1/available_instances"
e c27b-avail-mtty2     read "$T2/available_instances"
e c28-devices-mtty1    ls "$T1/devices"

# ---- 3: reads and read-only attributes
e r01-name             read "$T1/name"
e r02-chunks3          readchunks "$T1/name" 3
e r03-pread-2-5        pread "$T1/name" 2 5
e r04-pread-past-end   pread "$T1/available_instances" 100 10
e r05-name-wronly      open "$T1/name" wronly
e r06-write-name       write "$T1/name" x
e r07-write-avail      write "$T1/available_instances" 1
e r08-write-api        write "$T1/device_api" vfio-pci
e r09-write-desc       write "$TV/description" x
e r10-read-remove      read "$PM/$UA/remove"
e r10b-open-remove-rw  open "$PM/$UA/remove" rdwr
e r11-dev-uevent-change write "$PM/$UA/uevent" change
e r12-dev-uevent-bogus  write "$PM/$UA/uevent" bogus
e r13-dev-uevent-add-nl write "$PM/$UA/uevent" 'add\n'
e r14-dev-uevent-read   read "$PM/$UA/uevent"
e r15-parent-uevent-change write "$PM/uevent" change
e r15b-parent-uevent-bogus write "$PM/uevent" bogus
e r16-vendor-attr-write write "$PM/$UA/vendor/sample_mdev_dev" x
e r16b-mdpy-resolution  read "$PD/$UC/vendor/resolution"
e r16c-mbochs-memory    read "$PB/$UD/vendor/memory"
e r17-power-control-auto write "$PM/$UA/power/control" auto
e r17b-power-control-bogus write "$PM/$UA/power/control" bogus
e r18-autosuspend-write  write "$PM/$UA/power/autosuspend_delay_ms" 100
e r19-runtime-status-write write "$PM/$UA/power/runtime_status" active
e r20-mdev-type-link-name read "$PM/$UA/mdev_type/name"
e r21-iommu-group-type   read "$PM/$UA/iommu_group/type"
e r22-via-bus-link       read "bus/mdev/devices/$UA/mdev_type/available_instances"
e r23-devices-link-name  read "$T1/devices/$UA/mdev_type/name"
e r24-parent-avail-after read "$TV/available_instances"

# ---- 4: the bus and its drivers
e b01-autoprobe-read    read bus/mdev/drivers_autoprobe
e b02-autoprobe-1       write bus/mdev/drivers_autoprobe 1
e b03-autoprobe-x       write bus/mdev/drivers_autoprobe x
e b03b-autoprobe-after  read bus/mdev/drivers_autoprobe
e b04-probe-uuid        write bus/mdev/drivers_probe "$UA"
e b04b-probe-uuid-nl    write bus/mdev/drivers_probe "$UA\n"
e b05-probe-unknown     write bus/mdev/drivers_probe 99999999-9999-4999-8999-999999999999
e b06-probe-empty       write bus/mdev/drivers_probe @empty
e b06b-probe-read       read bus/mdev/drivers_probe
e b07-bus-uevent-add    write bus/mdev/uevent add
e b08-bus-uevent-bogus  write bus/mdev/uevent bogus
e b09-bus-uevent-read   read bus/mdev/uevent
e b10-bind-bound        write bus/mdev/drivers/mtty/bind "$UA"
e b11-bind-unknown      write bus/mdev/drivers/mtty/bind 99999999-9999-4999-8999-999999999999
e b11b-bind-other-drv   write bus/mdev/drivers/mdpy/bind "$UA"
e b12-unbind-other-drv  write bus/mdev/drivers/mdpy/unbind "$UA"
e b12b-unbind-unknown   write bus/mdev/drivers/mtty/unbind 99999999-9999-4999-8999-999999999999
e b13-drv-uevent-add    write bus/mdev/drivers/mtty/uevent add
e b14-drv-uevent-bogus  write bus/mdev/drivers/mtty/uevent bogus
e b15-drv-bind-read     read bus/mdev/drivers/mtty/bind
e b16-drv-link          stat "bus/mdev/drivers/mtty/$UA"
e b17-drv-ls            ls bus/mdev/drivers/mtty

# ---- 5: namespace operations (sysfs refuses them)
e n01-mkdir             mkdir "$T1/newdir"
e n02-rmdir-dev         rmdir "$PM/$UA"
e n03-unlink-remove     unlink "$PM/$UA/remove"
e n03b-unlink-devlink   unlink "$T1/devices/$UA"
e n04-rename            rename "$PM/$UA/remove" "$PM/$UA/remove2"
e n05-symlink           symlink x "$T1/devices/newlink"
e n06-chmod-create-0600 chmod "$T1/create" 600
e n06b-stat-create      stat "$T1/create"
e n06c-chmod-create-back chmod "$T1/create" 200
e n06d-stat-create      stat "$T1/create"
e n07-truncate-name     truncate "$T1/name"
e n08-creat-new         open "$T1/newfile" creat
e n09-stat-missing      stat "$T1/nosuch"
e n09b-stat-missing-dev stat "$PM/99999999-9999-4999-8999-999999999999"
e n10-opendir-dev       open "$PM/$UA" dir
e n10b-opendir-file     open "$T1/name" dir
e n11-read-dir          read "$PM/$UA"
e n12-write-dir         write "$PM/$UA" 1
e n13-read-link-dir     read "$PM/$UA/mdev_type"
e n14-chmod-link        chmod "$PM/$UA/mdev_type" 700
e n14b-stat-link-target stat "$T1"
e n14c-chmod-link-back  chmod "$PM/$UA/mdev_type" 755
e n14d-stat-link-target stat "$T1"

# ---- 6: remove matrix: each on a fresh mtty-1 device
i=10
for d in 1 '1\n' 0 0x1 01 -1 abc 99999999999999999999999 @empty ' 1' '1 ' 2 '1\n\n' +1 0x true 18446744073709551615 18446744073709551616 '1\0'; do
	i=$((i + 1))
	u=ffffffff-00$i-4000-8000-0000000000$i
	e "m$i-create" write "$T1/create" "$u"
	e "m$i-remove[$d]" write "$PM/$u/remove" "$d"
	e "m$i-exists" stat "$PM/$u"
	case "$(h stat "$PM/$u")" in OK*) h write "$PM/$u/remove" 1 >/dev/null ;; esac
	e "m$i-gone" stat "$PM/$u"
done

# ---- 7: files held open while their device goes away
u=eeeeeeee-0001-4000-8000-000000000001
e h01-create           write "$T1/create" "$u"
e h01-holdread-vendor  holdread "$PM/$u/vendor/sample_mdev_dev" "$PM/$u/remove"
u=eeeeeeee-0002-4000-8000-000000000002
e h02-create           write "$T1/create" "$u"
e h02-holdread-uevent  holdread "$PM/$u/uevent" "$PM/$u/remove"
u=eeeeeeee-0003-4000-8000-000000000003
e h03-create           write "$T1/create" "$u"
e h03-holdwrite-remove holdwrite "$PM/$u/remove"
u=eeeeeeee-0004-4000-8000-000000000004
e h04-create           write "$T1/create" "$u"
e h04-holddir          holddir "$PM/$u" "$PM/$u/remove"
u=eeeeeeee-0005-4000-8000-000000000005
e h05-create           write "$T1/create" "$u"
e h05-holdread-typeavail holdread "$T1/available_instances" "$PM/$u/remove"
u=eeeeeeee-0006-4000-8000-000000000006
e h06-create           write "$TV/create" "$u"
e h06-holdread-mdpy-res holdread "$PD/$u/vendor/resolution" "bus/mdev/devices/$u/remove"

# ---- 8: unbind a device from its driver, look at it, try to get it back, remove it
u=eeeeeeee-0008-4000-8000-000000000008
e u01-create           write "$T1/create" "$u"
e u02-unbind           write bus/mdev/drivers/mtty/unbind "$u"
h walk s2-unbound "$PM/$u"
e u03-drv-link         stat "bus/mdev/drivers/mtty/$u"
e u04-groups           ls kernel/iommu_groups
e u05-bind             write bus/mdev/drivers/mtty/bind "$u"
e u06-probe            write bus/mdev/drivers_probe "$u"
e u07-driver-after     stat "$PM/$u/driver"
e u08-avail            read "$T1/available_instances"
e u09-remove           write "$PM/$u/remove" 1
e u10-gone             stat "$PM/$u"
e u11-avail            read "$T1/available_instances"

# ---- 8b: what the other sections leave out: power/async, the IOMMU group's files, a held
# directory stream that is rewound after a create, the parent's uevent
u=eeeeeeee-0009-4000-8000-000000000009
e p01-create            write "$T1/create" "$u"
e p02-async-read        read "$PM/$u/power/async"
e p03-async-enabled     write "$PM/$u/power/async" enabled
e p03b-async-after      read "$PM/$u/power/async"
e p04-async-bogus       write "$PM/$u/power/async" bogus
e p05-group-type-dma    write "$PM/$u/iommu_group/type" DMA
e p05b-group-type-ident write "$PM/$u/iommu_group/type" 'identity\n'
e p05c-group-type-after read "$PM/$u/iommu_group/type"
e p06-group-name        read "$PM/$u/iommu_group/name"
e p06b-group-regions    read "$PM/$u/iommu_group/reserved_regions"
e p06c-group-devices    ls "$PM/$u/iommu_group/devices"
e p07-vfio-dev-ls       ls "$PM/$u/vfio-dev"
e p08-rewind-devices    rewind bus/mdev/devices "$T2/create" eeeeeeee-0010-4000-8000-000000000010
e p08b-rewind-typedevs  rewind "$T1/devices" "$T1/create" eeeeeeee-0011-4000-8000-000000000011
e p09-parent-uevent     read "$PM/uevent"
e p09b-mdpy-uevent      read "$PD/uevent"
e p10-type-devices-ls   ls "$T1/devices"
e p11-unbind-nl         write bus/mdev/drivers/mtty/unbind "$u\n"
e p11b-unbind-again     write bus/mdev/drivers/mtty/unbind "$u"
e p11c-group-gone       stat "$PM/$u/iommu_group"
e p11d-uevent           read "$PM/$u/uevent"
e p11e-vendor-gone      stat "$PM/$u/vendor"
e p11f-avail            read "$T1/available_instances"
e p12-remove-unbound    write "bus/mdev/devices/$u/remove" 1
e p12b-gone             stat "$PM/$u"

# ---- 9: clean up, then exhaust each pool, printing available_instances after every step
cleanup z0
avail_mtty() { e "$1-avail-mtty-1" read "$T1/available_instances"; e "$1-avail-mtty-2" read "$T2/available_instances"; }
avail_mdpy() {
	e "$1-avail-vga" read "$TV/available_instances"
	e "$1-avail-xga" read "$TX/available_instances"
	e "$1-avail-hd" read "$TH/available_instances"
}
avail_mbochs() {
	e "$1-avail-small" read "$TS/available_instances"
	e "$1-avail-medium" read "$TMd/available_instances"
	e "$1-avail-large" read "$TL/available_instances"
}
avail_mtty x00
i=0
for t in 2 2 2 2 2 2 2 2 2 2 2 1 2 1 1 2; do
	i=$((i + 1))
	n=$(printf %02d $i)
	eval "tp=\$T$t"
	e "x$n-create-mtty-$t" write "$tp/create" "dddddddd-00$n-4000-8000-0000000000$n"
	avail_mtty "x$n"
done
cleanup x99
avail_mtty x99

avail_mdpy y00
i=0
for t in V X H V V X; do
	i=$((i + 1))
	n=$(printf %02d $i)
	eval "tp=\$T$t"
	e "y$n-create-mdpy-$t" write "$tp/create" "cccccccc-00$n-4000-8000-0000000000$n"
	avail_mdpy "y$n"
done
cleanup y99
avail_mdpy y99

avail_mbochs w00
i=0
for t in L L L Md Md Md S S S S S L; do
	i=$((i + 1))
	n=$(printf %02d $i)
	eval "tp=\$T$t"
	e "w$n-create-mbochs-$t" write "$tp/create" "bbbbbbbb-00$n-4000-8000-0000000000$n"
	avail_mbochs "w$n"
done
cleanup w99
avail_mbochs w99

# ---- 10: the tree once everything is gone
walk_all s9-final
