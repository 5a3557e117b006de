"""Which build of llama.cpp's CPU backend the engine loads, where several are on disk.

The product image is built on one machine and runs on others, so it cannot be built for
the CPU it runs on. It carries llama.cpp's CPU backend (``libggml-cpu.so.0``, the only
library whose code depends on the instruction set) built for several x86 levels, one
folder each under ``ELECTRON_LLAMA_CPU_VARIANTS`` (``build/llama_cpu_variants.sh``), each
with a ``variant.json``: its name, its rank (higher is faster) and the ``/proc/cpuinfo``
flags it needs. At start, ``electron-serve`` takes the highest-ranked variant whose flags
this CPU has and puts its folder first on ``LD_LIBRARY_PATH`` of every process it starts
(Triton and its engine, the CPU-path probe, the weight gate): the dynamic linker looks
there before the ``$ORIGIN`` run path of llama-cpp-python's ``libggml``, so that library
loads the chosen backend; everything else of llama-cpp-python is the same for all. The
engine names the backend it loaded in its log and its ``electron_engine_cpu_paths_info``
metric (``llama_engine/build_compiler.py``).

Without ``ELECTRON_LLAMA_CPU_VARIANTS`` (``make serve``: llama.cpp built on this machine
for this machine) nothing changes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from engine_contract.cpu_parameters import CPU_BACKEND_LIBRARY, CPU_VARIANT_FILE

log = logging.getLogger(__name__)

VARIANTS_ENV = "ELECTRON_LLAMA_CPU_VARIANTS"


@dataclass(frozen=True)
class CpuVariant:
    name: str
    rank: int
    needs: frozenset[str]  # /proc/cpuinfo flags
    directory: Path


def read_variants(root: Path) -> list[CpuVariant]:
    """The variants under ``root``: each sub-folder with a ``variant.json`` and the library."""
    variants = []
    for meta in sorted(root.glob(f"*/{CPU_VARIANT_FILE}")):
        if not (meta.parent / CPU_BACKEND_LIBRARY).is_file():
            continue
        data = json.loads(meta.read_text())
        variants.append(CpuVariant(data["name"], int(data["rank"]), frozenset(data["needs"]), meta.parent))
    return variants


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The flags of the first CPU in ``/proc/cpuinfo``."""
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def choose(variants: list[CpuVariant], flags: frozenset[str]) -> CpuVariant:
    """The highest-ranked variant whose flags this CPU has; ValueError when none runs here."""
    runnable = [v for v in variants if v.needs <= flags]
    if not runnable:
        least = min(variants, key=lambda v: v.rank, default=None)
        needs = " ".join(sorted(least.needs)) if least else "?"
        names = ", ".join(v.name for v in variants) or "none found"
        raise ValueError(f"this CPU runs none of the image's llama.cpp builds ({names}): the least of them needs {needs}")
    return max(runnable, key=lambda v: v.rank)


def activate(environ: dict[str, str] | None = None, cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuVariant | None:
    """Chooses the variant for this CPU (when ``ELECTRON_LLAMA_CPU_VARIANTS`` names a folder)
    and puts its folder first on ``LD_LIBRARY_PATH`` of ``environ`` (``os.environ``: every
    process started after this inherits it). ValueError: the folder has no variant for
    this CPU, or none at all."""
    environ = os.environ if environ is None else environ
    root = environ.get(VARIANTS_ENV, "")
    if not root:
        return None
    variants = read_variants(Path(root))
    chosen = choose(variants, cpu_flags(cpuinfo))
    rest = [p for p in environ.get("LD_LIBRARY_PATH", "").split(":") if p and p != str(chosen.directory)]
    environ["LD_LIBRARY_PATH"] = ":".join([str(chosen.directory), *rest])
    log.info("llama.cpp CPU backend: %s (the best of %s for this CPU; needs %s)", chosen.name,
             ", ".join(v.name for v in sorted(variants, key=lambda v: -v.rank)), " ".join(sorted(chosen.needs)))
    return chosen
