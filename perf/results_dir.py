"""Where a benchmark writes its figures: ``perf/results/<date>-<kind>-<host>/<kind>.json`` and ``.md``."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

from perf import engine_path
from perf.procfs import cpu_info
from perf.report import Report


def run_meta(**extra) -> dict:
    """Date, machine and CPU (model and flags from ``/proc/cpuinfo``: the figures depend on
    it) of this run, the compiler of this machine's llama-cpp-python (the embedded engine's
    llama.cpp; on CPUs with AMX it decides whether the AMX path runs), plus ``extra``."""
    engine_path.add()
    from llama_engine.build_compiler import llama_cpp_compiler  # the engine's package (engine_path)

    return {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} {platform.machine()}",
            "cpu": cpu_info(), "llama_cpp_compiler": llama_cpp_compiler(), **extra}


def result_dir(out_root: Path, kind: str, meta: dict) -> Path:
    """``out_root/<date>-<kind>-<host>/`` of a run (``meta`` from ``run_meta``); not created here."""
    return out_root / f"{meta['date']}-{kind}-{platform.node()}"


def write_results(out_root: Path, report: Report) -> Path:
    """Writes ``report`` as ``<kind>.json`` and ``<kind>.md`` into its result directory,
    echoes the Markdown; returns the directory."""
    out = result_dir(out_root, report.kind, report.meta)
    out.mkdir(parents=True, exist_ok=True)
    text = report.markdown()
    (out / f"{report.kind}.json").write_text(json.dumps(report.json(), indent=1))
    (out / f"{report.kind}.md").write_text(text)
    sys.stdout.write(text)
    return out
