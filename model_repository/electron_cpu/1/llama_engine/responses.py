"""What the engine sends each request: its tokens (held back briefly for paced streams
well ahead of their playhead), prefill progress reports, and the perf metrics of each."""

from __future__ import annotations

import logging
import math
import time
from typing import Sequence

from engine_contract import PerfMetrics

from .scheduler import playback_lead_s
from .sequence import SequenceState, StepOutput

log = logging.getLogger(__name__)


class ResponseWriter:
    def __init__(self, block_size: int, stream_interval_s: float, playback_buffer_s: float) -> None:
        self.block_size = block_size
        # a paced stream well ahead of its playhead sends its tokens at most this often (0: every token)
        self.stream_interval_s = stream_interval_s
        self.playback_buffer_s = playback_buffer_s

    def may_hold(self, s: SequenceState, now_ns: int) -> bool:
        """Coalescing: a paced stream whose sent text is more than the playback buffer
        ahead of its playhead may hold new tokens for up to ``stream_interval_s`` and
        send them as one response (one gRPC message and one SSE event instead of
        several); the first token, unpaced streams and streams running low never wait."""
        pace = s.request.playback_chars_per_s
        if pace <= 0 or self.stream_interval_s <= 0 or s.delivered.tokens == 0:
            return False
        if (now_ns - s.delivered.last_send_ns) / 1e9 >= self.stream_interval_s:
            return False
        sent_lead = playback_lead_s(s.delivered.chars, (now_ns - s.timeline.first_token_ns) / 1e9, pace)
        return sent_lead > self.playback_buffer_s

    def flush_held(self, running: Sequence[SequenceState], now_ns: int) -> None:
        """Send the tokens streams held back whose time has come."""
        for s in running:
            if s.request.streaming and s.delivered.tokens < len(s.generated) and not self.may_hold(s, now_ns):
                self.send(s, final=False)

    def send(self, s: SequenceState, final: bool) -> None:
        """The tokens not sent yet (a stream) or all of them (the final response of a
        request that does not stream, after the prompt unless it is excluded)."""
        request = s.request
        sent = s.delivered.tokens
        tokens = s.generated[sent:] if request.streaming else s.generated
        if not request.streaming and not request.exclude_input_in_output:
            tokens = list(request.prompt) + tokens
        log_probs = None
        if request.return_log_probs:
            log_probs = s.log_probs[sent:] if request.streaming else s.log_probs
        s.delivered.tokens = len(s.generated)
        s.delivered.chars = s.chars
        s.delivered.last_send_ns = time.time_ns()
        total = len(request.prompt) + len(s.generated)
        self.deliver(s, StepOutput(tokens=tokens, log_probs=log_probs, final=final, sequence_length=total,
                                   num_input_tokens=len(request.prompt), perf=self.perf(s, total)))

    def report_prefill(self, s: SequenceState) -> None:
        """Prefill progress (electron extension ``return_prefill_progress``): after each chunk
        of a prompt that is not complete yet, a response without tokens whose
        ``sequence_length`` is the prompt tokens whose KV exists (reused + computed) and whose
        perf metrics hold the reused blocks: what a request cancelled before its first token
        had done (a client cancelling its stream gets no final response to read it from)."""
        self.deliver(s, StepOutput(tokens=[], log_probs=[] if s.request.return_log_probs else None, final=False,
                                   sequence_length=s.prefilled, num_input_tokens=len(s.request.prompt),
                                   perf=self.perf(s, s.prefilled)))

    def perf(self, s: SequenceState, total: int) -> PerfMetrics:
        """``total``: the sequence's tokens so far."""
        blocks = math.ceil(total / self.block_size)
        t = s.timeline
        return PerfMetrics(reused_blocks=s.reused_blocks, new_blocks=blocks - s.reused_blocks, total_blocks=blocks,
                           arrival_ns=t.arrival_ns, first_scheduled_ns=t.first_scheduled_ns,
                           first_token_ns=t.first_token_ns, last_token_ns=t.last_token_ns)

    @staticmethod
    def deliver(s: SequenceState, output: StepOutput) -> None:
        try:
            s.sink.send(output)
        except Exception as exc:  # noqa: BLE001 - the client went away between two checks
            log.info("request %s: response not delivered (%s)", s.sink.request_id, exc)
