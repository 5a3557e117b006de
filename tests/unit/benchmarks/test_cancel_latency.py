"""perf/cancel_latency.py's pure parts: reading the engine's cancel lines and the summary."""

import datetime

from perf.cancel_latency import Hangup, engine_cancel_times, summarize

LOG = """\
I1204 21:02:34.964446 5835 server.cc:345] "Timeout 8: Found 0 live models"
2026-12-04 21:30:00,250 llama_engine.engine INFO request cancel-a-1 cancelled after 0 tokens
2026-12-04 21:30:00,100 electron_cpu WARNING request cancel-a-2 failed: server_overloaded
2026-12-04 21:30:01,040 llama_engine.engine INFO request cancel-b-1 cancelled after 12 tokens
"""


def _epoch(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_the_engine_cancel_lines_are_read_by_request_id_in_local_time():
    found = engine_cancel_times(LOG)
    assert set(found) == {"cancel-a-1", "cancel-b-1"}
    assert found["cancel-a-1"] == (_epoch("2026-12-04 21:30:00,250"), 0)
    assert found["cancel-b-1"] == (_epoch("2026-12-04 21:30:01,040"), 12)


def test_the_summary_counts_hangups_the_engine_never_cancelled_apart():
    closed = _epoch("2026-12-04 21:30:00,100")
    hangups = [Hangup("a", "cancel-a-1", closed), Hangup("a", "cancel-a-2", closed),
               Hangup("b", "cancel-b-1", closed + 0.9)]
    rows = summarize(hangups, engine_cancel_times(LOG))
    assert [r["stage"] for r in rows] == ["a", "b"]
    assert rows[0]["hangups"] == 2 and rows[0]["cancelled"] == 1 and round(rows[0]["p50_ms"]) == 150
    assert rows[1]["cancelled"] == 1 and round(rows[1]["max_ms"]) == 40
