"""The HTTP side: the Starlette app, wire schemas, SSE, errors, response bodies, OpenAPI."""
