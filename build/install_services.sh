#!/usr/bin/env bash
# The servers the tests start for themselves: redis-server and PostgreSQL, and for the deploy
# test (tests/e2e/test_compose_deploy.py) a Docker engine (docker.io: dockerd) and debootstrap
# (the base images' stand-ins), from Debian's packages, installed when missing (needs root).
# The gateway itself needs none: it keeps limits in-process and its ledger in SQLite unless
# ELECTRON_REDIS_URL / ELECTRON_DATABASE_URL point at servers of your own. Debian's packages
# start services on install where an init system runs; the tests never use those: they start
# their own on free ports (and dockerd only when no engine answers).
set -euo pipefail
log() { printf '[install-services] %s\n' "$*" >&2; }

have_postgres() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
have_postgres || missing+=(postgresql)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  log "missing ${missing[*]}: run as root, or: sudo apt-get install ${missing[*]}"
  exit 1
fi
log "apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
