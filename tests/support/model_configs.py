"""The models' config.pbtxt files, parsed with Triton's own ModelConfig protobuf."""

import re

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from engine_contract import INPUTS, OUTPUTS
from tests.paths import ROOT

# the contract's tables (engine_contract.tensors) as Triton's config names them
CONTRACT_INPUTS = {s.name: (s.data_type, list(s.dims)) for s in INPUTS.values() if not s.cpu_only}
CONTRACT_OUTPUTS = {s.name: (s.data_type, list(s.dims)) for s in OUTPUTS.values()}


def load(model):
    text = (ROOT / "model_repository" / model / "config.pbtxt").read_text()
    text = re.sub(r"\$\{(\w+)\}", "8", text)  # placeholders are filled in at launch
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def table(entries):
    return {e.name: (model_config_pb2.DataType.Name(e.data_type), list(e.dims)) for e in entries}
