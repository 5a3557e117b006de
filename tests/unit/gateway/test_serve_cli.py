"""``electron-serve --help`` prints its usage and exits without starting anything."""

import pytest

from gateway.server import serve


def test_help_prints_usage_and_points_at_the_settings(capsys):
    with pytest.raises(SystemExit) as exit_info:
        serve.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: electron-serve")
    assert "ELECTRON_*" in out


def test_an_unknown_argument_exits_2_before_any_start(capsys, monkeypatch):
    monkeypatch.setattr(serve.Settings, "from_env", lambda: pytest.fail("settings read before the arguments"))
    with pytest.raises(SystemExit) as exit_info:
        serve.main(["--port", "9000"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --port 9000" in capsys.readouterr().err


@pytest.mark.parametrize("name, value, message", [
    ("ELECTRON_GATEWAY_WORKERS", "2", "needs ELECTRON_REDIS_URL"),
    ("ELECTRON_KV_LAYOUT", "paged", "ELECTRON_KV_LAYOUT: 'paged' is not one of unified, streams"),
    ("ELECTRON_KV_CELLS", "many", "ELECTRON_KV_CELLS='many' is not a valid int"),
    ("ELECTRON_WEIGHT_FORMAT", "q2_k", "ELECTRON_WEIGHT_FORMAT: 'q2_k' is not one of auto, shipped, q8_0, q4_0"),
    ("ELECTRON_TOOL_DIALECT", "mistral", "ELECTRON_TOOL_DIALECT: 'mistral' is not one of hermes"),
    ("ELECTRON_CANCELLED_PROMPT_BILLING", "half",
     "ELECTRON_CANCELLED_PROMPT_BILLING: 'half' is not one of cached, full, none"),
])
def test_a_bad_setting_exits_2_with_its_variable_named_before_any_start(monkeypatch, caplog, name, value, message):
    monkeypatch.setenv(name, value)
    monkeypatch.setattr(serve, "TritonSupervisor", lambda *a: pytest.fail("started with a bad setting"))
    assert serve.main([]) == 2
    assert message in caplog.text
