#!/usr/bin/env bash
# Builds llama.cpp's own llama-server, the peer of the voice benchmark, from the llama.cpp
# vendored in the llama-cpp-python source distribution (the version the engine runs), with
# native CPU flags; cached per CPU feature set. Prints the binary's path.
#   bash perf/build_llama_server.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36  # keep equal to LLAMA_CPP_PYTHON_VERSION in build/install.sh
key=$(grep -m1 '^flags' /proc/cpuinfo | sha256sum | cut -c1-12)
out="perf/.cache/llama-server/$VERSION-$key"
if [ -x "$out/llama-server" ]; then
  echo "$out/llama-server"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python=.venv/bin/python
[ -x "$python" ] || python=python3
"$python" -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$VERSION" >&2
tar -xzf "$work"/llama_cpp_python-"$VERSION".tar.gz -C "$work"
cmake -S "$work/llama_cpp_python-$VERSION/vendor/llama.cpp" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$out"
cp "$work/build/bin/llama-server" "$out/llama-server"
echo "$out/llama-server"
