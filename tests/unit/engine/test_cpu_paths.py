"""The start-up probe of llama.cpp's CPU paths (llama_engine.cpu_paths), with real child
processes: a path whose child crashes costs a fallback, never the engine."""

import logging

import pytest

from gateway.model_artifacts import embedded_gguf_path
from llama_engine.build_compiler import llama_cpp_compiler
from llama_engine.cpu_paths import ProbeResult, agrees, choose_cpu_paths
from llama_engine.llama_runner import LlamaRunner, RunnerConfig

pytestmark = pytest.mark.heavy  # runs llama.cpp or a guide compiler: left out of make test-fast

GGUF = str(embedded_gguf_path())


def cpu_flags() -> set[str]:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        return set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())


def result(*steps) -> ProbeResult:
    return ProbeResult("extra", True, "", [list(s) for s in steps], {})


def test_a_probe_agrees_when_each_greedy_token_is_among_the_references_candidates():
    reference = result((5, 6, 7), (8, 9, 1))
    assert agrees(result((5, 1, 2), (8, 0, 0)), reference)
    assert agrees(result((6, 5, 2), (9, 0, 0)), reference)  # a near-tie flip: both plausible
    assert not agrees(result((5, 1, 2), (4, 0, 0)), reference)  # garbage at step 2
    assert not agrees(result((5, 1, 2)), reference)  # fewer steps
    assert not agrees(ProbeResult("extra", True, "", [], {}), ProbeResult("plain", True, "", [], {}))


def test_a_crashing_extra_path_falls_back_to_plain_buffers_and_the_engine_starts(caplog):
    """The AMX guard: the extra path's probe child dies of SIGSEGV (as GCC 12's build of ggml's
    AMX kernel does on an Intel Xeon with AMX); the start goes on with plain buffers, the
    way model.py then loads the engine, and the log names the compiler of the library."""
    caplog.set_level(logging.INFO, logger="llama_engine.cpu_paths")
    paths = choose_cpu_paths(GGUF, 2, flash_attn="off", crash=frozenset({"extra"}))
    assert paths.weights == "plain"
    assert "SIGSEGV" in paths.reason and paths.flash_attn is False
    assert paths.labels() == {"weights": "plain", "flash_attn": "off", "probe": paths.reason,
                              "cpu_backend": "this machine's build"}
    assert any("killed by SIGSEGV" in r.getMessage() for r in caplog.records)
    chosen = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("CPU paths: "))
    assert f"; llama.cpp CPU backend this machine's build, built by {llama_cpp_compiler()}" in chosen
    assert llama_cpp_compiler() != "unknown"
    runner = LlamaRunner(RunnerConfig(gguf_path=GGUF, kv_cells=256, max_sequences=1, flash_attn=paths.flash_attn,
                                      extra_buffer_types=paths.weights == "extra"))
    try:
        runner.tokens[:2], runner.positions[:2], runner.seq_ids[:2], runner.want_logits[:2] = [1, 504], [0, 1], 0, 1
        assert runner.decode(2) == 0
    finally:
        runner.close()


def test_the_engine_refuses_to_start_when_even_plain_buffers_crash():
    with pytest.raises(RuntimeError, match="even with plain buffers: killed by SIGSEGV"):
        choose_cpu_paths(GGUF, 2, flash_attn="off", crash=frozenset({"plain"}))


def test_a_forced_path_that_crashes_fails_the_start_loudly():
    with pytest.raises(RuntimeError, match=r"extra buffers \(set\): killed by SIGSEGV"):
        choose_cpu_paths(GGUF, 2, weights="extra", flash_attn="on", crash=frozenset({"extra"}))
    assert choose_cpu_paths(GGUF, 2, weights="plain", flash_attn="on").flash_attn is True


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="weight_buffers"):
        choose_cpu_paths(GGUF, 2, weights="amx")


def test_this_machines_probe_decides_and_the_choice_is_kept(tmp_path, caplog):
    """On a CPU with AMX the native build's extra buffer types have crashed (Intel Xeon VMs);
    elsewhere they may pass. Either way the probe must decide by running them."""
    caplog.set_level(logging.INFO, logger="llama_engine.cpu_paths")
    amx = "amx_int8" in cpu_flags()
    paths = choose_cpu_paths(GGUF, 2, flash_attn="auto", cache_dir=str(tmp_path))
    print(f"CPU has AMX: {amx}; chosen: {paths}")
    assert paths.reason.startswith("probed: extra buffer types ")
    assert paths.weights == ("extra" if paths.reason.startswith("probed: extra buffer types passed") else "plain")
    assert "flash attention " + ("on" if paths.flash_attn else "off") + " (timed: " in paths.reason
    assert list(tmp_path.glob("*.json"))
    caplog.clear()
    assert choose_cpu_paths(GGUF, 2, flash_attn="auto", cache_dir=str(tmp_path)) == paths
    assert not any("passed in" in r.getMessage() for r in caplog.records), "the kept choice ran the probe again"


def test_after_the_engine_crashed_serving_auto_takes_plain_buffers_over_a_kept_choice(tmp_path, caplog):
    """The gateway's crash record (engine_crash) beats a kept "extra" choice and the probe:
    serving crashed where the probe passed."""
    caplog.set_level(logging.INFO, logger="llama_engine.cpu_paths")
    kept = choose_cpu_paths(GGUF, 2, flash_attn="off", cache_dir=str(tmp_path))
    cache = next(tmp_path.glob("*.json"))
    cache.write_text(cache.read_text().replace(f'"weights": "{kept.weights}"', '"weights": "extra"'))
    assert choose_cpu_paths(GGUF, 2, flash_attn="off", cache_dir=str(tmp_path)).weights == "extra"
    caplog.clear()
    note = "the engine's stub (pid 42) died of SIGSEGV at 2026-12-04T12:00:00Z"
    paths = choose_cpu_paths(GGUF, 2, flash_attn="off", cache_dir=str(tmp_path), engine_crash=note)
    assert paths.weights == "plain" and paths.reason.startswith(f"extra buffer types not tried: {note}")
    assert any("passed in" in r.getMessage() and "'plain'" in r.getMessage() for r in caplog.records)
    assert not any("'extra'" in r.getMessage() for r in caplog.records), "the extra buffer types were tried"
    # the record belongs to its run directory: the machine's kept choice is not overwritten, so
    # another run directory (or this one once the record is deleted) still gets the probe's choice
    assert choose_cpu_paths(GGUF, 2, flash_attn="off", cache_dir=str(tmp_path)).weights == "extra"
    assert choose_cpu_paths(GGUF, 2, flash_attn="off", cache_dir=str(tmp_path), engine_crash=note) == paths
