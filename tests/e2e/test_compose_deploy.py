"""`docker compose up` for real: docker-compose.yml and build/Dockerfile exactly as users get
them, on a real Docker engine, with the official openai SDK on the host.

The engine is the one that answers, or Debian's dockerd started here (vfs storage driver);
the public base images are local stand-ins built from Debian's packages
(tests/deploy/standins/, tests/support/docker_engine.py). The compose project has a name of
its own; its containers, volumes and networks are removed before and after. The images and
the build cache stay, so a second run on the same machine rebuilds nothing that did not
change. The steps are the README's: create a key with `docker compose run`, `docker compose
up -d`, stream with the SDK; then the state across `down`/`up` and the drain on `stop`.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import openai
import pytest

from tests.paths import ROOT
from tests.support.docker_engine import DockerEngine, compose_command, ensure_standins

pytestmark = pytest.mark.e2e

PROJECT = "electron-deploy-test"
BASE_URL = "http://127.0.0.1:8000/v1"  # the port docker-compose.yml publishes
HEALTHY_WITHIN_S = 900  # a first start on a new machine probes the CPU and runs the weight gate


class Compose:
    def __init__(self) -> None:
        self.command = [*compose_command(), "-p", PROJECT, "-f", str(ROOT / "docker-compose.yml"),
                        "--project-directory", str(ROOT)]
        # the classic builder: these machines have no buildx plugin (the Dockerfile builds with both)
        self.env = {**os.environ, "DOCKER_BUILDKIT": "0", "COMPOSE_BAKE": "false"}

    def __call__(self, *args: str, timeout: float = 600, check: bool = True, env: dict | None = None,
                 input: str | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run([*self.command, *args], capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(env or {})}, cwd=ROOT, input=input)
        if check and done.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)}: exit code {done.returncode}\n"
                                 f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
        return done

    def container(self, service: str) -> str:
        return self("ps", "-a", "-q", service).stdout.strip()

    def health(self, service: str) -> str:
        cid = self.container(service)
        if not cid:
            return "absent"
        done = subprocess.run(["docker", "inspect", "-f", "{{.State.Status}}/{{if .State.Health}}"
                               "{{.State.Health.Status}}{{end}}", cid], capture_output=True, text=True)
        return done.stdout.strip()

    def wait_healthy(self, service: str, timeout_s: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            state = self.health(service)
            if state == "running/healthy":
                return time.monotonic() - started
            if state.startswith(("exited", "dead")):
                break
            time.sleep(2)
        logs = self("logs", "--no-color", "--tail", "80", service, check=False).stdout
        raise AssertionError(f"{service} not healthy within {timeout_s} s ({self.health(service)}):\n{logs}")

    def sql(self, query: str) -> str:
        return self("exec", "-T", "postgres", "psql", "-U", "electron", "-d", "electron", "-tAc", query).stdout.strip()

    def rows(self) -> int:
        return int(self.sql("SELECT count(*) FROM usage"))

    def settled_rows(self) -> int:
        """The row count once the ledger's writes behind earlier responses are in (it writes every second)."""
        rows = self.rows()
        while True:
            time.sleep(2.5)
            if (now := self.rows()) == rows:
                return rows
            rows = now

    def rows_become(self, expected: int, timeout_s: float = 15) -> int:
        """The row count once it reaches ``expected`` (the ledger writes behind the response), or as it is."""
        deadline = time.monotonic() + timeout_s
        while (rows := self.rows()) < expected and time.monotonic() < deadline:
            time.sleep(0.5)
        return rows


@pytest.fixture(scope="module")
def deployment():
    engine = DockerEngine.ensure()
    compose = Compose()
    facts: dict = {"standins_s": ensure_standins()}
    compose("down", "-v", "--remove-orphans", timeout=300)
    try:
        started = time.monotonic()
        compose("build", "electron", timeout=5400)
        facts["build_s"] = round(time.monotonic() - started, 1)  # (no `image prune`: the build stage's
        # layers are untagged, and they are the cache that spares the next run llama.cpp's build)
        size = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", "electron:local"],
                              capture_output=True, text=True, check=True).stdout
        facts["image_mb"] = round(int(size) / 1e6)
        created = compose("run", "--rm", "electron", ".venv/bin/electron-keys", "create", "--account", "deploy-test",
                          "--name", "ci", "--admin", timeout=600)
        facts["key"] = created.stdout.strip().splitlines()[-1]
        compose("up", "-d", timeout=600)
        facts["first_start_s"] = round(compose.wait_healthy("electron", HEALTHY_WITHIN_S), 1)
        facts["first_start_log"] = compose("logs", "--no-color", "--no-log-prefix", "electron").stdout
        yield compose, facts
    finally:
        compose("down", "-v", "--remove-orphans", timeout=300, check=False)
        engine.stop()


def expected_cpu_backend() -> str:
    """The image's CPU backend for this machine's CPU (build/llama_cpu_variants.sh's levels)."""
    flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":")[1].split())
    avx512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512vbmi", "avx512_vnni"}
    if avx512 | {"avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"} <= flags:
        return "amx"
    return "avx512" if avx512 <= flags else "avx2"


def client(key: str):
    return openai.OpenAI(base_url=BASE_URL, api_key=key, max_retries=0, timeout=120)


def stream_answer(key: str, text: str = "Say hello to the caller.", max_tokens: int = 24) -> tuple[str, object, str]:
    chunks = client(key).chat.completions.create(
        model="electron", messages=[{"role": "system", "content": "You are a helpful voice assistant."},
                                    {"role": "user", "content": text}],
        stream=True, stream_options={"include_usage": True}, max_tokens=max_tokens, temperature=0)
    content, usage, finish = "", None, None
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
        usage = chunk.usage or usage
    return content, usage, finish


def test_compose_up_serves_the_sdk_with_usage_through_redis_and_postgresql(deployment):
    compose, facts = deployment
    for service in ("electron", "redis", "postgres"):
        assert compose.health(service) == "running/healthy", service
    before = compose.settled_rows()
    content, usage, finish = stream_answer(facts["key"])
    assert content.strip() and finish in ("stop", "length")
    assert usage.prompt_tokens > 10 and usage.completion_tokens > 0
    assert usage.prompt_tokens_details.cached_tokens is not None
    # the ledger is PostgreSQL's: one row for the request, with the usage the client saw
    assert compose.rows_become(before + 1) == before + 1
    row = compose.sql("SELECT prompt_tokens, completion_tokens, status FROM usage ORDER BY finished_at_ms DESC LIMIT 1")
    assert row == f"{usage.prompt_tokens}|{usage.completion_tokens}|{finish}"
    # the limits are Redis's: the request left its rate window there
    keys = compose("exec", "-T", "redis", "redis-cli", "--scan").stdout.split()
    assert keys, "no limiter key in Redis"
    # the image decided where it runs: the weight gate at the first start, and the best CPU backend it has for
    # this CPU, named in the log and on the engine's info metric
    log = facts["first_start_log"]
    assert "engine weights: " in log
    assert f"llama.cpp CPU backend: {expected_cpu_backend()} (the best of amx, avx512, avx2 for this CPU" in log
    metrics = compose("exec", "-T", "electron", "curl", "-fsS", "http://127.0.0.1:8002/metrics").stdout
    info = next(line for line in metrics.splitlines() if line.startswith("electron_engine_cpu_paths_info{"))
    assert f'cpu_backend="{expected_cpu_backend()}"' in info


def test_a_second_turn_reuses_the_prefix(deployment):
    compose, facts = deployment
    stream_answer(facts["key"], "What can you help me with today?")
    _, usage, _ = stream_answer(facts["key"], "What can you help me with today?")
    assert usage.prompt_tokens_details.cached_tokens >= usage.prompt_tokens - 4


def test_keys_rows_and_choices_survive_down_and_up(deployment):
    compose, facts = deployment
    rows = compose.settled_rows()
    compose("down", timeout=300)
    compose("up", "-d", timeout=600)
    facts["second_start_s"] = round(compose.wait_healthy("electron", HEALTHY_WITHIN_S), 1)
    log = compose("logs", "--no-color", "--no-log-prefix", "electron").stdout
    assert "chosen before on this machine" in log  # the gate's and the probe's choices, read back from the volume
    assert compose.rows() == rows
    content, _, _ = stream_answer(facts["key"])  # the key created before `down`
    assert content.strip() and compose.rows_become(rows + 1) == rows + 1


def test_an_idle_container_logs_nothing_at_info(deployment):
    compose, _ = deployment
    time.sleep(15)  # the start just before (`down`/`up`) settles: its thread budget may still change once
    since = time.time()
    time.sleep(40)  # four health checks
    logs = compose("logs", "--no-color", "--no-log-prefix", "--since", f"{since:.3f}", "electron").stdout
    assert [line for line in logs.splitlines() if " INFO " in line or '"INFO"' in line] == []


def test_stop_drains_a_stream_in_flight_and_keeps_its_row(deployment):
    compose, facts = deployment
    rows = compose.settled_rows()
    outcome: dict = {}

    def talk():
        try:
            outcome["reply"] = stream_answer(facts["key"], "Tell me a long story about a lighthouse keeper.",
                                             max_tokens=400)
        except openai.APIError as exc:  # an error event or a cut stream: what the client sees
            outcome["error"] = exc

    caller = threading.Thread(target=talk)
    caller.start()
    time.sleep(1.5)  # the stream has started
    compose("stop", "electron", timeout=120)
    caller.join(60)
    assert not caller.is_alive()
    if "reply" in outcome:
        assert outcome["reply"][2] in ("stop", "length")
    else:
        assert "error" in outcome
    assert compose.rows_become(rows + 1) == rows + 1
    compose("start", "electron", timeout=120)
    compose.wait_healthy("electron", HEALTHY_WITHIN_S)


def refused_start(compose: Compose, message: str, env: dict | None = None, *up_args: str) -> str:
    """``up`` of electron with a configuration error: the container keeps running (no restart loop),
    is never healthy, and its log says ``message`` once."""
    compose("up", "-d", *up_args, "electron", env=env, timeout=300)
    deadline = time.monotonic() + 120
    log = ""
    while time.monotonic() < deadline and message not in log:
        time.sleep(2)
        log = compose("logs", "--no-color", "--no-log-prefix", "electron", check=False).stdout
    time.sleep(10)  # time for a restart loop, had there been one
    log = compose("logs", "--no-color", "--no-log-prefix", "electron", check=False).stdout
    cid = compose.container("electron")
    restarts = subprocess.run(["docker", "inspect", "-f", "{{.RestartCount}}", cid], capture_output=True, text=True)
    assert log.count(message) == 1, log[-3000:]
    assert restarts.stdout.strip() == "0" and compose.health("electron").startswith("running/")
    assert compose.health("electron") != "running/healthy"
    return log


def test_a_wrong_postgres_password_is_one_clear_line_not_a_crash_loop(deployment):
    compose, _ = deployment
    log = refused_start(compose, "cannot open the accounts store at postgresql+asyncpg://electron:***@postgres:5432/electron",
                        {"POSTGRES_PASSWORD": "not-the-volumes"})
    assert "POSTGRES_PASSWORD must be the password the electron-usage volume was first created with" in log
    assert "not-the-volumes" not in log


def test_redis_down_at_start_is_one_clear_line(deployment):
    compose, _ = deployment
    compose("stop", "redis", timeout=120)
    refused_start(compose, "cannot reach Redis at redis://redis:6379/0", None, "--no-deps", "--force-recreate")
    compose("start", "redis", timeout=120)


def test_no_key_yet_while_bound_off_loopback_is_one_clear_line(deployment):
    compose, _ = deployment
    compose("down", "-v", timeout=300)  # a new deployment: empty volumes, no key
    log = refused_start(compose, "No API key exists and the gateway is bound to 0.0.0.0")
    assert "docker compose run --rm electron .venv/bin/electron-keys create" in log


def test_report(deployment, capsys):
    _, facts = deployment
    with capsys.disabled():
        print("\n[deploy] " + json.dumps({k: v for k, v in facts.items() if k not in ("key", "first_start_log")}))
        # what the first start printed up to ready: the gateway's own lines (Triton's are in `docker compose logs`)
        print("\n".join(f"[deploy] | {line}" for line in facts["first_start_log"].splitlines()
                        if " INFO " in line or " WARNING " in line or " ERROR " in line))
