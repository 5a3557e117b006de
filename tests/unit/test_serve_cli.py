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
