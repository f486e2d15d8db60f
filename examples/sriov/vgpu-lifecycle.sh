#!/bin/sh
# The life of a vGPU on an L40S, scripted as a KubeVirt operator's node agent does it on a real
# host (Ada and later, vGPU 17+): enable the VFs, find a free VF, pick a type from its catalog,
# turn the VF into that vGPU, hand it to a VM, give it back, disable the VFs. Run it inside
# mdevfs's namespace, where /sys shows the emulated GPU:
#
#     .venv/bin/mdevfs run --config examples/sriov/l40s.toml -- sh examples/sriov/vgpu-lifecycle.sh
set -eu
PF=${PF:-0000:41:00.0}
WANT=${WANT:-NVIDIA L40S-8Q}
dev=/sys/bus/pci/devices

# 1. sriov-manage -e: as many VFs as the GPU offers
total=$(cat "$dev/$PF/sriov_totalvfs")
echo "$total" >"$dev/$PF/sriov_numvfs"
echo "enabled $(cat "$dev/$PF/sriov_numvfs") of $total VFs on $PF"

# 2. the first VF that holds no vGPU, and the id of the wanted type in its catalog
for link in "$dev/$PF"/virtfn*; do
	vf=$(basename "$(readlink "$link")")
	[ "$(cat "$dev/$vf/nvidia/current_vgpu_type")" = 0 ] && break
done
id=$(sed -n "s/^\([0-9]*\) *: $WANT\$/\1/p" "$dev/$vf/nvidia/creatable_vgpu_types")
[ -n "$id" ] || { echo "no $WANT can be made on $vf" >&2; exit 1; }

# 3. the VF becomes the vGPU; its siblings now offer only that type
echo "$id" >"$dev/$vf/nvidia/current_vgpu_type"
echo "$vf is a $WANT (type $id), IOMMU group $(basename "$(readlink "$dev/$vf/iommu_group")")"
sibling=$(basename "$(readlink "$dev/$PF/virtfn1")")
echo "$sibling offers: $(tail -n +2 "$dev/$sibling/nvidia/creatable_vgpu_types" | tr '\n' ';')"

# 4. a VM takes it (the VFIO device is opened: a test does `mdevfs ctl DIR open $vf`); here it
#    is handed back at once: writing 0 destroys the vGPU
echo 0 >"$dev/$vf/nvidia/current_vgpu_type"
echo "$vf is free again: $(($(wc -l <"$dev/$vf/nvidia/creatable_vgpu_types") - 1)) types offered"

# 5. sriov-manage -d
echo 0 >"$dev/$PF/sriov_numvfs"
echo "VFs disabled: $(ls "$dev/$PF" | grep -c '^virtfn' || true) left"
