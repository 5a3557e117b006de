"""The bill of one admitted request: it settles exactly once, however the request ends."""

from __future__ import annotations

import time
from typing import Callable, Protocol

from gateway.accounts.ledger import UsageRow
from gateway.accounts.limits import Admission
from gateway.accounts.service import AccountService, Caller, Outcome


class MeteredRun(Protocol):
    """What a bill reads of the engine run it meters (``gateway.chat.completion.CompletionRun``)."""

    @property
    def engine_prompt_tokens(self) -> int: ...  # what the engine took in: reused or computed
    @property
    def cached_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def finish_reason(self) -> str | None: ...
    engine_outputs: int  # outputs the engine delivered (0: it never produced anything)
    first_token_ms: float | None
    completed: bool  # the last delta, with its finish_reason, was produced


class Bill:
    """Settles one admitted request exactly once: releases its concurrency slot and
    records its usage row, whichever way it ends. ``settle`` does no I/O, so it
    also completes inside a cancelled task. The row's prompt and cached tokens are
    what the engine took in for the request (``MeteredRun.engine_prompt_tokens``):
    the whole prompt once it produced an output, as far as its prefill got before.
    ``on_settle(outcome, row)`` runs once, after the row is recorded."""

    def __init__(self, accounts: AccountService, caller: Caller, admission: Admission, request_id: str,
                 model: str, on_settle: Callable[[Outcome, UsageRow], None] | None = None) -> None:
        self._accounts = accounts
        self._on_settle = on_settle
        self._caller = caller
        self._admission = admission
        self._request_id = request_id
        self._model = model
        self._started_at = time.time()
        self.run: MeteredRun | None = None
        self.prompt_tokens = 0
        self.failed = False
        self.error_code: str | None = None  # of an error event sent mid-stream
        self.cut_off = False  # ended by the shutdown's grace period

    # the transitions before ``settle``; nothing else changes a bill
    def prepared(self, prompt_tokens: int) -> None:
        """The prompt is tokenized: what it pays for if nothing reaches the engine."""
        self.prompt_tokens = prompt_tokens

    def running(self, run: MeteredRun) -> None:
        """The request runs on the engine: from now on its usage is the run's."""
        self.run = run

    def failed_midstream(self, error_code: str) -> None:
        """An error event ended the stream; cut off by a shutdown, it is cancelled, not an error."""
        self.failed = not self.cut_off
        self.error_code = error_code

    def crashed_midstream(self, error_code: str) -> None:
        """The gateway itself failed mid-stream: an error, whatever else happened."""
        self.failed = True
        self.error_code = error_code

    def cut_off_by_shutdown(self) -> None:
        self.cut_off = True

    def settle(self, status: str | None = None) -> None:
        """``status``: how the request ended, when the caller knows (cancelled, overloaded,
        error); else the run's finish reason, an error, or cancelled if it did not complete."""
        run = self.run
        if status is None:
            status = "error" if self.failed else (run.finish_reason if run is not None and run.completed
                                                  else "cancelled")
        outcome = Outcome(
            status=status,
            prompt_tokens=run.engine_prompt_tokens if run else self.prompt_tokens,
            cached_tokens=run.cached_tokens if run else 0,
            completion_tokens=run.completion_tokens if run else 0,
            engine_produced=bool(run and run.engine_outputs),
            ttft_ms=run.first_token_ms if run else None,
        )
        if self._admission.released:
            return
        row = self._accounts.settle(self._caller, self._admission, self._request_id, self._model, outcome,
                                    self._started_at)
        if self._on_settle is not None:
            self._on_settle(outcome, row)
