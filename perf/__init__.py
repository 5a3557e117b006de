"""The benchmarks (``python -m perf NAME``, see ``perf/__main__.py``), the voice-call load
generator (``perf.voice_load``) and their shared parts: results (``perf.report``,
``perf.results_dir``) and ``/proc`` readers (``perf.procfs``)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository
RESULTS = ROOT / "perf" / "results"  # where the benchmarks write by default (``--out``)
