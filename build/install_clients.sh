#!/usr/bin/env bash
# Installs the real voice-agent clients the compatibility tests drive (Pipecat's
# OpenAILLMService, LiveKit's openai plugin) into ./.venv-clients, apart from the
# server's .venv: their pins (numpy 2) clash with the server's. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
REQUIREMENTS=tests/clients/requirements.txt
log() { printf '[install-clients] %s\n' "$*" >&2; }

if [ ! -x .venv-clients/bin/python ]; then
  log "creating .venv-clients with $($PYTHON --version)"
  "$PYTHON" -m venv .venv-clients
fi
stamp=.venv-clients/.requirements.sha256
want=$(sha256sum "$REQUIREMENTS" | cut -c1-64)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "pinned clients ($REQUIREMENTS)"
  .venv-clients/bin/python -m pip --disable-pip-version-check -q install -r "$REQUIREMENTS"
  echo "$want" > "$stamp"
fi
log "done"
