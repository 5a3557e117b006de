"""Where a benchmark writes its figures: ``perf/results/<date>-<kind>-<host>/<kind>.json`` and ``.md``."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path


def run_meta(**extra) -> dict:
    """Date and machine of this run, plus ``extra``."""
    return {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} {platform.machine()}", **extra}


def write_results(out_root: Path, kind: str, meta: dict, payload: dict, table: str) -> Path:
    """Writes the JSON (``meta`` + ``payload``) and the Markdown table, echoes the table."""
    out = out_root / f"{meta['date']}-{kind}-{platform.node()}"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{kind}.json").write_text(json.dumps({"meta": meta, **payload}, indent=1))
    (out / f"{kind}.md").write_text(table)
    sys.stdout.write(table)
    return out
