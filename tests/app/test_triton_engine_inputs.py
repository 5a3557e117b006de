"""The real Triton client reads which of the contract's inputs the model declares from its
config once, and sends the CPU engine's extensions only to a model that declares them."""

import asyncio

import pytest

from engine_contract import INPUTS
from gateway.engine.protocol import EngineRequest
from gateway.engine.triton_engine import TritonEngine
from gateway.errors import EngineTimeoutError
from tests.services import free_port

from tests.app import stalling_triton

SHARED = tuple(name for name, spec in INPUTS.items() if not spec.cpu_only)
CPU_ONLY = ("playback_chars_per_s", "return_prefill_progress")


@pytest.mark.parametrize("extensions", [(), CPU_ONLY])
async def test_the_cpu_only_inputs_go_only_to_a_model_that_declares_them(extensions):
    port = free_port()
    server, servicer = await stalling_triton.start(port, inputs=SHARED + extensions)
    engine = TritonEngine(f"127.0.0.1:{port}", "electron_cpu", 1000, idle_timeout_s=0.3)
    try:
        info = await engine.info()
        assert info.declared_inputs == frozenset(SHARED + extensions)
        assert (info.paces_playback, info.reports_prefill) == (bool(extensions),) * 2
        request = EngineRequest(prompt=[1, 2, 3], max_tokens=4, end_id=0, pad_id=0, playback_chars_per_s=15.0)
        with pytest.raises(EngineTimeoutError):  # the stalling engine never answers: the idle timeout ends it
            async for _ in engine.generate(request, "r1"):
                pass
        await asyncio.sleep(0.05)
        [sent] = servicer.received
        assert set(CPU_ONLY) & sent == set(extensions)
        assert {"input_ids", "input_lengths", "request_output_len"} <= sent <= set(SHARED + extensions)
    finally:
        await engine.close()
        await server.stop(0)
