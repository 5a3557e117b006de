"""Prefix cache and KV ledger against cell-level models of llama.cpp's two KV layouts:
the unified cache (shared cells) and per-sequence streams (whole-stream copies)."""

import random

import pytest

from llama_engine.kv_ledger import KvLedger
from llama_engine.prefix_cache import PrefixCache, block_keys, shared_blocks


class UnifiedCacheModel:
    """llama.cpp's unified KV cache at cell level: a cell has a position, a token
    and the set of sequences holding it; it is free once that set is empty."""

    def __init__(self):
        self.cells: dict[int, list] = {}  # cell id -> [pos, token, seqs]
        self._next = 0

    def decode(self, seq, start, tokens):
        held = {c[0] for c in self.cells.values() if seq in c[2]}
        for i, token in enumerate(tokens):
            assert start + i not in held, f"seq {seq} already has position {start + i}"
            self.cells[self._next] = [start + i, token, {seq}]
            self._next += 1

    def seq_cp(self, src, dst, p0, p1):
        for pos, _, seqs in self.cells.values():
            if src in seqs and p0 <= pos and (p1 < 0 or pos < p1):
                seqs.add(dst)

    def seq_rm(self, seq, p0, p1):
        for cid in list(self.cells):
            pos, _, seqs = self.cells[cid]
            if seq in seqs and p0 <= pos and (p1 < 0 or pos < p1):
                seqs.discard(seq)
                if not seqs:
                    del self.cells[cid]

    def content(self, seq):
        held = sorted((c[0], c[1]) for c in self.cells.values() if seq in c[2])
        assert [p for p, _ in held] == list(range(len(held))), f"seq {seq} is not contiguous"
        return [t for _, t in held]


class StreamsCacheModel:
    """llama.cpp's per-sequence streams (``kv_unified = false``): every sequence id has
    cells of its own, and ``seq_cp`` between two of them copies the source's whole
    stream onto an empty destination (llama.cpp asserts on a partial range)."""

    def __init__(self):
        self.streams: dict[int, dict[int, int]] = {}  # seq id -> position -> token
        self.copies: list[tuple[int, int]] = []

    @property
    def cells(self) -> list[tuple[int, int]]:
        return [(seq, pos) for seq, stream in self.streams.items() for pos in stream]

    def decode(self, seq, start, tokens):
        stream = self.streams.setdefault(seq, {})
        for i, token in enumerate(tokens):
            assert start + i not in stream, f"seq {seq} already has position {start + i}"
            stream[start + i] = token

    def seq_cp(self, src, dst, p0, p1):
        assert p0 <= 0 and p1 < 0, "only whole streams are copied"
        assert not self.streams.get(dst), f"seq {dst} is not empty"
        self.streams[dst] = dict(self.streams.get(src, {}))
        self.copies.append((src, dst))

    def seq_rm(self, seq, p0, p1):
        stream = self.streams.get(seq, {})
        for pos in [p for p in stream if p0 <= p and (p1 < 0 or p < p1)]:
            del stream[pos]

    def content(self, seq):
        stream = self.streams.get(seq, {})
        assert sorted(stream) == list(range(len(stream))), f"seq {seq} is not contiguous"
        return [stream[p] for p in range(len(stream))]


LAYOUTS = {"unified": (UnifiedCacheModel, True), "streams": (StreamsCacheModel, False)}


def make(n_seq=8, block=4, cells=1000, layout="unified"):
    model, shares = LAYOUTS[layout]
    memory = model()
    cache = PrefixCache(memory, KvLedger(cells, shares_cells=shares), n_seq=n_seq, block_size=block)
    return memory, cache


def run(memory, cache, prompt, generated=()):
    """Admit ``prompt``, prefill the rest, decode ``generated``, return admission."""
    adm = cache.admit(prompt)
    rest = list(prompt[adm.reused_tokens:])
    memory.decode(adm.seq, adm.reused_tokens, rest)
    cache.computed(adm.seq, rest)
    if generated:
        memory.decode(adm.seq, len(prompt), list(generated))
        cache.computed(adm.seq, list(generated))
    return adm


def test_second_request_reuses_full_blocks_of_shared_prefix():
    memory, cache = make()
    system = list(range(100, 110))  # 10 tokens: 2 full blocks of 4
    first = run(memory, cache, system + [1, 2])
    cache.release(first.seq)
    second = cache.admit(system + [7, 8, 9])
    assert second.reused_tokens == 8 and second.reused_blocks == 2
    assert memory.content(second.seq) == system[:8]
    assert cache.hits == 2


def test_a_prefill_cancelled_midway_leaves_its_computed_blocks_for_the_next_request():
    memory, cache = make()
    system = list(range(100, 140))  # 40 tokens: 10 blocks
    speculative = cache.admit(system + [1, 2, 3])
    for start in (0, 9):  # two prompt chunks (the second ends mid-block), then the client cancels
        chunk = system[start : start + 9]
        memory.decode(speculative.seq, start, chunk)
        cache.computed(speculative.seq, chunk)
    cache.release(speculative.seq)  # what the engine does with a cancelled request
    assert memory.content(speculative.seq) == system[:16]  # the partial block's cells are gone
    assert cache.ledger.used_cells() == len(memory.cells) == 16
    nxt = cache.admit(system + [1, 2, 3, 4, 5])  # the same call's next request
    assert nxt.reused_tokens == 16 and nxt.reused_blocks == 4
    assert memory.content(nxt.seq) == system[:16]


def test_whole_prompt_cached_still_leaves_one_token_to_prefill():
    memory, cache = make()
    prompt = list(range(1, 9))  # exactly 2 blocks
    cache.release(run(memory, cache, prompt).seq)
    again = cache.admit(prompt)
    assert again.reused_tokens == 7 and again.reused_blocks == 1
    memory.decode(again.seq, 7, prompt[7:])
    cache.computed(again.seq, prompt[7:])
    assert memory.content(again.seq) == prompt
    assert cache.ledger.used_cells() == len(memory.cells)


def test_next_turn_reuses_generated_tokens():
    memory, cache = make()
    turn1 = list(range(1, 11))
    reply = [50, 51, 52, 53, 54, 55]
    cache.release(run(memory, cache, turn1, reply).seq)
    # the last generated token's KV is computed only when it is fed back; here it was
    turn2 = turn1 + reply + [60, 61]
    adm = cache.admit(turn2)
    assert adm.reused_tokens == 16  # 4 full blocks: prompt and reply


def test_running_prefill_blocks_are_shared_with_a_concurrent_request():
    memory, cache = make()
    system = list(range(100, 116))  # 4 blocks
    a = cache.admit(system + [1])
    assert cache.awaits_running_prefill(system + [2]) is True
    # what the engine's overload estimate reads: nothing to prefill for those blocks, and who computes them
    assert cache.reusable_prefix(system + [2, 3, 4]) == (16, {a.seq})
    memory.decode(a.seq, 0, system[:8])
    cache.computed(a.seq, system[:8])
    assert cache.awaits_running_prefill(system + [2]) is True
    assert cache.reusable_prefix(system[:8] + [9, 9, 9, 9]) == (8, set())  # cached blocks, then a new one
    memory.decode(a.seq, 8, system[8:] + [1])
    cache.computed(a.seq, system[8:] + [1])
    assert cache.awaits_running_prefill(system + [2]) is False
    b = cache.admit(system + [2])
    assert b.reused_tokens == 16
    assert memory.content(b.seq) == system
    # both share the cells: 17 cells, not 33
    assert len(memory.cells) == 17 == cache.ledger.used_cells()


def test_eviction_frees_least_recently_used_leaves_and_spares_running():
    memory, cache = make(n_seq=8, block=4, cells=40)
    old = run(memory, cache, list(range(1, 17)))  # 16 cells
    cache.release(old.seq)
    live = run(memory, cache, list(range(200, 216)))  # running, 16 cells
    assert cache.ledger.used_cells() == 32
    assert cache.make_room(20) is True  # must evict the finished one, not the live one
    assert cache.ledger.used_cells() == len(memory.cells) <= 20
    assert memory.content(live.seq) == list(range(200, 216))
    assert cache.make_room(30) is False  # the running sequence cannot be evicted


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_idle_blocks_are_evicted_and_recent_or_running_ones_stay():
    memory = UnifiedCacheModel()
    clock = FakeClock()
    cache = PrefixCache(memory, KvLedger(1000), n_seq=8, block_size=4, clock=clock)
    system = list(range(100, 108))  # 2 blocks shared by every call
    ended = run(memory, cache, system + [1, 2, 3, 4, 5, 6, 7, 8])
    cache.release(ended.seq)
    clock.now += 50
    recent = run(memory, cache, system + [9, 10, 11, 12])
    cache.release(recent.seq)
    running = run(memory, cache, [300, 301, 302, 303, 304])
    clock.now += 20  # the ended call's own blocks: 70 s idle; the shared ones were reused 20 s ago
    assert cache.evict_idle(60) == 2
    assert cache.ledger.used_cells() == len(memory.cells) == 8 + 4 + 5
    again = cache.admit(system + [9, 10, 11, 12, 13])
    assert again.reused_tokens == 12  # the recent call's history is still whole
    cache.release(again.seq)
    clock.now += 1000
    assert cache.evict_idle(60) == 3  # everything that is not running
    assert memory.content(running.seq) == [300, 301, 302, 303, 304]
    assert cache.ledger.used_cells() == len(memory.cells) == 5


def test_sequence_ids_are_recycled_by_evicting_cached_sequences():
    memory, cache = make(n_seq=2, block=4)
    for i in range(5):
        adm = run(memory, cache, [i * 10 + k for k in range(8)])
        cache.release(adm.seq)
    assert cache.cached_blocks <= 4
    assert cache.ledger.used_cells() == len(memory.cells)


def test_block_keys_name_whole_prefixes():
    a = block_keys([1, 2, 3, 4, 5, 6, 7, 8], 4)
    b = block_keys([9, 2, 3, 4, 5, 6, 7, 8], 4)
    assert len(a) == 2 and a[1] != b[1]  # same second block, different prefix


def test_shared_blocks_counts_the_common_leading_blocks_of_two_prompts():
    system = list(range(100, 164))  # four blocks of 16
    a, b = block_keys(system + [1, 2, 3] * 10, 16), block_keys(system + [4, 5] * 20, 16)
    assert shared_blocks(a, b) == 4 and shared_blocks(b, a) == 4
    assert shared_blocks(a, a) == len(a)
    assert shared_blocks(a, block_keys([7] + system, 16)) == 0  # same blocks shifted: no shared prefix
    assert shared_blocks(a, []) == 0
    assert shared_blocks(a, b, start=2) == 4  # compared from the third block on
    assert shared_blocks(a, b, start=5) == 5  # none past the start: the start


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("seed", range(12))
def test_random_workload_keeps_ledger_and_contents_exact(seed, layout):
    rng = random.Random(seed)
    memory, cache = make(n_seq=6, block=4, cells=120, layout=layout)
    systems = [[rng.randrange(1000) for _ in range(rng.randrange(4, 14))] for _ in range(3)]
    running = {}
    for _ in range(60):
        if running and (len(running) >= 4 or rng.random() < 0.4):
            seq = rng.choice(list(running))
            del running[seq]
            cache.release(seq)
        else:
            prompt = rng.choice(systems) + [rng.randrange(1000) for _ in range(rng.randrange(1, 9))]
            generated = [rng.randrange(1000) for _ in range(rng.randrange(0, 6))]
            need = len(prompt) + len(generated)
            if not cache.make_room(need + sum(len(t) for t in running.values())):
                continue
            adm = run(memory, cache, prompt, generated)
            running[adm.seq] = prompt + generated
        assert cache.ledger.used_cells() == len(memory.cells)
        for seq, tokens in running.items():
            assert memory.content(seq) == tokens


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_call_of_many_turns_keeps_one_cached_sequence_and_its_whole_history(layout):
    memory, cache = make(n_seq=3, block=4, cells=1000, layout=layout)
    history = list(range(100, 112))
    for turn in range(10):  # more turns than sequence ids: ids are recycled, history kept
        adm = run(memory, cache, history, generated=[500 + turn, 600 + turn, 700 + turn, 800 + turn])
        assert turn == 0 or adm.reused_tokens >= len(history) - 4
        cache.release(adm.seq)
        history = history + [500 + turn, 600 + turn, 700 + turn, 800 + turn] + [900 + turn] * 4
    assert cache.ledger.used_cells() == len(memory.cells)
    assert sum(1 for s in cache._seqs.values() if not s.active) == 1


def test_a_redundant_finished_sequence_gives_its_id_before_any_block_is_evicted():
    memory, cache = make(n_seq=2, block=4, cells=1000)
    a = run(memory, cache, list(range(1, 9)))
    cache.release(a.seq)
    b = run(memory, cache, list(range(1, 9)) + [20, 21, 22, 23, 24])  # holds a's blocks too; a is dropped
    c = run(memory, cache, [40, 41, 42, 43, 44])  # needs an id: there is one, nothing evicted
    assert memory.content(b.seq)[:8] == list(range(1, 9)) and cache.cached_blocks >= 3
    assert memory.content(c.seq) == [40, 41, 42, 43, 44]


def test_cached_before_counts_only_blocks_computed_before_a_time():
    now = [10.0]
    memory = UnifiedCacheModel()
    cache = PrefixCache(memory, KvLedger(1000), n_seq=8, block_size=4, clock=lambda: now[0])
    system = list(range(100, 116))  # 4 blocks
    a = cache.admit(system + [1])
    memory.decode(a.seq, 0, system[:8])
    cache.computed(a.seq, system[:8])  # 2 blocks at t=10
    now[0] = 12.0
    memory.decode(a.seq, 8, system[8:])
    cache.computed(a.seq, system[8:])  # 2 more at t=12
    prompt = system + [2, 3]
    keys = block_keys(prompt, 4)
    # what a request that arrived at t=11 would have found cached: the engine counts the rest, computed
    # for it while it waited, as its own work (not as waiting for others)
    assert cache.cached_before(prompt, keys, 11.0) == 8
    assert cache.cached_before(prompt, keys, 12.0) == 16
    assert cache.cached_before(prompt, keys, 9.0) == 0


def test_with_streams_a_running_prefix_is_copied_whole_and_cut_back():
    memory, cache = make(layout="streams")
    system = list(range(100, 116))  # 4 blocks
    a = run(memory, cache, system + [1, 2, 3, 4, 5, 6])  # still running
    b = cache.admit(system + [9])
    assert memory.copies == [(a.seq, b.seq)] and b.reused_tokens == 16
    assert memory.content(b.seq) == system  # a's own turn was cut from the copy
    assert cache.ledger.used_cells() == len(memory.cells) == 22 + 16  # copied cells are b's own


def test_with_streams_a_calls_next_turn_takes_over_its_finished_stream_without_a_copy():
    memory, cache = make(layout="streams")
    turn1 = list(range(100, 112))
    first = run(memory, cache, turn1, generated=[50, 51, 52, 53])
    cache.release(first.seq)
    nxt = cache.admit(turn1 + [50, 51, 52, 53, 60, 61])
    assert nxt.seq == first.seq and nxt.reused_tokens == 16 and memory.copies == []
    assert memory.content(nxt.seq) == turn1 + [50, 51, 52, 53]


def test_with_streams_a_new_call_copies_a_system_prompt_and_leaves_the_ended_calls_history():
    memory, cache = make(layout="streams")
    system = list(range(100, 108))  # 2 blocks
    ended = run(memory, cache, system + [1, 2, 3, 4, 5, 6, 7, 8], generated=[70, 71, 72, 73])
    cache.release(ended.seq)
    new_call = cache.admit(system + [9, 9, 9, 9, 9])
    assert new_call.seq != ended.seq and memory.copies == [(ended.seq, new_call.seq)]
    assert memory.content(new_call.seq) == system
    again = cache.admit(system + [1, 2, 3, 4, 5, 6, 7, 8, 70, 71, 72, 73, 5])  # the ended call's next turn
    assert again.seq == ended.seq and again.reused_tokens == 20
    assert cache.ledger.used_cells() == len(memory.cells)
