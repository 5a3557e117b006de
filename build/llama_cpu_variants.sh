#!/usr/bin/env bash
# llama.cpp for an image that is built on one machine and runs on others (build/Dockerfile):
#   bash build/llama_cpu_variants.sh WHEELS VARIANTS
# - WHEELS: llama-cpp-python (build/requirements-engine.txt's version) built portably, for
#   ggml's x86-64-v3 baseline (build/llama_compiler.sh LLAMA_PORTABLE_CMAKE_ARGS), as
#   `ELECTRON_PORTABLE_CPU=1 build/install.sh` builds it (install.sh takes the wheel from there);
# - VARIANTS: llama.cpp's CPU backend, libggml-cpu.so.0 (the only library whose code depends
#   on the instruction set; same source, same soname), for three x86 levels, one folder each
#   with a variant.json (name, rank, the /proc/cpuinfo flags it needs):
#     avx2    the wheel's own backend (AVX2, FMA, F16C, BMI2: x86 servers since 2013)
#     avx512  + AVX-512 F/CD/BW/DQ/VL, VBMI and VNNI (Intel Ice Lake and later, AMD Zen 4)
#     amx     + AVX-512 BF16 and AMX (Intel Sapphire Rapids and later), built by clang-19:
#             GCC 12 miscompiles ggml's AMX kernel (build/llama_compiler.sh)
#   electron-serve loads the best one this CPU runs (gateway/server/llama_cpu_variant.py).
# Needs a C/C++ toolchain, cmake and clang-19 (the image's build stage has them).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: build/llama_cpu_variants.sh WHEELS VARIANTS" >&2; exit 2; }
wheels=$1 variants=$2
source build/llama_compiler.sh
version=$(sed -n 's/^llama-cpp-python==//p' build/requirements-engine.txt)
log() { printf '[llama-cpu-variants] %s\n' "$*" >&2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

baseline="avx avx2 fma f16c bmi2"
avx512="$baseline avx512f avx512cd avx512bw avx512dq avx512vl avx512vbmi avx512_vnni"
amx="$avx512 avx512_bf16 amx_tile amx_int8 amx_bf16"

variant_json() {  # NAME RANK FLAGS...
  local name=$1 rank=$2; shift 2
  printf '{"name": "%s", "rank": %s, "needs": [%s]}\n' "$name" "$rank" \
    "$(printf '"%s", ' "$@" | sed 's/, $//')"
}

# the source, once: the wheel is built from it, and the backend alone for the other levels
python3 -m pip --disable-pip-version-check -q download --no-deps --no-binary llama-cpp-python -d "$work" \
  "llama-cpp-python==$version"
sdist=$(echo "$work"/llama_cpp_python-"$version".tar.gz)
log "llama-cpp-python $version, portable ($LLAMA_PORTABLE_CMAKE_ARGS)"
build_llama_wheel "$version" "$LLAMA_PORTABLE_CMAKE_ARGS" "$wheels" "" "$sdist"
mkdir -p "$work/wheel" "$variants/avx2"
python3 -m zipfile -e "$wheels"/llama_cpp_python-"$version"-*.whl "$work/wheel"
cp -L "$work/wheel/llama_cpp/lib/libggml-cpu.so.0" "$variants/avx2/"
# shellcheck disable=SC2086
variant_json avx2 1 $baseline > "$variants/avx2/variant.json"
tar -xzf "$sdist" -C "$work"
source_dir=$work/llama_cpp_python-$version/vendor/llama.cpp

build_backend() {  # NAME RANK COMPILER CMAKE_FLAGS NEEDS
  local name=$1 rank=$2 compiler=$3 flags=$4 needs=$5
  log "$name: libggml-cpu by $compiler ($flags)"
  # shellcheck disable=SC2046,SC2086
  ( use_llama_compiler "$compiler"
    cmake -S "$source_dir" -B "$work/build-$name" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
      $LLAMA_PORTABLE_CMAKE_ARGS -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
      -DLLAMA_BUILD_SERVER=OFF $(llama_cmake_args "$compiler") $flags >/dev/null
    cmake --build "$work/build-$name" --target ggml-cpu -j "$(nproc)" >/dev/null )
  mkdir -p "$variants/$name"
  cp -L "$(find "$work/build-$name" -name libggml-cpu.so.0 | head -1)" "$variants/$name/libggml-cpu.so.0"
  strip --strip-unneeded "$variants/$name/libggml-cpu.so.0"
  # shellcheck disable=SC2086
  variant_json "$name" "$rank" $needs > "$variants/$name/variant.json"
}

build_backend avx512 2 gcc "-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON" "$avx512"
build_backend amx 3 clang-19 "-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
-DGGML_AMX_TILE=ON -DGGML_AMX_INT8=ON -DGGML_AMX_BF16=ON" "$amx"
log "done: $(cd "$variants" && echo */)"
