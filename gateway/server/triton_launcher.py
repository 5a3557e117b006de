"""Start the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel on this machine.

Steps: prepare the model artifacts and choose the engine's weights
(``weight_choice``: the shipped GGUF or a faster requantized copy that passed the
quality gate); render the model repository into the run
directory (``${...}`` parameters of ``config.pbtxt`` filled in from settings,
the version folder linked to the source); assemble a python backend folder with
the stub built for the running Python; start Triton with the wheel's libraries on
``LD_LIBRARY_PATH`` and this environment's packages on ``PYTHONPATH``; wait until
the model is ready; forward signals and shut down cleanly.

Command: ``electron-triton`` (serves until SIGINT/SIGTERM).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.server.engine_state import cpu_paths_cache_dir, crash_note
from gateway.model_artifacts import ModelArtifacts, embedded_gguf_path, write_artifacts
from gateway.server.weight_choice import engine_weights
from gateway.settings import Settings

log = logging.getLogger(__name__)


def pytriton_root() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def _libs_dir() -> Path:
    return pytriton_root().parent.parent / "nvidia_pytriton.libs"


def prepare_artifacts(settings: Settings) -> ModelArtifacts:
    gguf = Path(settings.gguf_path) if settings.gguf_path else embedded_gguf_path()
    return ModelArtifacts.load(write_artifacts(gguf, Path(settings.artifacts_dir)))


def effective_max_sequence_length(settings: Settings, artifacts: ModelArtifacts) -> int:
    """Prompt + output tokens of one request: the model's context, capped by the KV
    pool and by the setting. Written into the config so the gateway reads it."""
    limits = [artifacts.context_length, settings.engine_parameters().sequence_cells]
    if settings.max_sequence_length > 0:
        limits.append(settings.max_sequence_length)
    return min(limits)


def template_values(settings: Settings, artifacts: ModelArtifacts, gguf_path: Path) -> dict[str, str]:
    """The config's ``${...}`` values: the settings' engine part (``Settings.engine_parameters``).
    ``gguf_path``: the weights the engine loads (``engine_weights``); the tokenizer and chat
    template stay those of ``artifacts`` (the shipped file's, same vocabulary)."""
    return settings.engine_parameters(
        gguf_path=str(gguf_path),
        max_sequence_length=effective_max_sequence_length(settings, artifacts),
        cpu_paths_cache=str(cpu_paths_cache_dir(settings)),
        engine_crash=crash_note(settings),
    ).to_parameters()


def render_config(text: str, values: dict[str, str]) -> str:
    """Fill ``${name}`` placeholders; an unknown name is an error, not a blank."""

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"config placeholder ${{{name}}} has no value")
        return values[name]

    return re.sub(r"\$\{(\w+)\}", fill, text)


def render_repository(settings: Settings, values: dict[str, str]) -> Path:
    """``<run_dir>/model_repository/<model>``: rendered config, linked code."""
    source = Path(settings.model_repository) / settings.triton_model
    target = Path(settings.run_dir) / "model_repository" / settings.triton_model
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.pbtxt").write_text(render_config((source / "config.pbtxt").read_text(), values))
    for version in (p for p in source.iterdir() if p.is_dir() and p.name.isdigit()):
        link = target / version.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(version.resolve(), target_is_directory=True)
    return target.parent


def assemble_backends(settings: Settings) -> Path:
    """A backend folder whose python backend has the stub for this Python."""
    root = pytriton_root()
    python_dir = Path(settings.run_dir) / "backends" / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sources = {
        "libtriton_python.so": root / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": root / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": root / "python_backend_stubs" / version / "triton_python_backend_stub",
    }
    for name, src in sources.items():
        if not src.exists():
            raise FileNotFoundError(f"{src} is missing: is nvidia-pytriton installed for Python {version}?")
        link = python_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(src)
    return python_dir.parent


def triton_environment(settings: Settings) -> dict[str, str]:
    """Environment for tritonserver and its python stub (where llama.cpp's OpenMP
    runtime reads its spin count when it loads)."""
    env = dict(os.environ)
    env["GOMP_SPINCOUNT"] = str(settings.engine_spin_count)
    env.pop("OMP_WAIT_POLICY", None)  # it would override the spin count
    lib_dirs = [str(_libs_dir())]
    base_lib = Path(sys.base_prefix) / "lib"
    if (base_lib / f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0").exists():
        lib_dirs.append(str(base_lib))  # the stub then embeds the same Python as this one
    env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
    # The stub's embedded Python finds its prefix through `python3` on PATH: put this
    # environment's interpreter first so that it sees this environment's packages.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def triton_command(settings: Settings, repository: Path, backends: Path) -> list[str]:
    return [
        str(pytriton_root() / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        "--model-control-mode=explicit",
        f"--load-model={settings.triton_model}",
        f"--grpc-address={settings.triton_host}",
        f"--grpc-port={settings.triton_grpc_port}",
        f"--http-address={settings.triton_host}",
        f"--http-port={settings.triton_http_port}",
        f"--metrics-port={settings.triton_metrics_port}",
        f"--metrics-address={settings.triton_host}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        "--disable-auto-complete-config",
        "--exit-on-error=true",
        "--exit-timeout-secs=10",
        f"--log-verbose={settings.triton_log_verbose}",
    ]


def wait_until_ready(settings: Settings, process: subprocess.Popen) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(settings.triton_grpc_url)
    deadline = time.monotonic() + settings.triton_ready_timeout_s
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {process.returncode} before it was ready")
            try:
                if client.is_model_ready(settings.triton_model):
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.25)
        raise TimeoutError(f"model {settings.triton_model} not ready after {settings.triton_ready_timeout_s:.0f}s")
    finally:
        client.close()


def start_triton(settings: Settings) -> subprocess.Popen:
    """Start tritonserver and return once the model is ready (logs go to our stderr)."""
    artifacts = prepare_artifacts(settings)
    weights = engine_weights(settings, artifacts)  # measured once per machine, then read back
    repository = render_repository(settings, template_values(settings, artifacts, weights.path))
    backends = assemble_backends(settings)
    command = triton_command(settings, repository, backends)
    log.info("starting %s", " ".join(command))
    # A process group of its own: python backend stubs left behind by an unclean
    # Triton exit are killed with it (see stop_triton).
    process = subprocess.Popen(command, env=triton_environment(settings), stdout=sys.stderr, stderr=sys.stderr,
                               start_new_session=True)
    try:
        wait_until_ready(settings, process)
    except BaseException:
        stop_triton(process)
        raise
    log.info("model %s ready; gRPC on %s, metrics on :%d",
             settings.triton_model, settings.triton_grpc_url, settings.triton_metrics_port)
    return process


def stop_triton(process: subprocess.Popen, timeout: float = 20.0) -> int:
    """SIGTERM, wait, then kill whatever is left of Triton's process group (a
    python backend stub outlives a Triton that gave up on unloading its model)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("tritonserver did not stop within %.0fs; killing it", timeout)
            process.kill()
            process.wait()
    try:
        os.killpg(process.pid, signal.SIGKILL)
        log.warning("killed processes tritonserver left behind")
    except (ProcessLookupError, PermissionError):
        pass
    return process.returncode


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    process = start_triton(settings)
    stopping = []

    def on_signal(signum, _frame):
        # Only forward the signal: waiting here would deadlock with the main
        # thread's process.wait(), which holds Popen's wait lock.
        stopping.append(signum)
        log.info("signal %d: stopping tritonserver", signum)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = process.wait()
    stop_triton(process)  # whatever Triton left behind (a python backend stub)
    if not stopping:
        log.error("tritonserver exited on its own with code %d", code)
        return code or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
