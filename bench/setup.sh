#!/usr/bin/env bash
# Installs what `capsule-bench es` compares capsule with: elasticdump
# 6.125.1 (npm); and the `zstd` command, which `capsule-bench redis` pipes
# redis-cli's RDB through (Debian package). The OpenSearch-compatible
# server (osmem-server) comes with the test dependencies:
# scripts/setup-test-deps.sh. Benchmarks are not
# tests, so this is not part of that script. Idempotent; run as root or
# with sudo.
set -euo pipefail

log() { printf '[bench-setup] %s\n' "$*" >&2; }
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

ELASTICDUMP_VERSION=6.125.1
if command -v elasticdump >/dev/null 2>&1 && [ "$(elasticdump --version 2>/dev/null)" = "$ELASTICDUMP_VERSION" ]; then
  log "ok: elasticdump $ELASTICDUMP_VERSION"
else
  command -v npm >/dev/null 2>&1 || { log "npm not found: install nodejs and npm first (scripts/setup-test-deps.sh does)"; exit 1; }
  log "npm install -g elasticdump@$ELASTICDUMP_VERSION"
  $SUDO npm install -g --silent --no-fund --no-audit "elasticdump@$ELASTICDUMP_VERSION" >/dev/null 2>&1
  log "ok: elasticdump $(elasticdump --version)"
fi

if command -v zstd >/dev/null 2>&1; then
  log "ok: $(zstd --version)"
else
  log "apt-get install zstd"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq zstd >/dev/null
  log "ok: $(zstd --version)"
fi

python3 -c "import osmem_server" 2>/dev/null \
  || log "osmem-server missing: run scripts/setup-test-deps.sh"
