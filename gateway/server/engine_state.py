"""What the CPU engine keeps between its starts on this machine, and where.

- ``cpu_paths_cache_dir``: the CPU paths its start-up probe chose (per llama.cpp
  build, GGUF, CPU and threads; ``llama_engine/cpu_paths.py``).
- ``crash_file``: the crashes of the model's python backend stub that the
  supervisor saw (``triton_supervisor``). A stub killed by a fault signal
  (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT: a native kernel went wrong, as
  llama.cpp's AMX path did on an Intel Xeon) is recorded here; the engine's next
  start gets the record as its ``engine_crash`` parameter and then runs plain CPU
  buffers without trying the extra buffer types again, even where its probe
  passed them: the probe exercises a few steps, serving exercised more. A
  SIGKILL (the OOM killer, an operator) records nothing. The record lives in the
  run directory, so it lasts across Triton's and the gateway's restarts; delete
  ``<run_dir>/engine_crash.json`` to let the probe try the extra buffer types again.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

from gateway.settings import Settings

log = logging.getLogger(__name__)

FAULT_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT})


def cpu_paths_cache_dir(settings: Settings) -> Path:
    """Where the CPU engine keeps the CPU paths its start-up probe chose (per machine)."""
    return Path(settings.artifacts_dir) / "cpu_paths"


def crash_file(settings: Settings) -> Path:
    return Path(settings.run_dir) / "engine_crash.json"


def record_crash(settings: Settings, pid: int, signo: int) -> bool:
    """Keep a stub's death by ``signo`` for the engine's next start if it is a fault
    signal; whether it was kept."""
    if signo not in FAULT_SIGNALS:
        return False
    when = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
    note = f"the engine's stub (pid {pid}) died of {signal.Signals(signo).name} at {when}"
    path = crash_file(settings)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"note": note}))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not keep the engine crash in %s: %s", path, exc)
        return False
    log.warning("%s: its next starts run plain CPU buffers (delete %s to probe again)", note, path)
    return True


def crash_note(settings: Settings) -> str:
    """The recorded crash, one line without quotes (a config parameter), or ''."""
    try:
        return str(json.loads(crash_file(settings).read_text())["note"]).replace('"', "'")
    except (OSError, ValueError, KeyError, TypeError):
        return ""
