"""Server-Sent Events framing: the one module that knows ``data: ...\\n\\n``.

OpenAI streams each chunk as one ``data:`` event holding compact JSON, and ends
with ``data: [DONE]``. Headers keep proxies from buffering the stream.
"""

from __future__ import annotations

from pydantic import BaseModel

MEDIA_TYPE = "text/event-stream"
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx and friends: do not buffer
}
DONE = b"data: [DONE]\n\n"


def event(payload: BaseModel) -> bytes:
    """One event; response models are sent with the fields that were set (see schemas)."""
    return frame(payload.model_dump_json(exclude_unset=True).encode())


def frame(json_bytes: bytes) -> bytes:
    """One event around JSON already serialized."""
    return b"data: " + json_bytes + b"\n\n"
