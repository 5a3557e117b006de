"""The llama.cpp model, context and batch behind the engine loop.

One context whose KV cache is either *unified* (one cell pool shared by every
sequence, so ``seq_cp`` shares cells instead of copying them; the default) or
*per-sequence streams* (``kv_unified = False``: each sequence id has
``kv_cells / max_sequences`` cells of its own, attention reads only its own
stream, and ``seq_cp`` copies a whole stream's buffer; ``KV_LAYOUTS``). Flash attention and the
weights' buffer types (llama.cpp's extra buffer types: AMX tiles, repacked
weights) are per machine: the model chooses them at start (``cpu_paths``).
The batch buffers are numpy arrays that ``llama_decode`` reads in place.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass

import llama_cpp
import numpy as np

from engine_contract.cpu_parameters import KV_LAYOUTS

log = logging.getLogger(__name__)

DECODE_OK = 0
DECODE_NO_KV_SLOT = 1



def kv_unified_for(layout: str) -> bool:
    """``kv_unified`` for a layout setting (one of ``KV_LAYOUTS``, engine_contract.cpu_parameters)."""
    if layout not in KV_LAYOUTS:
        raise ValueError(f"kv_layout must be one of {', '.join(KV_LAYOUTS)}, not {layout!r}")
    return layout == "unified"


@dataclass(frozen=True)
class RunnerConfig:
    gguf_path: str
    kv_cells: int = 16384  # the KV pool: shared by all sequences, or split into one stream each
    max_sequences: int = 64  # llama.cpp sequence ids: running + cached (<= 256)
    max_batch_tokens: int = 512  # tokens per llama_decode call
    threads: int = 2
    flash_attn: bool = False  # llama.cpp's CPU flash attention (slower at depth on the CPUs measured)
    kv_unified: bool = True  # one cell pool for all sequences (the prefix cache shares cells in it)
    # weights in llama.cpp's extra buffer types (AMX, repacked); only where cpu_paths' probe passed
    extra_buffer_types: bool = False


_LOG_CALLBACK = None  # keeps the ctypes callback alive


def _route_llama_logs() -> None:
    global _LOG_CALLBACK
    llama_log = logging.getLogger("llama.cpp")

    @llama_cpp.llama_log_callback
    def callback(level, text, _user_data):
        if level not in (3, 4):  # GGML_LOG_LEVEL_WARN=3, ERROR=4; info and debug stay quiet
            return
        llama_log.log(logging.ERROR if level == 4 else logging.WARNING, "%s", text.decode(errors="replace").rstrip())

    _LOG_CALLBACK = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


class LlamaRunner:
    def __init__(self, config: RunnerConfig):
        _route_llama_logs()
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0
        mparams.use_extra_bufts = config.extra_buffer_types
        self.model = llama_cpp.llama_model_load_from_file(config.gguf_path.encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {config.gguf_path}")
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = config.kv_cells
        cparams.n_batch = config.max_batch_tokens
        cparams.n_ubatch = config.max_batch_tokens
        cparams.n_seq_max = config.max_sequences
        cparams.n_threads = config.threads
        cparams.n_threads_batch = config.threads
        cparams.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if config.flash_attn
                                   else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        cparams.kv_unified = config.kv_unified
        cparams.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        # llama.cpp rounds a stream up to 256 cells: the pool and a sequence's room as it made them
        self.kv_cells = llama_cpp.llama_n_ctx(self.ctx)
        self.sequence_cells = llama_cpp.llama_n_ctx_seq(self.ctx)
        self.vocab = vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self.eos_id = llama_cpp.llama_vocab_eos(vocab)
        self.train_context = llama_cpp.llama_model_n_ctx_train(self.model)
        self.config = config
        self.threads = config.threads
        self._alloc_batch(config.max_batch_tokens)

    def _alloc_batch(self, size: int) -> None:
        self.tokens = np.zeros(size, np.int32)
        self.positions = np.zeros(size, np.int32)
        self.seq_ids = np.zeros(size, np.int32)
        self.want_logits = np.zeros(size, np.int8)
        self._n_seq_id = np.ones(size, np.int32)
        base = self.seq_ids.ctypes.data
        i32p = ctypes.POINTER(ctypes.c_int32)
        self._seq_ptrs = (i32p * size)(*[ctypes.cast(base + 4 * i, i32p) for i in range(size)])
        batch = llama_cpp.llama_batch()
        batch.token = self.tokens.ctypes.data_as(i32p)
        batch.embd = None
        batch.pos = self.positions.ctypes.data_as(i32p)
        batch.n_seq_id = self._n_seq_id.ctypes.data_as(i32p)
        batch.seq_id = ctypes.cast(self._seq_ptrs, ctypes.POINTER(i32p))
        batch.logits = self.want_logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self._batch = batch

    def token_chars(self) -> list[int]:
        """Characters each token id adds to decoded text (UTF-8 lead bytes of its
        piece; control tokens add none): what a paced stream's playhead counts."""
        buf = ctypes.create_string_buffer(256)
        out = []
        for token in range(self.n_vocab):
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            piece = buf.raw[: max(n, 0)]
            out.append(sum(1 for b in piece if b & 0xC0 != 0x80))
        return out

    def use_threads(self, threads: int) -> None:
        """Threads for the next ``decode`` calls (llama.cpp reads them per call)."""
        if threads != self.threads:
            llama_cpp.llama_set_n_threads(self.ctx, threads, threads)
            self.threads = threads

    def decode(self, n_tokens: int) -> int:
        """Run the first ``n_tokens`` entries of the batch arrays; llama.cpp's code."""
        self._batch.n_tokens = n_tokens
        return llama_cpp.llama_decode(self.ctx, self._batch)

    # MemoryOps for the prefix cache
    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        """Across streams only whole ones (``p0 = p1 = -1``): llama.cpp copies the buffer at the next decode."""
        llama_cpp.llama_memory_seq_cp(self.memory, src, dst, p0, p1)

    def seq_rm(self, seq: int, p0: int, p1: int) -> None:
        if not llama_cpp.llama_memory_seq_rm(self.memory, seq, p0, p1):
            raise RuntimeError(f"llama.cpp refused seq_rm({seq}, {p0}, {p1})")

    def close(self) -> None:
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None
