"""A benchmark's report (perf/report.py) rendered as Markdown and written as JSON + Markdown
(perf/results_dir.py), and some benchmarks' declared tables with real figures."""

import json

import pytest

from perf import bench_gateway, bench_relay, cancel_latency, contention, engine_vs_llamacpp, soak
from perf.llamacpp_tools import ToolRun
from perf.report import Column, Report, Table, markdown
from perf.results_dir import result_dir, run_meta, write_results
from perf.voice_load.calls import TurnRecord
from perf.voice_load.sse_client import TurnResult

ROWS = [{"name": "cold", "n": 3, "ttft": {"p50": 101.26, "p95": None}, "share": 0.125, "gain": -1.5},
        {"name": "warm", "n": 12, "ttft": {"p50": 9.0, "p95": 30.49}, "share": 0.0, "gain": 2.25}]
COLUMNS = (Column("prompts", "name"), Column("calls", "n"),
           Column("TTFT p50 / p95 (ms)", ("ttft.p50", "ttft.p95"), "{:.1f} / {:.0f}"),
           Column("stalled", "share", "{:.0%}"), Column("gain", "gain", "{:+.2f}", missing="n/a"),
           Column("calls x2", lambda r: 2 * r["n"]))


def test_a_table_renders_its_columns_values_and_formats():
    assert Table(COLUMNS, ROWS).markdown().splitlines() == [
        "| prompts | calls | TTFT p50 / p95 (ms) | stalled | gain | calls x2 |",
        "|---|---|---|---|---|---|",
        "| cold | 3 | 101.3 / - | 12% | -1.50 | 6 |",
        "| warm | 12 | 9.0 / 30 | 0% | +2.25 | 24 |"]


def test_missing_values_show_one_by_one_and_a_table_without_rows_is_its_header():
    cell = Column("x", ("a", "b"), "{:.0f} / {:.0f}")
    assert cell.cell({"a": None, "b": 7.6}) == "- / 8" and cell.cell({"a": None, "b": None}) == "- / -"
    assert Column("y", "a", "{:.2f}", missing="n/a").cell({"a": None}) == "n/a"
    assert Table(COLUMNS[:2]).markdown() == "| prompts | calls |\n|---|---|"


def test_a_format_needs_one_field_per_value():
    with pytest.raises(ValueError, match="2 fields"):
        Column("x", ("a", "b"), "{:.0f}").cell({"a": 1, "b": 2})
    with pytest.raises(KeyError):
        Column("x", "a.missing").cell({"a": {}})


def test_sections_are_one_blank_line_apart():
    text = markdown(["Title - d on m", Table(COLUMNS[:2], ROWS[:1]), "- note one\n- note two"])
    assert text == "Title - d on m\n\n| prompts | calls |\n|---|---|\n| cold | 3 |\n\n- note one\n- note two\n"


def test_a_report_is_written_as_json_and_markdown_in_its_result_directory(tmp_path, capsys):
    meta = run_meta(rounds=3)
    assert meta["cpu"]["model"] != "unknown" and meta["cpu"]["cpus"] >= 1  # every run records its CPU
    report = Report("demo", meta, {"rows": ROWS}, ["Demo", Table(COLUMNS, ROWS)])
    out = write_results(tmp_path, report)
    assert out == result_dir(tmp_path, "demo", meta) and out.name.startswith(f"{meta['date']}-demo-")
    assert json.loads((out / "demo.json").read_text()) == {"meta": meta, "rows": ROWS}
    text = (out / "demo.md").read_text()
    assert text == report.markdown() == capsys.readouterr().out
    assert "| cold | 3 | 101.3 / - | 12% | -1.50 | 6 |" in text


META = {"date": "2026-12-01", "machine": "vm x86_64", "tokens": 32, "rounds": 10}


def test_the_gateway_table():
    row = {"concurrency": 1, "requests": 30, "direct_ttft_ms": 100.44, "gateway_ttft_ms": 98.5,
           "direct_net_ttft_ms": 3.551, "gateway_net_ttft_ms": 6.86, "ttft_overhead_ms": 3.309,
           "direct_per_token_ms": 10.69, "gateway_per_token_ms": 11.26, "per_token_overhead_ms": 0.5761,
           "gateway_cpu_ms_per_token": None}
    cpu = {"per_token_us": 8.71, "prepare_request_us": 41.2, "tokens": 221}
    report = bench_gateway.report([row], cpu, META)
    assert report.json()["cpu"] == cpu and report.json()["rows"] == [row]
    lines = report.markdown().splitlines()
    assert lines[0].startswith("Gateway overhead over direct Triton gRPC - 2026-12-01 on vm x86_64 (32 tokens")
    assert "| 1 | 30 | 100.4 / 98.5 | 3.55 / 6.86 | +3.31 | 10.69 / 11.26 | +0.576 | n/a |" in lines
    assert lines[-1].startswith("In process, the gateway's CPU: 8.7 µs per token") and "0.04 ms to parse" in lines[-1]


def test_the_relay_table_defaults_to_one_worker():
    row = {"streams": 64, "coalesce_ms": 40.0, "tokens_per_s": 100.0, "ok": 64, "tokens": 12800,
           "events_per_stream": 51.25, "cpu_ms_per_token": 0.1234, "tokens_per_core_s": 8103.7,
           "ttft_ms": {"p50": 12.4, "p95": 40.6}}
    text = bench_relay.report([row, {**row, "workers": 2}], META).markdown()
    assert "| 1 | 64 | 100 | 40 ms | 64 | 12800 | 51.2 | 0.123 | 8104 | 12 / 41 |" in text
    assert "| 2 | 64 | 100 | 40 ms |" in text


def test_the_cancel_latency_table_shows_stages_never_cancelled():
    meta = {**META, "cpu": {"model": "AMD EPYC", "flags": "avx2", "cpus": 2}, "command": "-m perf cancel-latency"}
    rows = [{"stage": "decoding", "hangups": 8, "cancelled": 0, "p50_ms": None, "max_ms": None, "ms": []},
            {"stage": "lone-prefill", "hangups": 8, "cancelled": 8, "p50_ms": 61.6, "max_ms": 120.2, "ms": [61.6]}]
    text = cancel_latency.report(rows, meta).markdown()
    assert "- command: `.venv/bin/python -m perf cancel-latency`\n- CPU flags: avx2" in text
    assert "| decoding | 8 | 0 | - | - |" in text and "| lone-prefill | 8 | 8 | 62 | 120 |" in text


def test_contention_splits_single_replies_and_paced_calls():
    single = {"errors": 0, "reply_s": {"p50": 2.345, "max": 3.0}, "ttft_ms": {"p50": 80.4, "max": None},
              "max_gap_ms": 250.0, "stall_ms": {"p95": 10.0, "max": 20.0}}
    paced = {"errors": 1, "ttft_ms": {"p50": 150.0, "p95": 420.0}, "itl_p99_ms": None,
             "stall_ms": {"p95": 30.0, "max": 90.0}, "stalled_share": 0.125}
    rows = [{"variant": "fixed", "busy": "1", "calls": 8, "single": single},
            {"variant": "fixed", "busy": "2", "calls": 8, "paced": paced}]
    text = contention.report(rows, META).markdown()
    single_at, paced_at = text.index("Single reply"), text.index("Paced calls:")
    assert text.index("| fixed | 1 | 2.35 / 3.00 | 80 / - | 250 | 10 / 20 | 0 |") in range(single_at, paced_at)
    assert text.index("| fixed | 2 | 8 | 150 / 420 | - | 30 / 90 | 12% | 1 |") > paced_at


def test_the_soak_report_judges_the_run_and_shows_memory_per_process():
    def turn(started, ttft, status=200):
        return TurnRecord(0, 0, TurnResult(status=status, started=started, ttft_s=ttft, request_id="r",
                                           error=None if status in (200, 503) else "boom"))
    records = [turn(0, 0.2), turn(10, 0.3), turn(70, None, status=503)]
    samples = [{"t": t, "gateway": 100.0 + t, "tritonserver": None, "stub": 500.0, "kv_cells": t} for t in (0, 1800, 3600)]
    ledger = {"admitted": 2, "refused": 1, "rows": 3, "missing": 0, "duplicated": 0, "wrong": 0, "examples": ([], [], [])}
    report = soak.report({**META, "calls": 8, "minutes": 2.0}, records, samples, 125.0, ledger, 0)
    assert report.data["verdict"] is True and report.data["refused"] == 1
    text = report.markdown()
    assert "| 0 | 2 | 0 | 250 | 295 |" in text and "| 1 | 1 | 0 | 0 | 0 |" in text  # minute 1: refused only
    assert "| gateway | 100 | 3700 | +3600.0 |" in text and "| tritonserver | 0 | 0 | - |" in text
    assert "KV cells in use: first 0, max 3600, last 3600" in text and text.endswith("Verdict: PASS\n")
    failed = soak.report({**META, "calls": 8, "minutes": 2.0}, records + [turn(80, None, 500)], samples, 125.0, ledger, 0)
    assert failed.data["verdict"] is False and 'Errors: 1 ["boom"]' in failed.markdown()


def test_the_engine_tables_compare_each_configuration_with_llama_cpp():
    configs = engine_vs_llamacpp.engine_configs(quick=True)  # fa=off streams, fa=on unified
    keys = ["prefill 16 @ 0", "decode 4 seq @ 256"]
    engine = {configs[0].name: {keys[0]: {"ms": 20.0}, keys[1]: {"ms": 8.0}},
              configs[1].name: {keys[0]: {"ms": 30.0}, keys[1]: {"ms": 4.0}}}
    runs = [ToolRun("llama-bench fa=off ub=512", ["llama-bench a"], {keys[0]: 10.0}),
            ToolRun("batched-bench fa=off streams", ["batched b"], {keys[1]: 5.0})]
    meta = {**META, "command": "c", "cpu": {"model": "m", "cpus": 2, "flags": "f"}, "threads": 2, "load_before": "0",
            "load_after": "1", "gguf": "g", "llama_cpp_python": "v", "wall_s": 9.0, "max_noise": 0.2,
            "others_cores": {"engine x": 0.05}, "llama_cpp_compiler": "Debian clang version 19.1.7",
            "tools_compiler": "Debian clang version 19.1.7", "extra_buffer_types": True,
            "weights": "probed: extra buffer types passed"}
    lines = markdown(engine_vs_llamacpp.sections(meta, keys, configs, engine, runs)).splitlines()
    assert ("- weights: llama.cpp's extra buffer types (AMX tiles, repacked weights) on for the engine and the tools"
            " (--repack 1 / --repack); probed: extra buffer types passed") in lines
    assert ("- compiler: the engine's llama.cpp Debian clang version 19.1.7; the tools' Debian clang version 19.1.7"
            in lines)
    assert f"| row | llama.cpp best ms (tool) | {configs[0].name} | {configs[1].name} | fastest engine config |" in lines
    assert (f"| prefill 16 @ 0 | 10.0 (llama-bench fa=off ub=512) | 20.0 ms (2.00x) | 30.0 ms (3.00x) "
            f"| {configs[0].name} |") in lines
    assert (f"| decode 4 seq @ 256 | 5.00 (batched-bench fa=off streams) | 8.00 ms (1.60x) | 4.00 ms (0.80x) "
            f"| {configs[1].name} |") in lines
    assert "| prefill 16 @ 0 | 10.0 | - |" in lines  # the tools' table: batched-bench has no prefill rows
    # fa=on unified has no tool run with its settings for decode rows: no ratio there
    assert "| decode 4 seq @ 256 | 4.00 | - | - | 5.00 | 0.80x |" in lines
    assert "| decode 4 seq @ 256 | 8.00 | 5.00 (batched-bench fa=off streams) | 1.60x | 5.00 | 1.60x |" in lines
    assert lines[-1] == "- `batched b`" and "- engine x: 0.05" in lines
