"""docker-compose.yml, the image recipe and the GPU build steps, checked against the repository:
no Docker engine or GPU here, so what can be checked is that the file parses, every service
references files that exist and settings the gateway has, the pins come from one place, and
the GPU model repository fills in completely."""

import re
import subprocess
import sys

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from gateway.settings import Settings
from tests.paths import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
PINS = dict(line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines()
            if line and not line.startswith("#"))
VARIABLE = re.compile(r"\$\{(\w+)(:-[^}]*|:\?[^}]*)?\}")


def interpolate(value: str) -> str:
    """What compose makes of ``${NAME}``, ``${NAME:-default}``, ``${NAME:?message}`` with .env."""
    def one(match):
        name, rest = match.group(1), match.group(2) or ""
        if name in PINS:
            return PINS[name]
        if rest.startswith(":-"):
            return rest[2:]
        raise AssertionError(f"${{{name}}} has no value in .env and no default")
    return VARIABLE.sub(one, value)


def environment(service: dict) -> dict[str, str]:
    return {k: interpolate(str(v)) for k, v in (service.get("environment") or {}).items()}


def test_the_default_profile_is_the_cpu_stack_and_the_gpu_profile_adds_triton_and_its_gateway():
    default = {name for name, s in SERVICES.items() if not s.get("profiles")}
    gpu = {name for name, s in SERVICES.items() if "gpu" in s.get("profiles", [])}
    assert default == {"electron", "redis", "postgres"}
    assert gpu == {"triton-gpu", "gateway-gpu"}
    for name in default:
        assert "deploy" not in SERVICES[name], f"{name} must run without a GPU"
    devices = SERVICES["triton-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_every_service_has_a_health_check_and_the_gateways_wait_for_what_they_need():
    for name, service in SERVICES.items():
        assert service.get("healthcheck", {}).get("test"), name
    assert set(SERVICES["electron"]["depends_on"]) == {"redis", "postgres"}
    assert set(SERVICES["gateway-gpu"]["depends_on"]) == {"triton-gpu", "redis", "postgres"}
    assert all(d["condition"] == "service_healthy" for d in SERVICES["gateway-gpu"]["depends_on"].values())


@pytest.mark.parametrize("name", ["electron", "gateway-gpu"])
def test_environment_names_are_real_settings_with_valid_values(name):
    env = environment(SERVICES[name])
    known = {"ELECTRON_" + field.upper() for field in Settings.__dataclass_fields__}
    assert {k for k in env if k.startswith("ELECTRON_")} <= known, set(env) - known
    settings = Settings.from_env(env)  # values parse as the settings' types
    port = str(settings.gateway_port)
    assert any(str(p).endswith(f":{port}") for p in SERVICES[name]["ports"])
    assert settings.redis_url and settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.gateway_workers == 1 or settings.redis_url  # several workers share caps through Redis
    check = " ".join(SERVICES[name]["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/ready" in check


def test_the_accounts_services_match_the_gateways_urls():
    env = environment(SERVICES["electron"])
    postgres = environment(SERVICES["postgres"])
    assert env["ELECTRON_REDIS_URL"].startswith("redis://redis:6379")
    user, password, db = postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]
    assert f"//{user}:{password}@postgres:5432/{db}" in env["ELECTRON_DATABASE_URL"]
    assert "electron-usage:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    assert "electron-data:/data" in SERVICES["electron"]["volumes"]


def test_images_come_from_the_repository_recipe_and_the_pins():
    for name in ("electron", "gateway-gpu"):
        build = SERVICES[name]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    dockerfile = (ROOT / "build" / "Dockerfile").read_text()
    assert "ELECTRON_PORTABLE_CPU=1 bash build/install.sh --packages" in dockerfile
    install = (ROOT / "build" / "install.sh").read_text()
    assert "ELECTRON_PORTABLE_CPU" in install and "cmake_args=$LLAMA_PORTABLE_CMAKE_ARGS" in install
    assert 'LLAMA_PORTABLE_CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF"' in (ROOT / "build" / "llama_compiler.sh").read_text()
    assert interpolate(SERVICES["triton-gpu"]["image"]) == PINS["TRITON_TRTLLM_IMAGE"]
    assert PINS["TRITON_TRTLLM_IMAGE"].endswith(":26.07-trtllm-python-py3")
    assert PINS["TENSORRT_LLM_VERSION"] == "1.2.1"
    requirements = (ROOT / "tests" / "guide_backends" / "requirements.txt").read_text()
    assert f"llguidance=={PINS['LLGUIDANCE_VERSION']}" in requirements
    installer = (ROOT / "build" / "install_guide_backends.sh").read_text()
    assert f"XGRAMMAR=xgrammar=={PINS['XGRAMMAR_VERSION']}" in installer
    readme = (ROOT / "docs" / "gpu.md").read_text()
    assert "26.07-trtllm-python-py3" in readme and "1.2.1" in readme


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(instruction, arguments) of each Dockerfile instruction, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in dockerfile.splitlines() if not line.startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def test_the_image_build_runs_no_weight_gate_and_no_cpu_probe_and_the_first_start_keeps_them_on_the_volume():
    steps = instructions((ROOT / "build" / "Dockerfile").read_text())
    runs = [args for op, args in steps if op == "RUN"]
    installs = [args for args in runs if "build/install.sh" in args]
    assert len(installs) == 1 and "bash build/install.sh --packages" in installs[0]
    # install.sh --packages prepares no model: no gate, no probe (tests/unit/deploy/test_packaging.py)
    assert not any(re.search(r"prepare_model|weight_choice|weight_formats|cpu_paths|--weight-format", args)
                   for args in runs)
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(args for op, args in steps if op == "ENV")))
    assert "ELECTRON_WEIGHT_FORMAT" not in env  # the running container's default: auto, decided there
    assert Settings.from_env(env).weight_format == "auto"
    volumes = [args.strip() for op, args in steps if op == "VOLUME"]
    assert volumes == [env["ELECTRON_DATA_DIR"]] and env["ELECTRON_ARTIFACTS_DIR"].startswith(volumes[0] + "/")


def test_the_final_image_has_no_compiler_and_the_project_files_come_last():
    steps = instructions((ROOT / "build" / "Dockerfile").read_text())
    stages = [i for i, (op, _) in enumerate(steps) if op == "FROM"]
    assert len(stages) == 2 and steps[stages[0]][1].endswith(" AS build")
    final = steps[stages[1]:]
    installed = " ".join(args for op, args in final if op == "RUN")
    assert not re.search(r"build-essential|cmake|clang|gcc|g\+\+", installed)
    copies = [args for op, args in final if op == "COPY"]
    # llama.cpp's CPU backends and the packages from the build stage, then the project: a change to
    # a Python file of the gateway rebuilds the last layer only
    assert copies == ["--from=build /opt/llama-cpu-variants /opt/llama-cpu-variants",
                      "--from=build /app/.venv /app/.venv", ". /app"]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(args for op, args in final if op == "ENV")))
    assert env["ELECTRON_LLAMA_CPU_VARIANTS"] == "/opt/llama-cpu-variants"
    build = steps[stages[0]:stages[1]]
    variants = next(args for op, args in build if op == "RUN" and "llama_cpu_variants.sh" in args)
    assert "/opt/llama-cpu-variants" in variants
    # llama.cpp is built from the files it needs only, before the server's packages and the project
    first_copy = next(args for op, args in build if op == "COPY")
    assert first_copy.split()[:-1] == ["build/requirements-engine.txt", "build/llama_compiler.sh",
                                       "build/llama_cpu_variants.sh"]


def test_the_gpu_triton_serves_a_model_of_the_repository_filled_by_the_build_step(tmp_path):
    command = SERVICES["triton-gpu"]["command"]
    model = re.search(r"--load-model=(\w+)", command).group(1)
    assert model == environment(SERVICES["gateway-gpu"])["ELECTRON_TRITON_MODEL"]
    assert (ROOT / "model_repository" / model / "config.pbtxt").is_file()
    assert any(v.startswith("./.run/model_repository_gpu:/models") for v in SERVICES["triton-gpu"]["volumes"])
    # the model imports the engine contract: the package is mounted where the stub's path points
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in SERVICES["triton-gpu"]["volumes"])
    path = environment(SERVICES["triton-gpu"])["PYTHONPATH"]
    assert mounts["./engine_contract"] == f"{path}/engine_contract" and (ROOT / "engine_contract" / "__init__.py").is_file()
    for script in ("prepare_checkpoint.sh", "build_engine.sh"):
        assert subprocess.run(["bash", "-n", str(ROOT / "build" / "gpu" / script)]).returncode == 0
    for name in ("electron_trtllm", "tensorrt_llm"):
        done = subprocess.run([sys.executable, str(ROOT / "build" / "gpu" / "fill_model_repository.py"), "--model",
                               name, "--out", str(tmp_path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        text = (tmp_path / name / "config.pbtxt").read_text()
        assert not re.search(r"\$\{\w+\}", text)
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        params = {k: p.string_value for k, p in config.parameters.items()}
        assert int(params["tokens_per_block"]) > 0
    llm_api = yaml.safe_load((tmp_path / "electron_trtllm" / "llm_api.yaml").read_text())
    filled = text_format.Parse((tmp_path / "electron_trtllm" / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    params = {k: p.string_value for k, p in filled.parameters.items()}
    assert int(params["tokens_per_block"]) == llm_api["kv_cache_config"]["tokens_per_block"]
    assert int(params["max_sequence_length"]) == llm_api["max_seq_len"]
    assert params["llm_api_config"] == "/models/electron_trtllm/llm_api.yaml"
    assert params["log_level"] == "INFO"  # ELECTRON_ENGINE_LOG_LEVEL's default
    assert (tmp_path / "electron_trtllm" / "1" / "model.py").is_file()


def test_the_backend_network_has_no_route_out():
    assert COMPOSE["networks"]["backend"]["internal"] is True
    for name in ("redis", "postgres", "triton-gpu"):
        assert SERVICES[name]["networks"] == ["backend"]


@pytest.mark.parametrize("name", ["electron", "gateway-gpu"])
def test_docker_waits_for_the_drain_before_it_kills_a_gateway(name):
    grace = SERVICES[name]["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > Settings.from_env(environment(SERVICES[name])).drain_grace_s
