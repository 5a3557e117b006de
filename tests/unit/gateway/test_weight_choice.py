"""The weight choice's orchestration (gateway/server/weight_choice.py) with its llama.cpp
children scripted: what is run, in which order, and what is decided and kept."""

import json
from pathlib import Path

import pytest

from gateway.model_artifacts import ModelArtifacts
from gateway.server import weight_choice
from gateway.server.weight_gate import MAX_TIE_GAP
from gateway.settings import Settings

SHIPPED = [{"tokens": [5, 6, 7], "top_ids": [[5, 50], [6, 60], [7, 70]],
            "top_logits": [[9.0, 8.9], [9.0, 7.0], [9.0, 8.0]]}] * 2  # 50 is a near-tie at step 0, 60 is far


class Children:
    """Scripted ``weight_choice._child``: the shipped file's greedy run, each copy's tokens
    (by format), voice turns (ms) by name; records every call."""

    def __init__(self, copies: dict[str, list], turns: dict[str, float]):
        self.copies, self.turns, self.calls = copies, turns, []

    def __call__(self, settings, command, spec, args=None, timeout_s=0.0):
        self.calls.append((command, spec))
        if command == "greedy" and "reference" not in spec:
            return {"threads": 2, "weights": "extra", "flash_attn": False, "cpu_paths": "probed", "seconds": 1.0,
                    "outputs": SHIPPED}
        if command == "greedy":
            return {"threads": 2, "weights": spec["paths"]["weights"], "flash_attn": spec["paths"]["flash_attn"],
                    "cpu_paths": "given", "seconds": 1.0, "outputs": self.copies[Path(spec["gguf"]).stem]}
        assert command == "time"
        step = {"prefill_64": [64.0], "prefill_512": [512.0], "decode_at_1k": [1.0]}  # a turn: prefill + 8 ms
        return {"threads": 2, "times_ms": {name: {**step, "prefill_24_at_1k": [self.turns[name]]}
                                           for name in spec["models"]},
                "paths": {name: {"weights": "plain", "flash_attn": True, "cpu_paths": f"probed {name}"}
                          for name in spec["models"]}}


@pytest.fixture
def setup(tmp_path, monkeypatch):
    gguf = tmp_path / "shipped.gguf"
    gguf.write_bytes(b"GGUF")
    artifacts = ModelArtifacts(directory=tmp_path / "model", gguf_path=gguf, name="m", context_length=2048,
                               vocab_size=100, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                               chat_template=None, special_tokens={})

    def requantized(settings, artifacts, fmt):
        path = weight_choice.weights_dir(artifacts) / f"{fmt}.gguf"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(fmt.encode())
        return path

    monkeypatch.setattr(weight_choice, "requantized", requantized)
    monkeypatch.setattr(weight_choice, "same_vocabulary", lambda a, b: True)

    def choose(copies, turns, formats=("q8_0", "q4_0")):
        children = Children(copies, turns)
        monkeypatch.setattr(weight_choice, "_child", children)
        settings = Settings(artifacts_dir=str(tmp_path), weight_format="auto")
        return weight_choice.engine_weights(settings, artifacts, formats, prompts=[[1, 2], [1, 3]]), children

    return choose


def test_a_copy_with_only_near_ties_is_timed_and_chosen_when_faster(setup):
    near = [{"tokens": [50]}, {"tokens": [5, 6, 7]}]  # prompt 0 stopped at its near-tie divergence
    far = [{"tokens": [5, 60]}, None]  # stopped at a far divergence, prompt 1 not run
    choice, children = setup({"q8_0": near, "q4_0": far}, {"shipped": 200.0, "q8_0": 150.0})
    assert choice.format == "q8_0" and choice.path.name == "q8_0.gguf"
    assert [c for c, _ in children.calls] == ["greedy", "greedy", "greedy", "time"]
    candidate = children.calls[1][1]
    assert candidate["paths"] == {"weights": "extra", "flash_attn": False}  # gated on the shipped file's paths
    assert candidate["reference"][0] == {"tokens": [5, 6, 7], "ties": [[5, 50], [6], [7]]}
    assert candidate["prompts"] == [[1, 2], [1, 3]] and candidate["new_tokens"] == 32
    assert set(children.calls[3][1]["models"]) == {"shipped", "q8_0"}  # q4_0 failed: not timed
    decision = json.loads(choice.decision_file.read_text())
    assert decision["version"] == weight_choice.DECISION_VERSION and decision["chosen"] == "q8_0"
    assert decision["gate"]["max_tie_gap"] == MAX_TIE_GAP and "min_agreement" not in decision["gate"]
    q8, q4 = decision["candidates"]["q8_0"], decision["candidates"]["q4_0"]
    assert (q8["passed"], q8["near_ties"], q8["far"], q8["agree"]) == (True, 1, 0, 1)
    assert (q4["passed"], q4["far"], q4["not_run"]) == (False, 1, 1)
    assert q8["cpu_paths"] == "probed q8_0" and q8["timings"]["voice_turn_ms"] == 158.0
    again, _ = setup({}, {})  # a later start reads the decision: no child at all
    assert again.format == "q8_0" and again.reason == choice.reason


def test_nothing_is_timed_when_no_copy_passes(setup):
    far = [{"tokens": [5, 60]}, None]
    choice, children = setup({"q8_0": far, "q4_0": far}, {})
    assert choice.format == "shipped" and "no requantized copy passed" in choice.reason
    assert [c for c, _ in children.calls] == ["greedy", "greedy", "greedy"]


def test_a_passing_copy_that_is_not_faster_leaves_the_shipped_file(setup):
    same = [{"tokens": [5, 6, 7]}, {"tokens": [5, 6, 7]}]
    choice, _ = setup({"q8_0": same}, {"shipped": 200.0, "q8_0": 195.0}, formats=("q8_0",))
    assert choice.format == "shipped" and "5% faster" in choice.reason


def test_shipped_and_forced_formats_run_no_gate(setup, tmp_path, monkeypatch):
    def no_child(*args, **kwargs):
        raise AssertionError("no llama.cpp child for a set format")

    monkeypatch.setattr(weight_choice, "_child", no_child)
    artifacts = ModelArtifacts(directory=tmp_path / "model", gguf_path=tmp_path / "shipped.gguf", name="m",
                               context_length=2048, vocab_size=100, bos_token_id=None, eos_token_id=None,
                               pad_token_id=None, chat_template=None, special_tokens={})
    (tmp_path / "shipped.gguf").write_bytes(b"GGUF")
    choice = weight_choice.engine_weights(Settings(artifacts_dir=str(tmp_path), weight_format="shipped"), artifacts)
    assert (choice.format, choice.path, choice.decision_file) == ("shipped", artifacts.gguf_path, None)
    assert not weight_choice.weights_dir(artifacts).exists()
