"""The weight gate's greedy runs (llama_engine.weight_formats.greedy) take more prompts
than the engine has sequences: they run in groups, each on clean sequences, and give
what the prompts give alone (a start-up with ELECTRON_MAX_SEQUENCES=48 once could not
gate at all: "50 prompts, 48 sequences")."""

import pytest

from gateway.model_artifacts import embedded_gguf_path
from llama_engine.llama_runner import LlamaRunner, RunnerConfig
from llama_engine.weight_formats import greedy

pytestmark = pytest.mark.heavy  # runs llama.cpp or a guide compiler: left out of make test-fast

PROMPTS = [[1, 504, 3575, 282, 4649, 314], [1, 9690, 198, 19556, 2630, 30], [1, 4093, 253, 1345, 2393, 282],
           [1, 504, 1345, 282, 2630, 314, 3575]]
NEW_TOKENS = 8
MAX_TIE_GAP = 0.5


def runner(sequences: int) -> LlamaRunner:
    return LlamaRunner(RunnerConfig(gguf_path=str(embedded_gguf_path()), kv_cells=64 * sequences,
                                    max_sequences=sequences, threads=2))


def same_or_near_tie(a: dict, b: dict) -> bool:
    """Equal tokens, or a first divergence where ``a``'s logits put both tokens within the gap."""
    for i, (x, y) in enumerate(zip(a["tokens"], b["tokens"])):
        if x != y:
            ids, logits = a["top_ids"][i], a["top_logits"][i]
            return y in ids and logits[0] - logits[ids.index(y)] < MAX_TIE_GAP
    return len(a["tokens"]) == len(b["tokens"])


@pytest.fixture(scope="module")
def alone():
    r = runner(1)
    try:
        return [greedy(r, [p], NEW_TOKENS)[0] for p in PROMPTS]
    finally:
        r.close()


def test_more_prompts_than_sequences_run_in_groups_on_clean_sequences(alone):
    r = runner(3)  # groups of 3 and 1: the second group reuses sequence 0 after the first
    try:
        grouped = greedy(r, PROMPTS, NEW_TOKENS)
        again = greedy(r, PROMPTS, NEW_TOKENS)  # nothing left behind from the first call
    finally:
        r.close()
    assert len(grouped) == len(PROMPTS)
    for solo, one, two in zip(alone, grouped, again):
        assert 0 < len(one["tokens"]) <= NEW_TOKENS
        assert same_or_near_tie(solo, one), (solo["tokens"], one["tokens"])
        assert one["tokens"] == two["tokens"]
