"""One source for each setting: the Settings fields, the CPU model's configuration
(engine_contract.cpu_parameters) and docs/configuration.md agree."""

import re
from dataclasses import fields

import pytest

from engine_contract.cpu_parameters import CPU_DEFAULTS, CpuEngineParameters
from gateway.settings import PREFIX, Settings
from tests.paths import ROOT

# read outside Settings: prometheus_client's own variable, set by the worker pool's parent for its workers
NOT_SETTINGS = {"PROMETHEUS_MULTIPROC_DIR"}


def test_the_cpu_model_config_has_a_placeholder_for_exactly_the_engine_parameters():
    text = (ROOT / "model_repository" / "electron_cpu" / "config.pbtxt").read_text()
    placeholders = set(re.findall(r"\$\{(\w+)\}", text))
    assert placeholders == {f.name for f in fields(CpuEngineParameters)}
    keys = set(re.findall(r'key: "(\w+)"\s+value: \{ string_value: "\$\{(\w+)\}"', text))
    assert all(key == placeholder for key, placeholder in keys)


def test_engine_parameters_are_read_back_by_the_code_that_wrote_them():
    written = Settings(kv_layout="streams", kv_cells=4096, max_sequences=8, adaptive_threads=False,
                       overload_ttft_s=0.0, engine_log_level="DEBUG").engine_parameters(gguf_path="/m.gguf")
    assert CpuEngineParameters.from_parameters(written.to_parameters()) == written
    assert written.sequence_cells == 512 and written.log_level == "DEBUG"
    assert CpuEngineParameters.from_parameters({}) == CPU_DEFAULTS
    with pytest.raises(ValueError, match="kv_cells"):
        CpuEngineParameters.from_parameters({"kv_cells": "${kv_cells}"})  # an unrendered config


def test_settings_take_the_engine_defaults_from_the_engine_parameters():
    own = Settings().engine_parameters()
    assert own == CPU_DEFAULTS


def test_every_setting_is_in_the_configuration_reference_and_nothing_else():
    text = (ROOT / "docs" / "configuration.md").read_text()
    listed = set(re.findall(r"^\| `([A-Z_]+)` \|", text, re.M))
    assert listed == {PREFIX + f.name.upper() for f in fields(Settings)} | NOT_SETTINGS
