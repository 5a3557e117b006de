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
  prompts as sequences of one batch, with each step's top candidates and logits;
  given the shipped file's run as a reference, a candidate's continuations instead,
  each stopped at its first divergence from the reference, the whole run at the
  first far one (``greedy``), on the CPU paths given (the shipped file's: a candidate
  is probed only once it passed, in ``time``);
- ``time SPEC.json``: the CPU paths the engine would take for each GGUF, then the
  step costs of a voice turn on them, in rounds that interleave the files (a noisy
  machine slows all of them alike).

Both run on the engine's own ``LlamaRunner`` with the engine's threads, batch size,
flash attention and buffer types; ``time`` with its KV cells, layout and sequences
too, ``greedy`` with one KV stream per prompt (``_greedy_runner``). Each prints one
JSON line on stdout.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time

FORMATS = ("q8_0", "q4_0")  # requantized candidates (llama.cpp's LLAMA_FTYPE_MOSTLY_*)
TOP_K = 16  # candidates kept per greedy step: enough to read the gap at a divergence
GATE_SEQUENCES = 64  # prompts decoded together; more run in groups
STREAM_ROUNDING = 256  # llama.cpp makes each KV stream a multiple of 256 cells
# the timed workload (token counts)
SHORT_PREFILL = 64
LONG_PREFILL = 512
HISTORY = 1024  # a later turn of a call: the history before its new tokens
TURN_PREFILL = 24  # the new tokens of a later turn (a user's 10-30 words)
TURN_DECODES = 8  # decode steps timed after it
TURNS_PER_ROUND = 3


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
    """A runner with the engine's context parameters (``time``)."""
    from llama_engine.llama_runner import LlamaRunner, RunnerConfig, kv_unified_for

    return LlamaRunner(RunnerConfig(gguf_path=gguf, kv_cells=spec["kv_cells"], max_sequences=spec["max_sequences"],
                                    kv_unified=kv_unified_for(spec["kv_layout"]),
                                    max_batch_tokens=spec["max_batch_tokens"], threads=spec["threads"],
                                    flash_attn=flash_attn, extra_buffer_types=extra))


def _greedy_runner(spec: dict, gguf: str, flash_attn: bool, extra: bool):
    """A runner for the gate's greedy runs: the engine's threads, batch size and CPU paths,
    with one KV stream per prompt (up to ``GATE_SEQUENCES``), each of the cells its prompt
    and continuation need. All prompts decode together, and each attends to its own cells
    only: in a unified pool holding all 50, llama.cpp's attention without flash attention
    spans every used cell of the pool, which made the shipped file's run cost 1.6x the
    CPU time (59 against 36 s on one core of an AMD EPYC)."""
    from llama_engine.llama_runner import LlamaRunner, RunnerConfig

    sequences = max(1, min(len(spec["prompts"]), GATE_SEQUENCES))
    longest = max((len(p) for p in spec["prompts"]), default=0) + spec["new_tokens"]
    stream = -(-longest // STREAM_ROUNDING) * STREAM_ROUNDING
    return LlamaRunner(RunnerConfig(gguf_path=gguf, kv_cells=sequences * stream, max_sequences=sequences,
                                    kv_unified=False, max_batch_tokens=spec["max_batch_tokens"],
                                    threads=spec["threads"], flash_attn=flash_attn, extra_buffer_types=extra))


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


def greedy(runner, prompts: list[list[int]], new_tokens: int,
           reference: list[dict] | None = None) -> list[dict | None]:
    """Greedy continuations of every prompt, up to ``new_tokens`` or an end-of-generation
    token (kept). All prompts are decoded together, one sequence id each and one
    ``llama_decode`` per step for all of them (more prompts than the runner's sequences:
    in groups, each on clean sequences); a prompt's leading tokens that an earlier prompt
    of its group has (the system prompt) are copied from that sequence, not prefilled.

    Without ``reference``: per prompt its tokens and, per step, the top candidates (chosen
    first) and their logits. With ``reference`` (per prompt the shipped run's ``tokens``
    and, per step, the ``ties``: the tokens that would be a near-tie there): per prompt its
    tokens only, ending at the first one that differs from the reference's; the run stops
    altogether at the first such token not among that step's ties (a far divergence),
    and the prompts it had not finished then are None."""
    size = runner.config.max_sequences
    outputs: list[dict | None] = []
    far = False
    for start in range(0, len(prompts), size):
        if far:  # the verdict is known
            outputs += [None] * len(prompts[start:start + size])
            continue
        group = _GreedyGroup(runner, prompts[start:start + size], new_tokens,
                             reference[start:start + size] if reference is not None else None)
        outputs += group.run()
        far = group.far
        for seq in range(min(size, len(prompts) - start)):
            runner.seq_rm(seq, 0, -1)
    return outputs


def shared_prefixes(prompts: list[list[int]]) -> list[tuple[int, int]]:
    """Per prompt: the earlier prompt it shares the most leading tokens with and how many
    (short of its last token, whose logits its own decode must give); (-1, 0): none."""
    found = []
    for i, prompt in enumerate(prompts):
        best = (-1, 0)
        for j in range(i):
            common = next((k for k, (x, y) in enumerate(zip(prompt, prompts[j])) if x != y),
                          min(len(prompt), len(prompts[j])))
            if min(common, len(prompt) - 1) > best[1]:
                best = (j, min(common, len(prompt) - 1))
        found.append(best)
    return found


class _GreedyGroup:
    """Prompts decoded together on sequences 0..n-1 of ``runner`` (``greedy``)."""

    def __init__(self, runner, prompts: list[list[int]], new_tokens: int, reference: list[dict] | None):
        import llama_cpp
        import numpy as np

        self.runner, self.prompts, self.new_tokens, self.reference = runner, prompts, new_tokens, reference
        self._llama_cpp, self._np = llama_cpp, np
        keys = ("tokens",) if reference is not None else ("tokens", "top_ids", "top_logits")
        self.outputs = [{key: [] for key in keys} for _ in prompts]
        self.done: set[int] = set()  # sequences that stopped
        self.far = False  # a far divergence from the reference: stop them all

    def run(self) -> list[dict | None]:
        step = self._prefill()
        while step and not self.far:
            _decode(self.runner, step)
            step = self._take(step)
        return [out if seq in self.done else None for seq, out in enumerate(self.outputs)]

    def _prefill(self) -> list[tuple[int, int, int, bool]]:
        """Every prompt into its sequence, in waves (a prompt after the one it copies from),
        each wave in chunks of the runner's batch; the first decode step's entries."""
        sources = shared_prefixes(self.prompts)
        wave = [0] * len(self.prompts)
        for seq, (source, _) in enumerate(sources):
            wave[seq] = wave[source] + 1 if source >= 0 else 0
        step: list[tuple[int, int, int, bool]] = []
        size = self.runner.config.max_batch_tokens
        for current in range(max(wave, default=-1) + 1):
            members = [seq for seq in range(len(self.prompts)) if wave[seq] == current]
            for seq in members:
                source, shared = sources[seq]
                if source >= 0:
                    self._copy(source, seq, shared)
            pending = [(self.prompts[seq][pos], pos, seq, pos == len(self.prompts[seq]) - 1)
                       for seq in members for pos in range(sources[seq][1], len(self.prompts[seq]))]
            for start in range(0, len(pending), size):
                chunk = pending[start:start + size]
                _decode(self.runner, chunk)
                step += self._take(chunk)
                if self.far:
                    return []
        return step

    def _copy(self, source: int, seq: int, shared: int) -> None:
        """``seq`` gets ``source``'s first ``shared`` positions: the cells themselves in a
        unified cache, a copy of its stream cut back otherwise (llama.cpp copies streams whole)."""
        if self.runner.config.kv_unified:
            self.runner.seq_cp(source, seq, 0, shared)
        else:
            self.runner.seq_cp(source, seq, -1, -1)
            self.runner.seq_rm(seq, shared, -1)

    def _take(self, entries) -> list[tuple[int, int, int, bool]]:
        """Each entry's greedy token (read at once: the next decode overwrites the logits);
        the next step's entries of the sequences that go on."""
        step = []
        for row, (_, _, seq, logits) in enumerate(entries):
            if not logits:
                continue
            ids, values = _top(self._llama_cpp, self.runner, row, self._np)
            out = self.outputs[seq]
            out["tokens"].append(ids[0])
            if self.reference is None:
                out["top_ids"].append(ids)
                out["top_logits"].append(values)
            if self._goes_on(seq, ids[0]):
                step.append((ids[0], len(self.prompts[seq]) + len(out["tokens"]) - 1, seq, True))
        return step

    def _goes_on(self, seq: int, token: int) -> bool:
        """Whether ``seq`` decodes another step after taking ``token``; sets ``far``."""
        made = len(self.outputs[seq]["tokens"])
        if self.reference is not None:
            expected, ties = self.reference[seq]["tokens"], self.reference[seq]["ties"]
            at = made - 1
            if at >= len(expected) or token != expected[at]:
                self.far = self.far or at >= len(ties) or token not in ties[at]
                self.done.add(seq)
                return False
        if made < self.new_tokens and not self._llama_cpp.llama_vocab_is_eog(self.runner.vocab, token):
            return True
        self.done.add(seq)
        return False


class VoiceTurnTimer:
    """Step times (ms) of a voice call's workload on one runner (sequence 0): at creation a
    64-token prompt, then the 1k-token history (its first 512 tokens timed as one
    prefill); then each ``turns`` call times later turns on that history: 24 new tokens
    and the decode steps after them, cut back to the history after each."""

    KEYS = ("prefill_64", "prefill_512", "prefill_24_at_1k", "decode_at_1k")

    def __init__(self, runner, rng_seed: int = 0):
        import numpy as np

        self.runner = runner
        self.tokens = [int(t) for t in np.random.default_rng(rng_seed).integers(100, runner.n_vocab, HISTORY + 64)]
        self.times: dict[str, list[float]] = {key: [] for key in self.KEYS}
        self._timed(None, 0, 16)  # warm-up: the first step pages the weights in
        runner.seq_rm(0, 0, -1)
        self._timed("prefill_64", 0, SHORT_PREFILL)
        runner.seq_rm(0, 0, -1)
        self._timed("prefill_512", 0, LONG_PREFILL)
        self._timed(None, LONG_PREFILL, HISTORY - LONG_PREFILL)

    def _timed(self, key: str | None, start: int, count: int) -> None:
        began = time.perf_counter()
        _decode(self.runner, [(self.tokens[start + i], start + i, 0, i == count - 1) for i in range(count)])
        if key:
            self.times[key].append(1e3 * (time.perf_counter() - began))

    def turns(self, count: int) -> None:
        for _ in range(count):
            self._timed("prefill_24_at_1k", HISTORY, TURN_PREFILL)
            for i in range(TURN_DECODES):
                self._timed("decode_at_1k", HISTORY + TURN_PREFILL + i, 1)
            self.runner.seq_rm(0, HISTORY, -1)


def _engine_cpu_paths(spec: dict, gguf: str):
    from llama_engine.cpu_paths import choose_cpu_paths

    return choose_cpu_paths(gguf, spec["threads"], weights=spec["weight_buffers"],
                            flash_attn=spec["flash_attention"], cache_dir=spec["cpu_paths_cache"])


def _resolve_threads(spec: dict) -> dict:
    from llama_engine.thread_budget import usable_cores

    return {**spec, "threads": spec.get("threads") or usable_cores()}


def _greedy_command(spec: dict) -> dict:
    """``spec``: the engine's parameters, ``gguf``, ``prompts``, ``new_tokens``; for a
    candidate, the shipped run's ``reference`` (``greedy``) and the ``paths`` (weights,
    flash_attn) to run it with instead of the ones the engine would choose for it."""
    spec = _resolve_threads(spec)
    if spec.get("paths"):
        weights, flash_attn, reason = spec["paths"]["weights"], spec["paths"]["flash_attn"], "given"
    else:
        paths = _engine_cpu_paths(spec, spec["gguf"])
        weights, flash_attn, reason = paths.weights, paths.flash_attn, paths.reason
    began = time.monotonic()
    runner = _greedy_runner(spec, spec["gguf"], flash_attn, weights == "extra")
    answer = {"threads": spec["threads"], "weights": weights, "flash_attn": flash_attn, "cpu_paths": reason}
    try:
        answer["outputs"] = greedy(runner, spec["prompts"], spec["new_tokens"], spec.get("reference"))
    finally:
        runner.close()
    answer["seconds"] = round(time.monotonic() - began, 2)
    return answer


def _time_command(spec: dict) -> dict:
    """``spec["models"]``: {name: GGUF path}: each on the CPU paths the engine would take
    for it (``cpu_paths``, probed here if not kept yet), loaded once with its history, then
    timed in ``rounds`` that interleave them (a noisy machine slows all of them alike),
    ``TURNS_PER_ROUND`` turns each."""
    spec = _resolve_threads(spec)
    paths = {name: _engine_cpu_paths(spec, gguf) for name, gguf in spec["models"].items()}
    timers: dict[str, VoiceTurnTimer] = {}
    try:
        for name, gguf in spec["models"].items():
            runner = _runner(spec, gguf, paths[name].flash_attn, paths[name].weights == "extra")
            timers[name] = VoiceTurnTimer(runner)
        for _ in range(spec.get("rounds", 3)):
            for timer in timers.values():
                timer.turns(TURNS_PER_ROUND)
    finally:
        for timer in timers.values():
            timer.runner.close()
    return {"threads": spec["threads"], "times_ms": {name: timer.times for name, timer in timers.items()},
            "paths": {name: {"weights": p.weights, "flash_attn": p.flash_attn, "cpu_paths": p.reason}
                      for name, p in paths.items()}}


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
