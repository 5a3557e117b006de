"""Block-level prefix cache over llama.cpp sequences.

Token positions are cut into blocks of ``block_size`` tokens. A full block is
keyed by a hash chain (its tokens and its parent block's key), so a key names a
whole prefix. Every sequence - running or kept after it finished - is a *holder*
of the full blocks its KV covers. A new prompt whose leading blocks are cached
gets those cells shared into its own sequence with ``seq_cp`` and prefills only
the rest; blocks computed by a running request are visible to others at once.

Finished sequences stay in llama.cpp's cache as *cached* holders. When cells or
sequence ids run out, blocks are evicted least recently used first, leaves
before their parents, and only blocks that no running sequence holds. Blocks
unused for longer than the engine's idle limit are evicted too (``evict_idle``):
on CPU every token's attention scans the whole occupied pool, so a pool kept
full of ended calls' histories slows every stream (see ``perf/bench_llama_raw.py``).

Contract with llama.cpp: every sequence holds positions ``[0, n)``; ``ops`` is
called with ``seq_cp(src, dst, p0, p1)`` and ``seq_rm(seq, p0, p1)`` (``p1 = -1``:
to the end), and ``ledger`` mirrors them for cell accounting.
"""

from __future__ import annotations

from collections import OrderedDict
import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from .kv_ledger import KvLedger


class MemoryOps(Protocol):
    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None: ...
    def seq_rm(self, seq: int, p0: int, p1: int) -> None: ...


@dataclass(eq=False)
class Block:
    key: int
    tokens: tuple[int, ...]
    parent: Block | None
    index: int  # block number: positions [index * size, (index + 1) * size)
    holders: set[int] = field(default_factory=set)
    children: int = 0
    last_used: float = 0.0  # time.monotonic() of its last use
    created: float = 0.0  # time.monotonic() when its KV was computed


@dataclass
class _Seq:
    active: bool
    blocks: list[Block] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # tokens whose KV exists, positions 0..n-1
    planned: set[int] = field(default_factory=set)  # block keys its prompt will still produce


@dataclass(frozen=True)
class Admission:
    seq: int
    reused_tokens: int  # prompt positions whose KV was shared from the cache
    reused_blocks: int


def block_keys(tokens: Sequence[int], size: int) -> list[int]:
    """Chain keys of the full blocks of ``tokens``."""
    keys, parent = [], 0
    for start in range(0, len(tokens) - size + 1, size):
        parent = hash((parent, *tokens[start : start + size]))
        keys.append(parent)
    return keys


def shared_blocks(a: Sequence[int], b: Sequence[int], start: int = 0) -> int:
    """How many leading blocks two prompts share, from their chain keys (equal keys at
    the same place mean equal prefixes up to there). Keys are compared from ``start``
    on, the blocks before it counted as shared: for a caller that only needs to know how
    many past ``start`` are (the answer is ``start`` when none is)."""
    n, end = start, min(len(a), len(b))
    while n < end and a[n] == b[n]:
        n += 1
    return n


class PrefixCache:
    def __init__(self, ops: MemoryOps, ledger: KvLedger, n_seq: int, block_size: int, clock=time.monotonic):
        self.block_size = block_size
        self._clock = clock
        self._ops = ops
        self.ledger = ledger
        self._blocks: OrderedDict[int, Block] = OrderedDict()  # oldest use first
        self._seqs: dict[int, _Seq] = {}
        self._free_ids = list(range(n_seq - 1, -1, -1))
        self.hits = 0  # blocks reused
        self.misses = 0  # full prompt blocks that had to be prefilled

    # ---- queries -------------------------------------------------------------
    @property
    def cached_blocks(self) -> int:
        return len(self._blocks)

    def match(self, prompt: Sequence[int], keys: list[int] | None = None) -> list[Block]:
        """Cached blocks that ``prompt`` starts with, in order (``keys``: its
        ``block_keys`` when the caller already has them)."""
        found = []
        for i, key in enumerate(block_keys(prompt, self.block_size) if keys is None else keys):
            block = self._blocks.get(key)
            start = i * self.block_size
            if block is None or block.tokens != tuple(prompt[start : start + self.block_size]):
                break
            found.append(block)
        return found

    def awaits_running_prefill(self, prompt: Sequence[int]) -> bool:
        """True when a running prefill is about to compute the next block ``prompt``
        misses: admitting later reuses it instead of computing it twice."""
        keys = block_keys(prompt, self.block_size)
        n = len(self.match(prompt, keys))
        if n >= len(keys) or (n + 1) * self.block_size >= len(prompt):
            return False
        return any(keys[n] in s.planned for s in self._seqs.values() if s.active)

    def cached_before(self, prompt: Sequence[int], keys: list[int], when: float) -> int:
        """Leading prompt tokens whose blocks were cached already at ``when`` (clock time)."""
        n = 0
        for block in self.match(prompt, keys):
            if block.created > when:
                break
            n += 1
        return n * self.block_size

    def reusable_prefix(self, prompt: Sequence[int], keys: list[int] | None = None) -> tuple[int, set[int]]:
        """Leading prompt tokens a new request would not prefill itself - cached
        blocks, then blocks running prefills are computing (it waits for those) -
        and the sequences computing them. ``keys``: the prompt's block keys, if known."""
        keys = block_keys(prompt, self.block_size) if keys is None else keys
        n = len(self.match(prompt, keys))
        computing: set[int] = set()
        while n < len(keys):
            seqs = {seq for seq, s in self._seqs.items() if s.active and keys[n] in s.planned}
            if not seqs:
                break
            computing |= seqs
            n += 1
        return n * self.block_size, computing

    # ---- lifecycle -----------------------------------------------------------
    def admit(self, prompt: Sequence[int]) -> Admission:
        """Give ``prompt`` a sequence holding its longest cached prefix (at least
        one token is left to prefill: its logits are needed)."""
        heir = None
        if not self.ledger.shares_cells:  # a finished turn's own stream, taken over whole: nothing is copied
            blocks = self.match(prompt)
            reused = min(len(blocks) * self.block_size, len(prompt) - 1)
            if reused >= self.block_size:
                heir = self._heir(blocks[reused // self.block_size - 1], reused // self.block_size)
        if heir is not None:
            seq, state = heir, self._seqs[heir]
            self._cut(seq, state, reused // self.block_size, reused)
            state.active = True
        else:
            seq = self._take_seq_id()  # may evict blocks: match after it
            blocks = self.match(prompt)
            reused = min(len(blocks) * self.block_size, len(prompt) - 1)
            state = _Seq(active=True)
            self._seqs[seq] = state
            if reused > 0:
                self._share(blocks, prompt, seq, state, reused)
        if reused > 0:
            self._touch(blocks)
        kept = reused // self.block_size
        state.planned = set(block_keys(prompt, self.block_size)[kept:])
        self.hits += kept
        self.misses += len(prompt) // self.block_size - kept
        return Admission(seq, reused, kept)

    def _share(self, blocks: list[Block], prompt: Sequence[int], seq: int, state: _Seq, reused: int) -> None:
        """The empty ``seq`` gets the KV of ``blocks``' first ``reused`` positions from
        one of their holders: the cells themselves in a unified cache, a copy of the
        holder's stream (llama.cpp copies streams whole) cut back to ``reused`` otherwise."""
        kept = reused // self.block_size
        source = next(iter(blocks[-1].holders))
        if self.ledger.shares_cells:
            self._ops.seq_cp(source, seq, 0, reused)
        else:
            self._ops.seq_cp(source, seq, -1, -1)
            self._ops.seq_rm(seq, reused, -1)
        self.ledger.copy(source, seq, reused)
        state.tokens = list(prompt[:reused])
        for block in blocks[:kept]:
            block.holders.add(seq)
            state.blocks.append(block)
        source_state = self._seqs[source]
        if not source_state.active and len(source_state.blocks) <= len(state.blocks):
            self._drop_seq(source)  # a finished turn whose history the new turn now holds whole

    def _heir(self, last: Block, kept: int) -> int | None:
        """A finished sequence holding ``last`` that a new request can take over without
        loss: none of its blocks past the first ``kept`` is held by it alone (taking
        over a call's history for another call's system prompt would lose that history)."""
        for holder in last.holders:
            state = self._seqs[holder]
            if not state.active and all(len(b.holders) > 1 for b in state.blocks[kept:]):
                return holder
        return None

    def _cut(self, seq: int, state: _Seq, kept: int, end: int) -> None:
        """``seq`` keeps its first ``kept`` blocks and positions ``[0, end)``; a block it
        gives up that no other sequence holds is forgotten."""
        for block in state.blocks[kept:]:
            block.holders.discard(seq)
            if not block.holders:
                self._forget(block)
        del state.blocks[kept:]
        del state.tokens[end:]
        self._ops.seq_rm(seq, end, -1)
        self.ledger.truncate(seq, end)

    def computed(self, seq: int, tokens: Sequence[int]) -> None:
        """``tokens`` were decoded into ``seq`` after its current end."""
        state = self._seqs[seq]
        state.tokens.extend(tokens)
        self.ledger.append(seq, len(tokens))
        size = self.block_size
        while len(state.tokens) >= (len(state.blocks) + 1) * size:
            index = len(state.blocks)
            parent = state.blocks[-1] if state.blocks else None
            chunk = tuple(state.tokens[index * size : (index + 1) * size])
            key = hash((parent.key if parent else 0, *chunk))
            block = self._blocks.get(key)
            if block is None or block.tokens != chunk:
                now = self._clock()
                block = Block(key, chunk, parent, index, last_used=now, created=now)
                self._blocks[key] = block
                if parent is not None:
                    parent.children += 1
            block.holders.add(seq)
            state.blocks.append(block)
            state.planned.discard(key)
        # no LRU touch here: blocks a running sequence holds are never evicted, and
        # ``release`` touches the whole chain (walking it every step would cost more
        # than the step's sampling)

    def release(self, seq: int) -> None:
        """The request on ``seq`` ended; its full blocks stay cached."""
        state = self._seqs[seq]
        state.active = False
        state.planned.clear()
        full = len(state.blocks) * self.block_size
        if len(state.tokens) > full:
            self._cut(seq, state, len(state.blocks), full)  # the partial block's cells
        if all(len(b.holders) > 1 for b in state.blocks):
            self._drop_seq(seq)  # every block is held elsewhere too: this copy adds nothing
        else:
            self._touch(state.blocks)

    # ---- eviction ------------------------------------------------------------
    def make_room(self, cells: int) -> bool:
        """Evict cached blocks until ``cells`` cells are free; False if it cannot."""
        while self.ledger.free_cells() < cells:
            if not self._evict_one():
                return False
        return True

    def evict_idle(self, max_idle_s: float) -> int:
        """Evict every evictable block unused for more than ``max_idle_s``; returns
        how many. Blocks held by a running sequence stay, and so do their parents."""
        cutoff = self._clock() - max_idle_s
        evicted = 0
        while True:
            for block in self._blocks.values():
                if block.last_used > cutoff:
                    return evicted
                if block.children == 0 and not any(self._seqs[h].active for h in block.holders):
                    break
            else:
                return evicted
            self._evict(block)
            evicted += 1

    def _take_seq_id(self) -> int:
        while not self._free_ids:
            if not self._drop_redundant_cached_seq() and not self._evict_one():
                raise RuntimeError("no free sequence id: every sequence is running")
        return self._free_ids.pop()

    def _drop_redundant_cached_seq(self) -> bool:
        """Free the id of a finished sequence whose blocks all have other holders
        (nothing is lost: the cells stay with them)."""
        for seq, state in self._seqs.items():
            if not state.active and all(len(b.holders) > 1 for b in state.blocks):
                self._drop_seq(seq)
                return True
        return False

    def _evict_one(self) -> bool:
        """Evict the least recently used leaf block held by cached sequences only."""
        for block in self._blocks.values():
            if block.children == 0 and not any(self._seqs[h].active for h in block.holders):
                break
        else:
            return self._drop_empty_cached_seq()
        self._evict(block)
        return True

    def _evict(self, block: Block) -> None:
        del self._blocks[block.key]
        if block.parent is not None:
            block.parent.children -= 1
        start = block.index * self.block_size
        for holder in block.holders:
            state = self._seqs[holder]
            state.blocks.pop()
            del state.tokens[start:]
            if state.blocks:
                self._ops.seq_rm(holder, start, -1)
                self.ledger.truncate(holder, start)
            else:
                self._drop_seq(holder)

    def _drop_empty_cached_seq(self) -> bool:
        for seq, state in self._seqs.items():
            if not state.active:
                self._drop_seq(seq)
                return True
        return False

    def _drop_seq(self, seq: int) -> None:
        state = self._seqs.pop(seq)
        for block in state.blocks:
            block.holders.discard(seq)
            if not block.holders:
                self._forget(block)
        self._ops.seq_rm(seq, 0, -1)
        self.ledger.truncate(seq, 0)
        self._free_ids.append(seq)

    def _forget(self, block: Block) -> None:
        if self._blocks.get(block.key) is block:
            del self._blocks[block.key]
            if block.parent is not None:
                block.parent.children -= 1

    def _touch(self, blocks: list[Block]) -> None:
        """Mark a chain used: leaf first, so parents always look more recent."""
        node = blocks[-1] if blocks else None
        now = self._clock()
        while node is not None:
            if self._blocks.get(node.key) is node:
                self._blocks.move_to_end(node.key)
                node.last_used = now
            node = node.parent
