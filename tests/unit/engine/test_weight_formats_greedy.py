"""The weight gate's greedy runs (llama_engine.weight_formats.greedy) on the embedded model.

All prompts are decoded together (one sequence each, one decode a step); more prompts than
the engine has sequences run in groups, each on clean sequences (a start-up with
ELECTRON_MAX_SEQUENCES=48 once could not gate at all: "50 prompts, 48 sequences"). Leading
tokens shared with an earlier prompt are copied, not prefilled. A candidate's run given a
reference stops each prompt at its first divergence and the whole run at its first far one."""

import pytest

from gateway.model_artifacts import embedded_gguf_path
from gateway.server.weight_gate import Continuation, judge, near_tie_tokens
from llama_engine.llama_runner import LlamaRunner, RunnerConfig
from llama_engine.weight_formats import _greedy_command, greedy

pytestmark = pytest.mark.heavy  # runs llama.cpp or a guide compiler: left out of make test-fast

# ChatML-like token ids; the last three share their first tokens with the first (copied, not prefilled)
PROMPTS = [[1, 504, 3575, 282, 4649, 314], [1, 9690, 198, 19556, 2630, 30], [1, 4093, 253, 1345, 2393, 282],
           [1, 504, 1345, 282, 2630, 314, 3575], [1, 504, 3575, 282, 4649, 314, 2393],
           [1, 504, 3575, 282, 4649, 314, 9690, 198]]
NEW_TOKENS = 8


def runner(sequences: int, unified: bool = True) -> LlamaRunner:
    return LlamaRunner(RunnerConfig(gguf_path=str(embedded_gguf_path()), kv_cells=64 * sequences,
                                    max_sequences=sequences, threads=2, kv_unified=unified))


def run(sequences: int, prompts=PROMPTS, reference=None, unified: bool = True, times: int = 1):
    r = runner(sequences, unified)
    try:
        return [greedy(r, prompts, NEW_TOKENS, reference) for _ in range(times)]
    finally:
        r.close()


def continuations(outputs) -> list[Continuation]:
    return [Continuation(**o) for o in outputs]


def reference_of(outputs) -> list[dict]:
    return [{"tokens": c.tokens, "ties": near_tie_tokens(c)} for c in continuations(outputs)]


@pytest.fixture(scope="module")
def alone():
    """Each prompt by itself: nothing shared, no other sequence in its batches."""
    return [run(1, [p])[0][0] for p in PROMPTS]


@pytest.mark.parametrize("unified", [True, False], ids=["unified", "streams"])
def test_prompts_decoded_together_with_shared_prefixes_give_what_they_give_alone(alone, unified):
    together, again = run(len(PROMPTS), unified=unified, times=2)  # the second call: nothing left behind
    gate = judge(continuations(alone), [o["tokens"] for o in together])
    assert gate.far == 0, gate.divergences  # batch shapes may flip a near-tie, nothing more
    assert [o["tokens"] for o in together] == [o["tokens"] for o in again]
    for out in together:
        assert 0 < len(out["tokens"]) <= NEW_TOKENS
        assert len(out["top_ids"]) == len(out["top_logits"]) == len(out["tokens"])
        assert all(ids[0] == token for ids, token in zip(out["top_ids"], out["tokens"]))


def test_more_prompts_than_sequences_run_in_groups_on_clean_sequences(alone):
    grouped, again = run(4, times=2)  # groups of 4 and 2: the second group reuses sequences 0 and 1
    assert len(grouped) == len(PROMPTS)
    assert judge(continuations(alone), [o["tokens"] for o in grouped]).far == 0
    assert [o["tokens"] for o in grouped] == [o["tokens"] for o in again]


def test_a_candidate_equal_to_its_reference_runs_every_prompt_to_the_end():
    (shipped,) = run(len(PROMPTS))
    (candidate,) = run(len(PROMPTS), reference=reference_of(shipped))
    assert [o["tokens"] for o in candidate] == [o["tokens"] for o in shipped]
    assert all(set(o) == {"tokens"} for o in candidate)  # a candidate's run keeps no logits
    assert judge(continuations(shipped), [o["tokens"] for o in candidate]).passed


def test_a_candidate_stops_a_prompt_at_its_first_divergence_and_everything_at_a_far_one():
    (shipped,) = run(len(PROMPTS))
    # a reference that says prompt 1 continues with another token at step 2: the model's own
    # token there is then a near-tie if the reference lists it among the ties, far if not
    changed = reference_of(shipped)
    real = changed[1]["tokens"][2]
    changed[1] = {"tokens": changed[1]["tokens"][:2] + [real + 1] + changed[1]["tokens"][3:],
                  "ties": [list(t) for t in changed[1]["ties"]]}
    changed[1]["ties"][2] = [real + 1, real]
    (near,) = run(len(PROMPTS), reference=changed)
    assert near[1]["tokens"] == shipped[1]["tokens"][:3]  # stopped at the divergence, its token kept
    others = [i for i in range(len(PROMPTS)) if i != 1]  # all run; one fewer sequence may flip a near-tie
    assert all(near[i] is not None for i in others)
    assert judge(continuations([shipped[i] for i in others]), [near[i]["tokens"] for i in others]).far == 0
    changed[1]["ties"][2] = [real + 1]
    (far,) = run(len(PROMPTS), reference=changed)
    assert far[1]["tokens"] == shipped[1]["tokens"][:3]
    assert any(o is None for o in far)  # stopped there: the prompts still running then are not finished
    for mine, theirs in zip(far, shipped):
        assert mine is None or mine["tokens"] == theirs["tokens"][:len(mine["tokens"])]


def test_the_greedy_command_gives_each_prompt_a_kv_stream_of_its_own(alone):
    spec = {"gguf": str(embedded_gguf_path()), "prompts": PROMPTS, "new_tokens": NEW_TOKENS, "threads": 2,
            "max_batch_tokens": 512, "paths": {"weights": "plain", "flash_attn": False}}
    answer = _greedy_command(spec)
    assert (answer["weights"], answer["flash_attn"], answer["cpu_paths"]) == ("plain", False, "given")
    assert judge(continuations(alone), [o["tokens"] for o in answer["outputs"]]).far == 0
    candidate = _greedy_command({**spec, "reference": reference_of(answer["outputs"])})
    assert [o["tokens"] for o in candidate["outputs"]] == [o["tokens"] for o in answer["outputs"]]
