#!/bin/bash
# run-sriov.sh KVER [OUT]: boot the SR-IOV VM (built by build.sh --sriov) in QEMU 10 (qemu10.sh; TCG,
# q35) and extract sriov-probe.sh's dump. The machine: an emulated Intel IOMMU (intel-iommu,
# intel_iommu=on), two virtio-rng functions and an e1000e behind a root port of their own (so that
# IOMMU group numbers are well above 0 and cannot coincide with vfio's own numbers), then an igb
# PF (82576, 7 VFs under Linux's igb) behind a pcie-root-port. IOMMU=0: no IOMMU.
# OUT defaults to $ORACLE/sriov-KVER.txt; the serial log stays in $ORACLE/KVER/sriov-serial.log.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ORACLE=${ORACLE:-${CONFORMANCE:-/var/cache/mdevfs-conformance}}
KVER=${1:?usage: run-sriov.sh KVER [OUT]}
W=$ORACLE/$KVER
OUT=${2:-$ORACLE/sriov-$KVER.txt}
LOG=$W/sriov-serial.log
[ -f "$W/sriov-initramfs.cpio.gz" ] || { echo "run-sriov: $W/sriov-initramfs.cpio.gz missing: run build.sh --sriov $KVER first" >&2; exit 1; }
QEMU=$("$HERE/qemu10.sh")
append="console=ttyS0 rdinit=/init panic=-1 loglevel=4 mitigations=off"
dev=()
if [ "${IOMMU:-1}" = 1 ]; then
	dev+=(-device intel-iommu,intremap=off)
	append="$append intel_iommu=on"
fi
dev+=(-device virtio-rng-pci,id=rng0 -device virtio-rng-pci,id=rng1
	-device pcie-root-port,id=rp0,chassis=1,slot=1 -device e1000e,bus=rp0,romfile=
	-device pcie-root-port,id=rp1,chassis=2,slot=2 -device igb,bus=rp1,romfile=)
rm -f "$LOG"
start=$(date +%s.%N)
# QEMU_MODULE_DIR: QEMU 10's own module folder, not the host QEMU's
QEMU_MODULE_DIR=${QEMU%%/usr/bin/*}/usr/lib/x86_64-linux-gnu/qemu timeout "${VM_TIMEOUT:-600}" $QEMU \
	-machine q35 -accel tcg -m 1024 -smp 2 -nographic -no-reboot \
	-kernel "$W/vmlinuz" -initrd "$W/sriov-initramfs.cpio.gz" -append "$append" "${dev[@]}" \
	-nic none -serial "file:$LOG" -monitor none -display none </dev/null || echo "run-sriov: qemu exited with $?"
end=$(date +%s.%N)
tr -d '\r' <"$LOG" >"$LOG.unix"
grep -q '^===MDEV-ORACLE-END===' "$LOG.unix" || { echo "run-sriov: no complete dump in $LOG; its tail:" >&2; tail -40 "$LOG.unix" >&2; exit 1; }
sed -n '/^===MDEV-ORACLE-BEGIN/,/^===MDEV-ORACLE-END===/p' "$LOG.unix" | sed '1d;$d' >"$OUT"
want=$(sed -n 's/^===MDEV-ORACLE-BEGIN .* lines=\([0-9]*\)===$/\1/p' "$LOG.unix")
have=$(wc -l <"$OUT")
[ "$want" = "$have" ] || { echo "run-sriov: dump has $have lines, the VM wrote $want" >&2; exit 1; }
grep -o 'ORACLE: .*' "$LOG.unix"
sed -n '/^===MDEV-ORACLE-STDERR===/,/^===MDEV-ORACLE-DMESG===/p' "$LOG.unix" | sed '1d;$d' | sed 's/^/run-sriov: probe stderr: /'
sed -n '/^===MDEV-ORACLE-DMESG===/,/^===MDEV-ORACLE-DONE===/p' "$LOG.unix" | sed '1d;$d' >"${OUT%.txt}.dmesg"
echo "run-sriov: $KVER: VM wall time $(echo "$end - $start" | bc) s, $have lines -> $OUT"
