"""A model whose engine process died under a Triton that lives on.

When the python backend's stub process of a model instance dies, this Triton
build keeps the model READY and answers every request "Stub process
'<instance>' is not healthy", and the requests that were running on it get no
further response at all. ``is_dead_model_error`` recognises that answer; the
engine then reports it as ``EngineUnavailableError`` (503 with ``retry-after``:
the model server must restart the model, see ``gateway.server.triton_supervisor``)
and tells its ``DeadModelGuard``, which ends the engine's live requests at once
(they would otherwise wait out the idle timeout) and keeps the engine unready
until the model answers again: any output of a request, or of the readiness
probe (``PROBE``, one token) that ``ready()`` sends while the model is marked
dead, shows that it does.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from gateway.engine.protocol import EngineRequest

log = logging.getLogger(__name__)

_DEAD_STUB = re.compile(r"stub process .* is not healthy", re.IGNORECASE)
PROBE = EngineRequest(prompt=[0], max_tokens=1, temperature=0.0)
PROBE_REQUEST_ID = "ready-probe"


def is_dead_model_error(message: str) -> bool:
    """Triton's answer to a request for a model instance whose process is gone."""
    return _DEAD_STUB.search(message) is not None


@dataclass(eq=False)
class LiveRequest:
    call: object  # what ``cancel()`` stops: the request's gRPC stream
    aborted: bool = False  # cancelled because the model died under it


class DeadModelGuard:
    """Whether the model was last seen dead, and the engine's live requests."""

    def __init__(self) -> None:
        self.dead_since: float | None = None  # monotonic; None: not seen dead, or answering again
        self._live: set[LiveRequest] = set()

    @property
    def dead(self) -> bool:
        return self.dead_since is not None

    def track(self, call) -> LiveRequest:
        live = LiveRequest(call)
        self._live.add(live)
        return live

    def untrack(self, live: LiveRequest) -> None:
        self._live.discard(live)

    def seen_dead(self, message: str) -> None:
        """A request was answered ``message`` (``is_dead_model_error``): the live requests end now."""
        if self.dead_since is None:
            self.dead_since = time.monotonic()
            log.error("the model's engine process is dead (%s): ending %d live requests, not ready until it "
                      "answers again", message, len(self._live))
        for live in list(self._live):
            self._live.discard(live)
            live.aborted = True
            live.call.cancel()

    def seen_alive(self) -> None:
        if self.dead_since is not None:
            log.warning("the model answers again after %.1f s", time.monotonic() - self.dead_since)
            self.dead_since = None
