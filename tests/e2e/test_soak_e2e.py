"""The soak benchmark's short version: 2 minutes of paced calls with abandoned speculative
requests and callers hanging up mid-reply, then the ledger checked request by request."""

import json
import subprocess
import sys

import pytest

from tests.paths import ROOT

pytestmark = pytest.mark.e2e


def test_two_minute_soak_loses_nothing(tmp_path):
    done = subprocess.run([sys.executable, "-m", "perf.soak", "--minutes", "2", "--calls", "8",
                           "--sample-s", "5", "--port", "18600", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [result] = tmp_path.glob("*-soak-*/soak.json")
    figures = json.loads(result.read_text())
    ledger = figures["ledger"]
    assert figures["errors"] == 0 and figures["exit_code"] == 0 and figures["verdict"] is True
    assert ledger["admitted"] >= 40 and ledger["missing"] == ledger["duplicated"] == ledger["wrong"] == 0
    # refused for overload (503 with a request id) also leave a row (cost 0); the warm-up request is the extra one
    assert ledger["rows"] == ledger["admitted"] + ledger["refused"] + ledger["extra_rows"]
    assert sum(m["turns"] for m in figures["per_minute"]) >= 30
    assert all(s["gateway"] and s["stub"] for s in figures["samples"][1:])  # the processes were measured
