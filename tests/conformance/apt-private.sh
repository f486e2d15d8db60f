#!/bin/bash
# apt-private.sh: an APT configuration of the conformance harness's own, under $ORACLE/apt, that
# reaches the Debian suites whose kernels and QEMU the harness boots (bullseye for 5.10, bookworm and
# its backports for 6.1, 6.12 and QEMU 10, trixie and its backports for 6.12 to 7.x). It serves
# `apt-get download` and `apt-cache` only, as APT_CONFIG=$ORACLE/apt/apt.conf: nothing under
# /etc/apt changes and nothing is installed with it. The mirror is the one the host's own sources
# name. Prints the APT_CONFIG path. Re-running refreshes the lists when they are a day old
# (FORCE=1: always); deleting $ORACLE/apt undoes it all.
set -euo pipefail
ORACLE=${ORACLE:-/var/cache/mdevfs-conformance}
A=$ORACLE/apt
SUITES=${SUITES:-"bullseye bullseye-security bookworm bookworm-updates bookworm-security bookworm-backports trixie trixie-updates trixie-security trixie-backports"}

# uri_for WORD: the first URI that the host's sources (deb822 or one-line) give for a suite
# containing WORD ("security" for the security archive, "" for the main archive)
uri_for() {
	local want=$1
	{
		for f in /etc/apt/sources.list.d/*.sources; do
			[ -f "$f" ] || continue
			awk -v RS= -v want="$want" '{
				u = ""; s = ""
				n = split($0, l, "\n")
				for (i = 1; i <= n; i++) { if (l[i] ~ /^URIs:/) u = l[i]; if (l[i] ~ /^Suites:/) s = l[i] }
				sub(/^URIs: */, "", u); split(u, first, " ")
				sec = (s ~ /-security/)
				if (first[1] != "" && s ~ /(bullseye|bookworm|trixie|stable)/ && ((want == "security") == sec)) print first[1]
			}' "$f"
		done
		for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
			[ -f "$f" ] || continue
			awk -v want="$want" '$1 == "deb" && $3 ~ /(bullseye|bookworm|trixie|stable)/ {
				sec = ($3 ~ /-security/)
				if ((want == "security") == sec) print ($2 ~ /^\[/ ? $3 : $2)
			}' "$f"
		done
	} | head -1
}
MIRROR=${MIRROR:-$(uri_for main)}
SECURITY=${SECURITY:-$(uri_for security)}
[ -n "$MIRROR" ] && [ -n "$SECURITY" ] || { echo "apt-private: no Debian source in /etc/apt; set MIRROR and SECURITY" >&2; exit 1; }

mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/parts.d" "$A/prefs.d"
sources=$(for s in $SUITES; do
	case $s in *-security) echo "deb $SECURITY $s main" ;; *) echo "deb $MIRROR $s main" ;; esac
done)
changed=0
if [ ! -f "$A/sources.list" ] || [ "$(cat "$A/sources.list")" != "$sources" ]; then
	echo "$sources" >"$A/sources.list"
	changed=1
fi
cat >"$A/apt.conf" <<EOC
Dir::Etc::SourceList "$A/sources.list";
Dir::Etc::SourceParts "$A/parts.d";
Dir::Etc::PreferencesParts "$A/prefs.d";
Dir::State::Lists "$A/lists";
Dir::Cache "$A/cache";
Acquire::Languages "none";
APT::Sandbox::User "root";
APT::Get::AllowUnauthenticated "false";
EOC
echo "$MIRROR" >"$A/mirror"
stamp=$A/lists/.updated
if [ "$changed" = 1 ] || [ "${FORCE:-0}" = 1 ] || [ -z "$(find "$stamp" -mmin -1440 2>/dev/null)" ]; then
	APT_CONFIG=$A/apt.conf apt-get update -qq >&2
	touch "$stamp"
fi
echo "$A/apt.conf"
