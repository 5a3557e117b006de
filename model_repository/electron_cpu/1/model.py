"""Triton Python-backend glue for the CPU engine (decoupled, one instance).

Reads the contract's input tensors, checks them (``engine_contract``, through
``llama_engine.params``), hands valid requests to the engine loop and turns its
outputs into the contract's responses (``engine_contract.encode_response``: the
output names, dtypes and shapes of TensorRT-LLM's ``tensorrt_llm`` model). Engine statistics go to Triton's metrics endpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading

import triton_python_backend_utils as pb_utils

from engine_contract import ContractResponse, encode_response
from engine_contract.cpu_parameters import CpuEngineParameters
from llama_engine.cpu_paths import CpuPaths, choose_cpu_paths
from llama_engine.engine import Engine
from llama_engine.sequence import StepOutput
from llama_engine.guides import GuideCompiler, GuideMask, InvalidGuide
from llama_engine.kv_ledger import KvLedger
from llama_engine.llama_runner import LlamaRunner, RunnerConfig, kv_unified_for
from llama_engine.params import InvalidRequest, ModelLimits, parse_request
from llama_engine.prefix_cache import PrefixCache
from llama_engine.scheduler import SchedulerConfig, StepPlanner
from llama_engine.stats import EngineStats
from llama_engine.thread_budget import ThreadBudget, ThreadBudgetWatch, cgroup_cpu_limit, usable_cores

log = logging.getLogger("electron_cpu")

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class _TritonSink:
    """Sends one request's responses through its Triton response sender."""

    def __init__(self, request, request_spec):
        self._request = request
        self._sender = request.get_response_sender()
        self.request_id = request.request_id() or "-"
        self._spec = request_spec

    def send(self, output: StepOutput) -> None:
        spec = self._spec
        with_prompt = not spec.streaming and not spec.exclude_input_in_output
        arrays = encode_response(ContractResponse(
            output_ids=output.tokens,
            sequence_length=output.sequence_length,
            log_probs=output.log_probs if spec.return_log_probs else None,
            num_input_tokens=output.num_input_tokens if spec.return_num_input_tokens else None,
            num_output_tokens=len(output.tokens) - (len(spec.prompt) if with_prompt else 0)
            if spec.return_num_output_tokens else None,
            perf=output.perf if spec.return_perf_metrics else None,
        ))
        tensors = [pb_utils.Tensor(name, array) for name, array in arrays.items()]
        if output.final:
            self._close(pb_utils.InferenceResponse(output_tensors=tensors))
        else:
            self._sender.send(pb_utils.InferenceResponse(output_tensors=tensors))

    def fail(self, message: str) -> None:
        log.warning("request %s failed: %s", self.request_id, message)
        self._close(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)))

    def close_cancelled(self) -> None:
        self._close(None)  # no response, but Triton needs the final flag to release the request

    def is_cancelled(self) -> bool:
        return self._request is None or self._request.is_cancelled()

    def _close(self, response) -> None:
        """Send the final flag and let go of the request: nothing is sent after it."""
        sender, self._sender, self._request = self._sender, None, None
        if response is None:
            sender.send(flags=FINAL)
        else:
            sender.send(response, flags=FINAL)


class _MetricsExporter:
    """Engine statistics as Triton custom metrics (``pb_utils.MetricFamily``), from a
    thread of its own: a metric update is a call into Triton that can block while
    the model unloads, and the engine loop must never wait on it."""

    COUNTERS = {
        "decode_steps": "llama_decode calls (engine steps)",
        "step_tokens": "tokens in all llama_decode calls (divide by decode_steps: tokens per step)",
        "prefill_tokens": "prompt tokens prefilled",
        "completed": "requests completed",
        "cancellations": "requests cancelled by their client",
        "errors": "requests failed inside the engine",
        "prefix_hits": "prompt blocks reused from the prefix cache",
        "prefix_misses": "full prompt blocks prefilled (not in the prefix cache)",
        "paced_skips": "decode steps paced streams skipped, ahead of their playhead, for waiting prompts",
        "overload_refusals": "requests refused because their first token would come too late",
    }
    GAUGES = {
        "running": "sequences running (prefilling or decoding)",
        "waiting": "requests waiting to be admitted",
        "kv_cells_used": "KV cache cells in use",
        "cached_blocks": "blocks held by the prefix cache",
        "threads": "llama.cpp threads the engine steps run on (fewer while other processes take cores)",
    }

    def __init__(self, engine: Engine, labels: dict[str, str], cpu_paths: CpuPaths, period_s: float = 0.25):
        self._engine = engine
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-metrics", daemon=True)
        self._families = []
        self._metrics = {}
        self._last = EngineStats()
        info = pb_utils.MetricFamily(name="electron_engine_cpu_paths_info", kind=pb_utils.MetricFamily.GAUGE,
                                     description="the CPU paths the engine runs (weights' buffer types, flash "
                                                 "attention) and how they were chosen; always 1")
        self._families.append(info)
        info.Metric(labels={**labels, **cpu_paths.labels()}).set(1)
        for kind, table in ((pb_utils.MetricFamily.COUNTER, self.COUNTERS), (pb_utils.MetricFamily.GAUGE, self.GAUGES)):
            for name, description in table.items():
                suffix = "_total" if kind == pb_utils.MetricFamily.COUNTER else ""
                family = pb_utils.MetricFamily(name=f"electron_engine_{name}{suffix}", description=description, kind=kind)
                self._families.append(family)
                self._metrics[name] = family.Metric(labels=labels)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            try:
                self._export(dataclasses.replace(self._engine.stats))
            except Exception:
                log.exception("exporting engine metrics failed")

    def _export(self, stats: EngineStats) -> None:
        for name in self.COUNTERS:
            delta = getattr(stats, name) - getattr(self._last, name)
            if delta:
                self._metrics[name].increment(delta)
        for name in self.GAUGES:
            self._metrics[name].set(getattr(stats, name))
        self._last = dataclasses.replace(stats)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        try:  # parsed by the code that wrote them (engine_contract.cpu_parameters)
            p = CpuEngineParameters.from_parameters(
                {k: v["string_value"] for k, v in config.get("parameters", {}).items()})
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"electron_cpu's configuration: {exc}") from exc
        logging.basicConfig(level=p.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("electron_cpu must be decoupled (model_transaction_policy)")
        if not p.gguf_path or p.gguf_path.startswith("${") or not os.path.isfile(p.gguf_path):
            raise pb_utils.TritonModelException(f"parameter gguf_path {p.gguf_path!r} is not a GGUF file")
        threads = p.threads or usable_cores()
        try:  # before the engine loads the model: a path that crashes costs a fallback, not the service
            self.cpu_paths = choose_cpu_paths(p.gguf_path, threads, weights=p.weight_buffers,
                                              flash_attn=p.flash_attention, cache_dir=p.cpu_paths_cache,
                                              engine_crash=p.engine_crash)
        except (RuntimeError, ValueError) as exc:
            raise pb_utils.TritonModelException(str(exc)) from exc
        runner_config = RunnerConfig(
            gguf_path=p.gguf_path,
            kv_cells=p.kv_cells,
            max_sequences=p.max_sequences,
            max_batch_tokens=p.max_batch_tokens,
            threads=threads,
            flash_attn=self.cpu_paths.flash_attn,
            kv_unified=kv_unified_for(p.kv_layout),
            extra_buffer_types=self.cpu_paths.weights == "extra",
        )
        self.runner = LlamaRunner(runner_config)
        self.thread_budget = None
        if p.adaptive_threads and runner_config.threads > 1:
            self.thread_budget = ThreadBudgetWatch(ThreadBudget(runner_config.threads, quota_cores=cgroup_cpu_limit()))
        block = p.tokens_per_block
        ledger = KvLedger(self.runner.kv_cells, shares_cells=runner_config.kv_unified)
        cache = PrefixCache(self.runner, ledger, runner_config.max_sequences, block)
        planner = StepPlanner(SchedulerConfig(
            max_batch_tokens=runner_config.max_batch_tokens,
            min_stream_rate=p.min_stream_rate,
            busy_stream_rate=p.busy_stream_rate,
            playback_buffer_s=p.playback_buffer_s,
            overload_ttft_s=p.overload_ttft_s,
        ))
        max_seq_len = min(self.runner.train_context, self.runner.sequence_cells,
                          p.max_sequence_length or self.runner.train_context)
        self.limits = ModelLimits(vocab_size=self.runner.n_vocab, max_sequence_length=max_seq_len)
        self.guides = GuideCompiler.from_llama_vocab(self.runner.vocab, self.runner.eos_id)
        self.engine = Engine(self.runner, cache, planner, max_running=p.max_running,
                             cache_idle_s=p.cache_idle_s, stream_interval_s=p.stream_interval_ms / 1000,
                             thread_budget=self.thread_budget)
        self.metrics = _MetricsExporter(self.engine, {"model": args["model_name"]}, self.cpu_paths)
        if self.thread_budget is not None:
            self.thread_budget.start()
        self.engine.start()
        self.metrics.start()
        log.info("engine ready: %s, %d KV cells (%s), %d tokens per block, max sequence %d tokens",
                 p.gguf_path, self.runner.kv_cells,
                 "unified" if runner_config.kv_unified else f"{self.runner.sequence_cells} per sequence",
                 block, max_seq_len)

    def execute(self, requests):
        for request in requests:
            tensors = {t.name(): t.as_numpy() for t in request.inputs()}
            try:
                spec = parse_request(tensors, self.limits)
            except InvalidRequest as exc:
                sender = request.get_response_sender()
                log.info("request %s rejected: %s", request.request_id() or "-", exc)
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))), flags=FINAL)
                continue
            if spec.end_id is None:
                spec = dataclasses.replace(spec, end_id=self.runner.eos_id)
            guide = None
            if spec.guide is not None:
                try:  # compiled here, on Triton's thread: the engine loop never waits for it
                    guide = GuideMask(self.guides.matcher(*spec.guide), self.runner.n_vocab)
                except InvalidGuide as exc:
                    log.info("request %s rejected: %s", request.request_id() or "-", exc)
                    request.get_response_sender().send(
                        pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))), flags=FINAL)
                    continue
            self.engine.submit(spec, _TritonSink(request, spec), guide)
        return None

    def finalize(self):
        self.metrics.stop()
        if self.thread_budget is not None:
            self.thread_budget.stop()
        self.engine.shutdown()
        self.runner.close()
