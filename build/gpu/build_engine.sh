#!/usr/bin/env bash
# The documented alternative, model_repository/tensorrt_llm (TensorRT-LLM's C++ Triton backend):
# a TensorRT engine built ahead of time with trtllm-build. Only TensorRT-LLM up to 1.2.x (image
# 26.07) has this path; upstream removed it in July 2026. Runs inside the pinned image on a GPU host:
#   docker run --rm --gpus all -v /srv/models:/models -v /srv/engines:/engines -v "$PWD":/electron \
#     "$TRITON_TRTLLM_IMAGE" bash /electron/build/gpu/build_engine.sh /models/SmolLM2-1.7B-Instruct
# The values below are the ones build/gpu/fill_model_repository.py writes into tensorrt_llm's
# config.pbtxt: keep them equal (TOKENS_PER_BLOCK above all: cached_tokens = reused blocks x it).
# NOT RUN on this project's machines (no GPU, no Docker engine).
set -euo pipefail
MODEL_DIR=${1:?usage: build_engine.sh HF_MODEL_DIR}
CKPT=${CKPT:-/engines/trtllm_ckpt}
ENGINE_DIR=${ENGINE_DIR:-/engines/trtllm_engine}
TOKENS_PER_BLOCK=${TOKENS_PER_BLOCK:-32}
MAX_BATCH_SIZE=${MAX_BATCH_SIZE:-64}
MAX_SEQ_LEN=${MAX_SEQ_LEN:-8192}
MAX_NUM_TOKENS=${MAX_NUM_TOKENS:-8192}
# Llama-architecture checkpoints (SmolLM2 is one); other families have their own convert_checkpoint.py
CONVERT=${CONVERT:-/app/tensorrt_llm/examples/models/core/llama/convert_checkpoint.py}
log() { printf '[build-engine] %s\n' "$*" >&2; }

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
log "checkpoint conversion ($MODEL_DIR -> $CKPT)"
python3 "$CONVERT" --model_dir "$MODEL_DIR" --output_dir "$CKPT" --dtype bfloat16
log "engine build ($ENGINE_DIR): paged KV with ${TOKENS_PER_BLOCK}-token blocks (KV reuse needs paged context FMHA), chunked context"
trtllm-build --checkpoint_dir "$CKPT" --output_dir "$ENGINE_DIR" \
  --gemm_plugin auto --gpt_attention_plugin auto \
  --paged_kv_cache enable --use_paged_context_fmha enable --context_fmha enable \
  --tokens_per_block "$TOKENS_PER_BLOCK" --max_batch_size "$MAX_BATCH_SIZE" \
  --max_input_len "$MAX_SEQ_LEN" --max_seq_len "$MAX_SEQ_LEN" --max_num_tokens "$MAX_NUM_TOKENS"
cp "$MODEL_DIR"/tokenizer*.json "$MODEL_DIR"/special_tokens_map.json "$ENGINE_DIR"/ 2>/dev/null || true
log "engine ready; the C++ backend decodes guides with xgrammar (guided_decoding_backend: xgrammar)"
