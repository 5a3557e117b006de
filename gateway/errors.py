"""One exception hierarchy for everything the API can refuse or fail with.

Each error knows its HTTP status and the fields of OpenAI's error envelope;
``envelope`` renders it once, for JSON responses and in-stream error events alike.
"""

from __future__ import annotations


class APIError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None
    retry_after_s = 0  # whole seconds; 0: no retry-after header

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}  # sent with the error response (retry-after, rate-limit state)
        if self.retry_after_s:  # a 503 worth retrying soon: say when, as the OpenAI SDK reads it
            self.headers = {"retry-after": str(self.retry_after_s), "retry-after-ms": str(self.retry_after_s * 1000),
                            **self.headers}
        if code is not None:
            self.code = code

    def envelope(self, request_id: str) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code, "request_id": request_id}}


class InvalidRequestError(APIError):
    """The request is malformed or asks for something unsupported (400)."""
    status = 400
    type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"


class ModelNotFoundError(InvalidRequestError):
    code = "model_not_found"


class RequestTooLargeError(APIError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class NotFoundError(APIError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowedError(APIError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class AuthenticationError(APIError):
    """No API key, or one that is unknown or disabled (401); never says which."""
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(APIError):
    """A valid key that may not do this (403): the usage endpoints need an admin key."""
    status = 403
    type = "invalid_request_error"
    code = "insufficient_permissions"


class RateLimitError(APIError):
    """Over one of the account's caps (429); ``type`` is OpenAI's: ``requests`` or ``tokens``."""
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, type: str = "requests", headers: dict[str, str] | None = None,
                 cap: str | None = None):
        super().__init__(message, headers=headers)
        self.type = type
        self.cap = cap  # concurrency, rpm or tpm (for metrics)


class EngineUnavailableError(APIError):
    """Triton cannot be reached or the model is not ready (503): try again in a second."""
    status = 503
    type = "service_unavailable_error"
    code = "engine_unavailable"
    retry_after_s = 1


class ServerOverloadedError(APIError):
    """The engine could not give the request its first token in time and refused it
    before any work (503): fail over to another replica, or retry shortly."""
    status = 503
    type = "service_unavailable_error"
    code = "server_overloaded"
    retry_after_s = 1


class ShuttingDownError(APIError):
    """The gateway is draining for a shutdown (503): another replica, or this one restarted, will answer."""
    status = 503
    type = "service_unavailable_error"
    code = "server_shutting_down"
    retry_after_s = 1

    def __init__(self, message: str = "The server is shutting down; retry the request.", **kwargs):
        super().__init__(message, **kwargs)


class EngineTimeoutError(APIError):
    """The engine produced nothing for longer than the idle timeout (504); the request was cancelled."""
    status = 504
    type = "server_error"
    code = "engine_timeout"


class EngineError(APIError):
    """The engine failed a request it had accepted (500)."""
    status = 500
    type = "server_error"
    code = "engine_error"
