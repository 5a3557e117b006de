"""The GGUF the CPU engine loads: the shipped file, or a requantized copy of it that is
faster on this machine and passes the quality gate (``weight_gate``).

``ELECTRON_WEIGHT_FORMAT``: ``auto`` (measure once per machine, keep the decision),
``shipped``, or a format (``q8_0``, ``q4_0``: use that copy, made if missing, without
the gate). For ``auto``:

1. requantize the shipped file to each format with llama.cpp's own quantizer (the
   vendored source's ``llama_model_quantize``, never a download), into
   ``<artifacts>/<model>/weights/<format>.gguf``, with a ``.json`` beside it naming
   the source and the llama.cpp build (a copy of another source or build is remade);
2. check that each copy's vocabulary and chat template are the shipped file's (the
   gateway's tokenizer and template stay the shipped file's);
3. greedy continuations of the fixed prompts (``data/weight_gate_prompts.json``,
   rendered with the chat template), all prompts decoded together as the sequences of
   one batch: the shipped file's on the CPU paths the engine takes for it, then each
   copy's on the same paths, which stops a prompt at its first divergence from the
   shipped output and stops altogether at its first far one: the gate (``weight_gate``:
   no far divergence);
4. if a copy passed, time a voice turn's steps for the shipped file and each passing
   copy, with the engine's context parameters and the CPU paths it would take for that
   file (probed then; nothing is probed or timed when no copy passed: the shipped file
   stays);
5. keep the fastest passing copy if it beats the shipped file (``weight_gate.choose``).

Everything llama.cpp does runs in child processes (``llama_engine.weight_formats``): a
candidate that crashes on this CPU is rejected, the shipped file stays. The decision
(format, gate results, timings) is written to ``weights/decision-<key>.json``, the key
covering the shipped file, the llama.cpp build, the CPU, the prompts and the engine
settings that change the timings; a later start with the same key reads it (fast).
It is made where the engine runs, never in an image build (``build/Dockerfile`` prepares
the shipped file only): the first start of a container makes it, in the artifacts
folder of its data volume.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.server import weight_gate
from gateway.server.engine_state import cpu_paths_cache_dir
from gateway.model_artifacts import ModelArtifacts, read_gguf_metadata
from gateway.settings import WEIGHT_FORMAT_CHOICES, WEIGHT_FORMATS, Settings

log = logging.getLogger(__name__)

PROMPTS_FILE = Path(__file__).resolve().parent / "data" / "weight_gate_prompts.json"
DECISION_VERSION = 3  # 3: no far divergence is the whole gate (2: agreement counted on the stable prompts)
ENGINE_MODEL = "electron_cpu"  # the model folder whose llama_engine package does the llama.cpp work
TIMING_ROUNDS = 3


@dataclass(frozen=True)
class WeightChoice:
    path: Path  # the GGUF the engine loads
    format: str  # "shipped" or one of WEIGHT_FORMATS
    reason: str
    decision_file: Path | None = None


def weights_dir(artifacts: ModelArtifacts) -> Path:
    return artifacts.directory / "weights"


def engine_weights(settings: Settings, artifacts: ModelArtifacts, formats: tuple[str, ...] = WEIGHT_FORMATS,
                   prompts: list[list[int]] | None = None) -> WeightChoice:
    """The weights for ``settings.weight_format`` (see the module docstring). ``formats`` and
    ``prompts`` (token ids) replace the candidates and the fixed prompt set (tests)."""
    setting = settings.weight_format  # one of WEIGHT_FORMAT_CHOICES (Settings checks it)
    if setting == "shipped":
        return _logged(WeightChoice(artifacts.gguf_path, "shipped", "set: shipped"))
    if settings.triton_model != ENGINE_MODEL:
        return WeightChoice(artifacts.gguf_path, "shipped", f"{settings.triton_model} is not the CPU engine")
    if setting != "auto":
        return _logged(WeightChoice(requantized(settings, artifacts, setting), setting, f"set: {setting}"))
    prompts = prompts if prompts is not None else gate_prompts(artifacts)
    decision_file = weights_dir(artifacts) / f"decision-{_decision_key(settings, artifacts, formats, prompts)}.json"
    cached = _read_decision(decision_file)
    if cached is not None:
        return _logged(cached, "chosen before on this machine")
    started = time.monotonic()
    decision = measure(settings, artifacts, formats, prompts)
    decision["seconds"] = round(time.monotonic() - started, 1)
    chosen = decision["chosen"]
    path = artifacts.gguf_path if chosen == "shipped" else Path(decision["candidates"][chosen]["path"])
    if decision.pop("keep", True):
        decision["path"] = str(path)
        decision["stamp"] = _stamp(path)
        decision_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = decision_file.with_suffix(f".tmp{os.getpid()}")  # two first starts may measure at once
        tmp.write_text(json.dumps(decision, indent=1))
        os.replace(tmp, decision_file)
    return _logged(WeightChoice(path, chosen, decision["reason"], decision_file), f"measured in {decision['seconds']} s")


def _logged(choice: WeightChoice, how: str = "") -> WeightChoice:
    log.info("engine weights: %s (%s)%s%s", choice.format, choice.reason, f"; {how}" if how else "",
             f"; decision in {choice.decision_file}" if choice.decision_file else "")
    return choice


def gate_prompts(artifacts: ModelArtifacts) -> list[list[int]]:
    """The fixed prompt set as the gateway sends it: chat template, then the gateway's tokenizer."""
    from gateway.chat.chat_template import ChatTemplate
    from gateway.chat.token_codec import TokenCodec

    data = json.loads(PROMPTS_FILE.read_text(encoding="utf-8"))
    by_id = {i: token for token, i in artifacts.special_tokens.items()}
    special = {name: by_id[i] for name, i in (("bos_token", artifacts.bos_token_id),
                                                ("eos_token", artifacts.eos_token_id)) if i in by_id}
    template, codec = ChatTemplate(artifacts.chat_template, special), TokenCodec.from_artifacts(artifacts)
    prompts = []
    for item in data["prompts"]:
        turns = item.get("messages") or [{"role": "user", "content": item["user"]}]
        messages = [{"role": "system", "content": item.get("system", data["system"])}, *turns]
        prompts.append(codec.encode(template.render(messages, add_generation_prompt=True)))
    return prompts


# ---- measuring ------------------------------------------------------------------------
def measure(settings: Settings, artifacts: ModelArtifacts, formats: tuple[str, ...],
            prompts: list[list[int]]) -> dict:
    """Quantize, gate and time; the decision as a JSON-able dict (``keep``: False when
    the shipped file itself could not be run, so nothing is learnt about this machine)."""
    decision = {"version": DECISION_VERSION, "setting": "auto", "shipped_path": str(artifacts.gguf_path),
                "cpu": _cpu_model(), "llama_cpp": _llama_cpp_version(),
                "gate": {"prompts": len(prompts), "prefix_tokens": weight_gate.PREFIX_TOKENS,
                         "max_tie_gap": weight_gate.MAX_TIE_GAP,
                         "min_speedup": weight_gate.MIN_SPEEDUP, "turn_decodes": weight_gate.TURN_DECODES},
                "candidates": {}}
    spec = _engine_spec(settings)
    gate_spec = {**spec, "prompts": prompts, "new_tokens": weight_gate.PREFIX_TOKENS}
    try:
        shipped = _child(settings, "greedy", {**gate_spec, "gguf": str(artifacts.gguf_path)})
    except RuntimeError as exc:
        reason = f"the shipped file could not be run for the gate ({exc})"
        return {**decision, "chosen": "shipped", "reason": reason, "keep": False}
    reference = [weight_gate.Continuation(**o) for o in shipped["outputs"]]
    decision["threads"] = shipped["threads"]
    paths = {"weights": shipped["weights"], "flash_attn": shipped["flash_attn"]}
    entries = {"shipped": {"path": str(artifacts.gguf_path), **paths, "cpu_paths": shipped["cpu_paths"],
                           "greedy_s": shipped["seconds"]}}
    gates: dict[str, weight_gate.GateResult | None] = {}
    for fmt in formats:
        entries[fmt], gates[fmt] = _gate_candidate(settings, artifacts, {**gate_spec, "paths": paths}, fmt, reference)
    decision["candidates"] = entries
    passed = [fmt for fmt in formats if gates[fmt] is not None and gates[fmt].passed]
    if not passed:  # the shipped file stays, whatever the timings: nothing to time
        return {**decision, "chosen": "shipped", "reason": "auto: no requantized copy passed the quality gate"}
    try:
        timed = _child(settings, "time", {**spec, "rounds": TIMING_ROUNDS, "models": {
            name: entries[name]["path"] for name in ("shipped", *passed)}})
    except RuntimeError as exc:
        return {**decision, "chosen": "shipped", "reason": f"timing failed ({exc})"}
    for name, t in timed["times_ms"].items():
        entries[name].update(timed["paths"][name], timings=_timing_summary(t), times_ms=t)
    shipped_turn = entries["shipped"]["timings"]["voice_turn_ms"]
    chosen, reason = weight_gate.choose(shipped_turn, {
        fmt: (gates[fmt], entries[fmt].get("timings", {}).get("voice_turn_ms")) for fmt in formats})
    return {**decision, "chosen": chosen, "reason": f"auto: {reason}"}


def _gate_candidate(settings: Settings, artifacts: ModelArtifacts, spec: dict, fmt: str,
                    reference: list[weight_gate.Continuation]) -> tuple[dict, weight_gate.GateResult | None]:
    """One requantized copy through the gate: ``spec`` has the prompts and the shipped
    file's CPU paths to run it on (the paths the engine would take for the copy are probed
    only if it passes, before it is timed). Its entry for the decision and its gate result
    (None: it could not be made or run)."""
    entry: dict = {}
    try:
        path = requantized(settings, artifacts, fmt)
        entry["path"] = str(path)
        same = same_vocabulary(artifacts.gguf_path, path)
        entry["vocabulary_same"] = same
        if not same:
            gate = weight_gate.GateResult(len(reference), 0, [], vocabulary_same=False)
            return {**entry, **_gate_entry(gate)}, gate
        answer = _child(settings, "greedy", {
            **spec, "gguf": str(path),
            "reference": [{"tokens": c.tokens, "ties": weight_gate.near_tie_tokens(c)} for c in reference]})
    except RuntimeError as exc:
        log.warning("weight format %s rejected: %s", fmt, exc)
        return {**entry, "error": str(exc), "passed": False}, None
    gate = weight_gate.judge(reference, [o and o["tokens"] for o in answer["outputs"]])
    entry.update(gated_on={"weights": answer["weights"], "flash_attn": answer["flash_attn"]},
                 greedy_s=answer["seconds"])
    log.info("weight format %s: %s (%s)", fmt, gate.summary(), "passed" if gate.passed else "failed")
    return {**entry, **_gate_entry(gate)}, gate


def _gate_entry(gate: weight_gate.GateResult) -> dict:
    return {"passed": gate.passed, "agree": gate.agree, "prompts": gate.prompts, "not_run": gate.not_run,
            "near_ties": gate.near_ties, "far": gate.far,
            "max_gap": max((d.gap for d in gate.divergences), default=0.0), "summary": gate.summary(),
            "divergences": [{**dataclasses.asdict(d), "near_tie": d.near_tie} for d in gate.divergences]}


def _timing_summary(times_ms: dict[str, list[float]]) -> dict[str, float]:
    med = {key: statistics.median(values) for key, values in times_ms.items()}
    return {"prefill_64_tok_s": round(64e3 / med["prefill_64"], 1),
            "prefill_512_tok_s": round(512e3 / med["prefill_512"], 1),
            "prefill_24_at_1k_ms": round(med["prefill_24_at_1k"], 2),
            "decode_at_1k_ms": round(med["decode_at_1k"], 2),
            "decode_at_1k_tok_s": round(1e3 / med["decode_at_1k"], 1),
            "voice_turn_ms": round(weight_gate.voice_turn_ms(times_ms), 2)}


def requantized(settings: Settings, artifacts: ModelArtifacts, fmt: str) -> Path:
    """``weights/<fmt>.gguf`` made from the shipped file by this llama.cpp build (kept)."""
    path = weights_dir(artifacts) / f"{fmt}.gguf"
    origin = {"source": _stamp(artifacts.gguf_path), "llama_cpp": _llama_cpp_build(), "format": fmt}
    sidecar = path.with_name(path.name + ".json")
    if path.is_file() and sidecar.is_file():
        kept = json.loads(sidecar.read_text())
        if kept.get("origin") == origin and kept.get("file") == _stamp(path):
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    _child(settings, "quantize", None, [str(artifacts.gguf_path), str(path), fmt])
    tmp = sidecar.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"origin": origin, "file": _stamp(path)}, indent=1))
    os.replace(tmp, sidecar)
    log.info("requantized %s to %s in %.1f s: %s", artifacts.gguf_path.name, fmt, time.monotonic() - started, path)
    return path


def same_vocabulary(shipped: Path, candidate: Path) -> bool:
    """The tokenizer and chat metadata the gateway reads are identical in both files."""
    return _metadata(shipped, _stamp(shipped)["mtime_ns"]) == read_gguf_metadata(candidate)


@functools.lru_cache(maxsize=2)
def _metadata(path: Path, mtime_ns: int) -> dict:
    """The shipped file's metadata, read once for all candidates (~2 s of CPU a read)."""
    return read_gguf_metadata(path)


def _engine_spec(settings: Settings) -> dict:
    """The engine's context parameters and CPU path settings, as its config passes them."""
    return {"kv_cells": settings.kv_cells, "kv_layout": settings.kv_layout, "max_sequences": settings.max_sequences,
            "max_batch_tokens": settings.max_batch_tokens, "threads": settings.threads,
            "weight_buffers": settings.weight_buffers, "flash_attention": settings.flash_attention,
            "cpu_paths_cache": str(cpu_paths_cache_dir(settings))}


def _child(settings: Settings, command: str, spec: dict | None, args: list[str] | None = None,
           timeout_s: float = 1800.0) -> dict:
    """Run ``llama_engine.weight_formats COMMAND`` in a child; its JSON answer. RuntimeError
    when it fails (crash, error, timeout)."""
    engine_dir = Path(settings.model_repository) / ENGINE_MODEL / "1"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(engine_dir)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["GOMP_SPINCOUNT"] = str(settings.engine_spin_count)  # as the engine runs (triton_launcher)
    env.pop("OMP_WAIT_POLICY", None)
    with tempfile.TemporaryDirectory(prefix="electron-weights-") as tmp:
        if spec is not None:
            spec_file = Path(tmp) / "spec.json"
            spec_file.write_text(json.dumps(spec))
            args = [str(spec_file)]
        argv = [sys.executable, "-m", "llama_engine.weight_formats", command, *(args or [])]
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{command}: no answer within {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        why = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit code {done.returncode}"
        raise RuntimeError(f"{command}: {why}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the cached decision --------------------------------------------------------------
def _read_decision(path: Path) -> WeightChoice | None:
    if not path.is_file():
        return None
    try:
        decision = json.loads(path.read_text())
        chosen = Path(decision["path"])
        if decision.get("version") != DECISION_VERSION or _stamp(chosen) != decision["stamp"]:
            return None
        return WeightChoice(chosen, decision["chosen"], decision["reason"], path)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring the weight format decision %s: %s", path, exc)
        return None


def _stamp(path: Path) -> dict:
    info = path.stat()
    return {"path": str(path), "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _llama_cpp_libs() -> list[Path]:
    spec = importlib.util.find_spec("llama_cpp")  # found, not imported: the gateway does not load llama.cpp
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted((Path(list(spec.submodule_search_locations)[0]) / "lib").glob("*.so*"))


def _llama_cpp_build() -> list[str]:
    return [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in _llama_cpp_libs()]


def _llama_cpp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        return "unknown"


def _cpu_lines() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return sorted({line.strip() for line in f if line.startswith(("model name", "flags"))})
    except OSError:
        return []


def _cpu_model() -> str:
    return next((line.split(":", 1)[1].strip() for line in _cpu_lines() if line.startswith("model name")), "unknown")


def _decision_key(settings: Settings, artifacts: ModelArtifacts, formats: tuple[str, ...],
                  prompts: list[list[int]]) -> str:
    """The shipped file, llama.cpp build, CPU, cores, prompts and the engine settings that
    change what is measured."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [DECISION_VERSION, _stamp(artifacts.gguf_path), _llama_cpp_build(), _cpu_lines(), cores,
             list(formats), prompts, _engine_spec(settings), settings.engine_spin_count]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    """``build/prepare_model.py``: the artifacts, then the engine's weights for this machine."""
    from gateway.model_artifacts import embedded_gguf_path, write_artifacts

    parser = argparse.ArgumentParser(description="Prepare the model artifacts and choose the engine's weights")
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF file (default: ELECTRON_GGUF_PATH or the embedded SmolLM2)")
    parser.add_argument("--artifacts-dir", type=Path, default=None, help="default: ELECTRON_ARTIFACTS_DIR")
    parser.add_argument("--weight-format", choices=WEIGHT_FORMAT_CHOICES, default=None, help="default: ELECTRON_WEIGHT_FORMAT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    overrides = {"gguf_path": str(args.gguf) if args.gguf else None,
                 "artifacts_dir": str(args.artifacts_dir) if args.artifacts_dir else None,
                 "weight_format": args.weight_format}
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    gguf = Path(settings.gguf_path) if settings.gguf_path else embedded_gguf_path()
    artifacts = ModelArtifacts.load(write_artifacts(gguf, Path(settings.artifacts_dir)))
    engine_weights(settings, artifacts)
    print(artifacts.directory)  # the one line of output: where the artifacts are, for scripts
    return 0


if __name__ == "__main__":
    sys.exit(main())
