#!/usr/bin/env bash
# The C/C++ compiler that builds llama.cpp natively: sourced by build/install.sh (the engine's
# llama-cpp-python) and perf/build_llama_tools.sh (llama.cpp's own tools, the engine's
# yardstick), so both are built alike.
#   bash build/llama_compiler.sh [CPUINFO]   prints the choice for that file (default /proc/cpuinfo)
#
# - clang-19 where the CPU has AMX (`amx_tile` among the flags): GCC 12 miscompiles ggml's AMX
#   kernel (inlined into ggml_backend_amx_mul_mat, ggml_tile_config_init loses the tile
#   config's row and column stores, and `ldtilecfg` faults); Debian's clang-19 compiles it
#   correctly. Installed with apt-get when missing (root only).
# - gcc (Debian's default compiler) elsewhere.
# - ELECTRON_LLAMA_CC=clang-19|gcc overrides the choice (e.g. to build the clang path on a
#   machine without AMX).
# A clang build has no OpenMP (Debian's clang-19 cannot use GCC's libgomp, and LLVM's libomp
# would spin its threads 200 ms after each step, where the engine tunes libgomp's spin with
# GOMP_SPINCOUNT): it is built with -DGGML_OPENMP=OFF, ggml's own threads, whether or not a
# libomp happens to be installed. And it is stripped with GNU strip, as a GCC build is: the
# llvm-strip CMake picks for clang drops the .comment section, the compiler's record that the
# engine logs at start (llama_engine/build_compiler.py).
# The engine's start-up probe (llama_engine/cpu_paths.py) still decides whether the AMX path
# runs: a build that faults costs the extra buffer types, never the service.

LLAMA_COMPILERS=(clang-19 gcc)
# the portable build (the image): no native flags, ggml's x86-64-v3 baseline (AVX2, FMA, F16C, BMI2)
LLAMA_PORTABLE_CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF"

# llama_compiler [CPUINFO]: prints clang-19 or gcc
llama_compiler() {
  if [ -n "${ELECTRON_LLAMA_CC:-}" ]; then
    case " ${LLAMA_COMPILERS[*]} " in
      *" $ELECTRON_LLAMA_CC "*) echo "$ELECTRON_LLAMA_CC"; return 0 ;;
      *) echo "ELECTRON_LLAMA_CC must be one of: ${LLAMA_COMPILERS[*]} (not '$ELECTRON_LLAMA_CC')" >&2; return 2 ;;
    esac
  fi
  local flags
  flags=$(grep -m1 '^flags' "${1:-/proc/cpuinfo}") || flags=""
  case " ${flags#*:} " in
    *[[:space:]]amx_tile[[:space:]]*) echo clang-19 ;;
    *) echo gcc ;;
  esac
}

# llama_cmake_args COMPILER: the CMake options that go with the compiler
llama_cmake_args() {
  case "$1" in
    clang-19) echo "-DGGML_OPENMP=OFF -DCMAKE_STRIP=$(command -v strip || echo strip)" ;;
    *) echo "" ;;
  esac
}

# use_llama_compiler COMPILER: exports CC and CXX for CMake, installing Debian's clang-19 if needed
use_llama_compiler() {
  case "$1" in
    gcc) export CC=gcc CXX=g++ ;;
    clang-19)
      if ! command -v clang-19 >/dev/null || ! command -v clang++-19 >/dev/null; then
        echo "[llama-compiler] clang-19 is missing: installing Debian's package (apt-get)" >&2
        if ! { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
               && apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends clang-19 >&2; }; then
          echo "[llama-compiler] could not install clang-19 (needs root and Debian's apt; this CPU's AMX path" \
               "needs it). Install it (apt-get install clang-19), or build with GCC: ELECTRON_LLAMA_CC=gcc" \
               "(the engine's probe then turns the AMX path off)" >&2
          return 1
        fi
      fi
      export CC=clang-19 CXX=clang++-19 ;;
    *) echo "[llama-compiler] unknown compiler '$1'" >&2; return 2 ;;
  esac
}

# build_llama_wheel VERSION CMAKE_ARGS DEST [COMPILER [SOURCE]]: llama-cpp-python VERSION built from
# source (SOURCE: its sdist, already downloaded) into DEST with CMAKE_ARGS, by COMPILER (empty: the
# system's); install.sh and the image's build/llama_cpu_variants.sh. --no-cache-dir: pip's own wheel
# cache is keyed by the source archive alone, so it would hand back a wheel built with other flags
# or another compiler.
build_llama_wheel() {
  local version=$1 cmake_args=$2 dest=$3 compiler=${4:-} source=${5:-"llama-cpp-python==$1"}
  ( [ -z "$compiler" ] || use_llama_compiler "$compiler"
    mkdir -p "$dest"
    CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      "${PYTHON:-python3}" -m pip --disable-pip-version-check -q wheel --no-cache-dir --no-deps \
      --no-binary llama-cpp-python -w "$dest" "$source" )
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  llama_compiler "$@"
fi
