#!/usr/bin/env bash
# Builds llama.cpp's own tools -- llama-server (the peer of the voice benchmark),
# llama-bench and llama-batched-bench (the peers of perf/engine_vs_llamacpp.py) and
# llama-quantize -- from the llama.cpp vendored in the llama-cpp-python source
# distribution the engine runs (the version pinned in build/requirements-engine.txt), with native
# CPU flags and the compiler build/install.sh builds the engine with (build/llama_compiler.sh:
# clang-19 where the CPU has AMX, GCC elsewhere; ELECTRON_LLAMA_CC overrides); cached per CPU
# feature set and compiler under perf/.cache/llama-tools/ (gitignored).
# Prints the directory that holds the four binaries.
#   bash perf/build_llama_tools.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(sed -n 's/^llama-cpp-python==//p' build/requirements-engine.txt)
[ -n "$VERSION" ] || { echo "llama-cpp-python is not pinned in build/requirements-engine.txt" >&2; exit 1; }
TOOLS=(llama-server llama-bench llama-batched-bench llama-quantize)
source build/llama_compiler.sh
compiler=$(llama_compiler)
key=$(grep -m1 '^flags' /proc/cpuinfo | sha256sum | cut -c1-12)-$compiler
out="perf/.cache/llama-tools/$VERSION-$key"
have_all() { for t in "${TOOLS[@]}"; do [ -x "$out/$t" ] || return 1; done; }
if have_all; then
  echo "$out"
  exit 0
fi
use_llama_compiler "$compiler"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python=.venv/bin/python
[ -x "$python" ] || python=python3
"$python" -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$VERSION" >&2
tar -xzf "$work"/llama_cpp_python-"$VERSION".tar.gz -C "$work"
cmake -S "$work/llama_cpp_python-$VERSION/vendor/llama.cpp" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON $(llama_cmake_args "$compiler") >&2
cmake --build "$work/build" --target "${TOOLS[@]}" -j "$(nproc)" >&2
mkdir -p "$out"
for t in "${TOOLS[@]}"; do cp "$work/build/bin/$t" "$out/$t"; done
echo "$out"
