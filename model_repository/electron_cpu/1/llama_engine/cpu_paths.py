"""Which of llama.cpp's CPU paths this machine runs: chosen by trying them, never by build flags.

A native build compiles every instruction path the build machine has, and a path
can still fail on the machine that runs it: on an Intel Xeon VM with AMX, the
weights llama.cpp puts into its AMX buffer type crash the first ``llama_decode``
(SIGSEGV). So before the engine loads the model, ``choose_cpu_paths`` runs a
*probe* in a child process for each candidate: load the GGUF, prefill a prompt,
decode a few steps of two sequences, and report the greedy tokens with each
step's top candidates. The candidates:

- ``extra``: llama.cpp's extra buffer types (``use_extra_bufts``: AMX tiles where
  the CPU has them, repacked weights for the formats that have a repacked layout);
- ``plain``: ordinary CPU buffers, the reference every x86-64 CPU runs.

``extra`` is kept only when its child exits normally and each of its greedy tokens
is among the reference's top candidates at that step (a kernel that computes
garbage fails as surely as one that crashes); otherwise the engine runs ``plain``.
Then one more child on the chosen weights times flash attention: a 16-token
prefill and a decode step at 1k tokens of history, on and off; the faster is kept
(llama.cpp's CPU flash attention was measured 2.7-3.6x slower at depth on an Intel
Xeon). The choice is kept in a cache file per llama.cpp build, GGUF, CPU and
thread count, so that only a machine's first start pays the ~10 s.

After the serving engine itself died of a fault signal (the gateway records it,
``gateway/server/engine_state.py``, and passes it as the ``engine_crash``
parameter), ``auto`` takes plain buffers without trying the extra ones, over a kept
choice too: the probe passed them, serving did not.

Child command: ``python -m llama_engine.cpu_paths GGUF MODE THREADS [--crash] [--calibrate]``
(``--crash``: the child kills itself with SIGSEGV after loading the model, as the
AMX kernels did; the tests' way to exercise the fallback).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine_contract.cpu_parameters import FLASH_ATTENTION, WEIGHT_BUFFERS
from .build_compiler import cpu_backend_library, cpu_backend_variant, llama_cpp_compiler

log = logging.getLogger(__name__)

WEIGHT_PATHS = ("extra", "plain")
CHOICES = WEIGHT_BUFFERS  # the setting: probe, or force one (engine_contract.cpu_parameters)
PROBE_PROMPT = "The capital of France is Paris. नमस्ते, आप कैसे हैं? The weather today is"
PROBE_STEPS = 6  # greedy decode steps after the prompt
TOP_K = 5  # the reference's candidates a probed token must be among
CALIBRATION_HISTORY = 1024
CALIBRATION_PREFILL = 16


@dataclass(frozen=True)
class CpuPaths:
    """What the engine runs on this machine, and why."""

    weights: str  # "extra" or "plain"
    flash_attn: bool
    reason: str  # one line for the log and the info metric

    def labels(self) -> dict[str, str]:
        return {"weights": self.weights, "flash_attn": "on" if self.flash_attn else "off", "probe": self.reason,
                "cpu_backend": cpu_backend_variant()}


@dataclass(frozen=True)
class ProbeResult:
    mode: str
    ok: bool
    detail: str  # why not ok: the signal or the error
    steps: list[list[int]]  # per greedy step: the top candidates, the chosen token first
    flash_ms: dict[str, float]  # {"on": ms, "off": ms} of the calibration workload


def _run_child(gguf: str, mode: str, threads: int, crash: bool, calibrate: bool, timeout_s: float) -> ProbeResult:
    command = [sys.executable, "-m", "llama_engine.cpu_paths", gguf, mode, str(threads)]
    command += ["--crash"] if crash else []
    command += ["--calibrate"] if calibrate else []
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in [env.get("PYTHONPATH")] if p])
    started = time.monotonic()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return ProbeResult(mode, False, f"no answer within {timeout_s:.0f} s", [], {})
    took = time.monotonic() - started
    if done.returncode != 0:
        if done.returncode < 0:
            detail = f"killed by {signal.Signals(-done.returncode).name}"
        else:
            detail = f"exit code {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
        log.warning("CPU path %s %r failed after %.1f s: %s", "timing" if calibrate else "probe", mode, took, detail)
        return ProbeResult(mode, False, detail, [], {})
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    log.info("CPU path %s %r passed in %.1f s", "timing" if calibrate else "probe", mode, took)
    return ProbeResult(mode, True, "", answer["steps"], answer.get("flash_ms", {}))


def agrees(probe: ProbeResult, reference: ProbeResult) -> bool:
    """Each of the probe's greedy tokens is among the reference's top candidates at that
    step, with the probe following its own tokens (so a flip at a near-tie, where both
    are plausible, fails only if the continuations then differ beyond the candidates)."""
    if len(probe.steps) != len(reference.steps) or not probe.steps:
        return False
    return all(mine[0] in theirs for mine, theirs in zip(probe.steps, reference.steps))


def choose_cpu_paths(gguf: str, threads: int, weights: str = "auto", flash_attn: str = "auto",
                     cache_dir: str = "", crash: frozenset[str] = frozenset(), timeout_s: float = 120.0,
                     engine_crash: str = "") -> CpuPaths:
    """The CPU paths the engine takes. ``weights``: ``auto`` (probe), ``extra`` or ``plain``
    (forced: probed only to fail the start loudly if it cannot decode); ``flash_attn``:
    ``auto`` (calibrate), ``on``, ``off``. ``cache_dir``: where a choice is kept for the
    same library build, GGUF, CPU and threads (empty: probe every start). ``crash``: modes
    whose probe child crashes on purpose (tests). ``engine_crash``: a crash of the serving
    engine seen before (a fault signal, the gateway's record): ``auto`` then takes plain
    buffers without trying the extra ones, also over a kept choice. Raises RuntimeError when
    the chosen or forced path cannot decode: the model cannot run here."""
    if weights not in CHOICES or flash_attn not in FLASH_ATTENTION:
        raise ValueError(f"weight_buffers must be one of {CHOICES} and flash_attention one of {FLASH_ATTENTION}, "
                         f"not {weights!r}/{flash_attn!r}")
    cache = _cache_file(cache_dir, gguf, threads, weights, flash_attn) if cache_dir and not crash else None
    if cache is not None and cache.is_file():
        paths = CpuPaths(**json.loads(cache.read_text()))
        if not (engine_crash and weights == "auto" and paths.weights == "extra"):
            log.info("CPU paths (chosen before on this machine, %s): %s; llama.cpp CPU backend %s, built by %s",
                     cache, paths.reason, cpu_backend_variant(), llama_cpp_compiler())
            return paths
    if engine_crash and weights == "auto":
        # the crash is this run directory's record, not a fact of the machine: the choice
        # it forces is not kept beside the probe's (another run directory still probes)
        mode, reason = _choose_after_crash(gguf, threads, engine_crash, crash, timeout_s)
        cache = None
    else:
        mode, reason = _choose_weights(gguf, threads, weights, crash, timeout_s)
    if flash_attn == "auto":
        timed = _run_child(gguf, mode, threads, False, True, timeout_s)
        if not timed.ok:
            raise RuntimeError(f"llama.cpp failed timing flash attention with {mode} buffers: {timed.detail}")
        on, off = timed.flash_ms["on"], timed.flash_ms["off"]
        use_flash = on < off
        reason += f"; flash attention {'on' if use_flash else 'off'} (timed: {on:.0f} vs {off:.0f} ms)"
    else:
        use_flash = flash_attn == "on"
        reason += f"; flash attention {flash_attn} (set)"
    paths = CpuPaths(weights=mode, flash_attn=use_flash, reason=reason)
    log.info("CPU paths: weights %s, flash attention %s (%s); llama.cpp CPU backend %s, built by %s",
             mode, "on" if use_flash else "off", reason, cpu_backend_variant(), llama_cpp_compiler())
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(dataclasses.asdict(paths)))
        except OSError as exc:
            log.warning("could not keep the CPU paths in %s: %s", cache, exc)
    return paths


def _choose_weights(gguf: str, threads: int, weights: str, crash: frozenset[str], timeout_s: float) -> tuple[str, str]:
    if weights != "auto":
        forced = _run_child(gguf, weights, threads, weights in crash, False, timeout_s)
        if not forced.ok:
            raise RuntimeError(f"llama.cpp cannot decode {gguf} with {weights} buffers (set): {forced.detail}")
        return weights, f"set: {weights}"
    reference = _run_child(gguf, "plain", threads, "plain" in crash, False, timeout_s)
    if not reference.ok:
        raise RuntimeError(f"llama.cpp cannot decode {gguf} on this CPU even with plain buffers: {reference.detail}")
    candidate = _run_child(gguf, "extra", threads, "extra" in crash, False, timeout_s)
    if candidate.ok and agrees(candidate, reference):
        return "extra", "probed: extra buffer types passed"
    if candidate.ok:
        return "plain", "probed: extra buffer types disagreed with plain buffers"
    return "plain", f"probed: extra buffer types {candidate.detail}"


def _choose_after_crash(gguf: str, threads: int, engine_crash: str, crash: frozenset[str],
                        timeout_s: float) -> tuple[str, str]:
    log.warning("the engine crashed before (%s): plain CPU buffers, extra buffer types not tried", engine_crash)
    reference = _run_child(gguf, "plain", threads, "plain" in crash, False, timeout_s)
    if not reference.ok:
        raise RuntimeError(f"llama.cpp cannot decode {gguf} on this CPU even with plain buffers: {reference.detail}")
    return "plain", f"extra buffer types not tried: {engine_crash}"


def _cache_file(cache_dir: str, gguf: str, threads: int, weights: str, flash_attn: str) -> Path:
    """One file per llama.cpp build, GGUF, CPU (model and flags), threads and setting."""
    import hashlib

    import llama_cpp

    parts = [weights, flash_attn, str(threads)]
    backend = cpu_backend_library()  # the image's variant for this CPU, when it is not the package's own
    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("*.so*"))
    for path in [Path(gguf), *libs, *([backend] if backend and libs and backend.parent != libs[0].parent else [])]:
        info = path.stat()
        parts.append(f"{path.resolve()}:{info.st_size}:{info.st_mtime_ns}")
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        parts += sorted({line.strip() for line in f if line.startswith(("model name", "flags"))})
    return Path(cache_dir) / (hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16] + ".json")


# ---- the child -----------------------------------------------------------------------
def _greedy_steps(llama_cpp, ctx, vocab, prompt: list[int]) -> list[list[int]]:
    """Prefill ``prompt`` as two sequences in one batch, then decode both greedily; the
    steps of sequence 0 (top candidates, chosen first). Two sequences: the batched
    matrix kernels run, not only the one-row ones."""
    import numpy as np

    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    batch = llama_cpp.llama_batch_init(max(2 * len(prompt), 2), 0, 2)
    try:
        def add(i, token, pos, seq, logits):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
            batch.seq_id[i][0] = seq

        for seq in (0, 1):
            for j, token in enumerate(prompt):
                add(seq * len(prompt) + j, token, j, seq, j == len(prompt) - 1)
        batch.n_tokens = 2 * len(prompt)
        rows = [len(prompt) - 1, 2 * len(prompt) - 1]
        steps = []
        for step in range(PROBE_STEPS):
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            chosen = []
            for seq, row in enumerate(rows):
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row), shape=(n_vocab,))
                top = np.argsort(-logits)[:TOP_K].tolist()
                chosen.append(top[0])
                if seq == 0:
                    steps.append(top)
            for seq in (0, 1):
                add(seq, chosen[seq], len(prompt) + step, seq, True)
            batch.n_tokens = 2
            rows = [0, 1]
        return steps
    finally:
        llama_cpp.llama_batch_free(batch)


def _context(llama_cpp, model, threads: int, n_ctx: int, flash: bool):
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch, cparams.n_seq_max = n_ctx, 512, 512, 2
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cparams.kv_unified = True
    cparams.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    if not ctx:
        raise RuntimeError("llama.cpp could not create a context")
    return ctx


def _calibration_ms(llama_cpp, model, threads: int, flash: bool) -> float:
    """Median time of a 16-token prefill plus one decode step at 1k tokens of history:
    a later turn of a call, the step whose speed the caller hears."""
    import numpy as np

    ctx = _context(llama_cpp, model, threads, CALIBRATION_HISTORY + 64, flash)
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    tokens = np.random.default_rng(0).integers(100, n_vocab, CALIBRATION_HISTORY + CALIBRATION_PREFILL + 1)

    def decode(start: int, count: int) -> None:
        for i in range(count):
            batch.token[i], batch.pos[i] = int(tokens[start + i]), start + i
            batch.n_seq_id[i], batch.logits[i] = 1, i == count - 1
            batch.seq_id[i][0] = 0
        batch.n_tokens = count
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    try:
        for start in range(0, CALIBRATION_HISTORY, 512):
            decode(start, 512)
        memory = llama_cpp.llama_get_memory(ctx)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            decode(CALIBRATION_HISTORY, CALIBRATION_PREFILL)
            decode(CALIBRATION_HISTORY + CALIBRATION_PREFILL, 1)
            times.append(time.perf_counter() - started)
            llama_cpp.llama_memory_seq_rm(memory, 0, CALIBRATION_HISTORY, -1)
        return 1e3 * sorted(times)[len(times) // 2]
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)


def _child(argv: list[str]) -> int:
    import ctypes

    import llama_cpp

    gguf, mode, threads = argv[0], argv[1], int(argv[2])

    @llama_cpp.llama_log_callback
    def quiet(level, text, _user_data):
        return None

    llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = 0
    mparams.use_extra_bufts = mode == "extra"
    model = llama_cpp.llama_model_load_from_file(gguf.encode(), mparams)
    if not model:
        print(f"cannot load {gguf}", file=sys.stderr)
        return 2
    if "--crash" in argv:
        os.kill(os.getpid(), signal.SIGSEGV)
    vocab = llama_cpp.llama_model_get_vocab(model)
    text = PROBE_PROMPT.encode()
    buf = (llama_cpp.llama_token * 256)()
    n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, 256, True, False)
    ctx = _context(llama_cpp, model, threads, 256, flash=False)
    steps = _greedy_steps(llama_cpp, ctx, vocab, list(buf[:n]))
    llama_cpp.llama_free(ctx)
    answer = {"steps": steps}
    if "--calibrate" in argv:
        answer["flash_ms"] = {"on": _calibration_ms(llama_cpp, model, threads, True),
                              "off": _calibration_ms(llama_cpp, model, threads, False)}
    print(json.dumps(answer))
    llama_cpp.llama_model_free(model)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
