#!/usr/bin/env bash
# Ahead of serving, for model_repository/electron_trtllm (the LLM API model): puts the served
# model's Hugging Face checkpoint where llm_api.yaml points (/engines/checkpoint), quantized to
# FP8 when asked, so that the LLM API only loads it (no download, no conversion at first request).
# Runs inside the pinned image (.env: TRITON_TRTLLM_IMAGE) on a GPU host, e.g.
#   docker run --rm --gpus all -v /srv/models:/models -v /srv/engines:/engines -v "$PWD":/electron \
#     "$TRITON_TRTLLM_IMAGE" bash /electron/build/gpu/prepare_checkpoint.sh /models/SmolLM2-1.7B-Instruct fp8
# Arguments: a local HF model directory; none | fp8 (default none); for fp8, a local calibration
# text file (one sample per line; nothing is fetched from a hub).
# NOT RUN on this project's machines (no GPU, no Docker engine): see docs/gpu.md.
set -euo pipefail
MODEL_DIR=${1:?usage: prepare_checkpoint.sh HF_MODEL_DIR [none|fp8] [CALIBRATION_TEXT]}
QUANT=${2:-none}
CALIBRATION=${3:-}
OUT=${OUT:-/engines/checkpoint}
log() { printf '[prepare-checkpoint] %s\n' "$*" >&2; }

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python3 -c "import tensorrt_llm; print('TensorRT-LLM', tensorrt_llm.__version__)"
mkdir -p "$OUT"
case "$QUANT" in
  none)
    log "copying $MODEL_DIR to $OUT (bf16 as published)"
    cp -a "$MODEL_DIR"/. "$OUT"/
    ;;
  fp8)
    [ -f "$CALIBRATION" ] || { log "fp8 needs a local calibration text file"; exit 2; }
    log "FP8 post-training quantization with NVIDIA ModelOpt into $OUT"
    # ModelOpt's Hugging Face export: weights and activations FP8, KV cache FP8, with
    # hf_quant_config.json, which the LLM API reads (model.py checks it says FP8).
    python3 - "$MODEL_DIR" "$OUT" "$CALIBRATION" <<'PY'
import sys
import torch
import modelopt.torch.quantization as mtq
from modelopt.torch.export import export_hf_checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, out, calibration = sys.argv[1:4]
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16, device_map="cuda")
samples = [line for line in open(calibration, encoding="utf-8").read().splitlines() if line.strip()][:512]

def forward_loop(m):
    for text in samples:
        m(**tokenizer(text, return_tensors="pt", truncation=True, max_length=512).to("cuda"))

config = mtq.FP8_DEFAULT_CFG
config["quant_cfg"]["*[kv]_bmm_quantizer"] = {"num_bits": (4, 3), "axis": None, "enable": True}
mtq.quantize(model, config, forward_loop)
with torch.inference_mode():
    export_hf_checkpoint(model, export_dir=out)
tokenizer.save_pretrained(out)
PY
    ;;
  *) log "quantization must be none or fp8, not $QUANT"; exit 2 ;;
esac
log "checkpoint ready in $OUT; set quantization: $QUANT in llm_api.yaml"
