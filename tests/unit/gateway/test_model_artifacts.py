"""Model artifacts: the rebuilt tokenizer equals llama.cpp's, preparation is idempotent."""

import json
import shutil
import unicodedata

import pytest
from llama_cpp import Llama
from tokenizers import Tokenizer

from tests.paths import DATA_DIR
from gateway.model_artifacts import ModelArtifacts, embedded_gguf_path, write_artifacts
from gateway.settings import Settings
from gateway.server.triton_launcher import prepare_artifacts

pytestmark = pytest.mark.heavy  # runs llama.cpp or a guide compiler: left out of make test-fast

CORPUS = json.loads((DATA_DIR / "multilingual_corpus.json").read_text())
SCRIPTS = {  # script -> a character range that must appear in the corpus
    "Devanagari": (0x0900, 0x097F), "Bengali": (0x0980, 0x09FF), "Gurmukhi": (0x0A00, 0x0A7F),
    "Gujarati": (0x0A80, 0x0AFF), "Odia": (0x0B00, 0x0B7F), "Tamil": (0x0B80, 0x0BFF),
    "Telugu": (0x0C00, 0x0C7F), "Kannada": (0x0C80, 0x0CFF), "Malayalam": (0x0D00, 0x0D7F),
    "Thai": (0x0E00, 0x0E7F), "Arabic/Urdu": (0x0600, 0x06FF), "CJK": (0x4E00, 0x9FFF),
    "Emoji": (0x1F300, 0x1FAFF),
}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return ModelArtifacts.load(write_artifacts(embedded_gguf_path(), tmp_path_factory.mktemp("artifacts")))


@pytest.fixture(scope="module")
def llama_vocab():
    return Llama(model_path=str(embedded_gguf_path()), vocab_only=True, verbose=False)


def test_corpus_covers_the_scripts_and_whitespace_cases():
    assert len(CORPUS) >= 40
    for script, (lo, hi) in SCRIPTS.items():
        assert any(lo <= ord(ch) <= hi for line in CORPUS for ch in line), script
    assert any("\t" in line for line in CORPUS) and any("\r\n" in line for line in CORPUS)
    assert any(line != line.strip() for line in CORPUS)
    assert any(unicodedata.category(ch) == "Mn" for line in CORPUS for ch in line)  # combining marks


@pytest.mark.parametrize("line", CORPUS + ["<|im_start|>user\nनमस्ते<|im_end|>\n<|im_start|>assistant\n"])
def test_tokenizer_json_matches_llama_cpp_and_round_trips(artifacts, llama_vocab, line):
    tokenizer = Tokenizer.from_file(str(artifacts.tokenizer_path))
    ours = tokenizer.encode(line, add_special_tokens=False).ids
    theirs = llama_vocab.tokenize(line.encode("utf-8"), add_bos=False, special=True)
    assert ours == theirs
    assert tokenizer.decode(ours, skip_special_tokens=False) == line


def test_metadata_from_gguf(artifacts, llama_vocab):
    assert artifacts.vocab_size == llama_vocab.n_vocab() == 49152
    assert artifacts.eos_token_id == llama_vocab.token_eos() == 2
    assert artifacts.special_tokens["<|im_start|>"] == 1
    assert "<|im_start|>" in artifacts.chat_template
    assert artifacts.context_length == 8192


def test_prepare_is_idempotent_and_fast_when_done(tmp_path):
    out = write_artifacts(embedded_gguf_path(), tmp_path)
    stamp = (out / "tokenizer.json").stat().st_mtime_ns
    assert write_artifacts(embedded_gguf_path(), tmp_path) == out
    assert (out / "tokenizer.json").stat().st_mtime_ns == stamp


def test_any_gguf_path_from_settings(tmp_path):
    other = tmp_path / "other-model.gguf"
    shutil.copy(embedded_gguf_path(), other)
    settings = Settings.from_env({"ELECTRON_GGUF_PATH": str(other), "ELECTRON_ARTIFACTS_DIR": str(tmp_path / "a")})
    artifacts = prepare_artifacts(settings)
    assert artifacts.directory == tmp_path / "a" / "other-model"
    assert artifacts.gguf_path == other.resolve()
    assert artifacts.tokenizer_path.is_file()
