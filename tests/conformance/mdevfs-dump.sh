#!/bin/bash
# mdevfs-dump.sh OUT: run probe.sh against an mdevfs mount of samples.toml (the kernel samples'
# parents with their default parameters), the mount root standing in for /sys, under the same
# shell as in the VM (busybox sh). Needs `make install` (.venv/bin/mdevfs). Unmounts in every case.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
OUT=$1
work=$(mktemp -d "${TMPDIR:-/tmp}/mdevfs-conformance.XXXXXX")
cleanup() { "$TOP/.venv/bin/mdevfs" umount "$work/sys" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir "$work/sys"
gcc -O2 -Wall -o "$work/mdevop" "$HERE/mdevop.c"
"$TOP/.venv/bin/mdevfs" mount --config "$HERE/samples.toml" --control "$work/control" \
	--log-file "$work/log" "$work/sys" >/dev/null
${PROBE_SHELL:-busybox sh} "$HERE/probe.sh" "$work/sys" "$work/mdevop" >"$OUT"
