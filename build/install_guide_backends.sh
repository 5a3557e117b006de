#!/usr/bin/env bash
# Installs the GPU engines' guide compilers (xgrammar and llguidance at TensorRT-LLM 1.2.1's pins, with
# the CPU build of PyTorch that xgrammar imports) into ./.venv-guides, apart from the server's .venv:
# tests/unit/deploy/test_guide_backends.py compiles every guide the gateway sends with them. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
REQUIREMENTS=tests/guide_backends/requirements.txt
XGRAMMAR=xgrammar==0.1.25
log() { printf '[install-guide-backends] %s\n' "$*" >&2; }

if [ ! -x .venv-guides/bin/python ]; then
  log "creating .venv-guides with $($PYTHON --version)"
  "$PYTHON" -m venv .venv-guides
fi
stamp=.venv-guides/.requirements.sha256
want=$( (cat "$REQUIREMENTS"; echo "$XGRAMMAR") | sha256sum | cut -c1-64)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "pinned guide compilers ($REQUIREMENTS, $XGRAMMAR)"
  .venv-guides/bin/python -m pip --disable-pip-version-check -q install -r "$REQUIREMENTS"
  .venv-guides/bin/python -m pip --disable-pip-version-check -q install --no-deps "$XGRAMMAR"
  echo "$want" > "$stamp"
fi
log "done"
