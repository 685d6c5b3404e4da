#!/usr/bin/env bash
# Builds the cairn container image FROM scratch around a cairn binary and the shared libraries
# it loads (found with ldd), with a non-root user, /data as a volume and an empty /certs of that
# user for certificates. No image is pulled.
#
#   deploy/build-image.sh [BINARY]     default: builds target/release/cairn first
#   CAIRN_IMAGE=name:tag               image name [cairn:dev]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-}
tag=${CAIRN_IMAGE:-cairn:dev}
if [[ -z $bin ]]; then
  "$repo/scripts/deps"
  (cd "$repo" && cargo build --release -p cairn-node)
  bin=${CARGO_TARGET_DIR:-$repo/target}/release/cairn
fi
[[ -x $bin ]] || { echo "build-image: no executable at $bin" >&2; exit 1; }
command -v docker >/dev/null || { echo "build-image: docker is not installed" >&2; exit 1; }

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/etc" "$ctx/data" "$ctx/tmp" "$ctx/certs"
chmod 1777 "$ctx/tmp"
# /certs is where compose's init step writes the cluster's certificates: a named volume mounted
# there starts as a copy of this folder, so it belongs to the user the image runs as.
chmod 0750 "$ctx/certs"
install -m 0755 "$bin" "$ctx/rootfs/cairn"
# Debug info is for the build machine; the image carries the code only.
if command -v strip >/dev/null; then strip --strip-debug "$ctx/rootfs/cairn"; fi
# Every library the dynamic loader resolves, and the loader itself, at the same paths.
ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u |
  while read -r lib; do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
  done
echo "cairn:x:10001:10001:cairn:/data:/nonexistent" >"$ctx/rootfs/etc/passwd"
echo "cairn:x:10001:" >"$ctx/rootfs/etc/group"
cp "$repo/deploy/Dockerfile" "$ctx/Dockerfile"
docker build --quiet --tag "$tag" "$ctx" >/dev/null
echo "built $tag ($(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}'))"
