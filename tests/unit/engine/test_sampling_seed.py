"""A request's seed decides its draws (llama_engine.sampling), on fixed logits: the
end-to-end runs cannot hold the logits fixed (see test_engine_triton.py's seeded test)."""

import numpy as np
import pytest

from gateway.model_artifacts import embedded_gguf_path
from llama_engine.llama_runner import LlamaRunner, RunnerConfig
from llama_engine.params import SamplingParams
from llama_engine.sampling import TokenSampler

pytestmark = pytest.mark.heavy  # runs llama.cpp or a guide compiler: left out of make test-fast


@pytest.fixture(scope="module")
def runner():
    r = LlamaRunner(RunnerConfig(gguf_path=str(embedded_gguf_path()), kv_cells=256, max_sequences=1))
    prompt = [1, 504, 3575, 282, 4649, 314]  # "<|im_start|>The capital of France is"-like ids
    n = len(prompt)
    r.tokens[:n], r.positions[:n], r.seq_ids[:n], r.want_logits[:n] = prompt, range(n), 0, 0
    r.want_logits[n - 1] = 1
    assert r.decode(n) == 0
    yield r, n - 1
    r.close()


def draws(runner, seed, count=30):
    r, row = runner
    sampler = TokenSampler(SamplingParams(temperature=1.5, top_p=0.99, seed=seed), r.n_vocab, None, count)
    try:
        return [sampler.sample(r.ctx, row) for _ in range(count)]
    finally:
        sampler.close()


def test_the_same_seed_draws_the_same_tokens_from_the_same_logits(runner):
    first = draws(runner, 1234)
    assert draws(runner, 1234) == first
    assert len(set(first)) > 3  # a spread distribution: the draws are really random
    assert draws(runner, 1235) != first
    assert np.all(np.array(first) >= 0)
