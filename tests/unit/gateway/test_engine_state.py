"""The gateway's record of engine crashes, passed to the engine's next start."""

import signal

from gateway.server.engine_state import crash_file, crash_note, record_crash
from gateway.server.triton_launcher import prepare_artifacts, template_values
from gateway.settings import Settings


def test_a_fault_signal_is_recorded_for_the_next_start_and_a_sigkill_is_not(tmp_path):
    settings = Settings.from_env({"ELECTRON_RUN_DIR": str(tmp_path)})
    assert crash_note(settings) == ""
    assert not record_crash(settings, 41, signal.SIGKILL) and not crash_file(settings).exists()
    assert record_crash(settings, 42, signal.SIGSEGV)
    note = crash_note(settings)
    assert note.startswith("the engine's stub (pid 42) died of SIGSEGV at ") and '"' not in note
    artifacts = prepare_artifacts(settings)
    assert template_values(settings, artifacts, artifacts.gguf_path)["engine_crash"] == note


def test_no_record_renders_an_empty_parameter(tmp_path):
    settings = Settings.from_env({"ELECTRON_RUN_DIR": str(tmp_path)})
    artifacts = prepare_artifacts(settings)
    assert template_values(settings, artifacts, artifacts.gguf_path)["engine_crash"] == ""
