"""The engine-vs-llama.cpp step benchmark, quick mode: the real runner in child processes and
llama.cpp's own tools (built, or taken from perf/.cache, by perf/build_llama_tools.sh). Checks
the table's structure and that every figure is a real time; nothing about speed."""

import json
import math

import pytest

from perf import engine_vs_llamacpp

pytestmark = pytest.mark.e2e


def real(ms) -> bool:
    return isinstance(ms, float) and math.isfinite(ms) and ms > 0


def test_quick_run_writes_a_ratio_table_with_real_figures(tmp_path):
    assert engine_vs_llamacpp.main(["--quick", "--out", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("*-engine-vs-llamacpp-*/engine-vs-llamacpp.json")
    data = json.loads(result.read_text())
    rows, configs = data["rows"], [c.name for c in engine_vs_llamacpp.engine_configs(quick=True)]
    assert rows == ["prefill 16 @ 0", "prefill 64 @ 0", "prefill 16 @ 256", "prefill 64 @ 256",
                    "decode 1 seq @ 256", "decode 4 seq @ 256"]
    assert list(data["engine"]) == configs
    for config in data["engine"].values():
        assert set(config["rows"]) == set(rows)
        assert all(real(r["ms"]) and all(map(real, r["samples_ms"])) for r in config["rows"].values())
    tools = {run["name"]: run["ms"] for run in data["llama_cpp"]}
    assert {"llama-bench fa=off ub=512", "llama-bench fa=on ub=512", "batched-bench fa=off streams",
            "batched-bench fa=on unified"} <= set(tools)
    for row in rows:  # every row has a llama.cpp figure: prefill from llama-bench, decode from both
        assert any(real(ms.get(row)) for ms in tools.values())
    assert all(map(real, [ms for run in tools.values() for ms in run.values()]))
    assert data["meta"]["cpu"]["model"] and "flags" in data["meta"]["cpu"] and data["meta"]["threads"] == 2
    # the engine's probe chose the weight buffers here; the tools take the same
    repack = "--repack 1" if data["meta"]["extra_buffer_types"] else "--repack 0"
    assert all(repack in c for run in data["llama_cpp"] for c in run["commands"] if "/llama-bench " in c)
    assert data["meta"]["weights"].startswith("probed: ")
    assert data["meta"]["llama_cpp_compiler"] == data["meta"]["tools_compiler"] != "unknown"

    table = (result.parent / "engine-vs-llamacpp.md").read_text()
    assert "- CPU: " in table and "- flags: " in table and "load average" in table
    header = next(line for line in table.splitlines() if line.startswith("| row | llama.cpp best ms"))
    assert all(name in header for name in configs)
    ratio_rows = [line for line in table.splitlines() if line.startswith("| ") and "x) |" in line]
    assert len(ratio_rows) == len(rows)  # the summary: one line per row, "ms (ratio x)" per configuration
    for line in ratio_rows:
        ratios = [float(cell.rsplit("(", 1)[1].rstrip("x)")) for cell in line.split(" | ")[2:-1]]
        assert len(ratios) == len(configs) and all(math.isfinite(r) and r > 0 for r in ratios)
