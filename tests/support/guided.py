"""A chat request prepared with a tiny template and codec: the guided-request tests'
(and the guide backends') way to see the guide and prompt a request becomes."""

import json

from gateway.chat.chat_request import ChatLimits, prepare_chat
from gateway.chat.chat_template import ChatTemplate
from gateway.chat.wire_request import parse_body

LIMITS = ChatLimits(served_model="electron", context_window=100_000, vocab_size=1000, max_messages=20,
                    end_id=2, pad_id=2)
TEMPLATE = ChatTemplate("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
                        "{% if add_generation_prompt %}[assistant]{% endif %}")
WEATHER = {"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": ["string", "null"]}},
    "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time"}}


class CharCodec:
    vocab_size = 1000

    def encode(self, text):
        return [ord(c) % 1000 for c in text]


class PromptCodec(CharCodec):
    def encode(self, text):
        self.text = text
        return super().encode(text)


def run(limits=LIMITS, **fields):
    data = {"model": "electron", "messages": [{"role": "user", "content": "Weather in Pune?"}], **fields}
    codec = PromptCodec()
    return prepare_chat(parse_body(json.dumps(data).encode()), limits, TEMPLATE, codec), codec.text
