#!/bin/sh
# sriov-probe.sh SYSROOT MDEVOP PF [TAG]: the generic PCI/SR-IOV core of one physical function, in
# the probe's dump format (T lines from mdevop walk, E lines for operations, I lines for facts), so
# that a real kernel (in QEMU, on an emulated igb PF: run-sriov.sh) and mdevfs (the same machine:
# sriov.toml, mdevfs-dump.sh --sriov) answer the same questions. POSIX sh.
# Paths are rewritten before they are printed: the PF's to <PF> and <PFADDR>, its VFs' to <VFn> and
# <VFnADDR>, its driver's directory to drivers/<DRV>, and IOMMU group numbers (in iommu_groups/N and
# vfio/N) to <G:PF>, <G:VFn> for the groups of those functions and <G:?> for any other; the raw
# numbers go to I|groups lines, where compare-sriov.py checks how they relate (each VF's group is
# the lowest number free, numbers come back after the VFs go, the vfio group is named after the
# IOMMU group and its minor is vfio's own). Every step is deterministic; the probe ends with the PF
# bound to its driver, autoprobe on and no VF. Driver class subdirectories (net, ptp, nvidia, ...)
# are listed, not walked; the runtime PM clocks (power/runtime_*_time, milliseconds) read <ms>. TAG
# names the run in the I lines (igb, gpu).
R=${1:-/sys}
H=${2:-mdevop}
PF=$3
TAG=${4:-pf}
SYSROOT=$R
export SYSROOT
PRUNE=" net nvme nvme-generic ptp hwmon drm nvidia infiniband_verbs "

h() { "$H" "$@"; }
val() { h read "$1" | sed -n 's/^OK //; s/\\n$//p'; }
# grp DEV: the number of DEV's IOMMU group, or "none"
grp() {
	_g=$(h realpath "$1/iommu_group")
	case $_g in '!'* | '') echo none ;; *) echo "${_g##*/}" ;; esac
}
groups() { h ls kernel/iommu_groups | sed 's/^OK *//; s/ /,/g'; }

P=bus/pci/devices/$PF
PD=$(h realpath "$P")
PFDRV=$(h realpath "$PD/driver")
DRV=${PFDRV##*/}
TOTAL=$(val "$PD/sriov_totalvfs")
echo "I|$TAG|pf|driver=$DRV|totalvfs=$TOTAL"

# sed expressions for the VFs and the groups known at the time (see known)
SED=""
# gsed NUMBER NAME: the sed expressions that rename group NUMBER to <G:NAME>
gsed() {
	[ "$1" = none ] && return 0
	printf ' -e s#iommu_groups/%s\\([^0-9]\\|$\\)#iommu_groups/<G:%s>\\1#g -e s#vfio/%s\\([^0-9]\\|$\\)#vfio/<G:%s>\\1#g' "$1" "$2" "$1" "$2"
}
known() { # known: the VFs that exist now, and the groups of the PF and of those VFs
	SED="$(gsed "$(grp "$PD")" PF)"
	for _l in $(h ls "$PD" | sed 's/^OK//'); do
		case $_l in virtfn*)
			_n=${_l#virtfn}
			_p=$(h realpath "$PD/$_l")
			SED="$SED -e s#$_p#<VF$_n>#g -e s#${_p##*/}#<VF${_n}ADDR>#g$(gsed "$(grp "$_p")" "VF$_n")"
			;;
		esac
	done
}
canon() {
	# shellcheck disable=SC2086
	sed $SED -e "s#$PD#<PF>#g" -e "s#$PF#<PFADDR>#g" -e "s#drivers/$DRV\\([/ |]\\|\$\\)#drivers/<DRV>\\1#g" \
		-e 's#iommu_groups/[0-9][0-9]*#iommu_groups/<G:?>#g' \
		-e '/\/power\/runtime_[a-z]*_time|/s/|=[0-9][0-9]*\\n$/|=<ms>\\n/'
}
e() {
	_id=$1
	shift
	printf 'E|%s|%s|%s\n' "$_id" "$*" "$("$H" "$@")" | canon
}
# wk STATE DIR: T lines for DIR and its entries, recursively; driver class subdirectories stat'ed only
wk() {
	printf 'T|%s|%s|%s\n' "$1" "$2" "$(h stat "$2")" | canon
	for _c in $(h ls "$2" | sed 's/^OK//'); do
		case "$PRUNE" in *" $_c "*)
			printf 'T|%s|%s/%s|pruned %s\n' "$1" "$2" "$_c" "$(h stat "$2/$_c")" | canon
			continue
			;;
		esac
		h walk "$1" "$2/$_c" | canon
	done
}
# gwalk DEV STATE: DEV's IOMMU group: the functions it holds (an E line) and its own files (T lines)
gwalk() {
	_g=$(h realpath "$1/iommu_group")
	printf 'E|%s|group members|%s\n' "$2" "$(h ls "$_g/devices" | canon)"
	case $_g in '!'*) ;; *) h walk "$2" "$_g" | grep -v "^T|$2|[^|]*/devices/" | canon ;; esac
}
# ginfo STATE: the raw group numbers: the PF's, each VF's, and every group that exists
ginfo() {
	_s="I|groups|$1|pf=$(grp "$PD")"
	for _l in $(h ls "$PD" | sed 's/^OK//'); do
		case $_l in virtfn*) _s="$_s vf${_l#virtfn}=$(grp "$PD/$_l")" ;; esac
	done
	echo "$_s all=$(groups)"
}

known
# ---- s0: the PF as it boots (bound, no VF)
ginfo s0
wk s0-boot "$PD"
gwalk "$PD" g00-pf
e p01-drv-dir           ls "$PFDRV"
e p02-bus-pci           ls bus/pci
e p03-totalvfs-write    write "$PD/sriov_totalvfs" 1
e p04-offset-write      write "$PD/sriov_offset" 1
e p05-stride-read       read "$PD/sriov_stride"
e p06-config-size       stat "$PD/config"
e p07-config-read-64    pread "$PD/config" 0 64
e p08-numa-read         read "$PD/numa_node"
e p09-vf-total-msix     read "$PD/sriov_vf_total_msix"
e p10-driver-override   read "$PD/driver_override"
e p11-uevent-change     write "$PD/uevent" change
e p12-uevent-bogus      write "$PD/uevent" bogus
e p13-uevent-read       read "$PD/uevent"
e p14-group-type        read "$PD/iommu_group/type"

# ---- n: sriov_numvfs parsing and range, no VF yet
e n01-read              read "$PD/sriov_numvfs"
e n02-junk              write "$PD/sriov_numvfs" junk
e n03-empty             write "$PD/sriov_numvfs" @empty
e n04-minus-1           write "$PD/sriov_numvfs" -1
e n05-65536             write "$PD/sriov_numvfs" 65536
e n06-65535             write "$PD/sriov_numvfs" 65535
e n07-total-plus-1      write "$PD/sriov_numvfs" "$((TOTAL + 1))"
e n08-lead-space        write "$PD/sriov_numvfs" ' 1'
e n09-trail-space       write "$PD/sriov_numvfs" '1 '
e n10-zero-noop         write "$PD/sriov_numvfs" 0
e n11-zero-nl-noop      write "$PD/sriov_numvfs" '0\n'
e n12-hex-zero-noop     write "$PD/sriov_numvfs" 0x0
e n13-plus-zero         write "$PD/sriov_numvfs" +0
e n14-two-nl            write "$PD/sriov_numvfs" '0\n\n'
e n15-nul               write "$PD/sriov_numvfs" '0\0'
e n16-autoprobe-read    read "$PD/sriov_drivers_autoprobe"

# ---- s1: two VFs, autoprobe on
e a01-enable-2          write "$PD/sriov_numvfs" '2\n'
known
ginfo s1
e a02-numvfs            read "$PD/sriov_numvfs"
e a03-virtfn            ls "$PD"
V0=$(h realpath "$PD/virtfn0")
V1=$(h realpath "$PD/virtfn1")
e a04-vf0-driver        realpath "$V0/driver"
e a05-vf1-driver        realpath "$V1/driver"
e a06-vf0-physfn        realpath "$V0/physfn"
e a07-vf0-bus-link      stat "bus/pci/devices/${V0##*/}"
h walk s1-pf "$PD/virtfn0" "$PD/virtfn1" "$PD/sriov_numvfs" "$PD/resource" "$PD/power/runtime_status" | canon
e a08-drv-dir-vfs       ls "$PFDRV"
# vdevs: each class/vfio entry with its dev (major:minor), as NAME@MAJ:MIN,...
vdevs() {
	_s=""
	for _v in $(h ls class/vfio | sed 's/^OK//'); do _s="$_s,$_v@$(val "class/vfio/$_v/dev")"; done
	echo "${_s#,}"
}
echo "I|vfio-s1|vf0-vfio-dev=$(h ls "$V0/vfio-dev" | sed 's/^OK *//')|class-vfio=$(vdevs)|class-vfio-dev=$(h ls class/vfio-dev | sed 's/^OK *//; s/ /,/g')"
wk s1-auto "$V0"
gwalk "$V0" g01-vf0
gwalk "$V1" g02-vf1
gwalk "$PD" g03-pf-with-vfs
e a09-busy-3            write "$PD/sriov_numvfs" 3
e a10-busy-1            write "$PD/sriov_numvfs" 1
e a11-same-2-noop       write "$PD/sriov_numvfs" 2
e a12-octal-2-noop      write "$PD/sriov_numvfs" 02
e a13-hex-2-noop        write "$PD/sriov_numvfs" 0x2
e a14-range-first       write "$PD/sriov_numvfs" "$((TOTAL + 1))"
e a15-junk-first        write "$PD/sriov_numvfs" junk
e a16-vf-numvfs         write "$V0/sriov_numvfs" 1
e a17-vf-totalvfs       read "$V0/sriov_totalvfs"
e a18-vf-msix-write     write "$V0/sriov_vf_msix_count" 1
e a19-vf-msix-read      read "$V0/sriov_vf_msix_count"
e a20-vf-numa           read "$V0/numa_node"
e a21-vf-config-size    stat "$V0/config"
e a22-vf-group-type     read "$V0/iommu_group/type"
e a23-autoprobe-0-live  write "$PD/sriov_drivers_autoprobe" 0
e a24-vf0-driver-still  realpath "$V0/driver"
e a25-autoprobe-1       write "$PD/sriov_drivers_autoprobe" 1
e a26-disable           write "$PD/sriov_numvfs" 0
e a27-numvfs-after      read "$PD/sriov_numvfs"
e a28-vf0-gone          stat "$V0"
e a29-virtfn-gone       ls "$PD"
e a30-disable-again     write "$PD/sriov_numvfs" 0
ginfo s1-disabled

# ---- s2: two VFs, autoprobe off; then VF0 through vfio-pci (driver_override lets a VF probe
# whatever the PF's autoprobe says)
e b01-autoprobe-0       write "$PD/sriov_drivers_autoprobe" 0
e b02-autoprobe-read    read "$PD/sriov_drivers_autoprobe"
e b03-enable-2          write "$PD/sriov_numvfs" 2
known
ginfo s2
V0=$(h realpath "$PD/virtfn0")
e b04-vf0-driver        stat "$V0/driver"
wk s2-noauto "$V0"
e b05-probe-noauto      write bus/pci/drivers_probe "${V0##*/}"
e b06-vf0-driver        stat "$V0/driver"
e v01-override-vfio     write "$V0/driver_override" vfio-pci
e v02-probe-vfio        write bus/pci/drivers_probe "${V0##*/}"
e v03-vf0-driver-vfio   realpath "$V0/driver"
GV0=$(grp "$V0")
e v04-class-vfio        ls class/vfio
e v05-class-vfio-dev    ls class/vfio-dev
e v06-vf0-vfio-dev      ls "$V0/vfio-dev"
h walk v-vfio "$V0/vfio-dev" "class/vfio/$GV0" | canon
_vd=$(h realpath "class/vfio/$GV0")
case $_vd in '!'*) ;; *) h walk v-vfio "$_vd" | canon ;; esac
echo "I|vfio|group=$GV0|vfio-dev=$(h ls "$V0/vfio-dev" | sed 's/^OK *//')|class-vfio=$(vdevs)"
e v07-group-type-vfio   read "$V0/iommu_group/type"
e v08-unbind-vfio       write bus/pci/drivers/vfio-pci/unbind "${V0##*/}"
e v09-vf0-vfio-dev-gone ls "$V0/vfio-dev"
e v10-class-vfio-gone   ls class/vfio
e v11-override-clear    write "$V0/driver_override" '\n'
e v12-override-read     read "$V0/driver_override"
e b07-autoprobe-1       write "$PD/sriov_drivers_autoprobe" 1
e b08-vf0-driver-still  stat "$V0/driver"
e b09-probe-auto        write bus/pci/drivers_probe "${V0##*/}"
e b10-vf0-driver-now    realpath "$V0/driver"
e b11-disable           write "$PD/sriov_numvfs" 0

# ---- c: sriov_drivers_autoprobe parsing (kstrtobool)
i=0
for v in junk @empty 2 yes no on off Y N true false 1x 0x '1\n' 1; do
	i=$((i + 1))
	e "c$(printf %02d $i)-autoprobe[$v]" write "$PD/sriov_drivers_autoprobe" "$v"
	e "c$(printf %02d $i)-read" read "$PD/sriov_drivers_autoprobe"
done

# ---- d: the PF without its driver: VFs left behind, ENOENT, and a driver without sriov_configure
e d01-enable-1          write "$PD/sriov_numvfs" 1
known
ginfo d-one-vf
e d02-unbind-pf         write "$PFDRV/unbind" "$PF"
e d03-pf-driver         stat "$PD/driver"
e d04-numvfs-unbound    read "$PD/sriov_numvfs"
e d05-total-unbound     read "$PD/sriov_totalvfs"
e d06-virtfn-unbound    ls "$PD"
e d07-zero-unbound      write "$PD/sriov_numvfs" 0
e d08-one-unbound       write "$PD/sriov_numvfs" 1
e d09-two-unbound       write "$PD/sriov_numvfs" 2
e d10-range-unbound     write "$PD/sriov_numvfs" "$((TOTAL + 1))"
e d11-junk-unbound      write "$PD/sriov_numvfs" junk
e d12-override-stub     write "$PD/driver_override" pci-stub
e d13-probe-stub        write bus/pci/drivers_probe "$PF"
e d14-pf-driver-stub    realpath "$PD/driver"
e d15-two-stub          write "$PD/sriov_numvfs" 2
e d16-zero-stub         write "$PD/sriov_numvfs" 0
e d17-unbind-stub       write bus/pci/drivers/pci-stub/unbind "$PF"
e d18-override-clear    write "$PD/driver_override" '\n'
e d19-probe-back        write bus/pci/drivers_probe "$PF"
e d20-pf-driver-back    realpath "$PD/driver"
e d21-numvfs-back       read "$PD/sriov_numvfs"
e d22-zero-back         write "$PD/sriov_numvfs" 0
e d23-numvfs-end        read "$PD/sriov_numvfs"
e d24-bind-bound        write "$PFDRV/bind" "$PF"
e d25-unbind-other      write bus/pci/drivers/pci-stub/unbind "$PF"

# ---- s9: as it booted
known
ginfo s9
wk s9-end "$PD"
