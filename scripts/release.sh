#!/usr/bin/env bash
# Builds the release binary `dist/capsule-<version>-x86_64` and its
# `dist/capsule-<version>-x86_64.sha256` (sha256sum format, checkable with
# `sha256sum -c`). The version is the workspace's (Cargo.toml).
#
#   scripts/release.sh            # build and checksum
#   DIST=/tmp/out scripts/release.sh
set -euo pipefail

log() { printf '[release] %s\n' "$*" >&2; }

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dist=${DIST:-$root/dist}

arch=$(uname -m)
if [ "$arch" != x86_64 ]; then
  log "this script builds x86_64 binaries; this machine is $arch"
  exit 1
fi

version=$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "capsule-cli"))')
name="capsule-${version}-x86_64"

log "building capsule $version (release, locked)"
cargo build --release --locked -p capsule-cli --bin capsule

mkdir -p "$dist"
install -m 0755 target/release/capsule "$dist/$name"
(cd "$dist" && sha256sum "$name" > "$name.sha256")
"$dist/$name" version >/dev/null
log "$dist/$name"
log "$(cat "$dist/$name.sha256")"
