"""A llama.cpp engine with in-flight batching and prefix KV reuse, behind the
TensorRT-LLM tensor contract (``model.py`` beside this package is the Triton glue)."""
