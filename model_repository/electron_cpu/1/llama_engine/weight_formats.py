"""Requantized copies of the shipped weights: made with llama.cpp's own quantizer,
compared with the shipped file's greedy output and timed on this machine.

The llama.cpp side of the weight format choice (the gateway's
``gateway/server/weight_choice.py`` decides and caches). Each command runs in a
child process of its own, so that a kernel that crashes on this CPU costs that
candidate, not the caller:

- ``quantize SRC DST FORMAT``: ``llama_model_quantize`` of the vendored llama.cpp
  (``allow_requantize``: the source is already quantized) into ``DST``, written
  whole or not at all;
- ``greedy SPEC.json``: the CPU paths the engine would take for this GGUF
  (``cpu_paths``), then greedy continuations of the given prompts (token ids), all
  prompts as sequences of one batch, with each step's top candidates and logits
  (with ``reversed_too``, once more in the reverse order: the same file's own
  spread across batch shapes);
- ``time SPEC.json``: the step costs of a voice turn for each GGUF, in rounds that
  interleave the files (a noisy machine slows all of them alike).

Both run on the engine's own ``LlamaRunner`` with the engine's context parameters
(KV cells, sequences, batch size, threads, flash attention and buffer types as
``cpu_paths`` chose for that file). Each prints one JSON line on stdout.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time

FORMATS = ("q8_0", "q4_0")  # requantized candidates (llama.cpp's LLAMA_FTYPE_MOSTLY_*)
TOP_K = 16  # candidates kept per greedy step: enough to read the gap at a divergence
# the timed workload (token counts)
SHORT_PREFILL = 64
LONG_PREFILL = 512
HISTORY = 1024  # a later turn of a call: the history before its new tokens
TURN_PREFILL = 24  # the new tokens of a later turn (a user's 10-30 words)
TURN_DECODES = 8  # decode steps timed after it


def _quiet_llama_logs(llama_cpp) -> None:
    @llama_cpp.llama_log_callback
    def quiet(level, text, _user_data):
        return None

    _quiet_llama_logs.callback = quiet  # keep it alive
    llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))


def quantize(src: str, dst: str, fmt: str, threads: int = 0) -> None:
    """Requantize ``src`` into ``dst`` (a temporary file renamed at the end)."""
    import llama_cpp

    ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}[fmt]
    _quiet_llama_logs(llama_cpp)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = threads
    tmp = f"{dst}.tmp{os.getpid()}"
    try:
        code = llama_cpp.llama_model_quantize(src.encode(), tmp.encode(), ctypes.byref(params))
        if code != 0:
            raise RuntimeError(f"llama_model_quantize({src} -> {fmt}) returned {code}")
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _runner(spec: dict, gguf: str, flash_attn: bool, extra: bool):
    from llama_engine.llama_runner import LlamaRunner, RunnerConfig, kv_unified_for

    return LlamaRunner(RunnerConfig(gguf_path=gguf, kv_cells=spec["kv_cells"], max_sequences=spec["max_sequences"],
                                    kv_unified=kv_unified_for(spec["kv_layout"]),
                                    max_batch_tokens=spec["max_batch_tokens"], threads=spec["threads"],
                                    flash_attn=flash_attn, extra_buffer_types=extra))


def _decode(runner, entries: list[tuple[int, int, int, bool]]) -> None:
    """One ``llama_decode`` of (token, position, sequence, wants logits) entries."""
    for i, (token, pos, seq, logits) in enumerate(entries):
        runner.tokens[i], runner.positions[i], runner.seq_ids[i], runner.want_logits[i] = token, pos, seq, logits
    if runner.decode(len(entries)) != 0:
        raise RuntimeError("llama_decode failed")


def _top(llama_cpp, runner, row: int, np) -> tuple[list[int], list[float]]:
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(runner.ctx, row), shape=(runner.n_vocab,))
    ids = np.argpartition(-logits, TOP_K)[:TOP_K]
    ids = ids[np.argsort(-logits[ids], kind="stable")]
    return ids.tolist(), [float(logits[i]) for i in ids]


def greedy(runner, prompts: list[list[int]], new_tokens: int) -> list[dict]:
    """Greedy continuations of every prompt (one sequence each, decoded together in groups
    of at most the runner's sequences), up to ``new_tokens`` or an end-of-generation token
    (kept): per prompt its tokens and, per step, the top candidates (chosen first) and
    their logits."""
    group = runner.config.max_sequences
    outputs = []
    for start in range(0, len(prompts), group):
        outputs += _greedy_group(runner, prompts[start:start + group], new_tokens)
        for seq in range(min(group, len(prompts) - start)):
            runner.seq_rm(seq, 0, -1)
    return outputs


def _greedy_group(runner, prompts: list[list[int]], new_tokens: int) -> list[dict]:
    import llama_cpp
    import numpy as np

    def tops_after(entries) -> dict[int, tuple[list[int], list[float]]]:
        # read at once: the next llama_decode overwrites the logits
        return {seq: _top(llama_cpp, runner, i, np) for i, (_, _, seq, logits) in enumerate(entries) if logits}

    pending = [(token, pos, seq, pos == len(p) - 1) for seq, p in enumerate(prompts) for pos, token in enumerate(p)]
    tops: dict[int, tuple[list[int], list[float]]] = {}
    size = runner.config.max_batch_tokens
    for start in range(0, len(pending), size):
        chunk = pending[start:start + size]
        _decode(runner, chunk)
        tops.update(tops_after(chunk))
    outputs = [{"tokens": [], "top_ids": [], "top_logits": []} for _ in prompts]
    live = set(range(len(prompts)))
    for _ in range(new_tokens):
        step = []
        for seq in sorted(live):
            ids, logits = tops[seq]
            out = outputs[seq]
            out["tokens"].append(ids[0])
            out["top_ids"].append(ids)
            out["top_logits"].append(logits)
            if llama_cpp.llama_vocab_is_eog(runner.vocab, ids[0]) or len(out["tokens"]) == new_tokens:
                live.discard(seq)
            else:
                step.append((ids[0], len(prompts[seq]) + len(out["tokens"]) - 1, seq, True))
        if not step:
            break
        _decode(runner, step)
        tops = tops_after(step)
    return outputs


def voice_turn_ms(runner, rng_seed: int = 0) -> dict[str, list[float]]:
    """Step times (ms) of the timed workload: a 64-token prompt, a 512-token prompt and
    the next 512 (the history), then a later turn: 24 new tokens at 1k history and the
    decode steps after it."""
    import numpy as np

    tokens = [int(t) for t in np.random.default_rng(rng_seed).integers(100, runner.n_vocab, HISTORY + 64)]
    times: dict[str, list[float]] = {"prefill_64": [], "prefill_512": [], "prefill_24_at_1k": [], "decode_at_1k": []}

    def timed(key: str | None, start: int, count: int) -> None:
        began = time.perf_counter()
        _decode(runner, [(tokens[start + i], start + i, 0, i == count - 1) for i in range(count)])
        if key:
            times[key].append(1e3 * (time.perf_counter() - began))

    timed(None, 0, 16)  # warm-up: the first step pages the weights in
    runner.seq_rm(0, 0, -1)
    for _ in range(3):
        timed("prefill_64", 0, SHORT_PREFILL)
        runner.seq_rm(0, 0, -1)
    timed("prefill_512", 0, LONG_PREFILL)
    timed(None, LONG_PREFILL, HISTORY - LONG_PREFILL)
    for _ in range(3):
        timed("prefill_24_at_1k", HISTORY, TURN_PREFILL)
        for i in range(TURN_DECODES):
            timed("decode_at_1k", HISTORY + TURN_PREFILL + i, 1)
        runner.seq_rm(0, HISTORY, -1)
    return times


def _engine_cpu_paths(spec: dict, gguf: str):
    from llama_engine.cpu_paths import choose_cpu_paths

    return choose_cpu_paths(gguf, spec["threads"], weights=spec["weight_buffers"],
                            flash_attn=spec["flash_attention"], cache_dir=spec["cpu_paths_cache"])


def _resolve_threads(spec: dict) -> dict:
    from llama_engine.thread_budget import usable_cores

    return {**spec, "threads": spec.get("threads") or usable_cores()}


def _greedy_command(spec: dict) -> dict:
    spec = _resolve_threads(spec)
    paths = _engine_cpu_paths(spec, spec["gguf"])
    runner = _runner(spec, spec["gguf"], paths.flash_attn, paths.weights == "extra")
    answer = {"threads": spec["threads"], "weights": paths.weights, "flash_attn": paths.flash_attn,
              "cpu_paths": paths.reason}
    try:
        answer["outputs"] = greedy(runner, spec["prompts"], spec["new_tokens"])
        if spec.get("reversed_too"):  # the same prompts in the other order: other batch shapes, same file
            runner.seq_rm(-1, 0, -1)
            answer["outputs_reversed"] = greedy(runner, spec["prompts"][::-1], spec["new_tokens"])[::-1]
    finally:
        runner.close()
    return answer


def _time_command(spec: dict) -> dict:
    """``spec["models"]``: {name: {gguf, flash_attn, weights}}; all timed in each round."""
    spec = _resolve_threads(spec)
    times: dict[str, dict[str, list[float]]] = {name: {} for name in spec["models"]}
    for _ in range(spec.get("rounds", 3)):
        for name, model in spec["models"].items():
            runner = _runner(spec, model["gguf"], model["flash_attn"], model["weights"] == "extra")
            try:
                for key, values in voice_turn_ms(runner).items():
                    times[name].setdefault(key, []).extend(values)
            finally:
                runner.close()
    return {"threads": spec["threads"], "times_ms": times}


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "quantize":
        quantize(args[0], args[1], args[2])
        print(json.dumps({"quantized": args[1]}))
        return 0
    import llama_cpp

    _quiet_llama_logs(llama_cpp)
    llama_cpp.llama_backend_init()
    with open(args[0], encoding="utf-8") as f:
        spec = json.load(f)
    answer = {"greedy": _greedy_command, "time": _time_command}[command](spec)
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
