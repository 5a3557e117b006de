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


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.mark.parametrize("name, value, message", [
    ("ELECTRON_DATABASE_URL", "postgresql+asyncpg://electron:secret@127.0.0.1:{port}/electron",
     "cannot open the accounts store at postgresql+asyncpg://electron:***@127.0.0.1:{port}/electron: "),
    ("ELECTRON_REDIS_URL", "redis://:secret@127.0.0.1:{port}/0",
     "cannot reach Redis at redis://:***@127.0.0.1:{port}/0 (the shared caps): "),
])
def test_an_unreachable_store_or_redis_exits_2_with_one_line_that_says_what_to_do(monkeypatch, capfd, tmp_path,
                                                                                   name, value, message):
    port = closed_port()
    monkeypatch.setenv("ELECTRON_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(name, value.format(port=port))
    monkeypatch.setattr(serve, "TritonSupervisor", lambda *a: pytest.fail("started without its store"))
    assert serve.main([]) == 2  # (its logging goes to stderr: configure_logging)
    err = capfd.readouterr().err
    [line] = [line for line in err.splitlines() if " ERROR " in line]
    assert line.split(" [-] ", 1)[1].startswith(message.format(port=port))
    assert "secret" not in err and f"Check {name}" in line


def test_with_on_start_error_wait_the_error_is_logged_once_and_the_process_waits_for_sigterm(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "ELECTRON_DATA_DIR": str(tmp_path), "ELECTRON_ON_START_ERROR": "wait",
           "ELECTRON_GATEWAY_HOST": "0.0.0.0", "ELECTRON_START_TRITON": "false"}  # no key, off loopback
    process = subprocess.Popen([sys.executable, "-m", "gateway.server.serve"], env=env, stderr=subprocess.PIPE,
                               text=True)
    try:
        time.sleep(8)
        assert process.poll() is None  # not exited: no restart loop in a container
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 2
    finally:
        process.kill()
    err = process.stderr.read()
    assert err.count("No API key exists and the gateway is bound to 0.0.0.0") == 1
    assert "docker compose run --rm electron .venv/bin/electron-keys create" in err
