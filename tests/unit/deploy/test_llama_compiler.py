"""The compiler that builds llama.cpp (build/llama_compiler.sh): clang-19 on CPUs with AMX,
GCC elsewhere, the same choice for the engine's wheel (build/install.sh) and llama.cpp's
own tools (perf/build_llama_tools.sh), and a wheel cache that never hands a GCC build to a
clang install. install.sh runs for real against a fake .venv python that "builds" wheels."""

import os
import re
import subprocess

import pytest

from tests.paths import ROOT

CHOOSER = ROOT / "build" / "llama_compiler.sh"
VERSION = next(line.split("==")[1] for line in (ROOT / "build" / "requirements-engine.txt").read_text().splitlines()
               if line.startswith("llama-cpp-python=="))


def choose(tmp_path, flags: str, override: str | None = None) -> subprocess.CompletedProcess:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    env = {k: v for k, v in os.environ.items() if k != "ELECTRON_LLAMA_CC"}
    if override is not None:
        env["ELECTRON_LLAMA_CC"] = override
    return subprocess.run(["bash", str(CHOOSER), str(cpuinfo)], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("flags, compiler", [
    ("fpu avx2 avx512f amx_bf16 amx_tile amx_int8", "clang-19"),  # Intel Xeon (Sapphire Rapids on)
    ("fpu avx2 amx_tile", "clang-19"),  # the last flag
    ("fpu avx2 avx512f avx512_bf16", "gcc"),  # AMD EPYC: AVX-512, no AMX
    ("fpu avx2 amx_tilex xamx_tile", "gcc"),  # whole flags only
    ("", "gcc"),
])
def test_the_compiler_follows_the_cpus_amx_flag(tmp_path, flags, compiler):
    done = choose(tmp_path, flags)
    assert (done.returncode, done.stdout) == (0, f"{compiler}\n"), done.stderr


def test_the_override_wins_either_way_and_an_unknown_compiler_is_refused(tmp_path):
    assert choose(tmp_path, "fpu avx2", "clang-19").stdout == "clang-19\n"
    assert choose(tmp_path, "fpu amx_tile", "gcc").stdout == "gcc\n"
    bad = choose(tmp_path, "fpu", "icc")
    assert bad.returncode == 2 and "ELECTRON_LLAMA_CC must be one of: clang-19 gcc" in bad.stderr


def test_the_engine_and_llama_cpps_tools_take_the_one_choice():
    for script in ("build/install.sh", "perf/build_llama_tools.sh"):
        text = (ROOT / script).read_text()
        assert "source build/llama_compiler.sh" in text and "compiler=$(llama_compiler)" in text, script
        assert "-$compiler" in text, f"{script}: the compiler is not in its cache key"
        assert not re.search(r"\b(CC|CXX)=", text), f"{script} sets a compiler of its own"


def fake_install(tmp_path):
    """A copy of build/ with a .venv python that fails llama_cpp's import, records each
    call with the CC, CXX and CMAKE_ARGS it got, and writes an empty wheel where pip wheel is asked to;
    fake clang-19 and clang++-19 on PATH (so nothing is installed)."""
    (tmp_path / "build").mkdir()
    for path in (ROOT / "build").glob("*"):
        if path.is_file():
            (tmp_path / "build" / path.name).write_bytes(path.read_bytes())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("clang-19", "clang++-19"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / name).chmod(0o755)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "CC=${CC:-} CXX=${CXX:-} CMAKE_ARGS=${CMAKE_ARGS:-} $*" >> "$CALLS"\n'
                      'case "$*" in *"import llama_cpp"*) exit 1 ;; esac\n'
                      'while [ $# -gt 0 ]; do\n'
                      '  [ "$1" = -w ] && touch "$2/llama_cpp_python-$LLAMA_VERSION-cp311-cp311-linux_x86_64.whl"\n'
                      '  shift\ndone\n')
    python.chmod(0o755)
    calls = tmp_path / "calls"

    def run(**env) -> list[str]:
        calls.unlink(missing_ok=True)
        base = {k: v for k, v in os.environ.items() if k not in ("ELECTRON_LLAMA_CC", "ELECTRON_PORTABLE_CPU", "CC", "CXX")}
        done = subprocess.run(["bash", str(tmp_path / "build" / "install.sh")], capture_output=True, text=True,
                              env={**base, "CALLS": str(calls), "LLAMA_VERSION": VERSION,
                                   "XDG_CACHE_HOME": str(tmp_path / "cache"),
                                   "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env})
        assert done.returncode == 0, done.stderr
        return calls.read_text().splitlines()

    return run, tmp_path / "cache" / "electron" / "wheels"


def built(calls: list[str]) -> list[str]:
    wheels = [line for line in calls if " wheel " in line]
    # pip's own wheel cache is keyed by the source archive alone: it would hand a GCC build to clang
    assert all(" wheel --no-cache-dir " in line for line in wheels)
    return [line.split(" -m ", 1)[0] for line in wheels]


NATIVE = "CMAKE_ARGS=-DGGML_NATIVE=ON -DLLAMA_CURL=OFF"


def test_a_wheel_is_cached_per_compiler_and_built_with_it(tmp_path):
    run, wheels = fake_install(tmp_path)
    assert built(run(ELECTRON_LLAMA_CC="gcc")) == [f"CC=gcc CXX=g++ {NATIVE}"]
    # clang: ggml's own threads, never an OpenMP runtime that happens to be installed; GNU strip
    strip = subprocess.run(["bash", "-c", "command -v strip || echo strip"], capture_output=True, text=True).stdout.strip()
    assert built(run(ELECTRON_LLAMA_CC="clang-19")) == [
        f"CC=clang-19 CXX=clang++-19 {NATIVE} -DGGML_OPENMP=OFF -DCMAKE_STRIP={strip}"], "a GCC wheel was reused"
    assert built(run(ELECTRON_LLAMA_CC="gcc")) == built(run(ELECTRON_LLAMA_CC="clang-19")) == [], "not cached"
    assert sorted(d.name.split("-", 1)[1] for d in wheels.iterdir()) == ["clang-19", "gcc"]  # <CPU flags>-<compiler>
    installs = [line for line in run(ELECTRON_LLAMA_CC="clang-19") if " install --no-deps " in line and ".whl" in line]
    assert len(installs) == 1 and "-clang-19/llama_cpp_python-" in installs[0]


def test_the_portable_build_keeps_the_default_compiler(tmp_path):
    run, wheels = fake_install(tmp_path)
    assert built(run(ELECTRON_PORTABLE_CPU="1", ELECTRON_LLAMA_CC="clang-19")) == [
        "CC= CXX= CMAKE_ARGS=-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF"]
    assert [d.name for d in wheels.iterdir()] == ["portable"]
