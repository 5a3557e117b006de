"""The embedded CPU model's configuration: the ``${...}`` parameters of
``model_repository/electron_cpu/config.pbtxt``.

One dataclass is the single source of these settings' names, types, defaults and valid
values: ``gateway.settings.Settings`` takes its engine defaults from it, the launcher fills
the model configuration with ``to_parameters`` and the model reads it back with
``from_parameters``, the same code both ways. A test checks that the config's
placeholders are exactly these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping

KV_LAYOUTS = ("unified", "streams")  # llama.cpp's kv_unified true / false
WEIGHT_BUFFERS = ("auto", "extra", "plain")  # auto: extra buffer types only if their probe passes
FLASH_ATTENTION = ("auto", "on", "off")  # auto: whichever is faster at start
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")  # Python logging
# The image's llama.cpp CPU backends (build/llama_cpu_variants.sh writes them, the launcher chooses one,
# the engine names the one it loaded): one folder per x86 level with the backend and its description
CPU_BACKEND_LIBRARY = "libggml-cpu.so.0"  # the only llama.cpp library built per instruction set
CPU_VARIANT_FILE = "variant.json"  # {"name", "rank" (higher is faster), "needs" (/proc/cpuinfo flags)}


class ParameterError(ValueError):
    """A parameter out of its range; ``name`` is the field's."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name, self.message = name, message


def parse_bool(raw: str) -> bool:
    """1/true/yes/on or 0/false/no/off (any case); anything else is a ValueError."""
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


@dataclass(frozen=True)
class CpuEngineParameters:
    gguf_path: str = ""  # the weights the engine loads
    tokens_per_block: int = 4  # small: a later turn re-prefills at most 3 tokens of its history
    kv_cells: int = 16384  # KV pool, tokens: all sequences' together (streams: split evenly)
    kv_layout: str = "unified"  # one of KV_LAYOUTS
    cache_idle_s: float = 60.0  # cached prefix blocks unused this long are evicted
    max_sequences: int = 64
    max_running: int = 32
    max_batch_tokens: int = 512
    max_sequence_length: int = 0  # 0: the model's training context
    min_stream_rate: float = 12.0
    busy_stream_rate: float = 6.0
    playback_buffer_s: float = 1.0  # paced streams further ahead of their playhead skip steps while prompts wait
    overload_ttft_s: float = 1.5  # refuse (503) a request whose first token would come later; 0: never
    stream_interval_ms: float = 40.0  # a paced stream well ahead of its playhead sends tokens at most this often
    threads: int = 0  # 0: all cores this process may use (affinity mask, cgroup quota)
    weight_buffers: str = "auto"  # one of WEIGHT_BUFFERS
    flash_attention: str = "auto"  # one of FLASH_ATTENTION
    cpu_paths_cache: str = ""  # where the CPU paths probe keeps its decision
    engine_crash: str = ""  # the last stub's fault signal, if it died of one (the probe then takes no risk)
    adaptive_threads: bool = True  # fewer llama.cpp threads while other processes take cores
    log_level: str = "INFO"  # the engine's Python logging level

    def __post_init__(self):
        for name, allowed in (("kv_layout", KV_LAYOUTS), ("weight_buffers", WEIGHT_BUFFERS),
                              ("flash_attention", FLASH_ATTENTION), ("log_level", LOG_LEVELS)):
            if getattr(self, name) not in allowed:
                raise ParameterError(name, f"{getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("tokens_per_block", "kv_cells", "max_sequences", "max_running", "max_batch_tokens"):
            if getattr(self, name) < 1:
                raise ParameterError(name, f"must be at least 1, got {getattr(self, name)}")
        if self.kv_layout == "streams" and self.kv_cells < self.max_sequences:
            raise ParameterError("kv_cells", f"kv_layout streams splits {self.kv_cells} cells into max_sequences "
                                             f"({self.max_sequences}) streams: give at least one cell each")

    @property
    def sequence_cells(self) -> int:
        """KV cells one sequence can fill: the whole pool, or its stream (streams)."""
        return self.kv_cells // self.max_sequences if self.kv_layout == "streams" else self.kv_cells

    def to_parameters(self) -> dict[str, str]:
        """The config.pbtxt parameter values (strings)."""
        return {f.name: _text(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> "CpuEngineParameters":
        """Parsed back from the model configuration's parameters; an absent one keeps its
        default, a malformed one is a ValueError naming it."""
        values = {}
        for f in fields(cls):
            if f.name not in parameters:
                continue
            raw, kind = parameters[f.name], type(f.default)
            try:
                values[f.name] = parse_bool(raw) if kind is bool else kind(raw)
            except ValueError as exc:
                raise ParameterError(f.name, f"{raw!r} is not a valid {kind.__name__}") from exc
        return cls(**values)


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


CPU_DEFAULTS = CpuEngineParameters()
