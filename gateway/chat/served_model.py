"""The served model as the chat layer sees it: its artifacts, token codec, chat
template and the system fingerprint every response carries."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from gateway.chat.chat_template import ChatTemplate
from gateway.chat.token_codec import TokenCodec
from gateway.model_artifacts import ModelArtifacts


@dataclass(frozen=True)
class ModelView:
    """What the service knows of the served model from its artifacts."""
    artifacts: ModelArtifacts
    codec: TokenCodec
    template: ChatTemplate
    system_fingerprint: str


def package_version() -> str:
    try:
        return version("electron")
    except PackageNotFoundError:
        return "0+unknown"


def model_view(artifacts: ModelArtifacts, triton_model: str) -> ModelView:
    by_id = {i: token for token, i in artifacts.special_tokens.items()}
    special = {name: by_id[i] for name, i in (("bos_token", artifacts.bos_token_id),
                                                ("eos_token", artifacts.eos_token_id),
                                                ("pad_token", artifacts.pad_token_id)) if i in by_id}
    if not artifacts.chat_template:
        raise ValueError(f"{artifacts.gguf_path} has no chat template")
    stamp = f"{artifacts.name}|{artifacts.gguf_path.name}|{triton_model}|{package_version()}"
    return ModelView(
        artifacts=artifacts,
        codec=TokenCodec.from_artifacts(artifacts),
        template=ChatTemplate(artifacts.chat_template, special),
        system_fingerprint="fp_" + hashlib.sha256(stamp.encode()).hexdigest()[:10],
    )
