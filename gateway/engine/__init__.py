"""The engine behind a narrow interface (protocol) and its Triton gRPC client."""
