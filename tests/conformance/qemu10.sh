#!/bin/bash
# qemu10.sh: QEMU 10 for the SR-IOV VM (QEMU emulates igb, an SR-IOV NIC, since 8.0; Debian 12's
# own QEMU is 7.2). Downloads qemu-system-x86, -common, -data and seabios from bookworm-backports
# through apt-private.sh's configuration and unpacks them under $ORACLE/qemu10/root: nothing is
# installed, the host keeps its QEMU. A library the unpacked binary lacks is installed from the
# host's own Debian when it has one of that name. Prints the command to run it (binary, -L paths).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ORACLE=${ORACLE:-${CONFORMANCE:-/var/cache/mdevfs-conformance}}
Q=$ORACLE/qemu10
BIN=$Q/root/usr/bin/qemu-system-x86_64
if [ ! -f "$Q/.done" ]; then
	PAPT=$("$HERE/apt-private.sh")
	bpo() { APT_CONFIG=$PAPT apt-cache madison "$1" | awk '$6 ~ /^bookworm-backports\// {print $3; exit}'; }
	V=$(bpo qemu-system-x86)
	S=$(bpo seabios)
	[ -n "$V" ] || { echo "qemu10: bookworm-backports has no qemu-system-x86" >&2; exit 1; }
	rm -rf "$Q" && mkdir -p "$Q/debs" "$Q/root"
	(cd "$Q/debs" && APT_CONFIG=$PAPT apt-get download -q "qemu-system-x86=$V" "qemu-system-common=$V" "qemu-system-data=$V" ${S:+"seabios=$S"} >&2)
	for d in "$Q"/debs/*.deb; do dpkg-deb -x "$d" "$Q/root"; done
	missing=$(ldd "$BIN" | awk '/not found/ {print $1}')
	if [ -n "$missing" ]; then
		pkgs=$(dpkg-deb -f "$Q"/debs/qemu-system-x86_*.deb Depends | tr ',' '\n' | sed 's/[ (].*//; s/^ *//' | grep -v '^qemu\|^seabios\|^ipxe' | sort -u)
		echo "qemu10: installing the libraries it needs: $pkgs" >&2
		env -u APT_CONFIG DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >&2
	fi
	missing=$(ldd "$BIN" | awk '/not found/ {print $1}')
	[ -z "$missing" ] || { echo "qemu10: libraries still missing: $missing" >&2; exit 1; }
	"$BIN" --version | head -1 >&2
	touch "$Q/.done"
fi
echo "$BIN -L $Q/root/usr/share/qemu -L $Q/root/usr/share/seabios"
