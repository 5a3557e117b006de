"""docs/engine-contract.md lists every tensor of engine_contract with its dtype and dims."""

import re

from engine_contract import INPUTS, OUTPUTS
from tests.paths import ROOT

DOC = (ROOT / "docs" / "engine-contract.md").read_text()


def rows(section: str) -> dict[str, tuple[str, str]]:
    body = DOC.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {m[1]: (m[2], m[3]) for m in re.finditer(r"^\| `(\w+)` \| (TYPE_\w+) \| (\[[-0-9, ]+\]) \|", body, re.M)}


def dims(spec) -> str:
    return "[" + ", ".join(str(d) for d in spec.dims) + "]"


def test_the_inputs_table_is_the_contract():
    assert rows("Inputs") == {s.name: (s.data_type, dims(s)) for s in INPUTS.values()}


def test_the_outputs_table_is_the_contract():
    assert rows("Outputs") == {s.name: (s.data_type, dims(s)) for s in OUTPUTS.values()}
