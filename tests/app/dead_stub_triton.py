"""A gRPC server speaking Triton's protocol that plays a model whose python backend stub
died under a Triton that lives on, as the real tritonserver of the nvidia-pytriton wheel
does (seen with ``kill -SEGV`` and ``kill -KILL`` to the stub): the model stays READY,
every new request is answered "Stub process '<instance>' is not healthy.", and the
requests that were running get no further response. While ``dead`` is False it streams
``token`` once per ``interval_s`` up to the request's ``request_output_len``."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

DEAD_STUB_MESSAGE = "Stub process 'electron_cpu_0_0' is not healthy."


class DeadStubTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, token: int, interval_s: float = 0.02) -> None:
        self.token = token
        self.interval_s = interval_s
        self.dead = False
        self.requests: list[str] = []  # request ids, as they came
        self.cancelled = 0

    async def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=True)  # Triton's answer, dead stub or not

    async def ModelConfig(self, request, context):
        config = service_pb2.ModelConfigResponse()
        config.config.name = request.name
        config.config.parameters["tokens_per_block"].string_value = "4"
        config.config.parameters["max_sequence_length"].string_value = "2048"
        return config

    async def ModelStreamInfer(self, request_iterator, context):
        async for request in request_iterator:
            self.requests.append(request.id)
            if self.dead:
                yield service_pb2.ModelStreamInferResponse(error_message=DEAD_STUB_MESSAGE)
                continue
            names = [t.name for t in request.inputs]
            wanted = int(np.frombuffer(request.raw_input_contents[names.index("request_output_len")], np.int32)[0])
            try:
                for i in range(wanted):
                    await asyncio.sleep(self.interval_s)
                    while self.dead:  # the stub is gone: this request hears nothing more
                        await asyncio.sleep(3600)
                    yield self._response(request, final=i == wanted - 1)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise

    def _response(self, request, final: bool):
        response = service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
        output = response.outputs.add()
        output.name, output.datatype = "output_ids", "INT32"
        output.shape.extend([1, 1, 1])
        response.raw_output_contents.append(np.array([self.token], np.int32).tobytes())
        response.parameters["triton_final_response"].bool_param = final
        return service_pb2.ModelStreamInferResponse(infer_response=response)


async def start(port: int, token: int) -> tuple[grpc.aio.Server, DeadStubTriton]:
    server = grpc.aio.server()
    servicer = DeadStubTriton(token)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, servicer
