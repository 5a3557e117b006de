"""Launcher pieces that need no running server."""

import pytest

from gateway.settings import Settings
from gateway.server.triton_launcher import render_config, triton_command


def test_settings_from_environment_are_typed_and_frozen():
    s = Settings.from_env({"ELECTRON_KV_CELLS": "4096", "ELECTRON_MIN_STREAM_RATE": "15.5", "OTHER": "x"})
    assert s.kv_cells == 4096 and s.min_stream_rate == 15.5 and s.triton_grpc_port == 8001
    with pytest.raises(AttributeError):
        s.kv_cells = 1  # frozen


def test_bad_setting_names_the_variable():
    with pytest.raises(ValueError, match="ELECTRON_KV_CELLS"):
        Settings.from_env({"ELECTRON_KV_CELLS": "lots"})


def test_render_fills_placeholders_and_refuses_unknown_ones():
    assert render_config('value: "${a}" and ${b}', {"a": "1", "b": "2"}) == 'value: "1" and 2'
    with pytest.raises(KeyError, match="missing"):
        render_config("${missing}", {})


def test_triton_http_port_is_off_the_gateway_port():
    s = Settings()
    command = " ".join(triton_command(s, "/repo", "/backends"))
    assert "--http-port=8003" in command and "--grpc-port=8001" in command and "--metrics-port=8002" in command
    assert "--grpc-address=127.0.0.1" in command


def test_the_engine_spin_count_reaches_tritonserver_and_overrides_a_wait_policy(monkeypatch):
    from gateway.server.triton_launcher import triton_environment

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # would make OpenMP threads spin without end
    env = triton_environment(Settings.from_env({"ELECTRON_ENGINE_SPIN_COUNT": "150"}))
    assert env["GOMP_SPINCOUNT"] == "150" and "OMP_WAIT_POLICY" not in env
    assert triton_environment(Settings())["GOMP_SPINCOUNT"] == "3000"


def test_with_kv_streams_a_requests_room_is_its_sequences_share_of_the_pool():
    from types import SimpleNamespace

    from gateway.server.triton_launcher import effective_max_sequence_length

    artifacts = SimpleNamespace(context_length=8192)
    unified = Settings.from_env({"ELECTRON_KV_CELLS": "16384", "ELECTRON_MAX_SEQUENCES": "64"})
    streams = Settings.from_env({"ELECTRON_KV_LAYOUT": "streams", "ELECTRON_KV_CELLS": "98304",
                                 "ELECTRON_MAX_SEQUENCES": "48"})
    assert effective_max_sequence_length(unified, artifacts) == 8192
    assert effective_max_sequence_length(streams, artifacts) == 2048
    with pytest.raises(ValueError, match="ELECTRON_KV_LAYOUT"):
        Settings.from_env({"ELECTRON_KV_LAYOUT": "paged"})
