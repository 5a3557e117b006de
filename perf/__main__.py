"""One entry point for the benchmarks: ``python -m perf NAME [options]``.

    .venv/bin/python -m perf                      # the list
    .venv/bin/python -m perf capacity --calls 1 4 8 16
    .venv/bin/python -m perf relay --help

Each benchmark is a module of this package (``BENCHMARKS``: name -> its file), run as
``__main__`` with the options that follow its name, as ``python -m perf.MODULE [options]``
runs it; it starts and stops its own servers and writes its results to
perf/results/<date>-<kind>-<host>/ (docs/benchmarks.md). Run from the repository's root.
"""

from __future__ import annotations

import runpy
import sys

# name -> (script, what it measures); the suite (``suite``) runs most of them in one go
BENCHMARKS = {
    "capacity": ("capacity.py", "paced calls per machine at the voice SLO, beside llama-server (the headline)"),
    "ttft": ("ttft.py", "where a later turn's time to first token goes, layer by layer, beside llama-server"),
    "voice": ("voice_bench.py", "voice calls side by side with llama-server"),
    "relay": ("bench_relay.py", "the gateway's CPU per relayed token, with an engine that computes nothing"),
    "gateway": ("bench_gateway.py", "the gateway's overhead over direct Triton gRPC"),
    "triton": ("bench_triton.py", "the engine through Triton gRPC (and perf_analyzer)"),
    "guided": ("bench_guided.py", "the cost of guided decoding"),
    "accounts": ("bench_accounts.py", "keys, limits and the usage ledger per request"),
    "contention": ("contention.py", "the stack beside busy processes"),
    "cancel-latency": ("cancel_latency.py", "from a caller hanging up to the engine letting go"),
    "engine-vs-llamacpp": ("engine_vs_llamacpp.py", "the engine's steps next to llama-bench and llama-batched-bench"),
    "llama-raw": ("bench_llama_raw.py", "llama.cpp alone, as the engine configures it"),
    "soak": ("soak.py", "paced calls for a long time: nothing drifts or leaks"),
    "suite": ("suite.py", "the benchmarks above in one run, with a summary"),
}


def usage() -> str:
    width = max(map(len, BENCHMARKS))
    lines = ["usage: python -m perf NAME [options]   (NAME --help: its options)", ""]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(usage())
        return 0
    name, options = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = "perf." + BENCHMARKS[name][0].removesuffix(".py")
    sys.argv = [sys.argv[0], *options]  # run_module puts the module's file first
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
