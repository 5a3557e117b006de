"""The GPU model repository Triton loads: ``model_repository/<model>`` with its ``${...}``
placeholders filled in, copied (not linked: the directory is mounted into a container).

    python build/gpu/fill_model_repository.py                      # electron_trtllm (default)
    python build/gpu/fill_model_repository.py --model tensorrt_llm  # the C++ backend alternative

electron_trtllm takes its values from its parameter file (``llm_api.yaml``: KV block size,
sequence length, batch size), so the config cannot disagree with the LLM it describes;
tensorrt_llm from the options below, which must equal ``build/gpu/build_engine.sh``'s. The
output (default ``.run/model_repository_gpu``) is what ``docker compose --profile gpu``
mounts at ``/models``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.server.triton_launcher import render_config  # noqa: E402
from gateway.settings import Settings  # noqa: E402

MODELS = ("electron_trtllm", "tensorrt_llm")
MOUNT = "/models"  # where the filled repository is mounted in the Triton container


def electron_trtllm_values(llm_api_config: Path, settings: Settings) -> dict[str, str]:
    config = yaml.safe_load(llm_api_config.read_text())
    return {
        "llm_api_config": f"{MOUNT}/electron_trtllm/llm_api.yaml",
        "log_level": settings.engine_log_level,  # ELECTRON_ENGINE_LOG_LEVEL
        "tokens_per_block": str(config["kv_cache_config"]["tokens_per_block"]),
        "max_sequence_length": str(config["max_seq_len"]),
        "triton_max_batch_size": str(config["max_batch_size"]),
    }


def tensorrt_llm_values(args: argparse.Namespace) -> dict[str, str]:
    return {
        "engine_dir": args.engine_dir,
        "tokenizer_dir": args.engine_dir,
        "tokens_per_block": str(args.tokens_per_block),
        "triton_max_batch_size": str(args.max_batch_size),
        "kv_cache_free_gpu_mem_fraction": str(args.kv_cache_free_gpu_mem_fraction),
    }


def fill(model: str, values: dict[str, str], out: Path, source_root: Path = ROOT / "model_repository") -> Path:
    source, target = source_root / model, out / model
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (target / "config.pbtxt").write_text(render_config((source / "config.pbtxt").read_text(), values))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="electron_trtllm")
    parser.add_argument("--out", type=Path, default=ROOT / ".run" / "model_repository_gpu")
    parser.add_argument("--llm-api-config", type=Path,
                        default=ROOT / "model_repository" / "electron_trtllm" / "llm_api.yaml")
    parser.add_argument("--engine-dir", default="/engines/trtllm_engine")
    parser.add_argument("--tokens-per-block", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--kv-cache-free-gpu-mem-fraction", type=float, default=0.85)
    args = parser.parse_args(argv)
    values = (electron_trtllm_values(args.llm_api_config, Settings.from_env()) if args.model == "electron_trtllm"
              else tensorrt_llm_values(args))
    target = fill(args.model, values, args.out)
    if args.model == "electron_trtllm":
        shutil.copy(args.llm_api_config, target / "llm_api.yaml")
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
