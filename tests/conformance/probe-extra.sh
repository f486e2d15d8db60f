#!/bin/sh
# probe-extra.sh SYSROOT MDEVOP: the probe's second part, run right after probe.sh into the same dump
# (in the VM by init.sh, on mdevfs by mdevfs-dump.sh). It starts and ends with no device. E lines:
#   k..  bind, unbind and drivers_probe through the driver the device is bound to, found at run time
#        (every mdev binds to vfio_mdev before 5.16, to its parent's own mdev driver since), and the
#        create path while bus/mdev/drivers_autoprobe is 0;
#   f..  descriptors held across the removal of their device (a file, a write-only file, the
#        device's directory, a subdirectory, the type's devices/ directory, the IOMMU group), and
#        across a remove and a create of the same UUID: fstat, fstatat, reading, listing and fchmod
#        through them (mdevop holdstat);
#   s..  synthetic uevents (lib/kobject_uevent.c, kobject_synth_uevent): the action word and its
#        argument parser, written to a device's, its parent's, the bus's and the driver's uevent.
# An operation whose arguments name the era's driver or are long prints a LABEL in their place, so
# that every kernel's line reads the same and compare.py matches them.
R=${1:-/sys}
H=${2:-mdevop}
SYSROOT=$R
export SYSROOT

h() { "$H" "$@"; }
e() {
	_id=$1
	shift
	printf 'E|%s|%s|%s\n' "$_id" "$*" "$("$H" "$@")"
}
# el ID LABEL OP ARGS...: as e, LABEL printed in place of OP ARGS
el() {
	_id=$1
	_l=$2
	shift 2
	printf 'E|%s|%s|%s\n' "$_id" "$_l" "$("$H" "$@")"
}

PM=$(h realpath class/mdev_bus/mtty)
PD=$(h realpath class/mdev_bus/mdpy)
T1=$PM/mdev_supported_types/mtty-1
TV=$PD/mdev_supported_types/mdpy-vga

# ---- k: the device's own driver, whatever its name
u=eeeeeeee-00e1-4000-8000-0000000000e1
v=eeeeeeee-00e2-4000-8000-0000000000e2
w=eeeeeeee-00e3-4000-8000-0000000000e3
e k01-create             write "$T1/create" "$u"
DRV=$(h realpath "$PM/$u/driver")
e k02-driver             realpath "$PM/$u/driver"
e k03-drivers            ls bus/mdev/drivers
e k04-avail-bound        read "$T1/available_instances"
e k05-groups-bound       ls kernel/iommu_groups
el k06-bind-bound        "write <driver>/bind <u>" write "$DRV/bind" "$u"
el k07-unbind            "write <driver>/unbind <u>" write "$DRV/unbind" "$u"
el k08-unbind-again      "write <driver>/unbind <u>" write "$DRV/unbind" "$u"
e k09-driver-unbound     stat "$PM/$u/driver"
e k10-group-unbound      stat "$PM/$u/iommu_group"
e k11-groups-unbound     ls kernel/iommu_groups
e k12-avail-unbound      read "$T1/available_instances"
e k13-uevent-unbound     read "$PM/$u/uevent"
e k14-ls-unbound         ls "$PM/$u"
el k15-bind-back         "write <driver>/bind <u>" write "$DRV/bind" "$u"
e k16-driver-back        realpath "$PM/$u/driver"
e k17-avail-rebound      read "$T1/available_instances"
e k18-ls-rebound         ls "$PM/$u"
e k19-remove             write "$PM/$u/remove" 1
e k20-avail-removed      read "$T1/available_instances"
e k21-autoprobe-0        write bus/mdev/drivers_autoprobe 0
e k22-autoprobe-read     read bus/mdev/drivers_autoprobe
e k23-create-noauto      write "$T1/create" "$v"
e k24-driver-noauto      stat "$PM/$v/driver"
e k25-group-noauto       stat "$PM/$v/iommu_group"
e k26-avail-noauto       read "$T1/available_instances"
e k27-ls-noauto          ls "$PM/$v"
e k28-uevent-noauto      read "$PM/$v/uevent"
e k29-probe-noauto       write bus/mdev/drivers_probe "$v"
e k30-driver-probed      realpath "$PM/$v/driver"
e k31-avail-probed       read "$T1/available_instances"
e k32-autoprobe-1        write bus/mdev/drivers_autoprobe 1
e k33-remove             write "$PM/$v/remove" 1
e k34-create-mdpy        write "$TV/create" "$w"
e k35-driver-mdpy        realpath "$PD/$w/driver"
DRVD=$(h realpath "$PD/$w/driver")
el k36-unbind-mdpy       "write <mdpy driver>/unbind <w>" write "$DRVD/unbind" "$w"
e k37-avail-mdpy-unbound read "$TV/available_instances"
el k38-bind-mdpy         "write <mdpy driver>/bind <w>" write "$DRVD/bind" "$w"
e k39-avail-mdpy-rebound read "$TV/available_instances"
e k40-remove-mdpy        write "$PD/$w/remove" 1
e k41-left               ls bus/mdev/devices

# ---- f: descriptors held across the removal of their device
# fh NN KIND PATH LABEL [recreate]: a fresh mtty-1 device <u>; PATH (<u> stands for the device's
# UUID, in KIND too) held open while the device is removed (and, with recreate, created again)
fh() {
	_u=eeeeeeee-0f$1-4000-8000-0000000000$1
	_k=$(echo "$2" | sed "s#<u>#$_u#g")
	_p=$(echo "$3" | sed "s#<u>#$_u#g")
	_l=$(echo "holdstat $2 $3" | sed "s#$PM#<parent>#; s#$T1#<type>#")
	e "f$1-create" write "$T1/create" "$_u"
	if [ "${5:-}" = recreate ]; then
		el "f$1-hold-$4-recreated" "$_l, remove <u>, create <u>" \
			holdstat "$_k" "$_p" "$PM/$_u/remove" "$T1/create" "$_u"
		e "f$1-remove-again" write "$PM/$_u/remove" 1
	else
		el "f$1-hold-$4" "$_l, remove <u>" holdstat "$_k" "$_p" "$PM/$_u/remove"
	fi
	e "f$1-gone" stat "$PM/$_u"
}
fh 01 file "$PM/<u>/uevent" uevent
fh 02 file "$PM/<u>/vendor/sample_mdev_dev" vendor-attr
fh 03 file "$PM/<u>/mdev_type/name" type-name
fh 04 wfile "$PM/<u>/remove" remove-wronly
fh 05 wfile "$PM/<u>/uevent" uevent-wronly
fh 06 dir:uevent "$PM/<u>" device-dir
fh 07 dir:control "$PM/<u>/power" power-dir
fh 08 dir:devices "$PM/<u>/iommu_group" iommu-group-dir
fh 09 dir:sample_mdev_dev "$PM/<u>/vendor" vendor-dir
fh 10 "dir:<u>" "$T1/devices" type-devices-dir
fh 11 "dir:<u>" bus/mdev/devices bus-devices-dir
fh 12 file "$PM/<u>/uevent" uevent recreate
fh 13 dir:uevent "$PM/<u>" device-dir recreate
e f99-left               ls bus/mdev/devices

# ---- s: synthetic uevents, every case on each of the four kinds of uevent file
u=eeeeeeee-00e5-4000-8000-0000000000e5
e s00-create             write "$T1/create" "$u"
DRV=$(h realpath "$PM/$u/driver")
SU=12345678-9abc-4def-8123-456789abcdef
SUU=12345678-9ABC-4DEF-8123-456789ABCDEF
# kv N: the N arguments "K1=v K2=v ... KN=v"
kv() {
	_i=0
	_s=""
	while [ "$_i" -lt "$1" ]; do
		_i=$((_i + 1))
		_s="$_s K$_i=v"
	done
	printf '%s' "${_s# }"
}
# rep N C: N times C
rep() {
	_s=""
	_i=0
	while [ "$_i" -lt "$1" ]; do
		_i=$((_i + 1))
		_s="$_s$2"
	done
	printf '%s' "$_s"
}
# values: "add <uuid> K=" is 43 bytes, so 4053 and 4054 make writes of 4096 and 4097 bytes
for _n in 1800 1900 2100 4053 4054; do eval "A$_n=\$(rep $_n a)"; done
# syn TAG FILE
syn() {
	_t=$1
	_f=$2
	_c=0
	for _a in add 'add\n' 'add\0' change 'change\n' move online offline bind unbind remove \
		bogus @empty '\n' 'add ' 'add  ' ADD ad addx 'add\nx' "change $SU" \
		"add $SU" "add $SU\\n" "add $SUU" 'add not-a-uuid' 'add 12345678-9abc-4def-8123-456789abcde' \
		"add $SU KEY=value" "add $SU KEY=value OTHER=x" "add $SU KEY=value\\n" "add $SU noequals" \
		"add $SU MY_KEY=1" "add $SU KEY=" "add $SU =value" "add $SU KEY=a-b" "add $SU KEY=a=b" \
		"add $SU " "add ${SU}KEY=v" "add $SU  KEY=v" "add $SU KEY=v " "add $SU KEY=v\\n\\n"; do
		_c=$((_c + 1))
		el "s$(printf %02d $_c)-$_t" "write <$_t>/uevent $_a" write "$_f" "$_a"
	done
	for _n in 8 32 50 52 54 55 56 57 58 59 60 61 62 63 64 70; do
		el "s-args$_n-$_t" "write <$_t>/uevent add <uuid> K1=v .. K$_n=v" write "$_f" "add $SU $(kv $_n)"
	done
	for _n in 1800 1900 2100 4053 4054; do
		eval "_v=\$A$_n"
		el "s-value$_n-$_t" "write <$_t>/uevent add <uuid> K=<$_n x a> ($((43 + _n)) bytes)" write "$_f" "add $SU K=$_v"
	done
	el "s-read-$_t" "read <$_t>/uevent" read "$_f"
}
syn device "$PM/$u/uevent"
syn parent "$PM/uevent"
syn bus bus/mdev/uevent
el s99-driver-uevent     "stat <driver>/uevent" stat "$DRV/uevent"
syn driver "$DRV/uevent"
e s99-remove             write "$PM/$u/remove" 1
e s99-left               ls bus/mdev/devices
