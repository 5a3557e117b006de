"""Helpers of the in-process gateway tests: a chat request, its SSE body, a tool."""

import json

USER = [{"role": "user", "content": "Say hello."}]


def sse_events(text: str) -> list:
    """Parse an SSE body strictly: ``data: <json>`` events separated by blank lines."""
    assert text.endswith("\n\n")
    events = []
    for block in text[:-2].split("\n\n"):
        assert block.startswith("data: ") and "\n" not in block, block
        payload = block[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


async def post(client, **fields):
    body = {"model": "electron", "messages": USER, **fields}
    return await client.post("/v1/chat/completions", json=body)


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pune"}}\n</tool_call>'
