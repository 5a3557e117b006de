"""The bill of one admitted request: it settles exactly once, however the request ends."""

from __future__ import annotations

import time

from gateway.accounts.limits import Admission
from gateway.accounts.service import AccountService, Caller, Outcome
from gateway.chat.completion import CompletionRun


class Bill:
    """Settles one admitted request exactly once: releases its concurrency slot and
    records its usage row, whichever way it ends. ``settle`` does no I/O, so it
    also completes inside a cancelled task. The row's prompt and cached tokens are
    what the engine took in for the request (``CompletionRun.engine_prompt_tokens``):
    the whole prompt once it produced an output, as far as its prefill got before."""

    def __init__(self, accounts: AccountService, caller: Caller, admission: Admission, request_id: str,
                 model: str, summary: dict, on_settle=None) -> None:
        self._accounts = accounts
        self._summary = summary
        self._on_settle = on_settle
        self._caller = caller
        self._admission = admission
        self._request_id = request_id
        self._model = model
        self._started_at = time.time()
        self.run: CompletionRun | None = None
        self.prompt_tokens = 0
        self.failed = False
        self.error_code: str | None = None  # of an error event sent mid-stream
        self.cut_off = False  # ended by the shutdown's grace period

    # the transitions before ``settle``; nothing else changes a bill
    def prepared(self, prompt_tokens: int) -> None:
        """The prompt is tokenized: what it pays for if nothing reaches the engine."""
        self.prompt_tokens = prompt_tokens

    def running(self, run: CompletionRun) -> None:
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
            self._on_settle()
        self._summary.update(status=outcome.status, cost_usd=row.cost_pico / 1e12, _gaps=run.gaps if run else None,
                             prompt_tokens=outcome.prompt_tokens,
                             cached_tokens=outcome.cached_tokens, completion_tokens=outcome.completion_tokens,
                             ttft_ms=None if outcome.ttft_ms is None else round(outcome.ttft_ms, 1),
                             first_text_ms=None if run is None or run.first_text_ms is None
                             else round(run.first_text_ms, 1),
                             engine_ttft_ms=None if run is None or run.engine_ttft_ms is None
                             else round(run.engine_ttft_ms, 1))
        if self.error_code:
            self._summary["error_code"] = self.error_code
