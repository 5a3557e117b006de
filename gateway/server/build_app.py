"""The real gateway application: the configured GGUF's artifacts, Triton over gRPC."""

from __future__ import annotations

from starlette.applications import Starlette

from gateway.api.app import create_app
from gateway.chat.served_model import model_view
from gateway.engine.triton_engine import TritonEngine
from gateway.server.triton_launcher import prepare_artifacts
from gateway.settings import Settings


def build_app(settings: Settings) -> Starlette:
    """The real gateway: artifacts of the configured GGUF, Triton over gRPC."""
    artifacts = prepare_artifacts(settings)
    engine = TritonEngine(settings.triton_grpc_url, settings.triton_model, artifacts.vocab_size,
                          timeout_s=settings.engine_timeout_s, idle_timeout_s=settings.engine_idle_timeout_s)
    return create_app(settings, engine, model_view(artifacts, settings.triton_model))
