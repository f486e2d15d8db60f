#!/bin/bash
# mdevfs-dump.sh [--sriov] OUT: the probes against an mdevfs mount, the mount root standing in for
# /sys, under the same shell as in the VM (busybox sh). Needs `make install` (.venv/bin/mdevfs).
#   default: a mount of samples.toml (the kernel samples' parents with their default parameters),
#            probe.sh then probe-extra.sh, as init.sh runs them in the VM;
#   --sriov: a mount of sriov.toml (the SR-IOV VM's machine: igb.py), sriov-probe.sh on the igb
#            PF 0000:02:00.0, as sriov-init.sh runs it in the VM.
# KERNEL=X.Y emulates that kernel (mdevfs mount --kernel; default: the newest). MDEVFS=COMMAND runs
# another mdevfs (default .venv/bin/mdevfs; with PYTHONPATH=DIR, the mdevfs package in DIR, e.g. a
# `git archive` of a commit). Unmounts in every case.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
SRIOV=0
if [ "${1:-}" = --sriov ]; then SRIOV=1; shift; fi
OUT=${1:?usage: mdevfs-dump.sh [--sriov] OUT}
work=$(mktemp -d "${TMPDIR:-/tmp}/mdevfs-conformance.XXXXXX")
MDEVFS=${MDEVFS:-$TOP/.venv/bin/mdevfs}
cleanup() { "$MDEVFS" umount "$work/sys" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir "$work/sys"
gcc -O2 -Wall -o "$work/mdevop" "$HERE/mdevop.c"
SH=${PROBE_SHELL:-busybox sh}
kernel=()
[ -z "${KERNEL:-}" ] || kernel=(--kernel "$KERNEL")
if [ "$SRIOV" = 1 ]; then
	"$MDEVFS" mount --config "$HERE/sriov.toml" "${kernel[@]}" --control "$work/control" \
		--log-file "$work/log" "$work/sys" >/dev/null
	$SH "$HERE/sriov-probe.sh" "$work/sys" "$work/mdevop" 0000:02:00.0 igb >"$OUT"
else
	"$MDEVFS" mount --config "$HERE/samples.toml" "${kernel[@]}" --control "$work/control" \
		--log-file "$work/log" "$work/sys" >/dev/null
	: >"$OUT"
	for p in probe.sh probe-extra.sh; do
		$SH "$HERE/$p" "$work/sys" "$work/mdevop" >>"$OUT"
	done
fi
