"""The contract's errors. Triton carries an error response as a message only, so each
typed error has a fixed first word that the other side reads back."""

from __future__ import annotations

OVERLOADED = "server_overloaded"  # the first word of a refusal for overload (the gateway answers 503)


class InvalidRequest(ValueError):
    """The request's tensors break the contract; the message names the input and is sent
    back to the client as it is."""


class Overloaded(RuntimeError):
    """The engine refuses a request it could not start in time. ``str()`` is the wire
    message: it begins with ``OVERLOADED``."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"{OVERLOADED}: {detail}")


def is_overloaded(message: str) -> bool:
    """Whether an error message from an engine is an ``Overloaded`` refusal."""
    return OVERLOADED in message
