"""Which closed tool calls go out to the client.

A call goes out only when it is complete and sound: its arguments parse as JSON
and match its tool's parameters schema. The guide already holds the model to
that, so a call failing it means the guide and the check disagree; it is dropped
and logged rather than sent broken. A call that exactly repeats one already sent
in the same response (same name, equal arguments) ends the choice: small models
loop on parallel calls, and no agent wants the same call twice.
"""

from __future__ import annotations

import json
import logging
from enum import Enum
from functools import lru_cache

import jsonschema

from gateway.tools.tool_calls import Call

log = logging.getLogger(__name__)


class Verdict(Enum):
    SEND = "send"
    DROP = "drop"  # not sound: never sent
    REPEAT = "repeat"  # a repeat of a sent call: the choice ends here


@lru_cache(maxsize=256)
def _validator(schema_json: str):
    schema = json.loads(schema_json)
    return jsonschema.validators.validator_for(schema)(schema)


class CallCheck:
    def __init__(self, schemas: dict[str, dict | None]) -> None:
        """``schemas``: each tool's name and its parameters schema (None: any object)."""
        self._schemas = {name: json.dumps(schema or {"type": "object"}, sort_keys=True)
                         for name, schema in schemas.items()}
        self._sent: list[tuple[str, object]] = []

    def judge(self, call: Call) -> Verdict:
        try:
            arguments = json.loads(call.arguments)
        except ValueError:
            log.warning("tool call %d to %s dropped: its arguments are not JSON", call.index, call.name)
            return Verdict.DROP
        if call.name not in self._schemas:
            log.warning("tool call %d dropped: no tool is named %r", call.index, call.name)
            return Verdict.DROP
        error = jsonschema.exceptions.best_match(_validator(self._schemas[call.name]).iter_errors(arguments))
        if error is not None:
            log.warning("tool call %d to %s dropped: its arguments do not match the schema (%s)", call.index,
                        call.name, error.message)
            return Verdict.DROP
        if (call.name, arguments) in self._sent:
            log.info("tool call %d to %s repeats an earlier call: the choice ends", call.index, call.name)
            return Verdict.REPEAT
        self._sent.append((call.name, arguments))
        return Verdict.SEND
