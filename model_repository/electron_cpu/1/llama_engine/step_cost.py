"""How long an engine step takes (the whole step, not only ``llama_decode``), as a function of
its batch's prompt and decode tokens, learned online from measured steps (``scheduler``,
policy 6)."""

from __future__ import annotations


class StepCostModel:
    """Step time as a plane in the batch's prompt and decode tokens,
    ``overhead + prompt_s * prompt_tokens + decode_s * decodes``, fitted online by
    exponentially weighted least squares over measured steps. The fixed part is reading
    the weights once per step. The two slopes differ: a prompt token shares its
    sequence's attention with the rest of its chunk, a decode token reads its sequence's
    whole history alone, and each one is sampled and sent. (On a 2-core AMD EPYC with
    per-sequence KV streams, histories of ~700 tokens, 24 paced calls: decode-only steps
    cost ~9.5 ms a stream at every batch size from 1 to 16, prompt-only steps ~2.5 ms a
    token; one line through both planned a 15-token chunk beside 2 decodes at 130 ms that
    took 76, and cut a later turn's 31 new tokens into two or three steps.)

    Until steps of different sizes were seen, the prior slopes are used: a slope follows
    the fit only once recent steps' counts of its kind spread by ``slope_min_var`` (a
    standard deviation of 10 prompt tokens) or ``decode_min_var`` (2 decoding streams), so
    steps of alike sizes move the overhead, not the slopes.

    Two kinds of step would teach it wrong: the first step after the engine slept
    (its threads wake, its caches are cold: on an AMD EPYC a 9-token step took 54 ms
    where the warm line said 24) is not learned from at all, and one step's excess
    moves the running ``bias`` by at most ``max_step_ratio`` - a single stall (a
    preempted core) must not make every prediction three times too dear for the
    next steps, which would refuse requests as overloaded and keep streams out."""

    max_step_ratio = 2.0  # one step's measured / predicted time counts at most this much
    slope_min_var = 100.0  # tokens^2: how widely recent steps' prompt tokens must spread to move their slope
    decode_min_var = 4.0  # streams^2: the same for decodes (a step holds a few dozen streams at most)

    def __init__(self, overhead_s: float = 0.006, per_token_s: float = 0.0045, memory: float = 0.95,
                 decode_s: float | None = None):
        self.overhead_s = overhead_s
        self.per_token_s = per_token_s  # a prompt token
        self.decode_s = per_token_s if decode_s is None else decode_s  # a decoding stream's token
        self._memory = memory
        # weighted sums of 1, p, d, t, pp, dd, pd, pt, dt (p prompt tokens, d decodes, t seconds)
        self._sums = [0.0] * 9
        # recent steps' measured / predicted time: the line lags when steps get dearer
        # quickly (a long prompt's chunks attend over more and more positions)
        self.bias = 1.0

    def observe(self, tokens: int, seconds: float, after_idle: bool = False, decodes: int = 0) -> None:
        """Learn from a step of ``tokens`` prompt tokens beside ``decodes`` decoding streams
        that took ``seconds``; ``after_idle``: the engine slept before it (not learned from)."""
        if after_idle:
            return
        line = self._line(tokens, decodes)
        if line > 0:
            ratio = min(max(seconds / line, 1.0 / self.max_step_ratio), self.max_step_ratio)
            self.bias = min(max(0.7 * self.bias + 0.3 * ratio, 0.8), 3.0)
            seconds = ratio * line  # the line too learns at most that much from one step
        m, p, d, t = self._memory, tokens, decodes, seconds
        self._sums = [m * old + new for old, new in zip(self._sums, (1.0, p, d, t, p * p, d * d, p * d, p * t, d * t))]
        w, sp, sd, st, spp, sdd, spd, spt, sdt = self._sums
        mp, md, mt = sp / w, sd / w, st / w
        var_p, var_d, cov_pd = spp / w - mp * mp, sdd / w - md * md, spd / w - mp * md
        cov_pt, cov_dt = spt / w - mp * mt, sdt / w - md * mt
        lam_p, lam_d = self.slope_min_var, self.decode_min_var
        # each slope whose counts spread enough moves toward the least-squares one (ridge
        # toward its current value: by var / (var + min_var) of the way when alone); one whose
        # counts do not stays, and the other is fitted to what it leaves. Steps of alike
        # sizes (a lone prompt's 20-26-token chunks, whose times differ by noise and depth,
        # not size) leave the slopes alone: their raw fit once gave 1e-5 s a token, and a
        # 512-token step was planned at 73 ms; it took 1.4 s, and a cancel waited for it
        free_p, free_d = var_p > lam_p, var_d > lam_d
        if free_p and free_d:
            a11, a12, a22 = var_p + lam_p, cov_pd, var_d + lam_d
            b1, b2 = cov_pt + lam_p * self.per_token_s, cov_dt + lam_d * self.decode_s
            det = a11 * a22 - a12 * a12
            self.per_token_s, self.decode_s = (b1 * a22 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det
        elif free_p:
            self.per_token_s = (cov_pt - self.decode_s * cov_pd + lam_p * self.per_token_s) / (var_p + lam_p)
        elif free_d:
            self.decode_s = (cov_dt - self.per_token_s * cov_pd + lam_d * self.decode_s) / (var_d + lam_d)
        self.per_token_s = min(max(self.per_token_s, 1e-5), 0.1)
        self.decode_s = min(max(self.decode_s, 1e-5), 0.1)
        self.overhead_s = max(mt - self.per_token_s * mp - self.decode_s * md, 0.0)

    def _line(self, tokens: int, decodes: int) -> float:
        return self.overhead_s + self.per_token_s * tokens + self.decode_s * decodes

    def predict(self, tokens: int, decodes: int = 0) -> float:
        """A step of ``tokens`` prompt tokens beside ``decodes`` decoding streams."""
        return self._line(tokens, decodes) * self.bias

    def decodes_within(self, seconds: float) -> int:
        """The most decoding streams a step without prompt tokens can carry and still be
        predicted to take at most ``seconds``."""
        spare = seconds - self.predict(0, 0)
        return int(spare / (self.decode_s * self.bias)) if spare > 0 else 0

    def tokens_within(self, seconds: float, decodes: int = 0) -> int:
        """The most prompt tokens a step beside ``decodes`` decoding streams can carry and
        still be predicted to take at most ``seconds`` (0 when those alone take longer)."""
        spare = seconds - self.predict(0, decodes)
        return int(spare / (self.per_token_s * self.bias)) if spare > 0 else 0
