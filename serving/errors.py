"""Errors of the inference server, each carrying the HTTP status it maps to.

`HttpError` subclasses are what `/invocations` answers with a JSON error body; user code may
raise them too (for example `UnsupportedContentType` from its own `input_fn`). Any other
exception escaping user code becomes a 500 whose body names the exception type and message.
`ConfigError` and `ModelLoadError` never reach a client: they stop `serve` before it listens.
"""

from __future__ import annotations


class ServeError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ServeError):
    """A serving setting (environment variable or path) is invalid; `serve` exits 2."""

    def __init__(self, name: str, value: str, reason: str) -> None:
        super().__init__(f"{name}={value!r}: {reason}")
        self.name = name
        self.value = value
        self.reason = reason


class ModelLoadError(ServeError):
    """The model or the user's inference code could not be loaded; `serve` exits 1."""


class HttpError(ServeError):
    """An error answered to the client with `status` and a JSON body `{error, message}`."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(HttpError):
    """The payload cannot be decoded as its content type claims (malformed JSON, CSV, NPY)."""

    status = 400


class NotFound(HttpError):
    """No such route."""

    status = 404


class MethodNotAllowed(HttpError):
    """The route exists but not for this method."""

    status = 405


class NotAcceptable(HttpError):
    """No encoding named in the request's Accept header can be produced."""

    status = 406


class PayloadTooLarge(HttpError):
    """The request body is above the payload limit (6 MB for real-time endpoints)."""

    status = 413


class UnsupportedContentType(HttpError):
    """The request's Content-Type is not one the input hook decodes."""

    status = 415


class InternalError(HttpError):
    """User code raised, or returned something that cannot be sent."""

    status = 500


class RequestTimeout(HttpError):
    """The request ran past SAGEMAKER_MODEL_SERVER_TIMEOUT; answered as 504."""

    status = 504
