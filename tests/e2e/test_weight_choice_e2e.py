"""The weights chosen for this machine say what the shipped file says (issue 34).

Chosen configuration: the GGUF the weight choice picked here (``engine_gguf``: the shipped
Q4_1, or a requantized copy that passed the gate and is faster) on the CPU paths the engine's
probe chose for it (extra buffer types, flash attention). Reference configuration: the
shipped file on plain buffers without flash attention, the path every x86-64 CPU runs.
Their greedy outputs must be equal, or part at a near-tie that the reference's own logits
confirm (``NearTieJudge``). The prompts are not the gate's: what the gate concluded on its
50 prompts must hold on others. A negative control shows the comparison can fail: Q4_0 made
from the same file, which the gate rejects, parts far from the reference."""

import pytest

from gateway.server.weight_choice import requantized
from tests.e2e.near_ties import NearTieJudge
from tests.e2e.reference_model import PLAIN_PATHS, reference_llama

pytestmark = pytest.mark.e2e
EOS = 2
NEW_TOKENS = 40
PROMPTS = [
    "Good evening, I need a taxi to the airport at five tomorrow morning.",
    "My salary has not arrived in my account yet. Can you check why?",
    "Which documents do I need to open a joint account?",
    "Recommend a quiet beach near Goa for a family holiday.",
    "क्या आप मुझे कल सुबह की उड़ान का समय बता सकते हैं?",
    "Tell me a short fun fact about elephants.",
]


def greedy(llama, prompt: list[int]) -> list[int]:
    out = []
    for token in llama.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        if token == EOS or len(out) == NEW_TOKENS:
            break
        out.append(token)
    llama.reset()
    return out


@pytest.fixture(scope="module")
def reference(settings, artifacts, chat):
    """The reference configuration's greedy outputs, and the judge of its logits."""
    model = reference_llama(settings, artifacts.gguf_path, PLAIN_PATHS, n_ctx=2048, n_threads=2)
    outputs = {text: greedy(model, chat(text)) for text in PROMPTS}
    del model
    return outputs, NearTieJudge(settings, artifacts.gguf_path, PLAIN_PATHS)


def test_the_chosen_configuration_says_what_the_reference_says_except_at_near_ties(settings, engine_gguf,
                                                                                   reference, chat):
    outputs, judge = reference
    chosen = reference_llama(settings, engine_gguf, n_ctx=2048, n_threads=2)
    for text in PROMPTS:
        expected = outputs[text]
        assert len(expected) >= 8, (text, expected)  # a real reply to compare, not an empty one
        judge.assert_same_or_near_tie(chat(text), expected, greedy(chosen, chat(text)), f"{engine_gguf.name}: {text}")


def test_the_comparison_fails_a_copy_the_gate_rejects(settings, artifacts, reference, chat):
    outputs, judge = reference
    q4_0 = reference_llama(settings, requantized(settings, artifacts, "q4_0"), PLAIN_PATHS, n_ctx=2048, n_threads=2)
    failures = []
    for text in PROMPTS:
        try:
            judge.assert_same_or_near_tie(chat(text), outputs[text], greedy(q4_0, chat(text)), text)
        except AssertionError as exc:
            failures.append(str(exc))
    assert failures, "Q4_0 parted from the reference only at near-ties: the comparison cannot tell weights apart"
