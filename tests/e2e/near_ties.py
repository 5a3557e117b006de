"""Greedy outputs compared across runs, allowing only a divergence at a verified near-tie.

llama.cpp's logits differ in their last bits with the batch shape (how a prompt is cut
into chunks, which other sequences share a step, what was read from the prefix cache):
at a near-tie of the two best tokens (this small model has many, e.g. 'L' 24.743 vs
'The' 24.648 for "What is the capital of France?") two correct runs can take different
greedy paths. A comparison that fails only there is noise; one that diverges where the
two candidates' logits are far apart is a bug (wrong KV, wrong position, lost token).
"""

from __future__ import annotations

from llama_cpp import Llama

from tests.e2e.reference_model import reference_llama

MAX_TIE_GAP = 0.5  # logits; batch-shape noise is far smaller, a real bug far larger


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """The first index where ``a`` and ``b`` differ, ``None`` if one is a prefix of the other."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


class NearTieJudge:
    """Holds one llama.cpp model (created at first need) to read the logits at a divergence."""

    def __init__(self, settings, gguf_path, paths=None) -> None:
        """``paths``: the CPU paths whose logits judge (default: the engine's for ``gguf_path``)."""
        self._settings = settings
        self._path = str(gguf_path)
        self._paths = paths
        self._model: Llama | None = None

    def _llama(self) -> Llama:
        if self._model is None:
            self._model = reference_llama(self._settings, self._path, self._paths, n_ctx=2048, n_threads=2,
                                          logits_all=True)
        return self._model

    def gap(self, context: list[int], a: int, b: int) -> float:
        model = self._llama()
        model.reset()
        model.eval(context)
        logits = model.scores[len(context) - 1]
        return abs(float(logits[a]) - float(logits[b]))

    def assert_same_or_near_tie(self, prompt: list[int], a: list[int], b: list[int], label: str = "") -> None:
        """``a`` equals ``b``, or they part at a near-tie (and both are then still well formed)."""
        at = first_divergence(a, b)
        if at is None and len(a) == len(b):
            return
        if at is None:  # the shorter one ended where the longer one goes on: end of text vs a token
            at = min(len(a), len(b))
            eos = self._llama().token_eos()
            a, b = (a + [eos], b) if len(a) < len(b) else (a, b + [eos])
        gap = self.gap(prompt + a[:at], a[at], b[at])
        assert gap < MAX_TIE_GAP, f"{label}: diverged at token {at} with a logit gap of {gap:.3f}: not a near-tie"
