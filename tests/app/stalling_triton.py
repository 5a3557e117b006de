"""A gRPC server speaking Triton's protocol that accepts stream requests and never answers
them: what an engine that hangs looks like to the gateway's real Triton client."""

from __future__ import annotations

import asyncio

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc


class StallingTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """``inputs``: the input tensors its model config declares; ``received``: the input names
    of each request it took."""

    def __init__(self, inputs: tuple[str, ...] = ()) -> None:
        self.requests = 0
        self.cancelled = 0
        self.inputs = inputs
        self.received: list[set[str]] = []

    async def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=True)

    async def ModelConfig(self, request, context):
        config = service_pb2.ModelConfigResponse()
        config.config.name = request.name
        config.config.parameters["tokens_per_block"].string_value = "4"
        config.config.parameters["max_sequence_length"].string_value = "2048"
        for name in self.inputs:
            config.config.input.add(name=name)
        return config

    async def ModelStreamInfer(self, request_iterator, context):
        async for request in request_iterator:
            self.requests += 1
            self.received.append({i.name for i in request.inputs})
            try:
                await asyncio.sleep(3600)  # accepted, never answered
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if False:
            yield


async def start(port: int, inputs: tuple[str, ...] = ()) -> tuple[grpc.aio.Server, StallingTriton]:
    server = grpc.aio.server()
    servicer = StallingTriton(inputs)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, servicer
