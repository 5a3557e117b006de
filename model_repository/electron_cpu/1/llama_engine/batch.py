"""One step's batch: which streams have a token to decode and how long each can wait,
the load they make, llama.cpp's batch filled from the plan, and what it computed."""

from __future__ import annotations

from typing import Sequence

from .llama_runner import LlamaRunner
from .prefix_cache import PrefixCache
from .scheduler import DecodeCandidate, StepPlanner, floor_wait_s, paced_wait_s, playback_lead_s
from .sequence import SequenceState

Plan = Sequence[tuple[SequenceState, int]]  # prefilling sequences and the prompt tokens each computes


def decode_candidates(running: Sequence[SequenceState], planner: StepPlanner, now_ns: int) -> list[DecodeCandidate]:
    """Every stream with a token to decode, with how long it can wait for the next."""
    floor, buffer = planner.config.min_stream_rate, planner.config.playback_buffer_s
    out = []
    for s in running:
        if s.pending is None:
            continue
        since = (now_ns - s.timeline.first_token_ns) / 1e9
        pace = s.request.playback_chars_per_s
        if pace > 0:
            lead = playback_lead_s(s.chars, since, pace)
            out.append(DecodeCandidate(s, paced_wait_s(lead, buffer), paced=True))
        else:
            out.append(DecodeCandidate(s, floor_wait_s(len(s.generated), since, floor), paced=False))
    return out


def stream_load(running: Sequence[SequenceState], planner: StepPlanner, now_ns: int,
                with_prefills: bool = True) -> tuple[int, float | None]:
    """Streams that decode in every step while prompts wait (urgent and unpaced
    decoders, plus - ``with_prefills`` - the prompts being prefilled, soon decoders),
    and how long the most urgent stream can wait for its next token."""
    streams = decode_candidates(running, planner, now_ns)
    prefilling = sum(1 for s in running if s.prompt_left > 0) if with_prefills else 0
    chosen = planner.choose_decodes(streams, prompts_waiting=True)
    return len(chosen) + prefilling, min((c.wait_s for c in streams), default=None)


def fill_batch(runner: LlamaRunner, decoding: Sequence[SequenceState],
               plan: Plan) -> tuple[int, list[tuple[SequenceState, int]]]:
    """Put the next token of each decoding stream and the planned prompt chunks in the
    runner's batch: the batch's size, and the sequences to sample with their logits' row."""
    r = runner
    samplers = []
    n = 0
    for s in decoding:
        r.tokens[n], r.positions[n], r.seq_ids[n], r.want_logits[n] = s.pending, s.n_past, s.seq, 1
        samplers.append((s, n))
        n += 1
    for s, take in plan:
        start = s.prefilled
        end = start + take
        r.tokens[n : n + take] = s.request.prompt[start:end]
        r.positions[n : n + take] = range(s.n_past, s.n_past + take)
        r.seq_ids[n : n + take] = s.seq
        r.want_logits[n : n + take] = 0
        if end == len(s.request.prompt):
            r.want_logits[n + take - 1] = 1
            samplers.append((s, n + take - 1))
        n += take
    return n, samplers


def record_decoded(cache: PrefixCache, decoding: Sequence[SequenceState], plan: Plan) -> None:
    """After ``llama_decode``: the KV the batch computed, in the prefix cache and the sequences."""
    for s in decoding:
        cache.computed(s.seq, [s.pending])
        s.n_past += 1
        s.pending = None
    for s, take in plan:
        cache.computed(s.seq, s.request.prompt[s.prefilled : s.prefilled + take])
        s.prefill_started = True
        s.prefilled += take
        s.n_past += take
