"""Which compiler built a llama.cpp binary, read from the binary itself.

The compiler matters on CPUs with AMX: GCC 12 miscompiles ggml's AMX kernel (the tile
configuration faults), Debian's clang-19 does not (``build/llama_compiler.sh`` chooses).
Linkers keep each object's compiler identification in the ELF section ``.comment``; a
clang-built library also carries the GCC lines of the C runtime objects it was linked
with, so a clang line wins.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from pathlib import Path

from engine_contract.cpu_parameters import CPU_BACKEND_LIBRARY, CPU_VARIANT_FILE


def comment_lines(path: Path) -> list[str]:
    """The NUL-separated strings of the ELF64 file's ``.comment`` section ([] if it has
    none, or is not a little-endian ELF64 file)."""
    data = path.read_bytes()
    if data[:6] != b"\x7fELF\x02\x01":
        return []
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(index: int) -> tuple[int, int, int]:  # name offset, file offset, size
        base = shoff + index * shentsize
        name, = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name, offset, size

    _, names_at, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        if data[names_at + name:data.index(b"\0", names_at + name)] == b".comment":
            return [s.decode("utf-8", "replace") for s in data[offset:offset + size].split(b"\0") if s]
    return []


def compiler_of(path: Path) -> str:
    """The compiler of ``path``: its clang line if any (``Debian clang version 19.1.7 ...``),
    else its GCC line (``GCC: (Debian 12.2.0-14+deb12u1) 12.2.0``), else ``unknown``."""
    lines = comment_lines(path)
    for mark in ("clang version", "GCC:"):
        found = [line for line in lines if mark in line]
        if found:
            return found[0]
    return "unknown"


def cpu_backend_library(maps: str = "/proc/self/maps") -> Path | None:
    """The CPU backend (``libggml-cpu``, where ggml's AMX kernels are) this process runs:
    the one mapped into it once llama_cpp is loaded; before that the one the dynamic linker
    would find (a folder on ``LD_LIBRARY_PATH`` first: the image's chosen variant,
    ``gateway/server/llama_cpu_variant.py``; then llama-cpp-python's own ``lib``). Found
    without loading the package; None when it is not installed."""
    try:
        with open(maps, encoding="utf-8") as mapped:
            for line in mapped:
                path = line.split(maxsplit=5)[-1].strip()
                if Path(path).name.startswith("libggml-cpu"):
                    return Path(path)
    except OSError:
        pass
    for folder in filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(":")):
        if (Path(folder) / CPU_BACKEND_LIBRARY).is_file():
            return Path(folder) / CPU_BACKEND_LIBRARY
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.origin:
        return None
    libs = sorted((Path(spec.origin).parent / "lib").glob("*.so*"))
    cpu = [lib for lib in libs if lib.name.startswith("libggml-cpu")]
    return (cpu or libs or [None])[0]


def cpu_backend_variant(library: Path | None = None) -> str:
    """The name of the x86 level the CPU backend was built for (its folder's
    ``variant.json``), or ``this machine's build`` (install.sh's native build)."""
    library = library or cpu_backend_library()
    try:
        return json.loads((library.parent / CPU_VARIANT_FILE).read_text())["name"]
    except (AttributeError, OSError, ValueError, KeyError):
        return "this machine's build"


def llama_cpp_compiler() -> str:
    """The compiler of the CPU backend this process runs (``cpu_backend_library``);
    ``unknown`` when llama-cpp-python is not installed or the file cannot be read."""
    library = cpu_backend_library()
    try:  # for the start-up log: an unreadable library is no reason to stop
        return compiler_of(library) if library else "unknown"
    except (OSError, ValueError, struct.error):
        return "unknown"
