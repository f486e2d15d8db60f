#!/bin/busybox sh
# /init of the SR-IOV VM (run-sriov.sh): load the PCI drivers (igb, igbvf, pci-stub, vfio-pci),
# run sriov-probe.sh on every function that has sriov_totalvfs, print the dump on the serial
# console between the same markers as init.sh, then power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
echo 1 >/proc/sys/kernel/printk
echo "ORACLE: booted after $(cut -d' ' -f1 /proc/uptime)s, kernel $(uname -r), cmdline $(cat /proc/cmdline)"
for m in $(cat /lib/modules/load-order); do
	insmod "/lib/modules/$m.ko" || echo "ORACLE: insmod $m FAILED"
done
# the PF's driver probes asynchronously: wait (at most 20 s) until every SR-IOV PF has one
i=0
while [ $i -lt 40 ]; do
	missing=0
	for f in /sys/bus/pci/devices/*/sriov_totalvfs; do
		[ -e "$(dirname "$f")/driver" ] || missing=1
	done
	[ $missing = 0 ] && break
	sleep 0.5
	i=$((i + 1))
done
echo "ORACLE: IOMMU groups: $(ls /sys/kernel/iommu_groups | tr '\n' ' ')"
for d in /sys/bus/pci/devices/*; do
	echo "ORACLE: pci $(basename "$d") $(cat "$d/vendor"):$(cat "$d/device") group $(basename "$(readlink "$d/iommu_group")") driver $(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)"
done
t0=$(cut -d' ' -f1 /proc/uptime)
: >/tmp/dump.txt
for f in /sys/bus/pci/devices/*/sriov_totalvfs; do
	[ -e "$f" ] || continue
	pf=$(basename "$(dirname "$f")")
	drv=$(basename "$(readlink "/sys/bus/pci/devices/$pf/driver")")
	echo "ORACLE: PF $pf driver $drv"
	/sriov-probe.sh /sys /bin/mdevop "$pf" "$drv" >>/tmp/dump.txt 2>>/tmp/probe.err
done
t1=$(cut -d' ' -f1 /proc/uptime)
echo "ORACLE: probe ran from ${t0}s to ${t1}s"
echo "===MDEV-ORACLE-BEGIN $(uname -r) lines=$(wc -l </tmp/dump.txt)==="
cat /tmp/dump.txt
echo "===MDEV-ORACLE-END==="
echo "===MDEV-ORACLE-STDERR==="
cat /tmp/probe.err 2>/dev/null
echo "===MDEV-ORACLE-DMESG==="
dmesg | grep -iE 'pci|iov|igb|iommu|dmar|vf|stub|vfio' | head -300
echo "===MDEV-ORACLE-DONE==="
sync
poweroff -f
