"""Physical KV-cell accounting for llama.cpp's KV cache, in either layout.

Unified (``kv_unified``): llama.cpp keeps one pool of cells; a cell holds the K/V
of one position and may belong to several sequences at once (``seq_cp`` shares
cells, it copies nothing). A cell is free once no sequence holds it.

Per-sequence streams (``shares_cells=False``): every sequence id has a stream of
its own (``n_cells / n_seq`` cells); ``seq_cp`` copies a whole stream's buffer, so
a copied prefix is cells of the destination alone.

llama.cpp does not report how many cells are in use, so the engine mirrors every
memory operation here.

Model: cells are created in *runs* - the positions one sequence decodes itself.
A sequence is a list of runs covering positions ``[0, n)``; every sequence that
holds a run records how far into it it reaches. A run's live cells are the
furthest reach of any holder, so the pool in use is the sum over runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False)
class _Run:
    start: int
    reach: dict[int, int] = field(default_factory=dict)  # seq id -> end position held

    def live_cells(self) -> int:
        return max(self.reach.values(), default=self.start) - self.start


class KvLedger:
    """Mirrors ``seq_cp`` / ``seq_rm`` / decode on a cache of ``n_cells`` (all streams'
    together when ``shares_cells`` is False)."""

    def __init__(self, n_cells: int, shares_cells: bool = True):
        self.n_cells = n_cells
        self.shares_cells = shares_cells
        self._runs: dict[int, list[_Run]] = {}  # seq id -> its runs, by position
        self._length: dict[int, int] = {}  # seq id -> positions held, [0, n)

    def length(self, seq: int) -> int:
        return self._length.get(seq, 0)

    def used_cells(self) -> int:
        runs = {id(r): r for runs in self._runs.values() for r in runs}
        return sum(r.live_cells() for r in runs.values())

    def free_cells(self) -> int:
        return self.n_cells - self.used_cells()

    def append(self, seq: int, n_tokens: int) -> None:
        """``seq`` decoded ``n_tokens`` new positions after its current end."""
        runs = self._runs.setdefault(seq, [])
        end = self._length.get(seq, 0)
        last = runs[-1] if runs else None
        if last is not None and set(last.reach) == {seq} and last.reach[seq] == end:
            last.reach[seq] = end + n_tokens  # sole holder: the run grows in place
        else:
            runs.append(_Run(start=end, reach={seq: end + n_tokens}))
        self._length[seq] = end + n_tokens

    def copy(self, src: int, dst: int, end: int) -> None:
        """``dst`` (empty) now holds ``src``'s positions ``[0, end)``: the same cells in a
        unified cache, a copy of them in its own stream otherwise."""
        if self._length.get(dst, 0):
            raise ValueError(f"seq {dst} is not empty")
        if end > self._length.get(src, 0):
            raise ValueError(f"seq {src} holds {self._length.get(src, 0)} positions, not {end}")
        if not self.shares_cells:
            if end:
                self._runs[dst] = [_Run(start=0, reach={dst: end})]
                self._length[dst] = end
            return
        shared = [r for r in self._runs.get(src, []) if r.start < end]
        for run in shared:
            run.reach[dst] = min(run.reach[src], end)
        if shared:
            self._runs[dst] = shared
            self._length[dst] = end

    def truncate(self, seq: int, end: int) -> None:
        """``seq_rm(seq, end, -1)``: ``seq`` keeps positions ``[0, end)``."""
        kept = []
        for run in self._runs.get(seq, []):
            if run.start >= end:
                del run.reach[seq]
            else:
                run.reach[seq] = min(run.reach[seq], end)
                kept.append(run)
        if kept:
            self._runs[seq] = kept
            self._length[seq] = min(self._length[seq], end)
        else:
            self._runs.pop(seq, None)
            self._length.pop(seq, None)
