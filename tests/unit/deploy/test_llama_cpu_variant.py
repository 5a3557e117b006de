"""The image's llama.cpp CPU backends: the best one this CPU runs is chosen at start and put
first on LD_LIBRARY_PATH of every process electron-serve starts (gateway/server/llama_cpu_variant.py)."""

import json

import pytest

from gateway.server.llama_cpu_variant import VARIANTS_ENV, activate, choose, cpu_flags, read_variants

# what build/llama_cpu_variants.sh writes
LEVELS = {"avx2": (1, ["avx2", "fma", "f16c"]),
          "avx512": (2, ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"]),
          "amx": (3, ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "amx_tile", "amx_int8"])}


@pytest.fixture
def variants(tmp_path):
    root = tmp_path / "variants"
    for name, (rank, needs) in LEVELS.items():
        (root / name).mkdir(parents=True)
        (root / name / "libggml-cpu.so.0").write_bytes(b"\x7fELF")
        (root / name / "variant.json").write_text(json.dumps({"name": name, "rank": rank, "needs": needs}))
    (root / "incomplete").mkdir()  # no library: never chosen
    (root / "incomplete" / "variant.json").write_text(json.dumps({"name": "x", "rank": 9, "needs": []}))
    return root


def cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\n")
    return path


@pytest.mark.parametrize("flags, expected", [
    ("avx avx2 fma f16c", "avx2"),  # AMD Zen 3
    ("avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx512_bf16", "avx512"),  # AMD EPYC (Zen 4)
    ("avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni amx_tile amx_int8 amx_bf16", "amx"),  # Xeon (Sapphire Rapids)
    ("avx2 fma f16c avx512f avx512bw avx512vl", "avx2"),  # Skylake-X: AVX-512 without VNNI
])
def test_the_best_variant_this_cpu_runs_is_chosen(tmp_path, variants, flags, expected):
    assert choose(read_variants(variants), cpu_flags(cpuinfo(tmp_path, flags))).name == expected


def test_a_cpu_below_every_variant_is_refused_with_what_it_lacks(tmp_path, variants):
    with pytest.raises(ValueError, match="least of them needs avx2 f16c fma"):
        choose(read_variants(variants), cpu_flags(cpuinfo(tmp_path, "avx sse4_2")))
    with pytest.raises(ValueError, match="none found"):
        choose([], frozenset({"avx2"}))


def test_activate_puts_the_chosen_folder_first_on_ld_library_path_once(tmp_path, variants, caplog):
    caplog.set_level("INFO")
    environ = {VARIANTS_ENV: str(variants), "LD_LIBRARY_PATH": f"/opt/other:{variants / 'avx512'}"}
    chosen = activate(environ, cpuinfo(tmp_path, "avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni"))
    assert chosen.name == "avx512"
    assert environ["LD_LIBRARY_PATH"] == f"{variants / 'avx512'}:/opt/other"
    assert "llama.cpp CPU backend: avx512 (the best of amx, avx512, avx2 for this CPU" in caplog.text


def test_without_the_setting_nothing_changes(tmp_path):
    environ = {"LD_LIBRARY_PATH": "/opt/other"}
    assert activate(environ, cpuinfo(tmp_path, "avx2")) is None
    assert environ == {"LD_LIBRARY_PATH": "/opt/other"}
