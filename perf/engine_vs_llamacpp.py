"""The engine's step costs next to llama.cpp's own benchmarks, same GGUF, same threads, one run.

Rows (the voice load's shapes): prefill of 16, 64 and 512 tokens on one sequence at 0, 1k and
4k tokens of history; decode steps of 1, 8, 16 and 32 sequences with 1k history each.

- the engine: its runner (``llama_engine.llama_runner.LlamaRunner``), one subprocess per
  configuration (flash attention on/off, unified KV pool vs per-sequence streams,
  GOMP_SPINCOUNT the engine's default (``ELECTRON_ENGINE_SPIN_COUNT``) / 200 / unset, n_ubatch
  512 / 256), see ``engine_steps.py``;
- ``llama-bench`` (prefill rows with ``-p``/``-d``, the 1-sequence decode with ``-n``/``-d``)
  and ``llama-batched-bench`` (decode rows: ``-pps -npp 1024 -npl 1,8,16,32``, unified and
  per-sequence streams), flash attention off and on, built by ``perf/build_llama_tools.sh``
  from the same vendored llama.cpp with the same compiler (``llamacpp_tools.py``).

Both sides take llama.cpp's extra buffer types (AMX tiles, repacked weights) or plain
buffers alike: by default as the engine's start-up probe chooses on this machine
(``llama_engine.cpu_paths``), so where a clang-19 build runs the AMX path the rows are AMX
rows on both sides; ``--weights extra|plain`` forces one.

Ratios: engine ms / llama.cpp's best ms for the row (any tool, any of its configurations),
and engine ms / the tool with the engine configuration's own settings. Output:
``perf/results/<date>-engine-vs-llamacpp-<host>/engine-vs-llamacpp.{md,json}``.

    .venv/bin/python -m perf engine-vs-llamacpp [--threads 2] [--quick] [--weights auto|extra|plain]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from engine_contract.cpu_parameters import WEIGHT_BUFFERS
from gateway.settings import Settings
from perf import RESULTS, ROOT, engine_path, quiet
from perf import llamacpp_tools as tools
from perf.report import Column, Report, Section, Table
from perf.results_dir import run_meta, write_results

KIND = "engine-vs-llamacpp"
SERVED_SPIN = Settings().engine_spin_count  # the GOMP_SPINCOUNT the engine serves with by default


@dataclass(frozen=True)
class EngineConfig:
    flash_attn: bool
    kv_unified: bool
    spin_count: int | None  # GOMP_SPINCOUNT; None: unset (libgomp's default)
    ubatch: int

    @property
    def name(self) -> str:
        spin = "default" if self.spin_count is None else str(self.spin_count)
        return (f"fa={'on' if self.flash_attn else 'off'} {'unified' if self.kv_unified else 'streams'} "
                f"spin={spin} ub={self.ubatch}")


def engine_configs(quick: bool) -> list[EngineConfig]:
    """A baseline and one change at a time from it (not the full cross product: each
    configuration costs about a minute here)."""
    if quick:
        return [EngineConfig(False, False, SERVED_SPIN, 512), EngineConfig(True, True, SERVED_SPIN, 512)]
    return [
        EngineConfig(False, False, SERVED_SPIN, 512),
        EngineConfig(True, False, SERVED_SPIN, 512),
        EngineConfig(False, True, SERVED_SPIN, 512),
        EngineConfig(True, True, SERVED_SPIN, 512),
        EngineConfig(False, False, 200, 512),
        EngineConfig(False, False, None, 512),
        EngineConfig(False, False, SERVED_SPIN, 256),
    ]


def step_plan(quick: bool) -> dict:
    if quick:
        return {"prefill_sizes": (16, 64), "depths": (0, 256), "batch_sizes": (1, 4), "history": 256,
                "prefill_reps": 1, "long_prefill_reps": 1, "decode_steps": 2}
    return {"prefill_sizes": (16, 64, 512), "depths": (0, 1024, 4096), "batch_sizes": (1, 8, 16, 32),
            "history": 1024, "prefill_reps": 5, "long_prefill_reps": 3, "decode_steps": 8}


def weight_buffers(setting: str, gguf: str, threads: int) -> tuple[bool, str]:
    """Whether the engine and the tools take llama.cpp's extra buffer types, and why: the
    engine's own start-up choice for ``setting`` (``auto``: the probe's; ``extra``/``plain``:
    forced, and probed only to fail loudly if it cannot decode)."""
    engine_path.add()
    from llama_engine.cpu_paths import choose_cpu_paths

    paths = choose_cpu_paths(gguf, threads, weights=setting, flash_attn="off")
    return paths.weights == "extra", paths.reason.removesuffix("; flash attention off (set)")


def run_child(config: EngineConfig, gguf: str, threads: int, plan: dict, extra: bool) -> dict[str, dict]:
    """One engine configuration in a fresh process (GOMP_SPINCOUNT is read when libgomp loads)."""
    job = {"config": {**asdict(config), "extra_buffer_types": extra}, "gguf": gguf, "threads": threads, "plan": plan}
    done = subprocess.run([sys.executable, "-m", "perf.engine_vs_llamacpp", "--child", json.dumps(job)],
                          env=tools.tool_env(config.spin_count), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"engine child {config.name} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_main(job: dict) -> int:
    from perf.engine_steps import StepPlan, measure

    plan = StepPlan(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["plan"].items()})
    rows = measure(job["gguf"], job["threads"], job["config"], plan)
    out = {}
    for row in rows:
        key = (tools.prefill_key(row["tokens"], row["depth"]) if row["kind"] == "prefill"
               else tools.decode_key(row["sequences"], row["depth"]))
        out[key] = {"ms": row["ms"], "samples_ms": row["samples_ms"]}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


def tool_units(tool_dir: Path, gguf: str, threads: int, plan: dict, quick: bool,
               repack: bool) -> list[tuple[str, Callable]]:
    """llama.cpp's tool runs, each a unit of its own (measured again if disturbed); ``repack``:
    with llama.cpp's extra buffer types."""
    reps, rounds = (1, 1) if quick else (3, 2)
    sizes, depths, history = list(plan["prefill_sizes"]), list(plan["depths"]), plan["history"]
    long = [n for n in sizes if n > 256]  # n_ubatch only splits prompts longer than 256
    units = []
    for fa in (False, True):
        units.append((f"llama-bench fa={fa} ub=512", partial(tools.llama_bench, tool_dir, gguf, threads, reps, fa,
                                                             sizes, depths, 512, gen=32, gen_depth=history,
                                                             repack=repack)))
        if long:
            units.append((f"llama-bench fa={fa} ub=256", partial(tools.llama_bench, tool_dir, gguf, threads, reps,
                                                                 fa, long, depths, 256, repack=repack)))
    for unified in (False, True):
        for fa in (False, True):
            units.append((f"batched-bench fa={fa} unified={unified}",
                          partial(tools.batched_bench, tool_dir, gguf, threads, fa, unified, history, 16,
                                  list(plan["batch_sizes"]), rounds, repack=repack)))
    return units


def same_settings(config: EngineConfig, key: str, runs: list[tools.ToolRun]) -> tools.ToolRun | None:
    """The tool run with the engine configuration's flash attention (and n_ubatch for
    prefill, KV layout for batched decode rows); the tools run at the default spin count."""
    fa = f"fa={'on' if config.flash_attn else 'off'}"
    if key.startswith("prefill"):
        wanted = [f"llama-bench {fa} ub={config.ubatch}", f"llama-bench {fa} ub=512"]
    else:
        wanted = [f"batched-bench {fa} {'unified' if config.kv_unified else 'streams'}"]
    for name in wanted:
        for run in runs:
            if run.name == name and key in run.ms:
                return run
    return None


def best_tool(key: str, runs: list[tools.ToolRun]) -> tuple[float, str]:
    ms, name = min((run.ms[key], run.name) for run in runs if key in run.ms)
    return ms, name


def _f(ms: float) -> str:
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def config_table(config: EngineConfig, keys: list[str], rows: dict, runs: list[tools.ToolRun]) -> Table:
    """One engine configuration's rows beside the tool run with its settings and llama.cpp's best."""
    def same(key: str) -> tools.ToolRun | None:
        return same_settings(config, key, runs)

    def best(key: str) -> float:
        return best_tool(key, runs)[0]

    return Table((
        Column("row", lambda key: key),
        Column("engine ms", lambda key: _f(rows[key]["ms"])),
        Column("llama.cpp same settings ms (tool)",
               lambda key: f"{_f(same(key).ms[key])} ({same(key).name})" if same(key) else None),
        Column("ratio", lambda key: f"{rows[key]['ms'] / same(key).ms[key]:.2f}x" if same(key) else None),
        Column("llama.cpp best ms", lambda key: _f(best(key))),
        Column("ratio", lambda key: rows[key]["ms"] / best(key), "{:.2f}x")), keys)


def sections(meta: dict, keys: list[str], configs: list[EngineConfig], engine: dict,
             runs: list[tools.ToolRun]) -> list[Section]:
    """The report: the ratio of each engine configuration to llama.cpp's best per row, the
    tools' own figures, each configuration beside the tool with its settings, the noise."""
    def ms(config: EngineConfig, key: str) -> float:
        return engine[config.name][key]["ms"]

    def best(key: str) -> float:
        return best_tool(key, runs)[0]

    summary = [Column("row", lambda key: key),
               Column("llama.cpp best ms (tool)", lambda key: f"{_f(best(key))} ({best_tool(key, runs)[1]})")]
    summary += [Column(c.name, (lambda key, c=c: _f(ms(c, key)), lambda key, c=c: ms(c, key) / best(key)), "{} ms ({:.2f}x)")
                for c in configs]
    summary.append(Column("fastest engine config", lambda key: min(configs, key=lambda c: ms(c, key)).name))
    tool_table = [Column("row", lambda key: key)]
    tool_table += [Column(r.name, lambda key, r=r: _f(r.ms[key]) if key in r.ms else None) for r in runs]
    out = [f"# Engine steps vs llama.cpp's own tools ({meta['date']}, {meta['machine']})",
           "\n".join([
               f"- command: `{meta['command']}`",
               f"- CPU: {meta['cpu']['model']}, {meta['cpu']['cpus']} logical CPUs; threads {meta['threads']}",
               f"- flags: {meta['cpu']['flags']}",
               f"- load average (1/5/15 min) before: {meta['load_before']}, after: {meta['load_after']}",
               f"- GGUF: {meta['gguf']}; llama-cpp-python {meta['llama_cpp_python']}; wall time {meta['wall_s']:.0f} s",
               f"- compiler: the engine's llama.cpp {meta.get('llama_cpp_compiler', 'not recorded')}; the tools'"
               f" {meta.get('tools_compiler', 'not recorded')}",
               "- engine: median ms of each step through the runner (prefill: one warm-up, then the repetitions;"
               " decode: one warm-up step, then the steps); decode histories are one 1k-token prompt copied to"
               " every sequence with seq_cp (shared cells in a unified pool, a buffer copy per stream), as"
               " batched-bench's -pps does; prefill rows run one sequence in a context of its own (n_seq_max 1:"
               " unified and streams are the same layout there); ub=256 is the runner's n_batch = n_ubatch = 256"
               " (a 512-token prefill takes two decode calls); llama.cpp's tools run with GOMP_SPINCOUNT unset",
               f"- weights: llama.cpp's extra buffer types (AMX tiles, repacked weights)"
               f" {'on' if meta['extra_buffer_types'] else 'off'} for the engine and the tools"
               f" ({'--repack 1 / --repack' if meta['extra_buffer_types'] else '--repack 0 / --no-repack'});"
               f" {meta['weights']}"]),
           "## Ratio engine / llama.cpp's best, per engine configuration", Table(summary, keys),
           "## llama.cpp's tools, ms per row (spin count unset)", Table(tool_table, keys)]
    for config in configs:
        out += [f"## engine {config.name}", config_table(config, keys, engine[config.name], runs)]
    out += [f"## other processes' CPU use while each unit ran (cores; a unit above {meta['max_noise']}"
            " was measured once more outside --quick, the quieter try kept)",
            "\n".join(f"- {name}: {cores:.2f}" for name, cores in meta["others_cores"].items()),
            "## commands", "\n".join(f"- `{c}`" for r in runs for c in r.command)]
    return out


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small sizes, two engine configurations (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--max-noise", type=float, default=0.2,
                        help="cores other processes may use during a unit before it is measured again (once)")
    parser.add_argument("--weights", choices=WEIGHT_BUFFERS, default="auto",
                        help="extra buffer types (AMX, repacked) or plain buffers for the engine and the tools:"
                             " as the engine's start-up probe chooses here (auto), or forced")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(json.loads(args.child))
    import llama_cpp

    engine_path.add()
    from llama_engine.build_compiler import compiler_of

    logging.basicConfig(level=logging.INFO, format="[engine-vs-llamacpp] %(message)s")
    from gateway.model_artifacts import embedded_gguf_path

    began, load_before = time.monotonic(), load_average()
    gguf, plan, configs = str(embedded_gguf_path()), step_plan(args.quick), engine_configs(args.quick)
    tool_dir = tools.build_tools()
    extra, weights = weight_buffers(args.weights, gguf, args.threads)
    sys.stderr.write(f"[engine-vs-llamacpp] extra buffer types {'on' if extra else 'off'}: {weights}\n")
    keys = ([tools.prefill_key(n, d) for d in plan["depths"] for n in plan["prefill_sizes"]]
            + [tools.decode_key(n, plan["history"]) for n in plan["batch_sizes"]])
    measure = partial(quiet.measured, max_cores=args.max_noise, tries=1 if args.quick else 2,
                      wait_s=0 if args.quick else 600)
    engine, noise = {}, {}
    for config in configs:
        sys.stderr.write(f"[engine-vs-llamacpp] engine {config.name}\n")
        engine[config.name], noise[f"engine {config.name}"] = measure(
            config.name, partial(run_child, config, gguf, args.threads, plan, extra))
    runs = []
    for name, unit in tool_units(tool_dir, gguf, args.threads, plan, args.quick, extra):
        sys.stderr.write(f"[engine-vs-llamacpp] {name}\n")
        run, cores = measure(name, unit)
        runs.append(run)
        noise[run.name] = cores
    meta = run_meta(command=" ".join([".venv/bin/python", "-m", "perf", "engine-vs-llamacpp"]
                                     + (sys.argv[1:] if argv is None else argv)),
                    threads=args.threads, gguf=gguf, llama_cpp_python=llama_cpp.__version__,
                    tools_compiler=compiler_of(tool_dir / "llama-bench"), extra_buffer_types=extra, weights=weights,
                    load_before=load_before, load_after=load_average(), wall_s=time.monotonic() - began,
                    others_cores=noise, max_noise=args.max_noise,
                    quick=args.quick)
    for key in keys:
        for name, rows in engine.items():
            if not (key in rows and math.isfinite(rows[key]["ms"]) and rows[key]["ms"] > 0):
                raise RuntimeError(f"engine {name} has no figure for {key}")
    payload = {"rows": keys, "engine": {c.name: {"config": asdict(c), "rows": engine[c.name]} for c in configs},
               "llama_cpp": [{"name": r.name, "commands": r.command, "ms": r.ms, "samples_ms": r.samples_ms}
                             for r in runs]}
    out = write_results(args.out, Report(KIND, meta, payload, sections(meta, keys, configs, engine, runs)))
    sys.stderr.write(f"[engine-vs-llamacpp] wrote {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
