#!/bin/sh
# The Containerfile's steps as a plain script, for a Debian 12 root that is not a container
# image (run from the checkout's root, as root): how the recipe was checked here, in a
# throwaway Debian 12 minbase root (see README.md beside this file).
set -eu
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    python3-venv python3-dev gcc pkg-config libfuse3-dev fuse3 mdevctl util-linux
src=$(mktemp -d)
cp -r pyproject.toml README.md LICENSE mdevfs vendors "$src"
venv=$(mktemp -d)
python3 -m venv "$venv"
"$venv/bin/pip" install -q --no-cache-dir "$src"
"$venv/bin/mdevfs" --version
"$venv/bin/mdevfs" run --config mdevfs/default.toml -- mdevctl types | head -n 4
rm -rf "$src" "$venv"
