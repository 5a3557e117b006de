"""llama.cpp's own benchmarks, ``llama-bench`` and ``llama-batched-bench``, built by
``perf/build_llama_tools.sh`` from the llama.cpp vendored in the llama-cpp-python the engine
runs: run, parsed into the rows of ``engine_vs_llamacpp.py`` (milliseconds per step).

Weight repacking / extra buffer types (AMX tiles, repacked weights) on or off as the caller
says (``--repack 1|0`` / ``--repack`` or ``--no-repack``): ``engine_vs_llamacpp.py`` runs them
as the engine does on this machine (its start-up probe's choice), since a build whose AMX path
faults (GCC 12's on an Intel Xeon with AMX) crashes the tools too.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from perf import ROOT


def build_tools() -> Path:
    """The folder with the cached tools, built first if needed (several minutes)."""
    out = subprocess.run(["bash", str(ROOT / "perf" / "build_llama_tools.sh")], cwd=ROOT, check=True,
                         stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
    return ROOT / out


def tool_env(spin_count: int | None) -> dict[str, str]:
    """The environment of a llama.cpp process: GOMP_SPINCOUNT as given (None: libgomp's
    default), no OMP_WAIT_POLICY (it would override the spin count)."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if spin_count is not None:
        env["GOMP_SPINCOUNT"] = str(spin_count)
    return env


@dataclass
class ToolRun:
    """One tool configuration's rows: row key -> milliseconds."""

    name: str  # e.g. "llama-bench fa=off ub=512"
    command: list[str]
    ms: dict[str, float] = field(default_factory=dict)
    samples_ms: dict[str, list[float]] = field(default_factory=dict)


def _run(command: list[str]) -> str:
    done = subprocess.run(command, env=tool_env(None), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def prefill_key(tokens: int, depth: int) -> str:
    return f"prefill {tokens} @ {depth}"


def decode_key(sequences: int, depth: int) -> str:
    return f"decode {sequences} seq @ {depth}"


def llama_bench(tools: Path, gguf: str, threads: int, reps: int, fa: bool, prompts: list[int], depths: list[int],
                ubatch: int, gen: int = 0, gen_depth: int = 0, repack: bool = False) -> ToolRun:
    """``llama-bench`` prefill tests (``-p`` at each ``-d``), and with ``gen`` a decode test
    of ``gen`` tokens at ``gen_depth`` (ms per token)."""
    run = ToolRun(f"llama-bench fa={'on' if fa else 'off'} ub={ubatch}", [])
    base = [str(tools / "llama-bench"), "-m", gguf, "-t", str(threads), "-r", str(reps), "-o", "json",
            "--repack", str(int(repack)), "-fa", str(int(fa)), "-b", "512", "-ub", str(ubatch)]
    commands = [base + ["-p", ",".join(map(str, prompts)), "-n", "0", "-d", ",".join(map(str, depths))]]
    if gen:
        commands.append(base + ["-p", "0", "-n", str(gen), "-d", str(gen_depth)])
    for command in commands:
        run.command.append(" ".join(command))
        for test in json.loads(_run(command)):
            samples = [ns / 1e6 for ns in test["samples_ns"]]
            if test["n_gen"]:
                key, samples = decode_key(1, test["n_depth"]), [s / test["n_gen"] for s in samples]
            else:
                key = prefill_key(test["n_prompt"], test["n_depth"])
            run.samples_ms[key] = samples
            run.ms[key] = statistics.median(samples)
    return run


def batched_bench(tools: Path, gguf: str, threads: int, fa: bool, unified: bool, history: int, steps: int,
                  batches: list[int], rounds: int, repack: bool = False) -> ToolRun:
    """``llama-batched-bench`` with one shared ``history``-token prompt copied to every
    sequence (``-pps``), then ``steps`` decode steps of one token for each of N sequences:
    ms per step, median over ``rounds`` runs. The context holds ``history + steps`` cells
    per sequence in either KV layout (per-sequence streams split it evenly)."""
    per_stream = -(-(history + steps + 2) // 256) * 256
    run = ToolRun(f"batched-bench fa={'on' if fa else 'off'} {'unified' if unified else 'streams'}", [])
    command = [str(tools / "llama-batched-bench"), "-m", gguf, "-t", str(threads), "-tb", str(threads),
               "-c", str(per_stream * max(batches)), "-b", "512", "-ub", "512", "-fa", "on" if fa else "off",
               "--kv-unified" if unified else "--no-kv-unified", "--repack" if repack else "--no-repack", "-pps",
               "-npp", str(history), "-ntg", str(steps), "-npl", ",".join(map(str, batches)),
               "--output-format", "jsonl"]
    run.command.append(" ".join(command))
    for _ in range(rounds):
        for line in _run(command).splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                run.samples_ms.setdefault(decode_key(row["pl"], row["pp"]), []).append(row["t_tg"] * 1000 / row["tg"])
    run.ms = {key: statistics.median(s) for key, s in run.samples_ms.items()}
    return run
