"""Errors of the inference server, each carrying the HTTP status it maps to.

`HttpError` subclasses are what `/invocations` answers with a JSON error body; user code may
raise them too (for example `UnsupportedContentType` from its own `input_fn`). Any other
exception escaping user code becomes a 500 whose body names the exception type and message.
`ConfigError`, `UsageError`, `ModelLoadError` and `ServerError` never reach a client: they stop
`serve` before it listens, each with its `exit_code`. `Stopped` is no error at all: a stop
signal during start-up (see `serving.stopping`).

The exit codes are `serve`'s own table, with the launcher's meanings (`launcher/errors.py`;
no code is shared between the two packages): 0 success, 1 failure, 2 bad input, 128+N for a
process stopped by signal N. `cli` is the only module that ends `serve` with one of them (a
worker stopped during its start-up leaves with `EXIT_SUCCESS` on its own, see `app`).
"""

from __future__ import annotations

import signal

EXIT_SUCCESS = 0
EXIT_FAILURE = 1  # the model or the user's code cannot be loaded; gunicorn refused to start
EXIT_USAGE = 2  # bad configuration or command line
# gunicorn's own status when a worker could not boot (its model failed to load in the worker,
# on GPU hosts); `serve` passes gunicorn's status through, so this one is gunicorn's meaning.
EXIT_WORKER_BOOT = 3


def signal_exit_code(signum: int) -> int:
    """128+N, the shell's convention (and the launcher's) for a process stopped by signal N."""
    return 128 + signum


class ServeError(Exception):
    """Base of every error this package raises on purpose. `exit_code` is what `serve` exits
    with when the error stops it before it serves."""

    exit_code: int = EXIT_FAILURE


class ConfigError(ServeError):
    """A serving setting (environment variable or path) is invalid; `serve` exits 2."""

    exit_code = EXIT_USAGE

    def __init__(self, name: str, value: str, reason: str) -> None:
        super().__init__(f"{name}={value!r}: {reason}")
        self.name = name
        self.value = value
        self.reason = reason


class UsageError(ServeError):
    """The command line is wrong (`serve` takes no arguments but --help); `serve` exits 2."""

    exit_code = EXIT_USAGE


class ModelLoadError(ServeError):
    """The model or the user's inference code could not be loaded; `serve` exits 1."""


class ServerError(ServeError):
    """gunicorn refused to start with the settings it was given; `serve` exits 1."""


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


class Stopped(BaseException):
    """A stop signal (SIGTERM, SIGINT, SIGQUIT) arrived while `serve` was starting.

    Raised by the start-up signal handler of `serving.stopping` in the main thread, wherever the
    start-up was (pip, the user's module, `model_fn`). A BaseException, so that user code's
    `except Exception` around a slow load does not swallow it; the hooks' callers let it through
    unchanged. `serve` then ends with 128 + `signum`.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        """The signal's name, e.g. SIGTERM."""
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"


_MAX_MESSAGE = 2000


def client_message(exc: BaseException) -> str:
    """What the client is told about `exc`: its message, without any embedded traceback.

    TorchScript errors carry the interpreter's traceback inside the message; the client gets
    only its last line (the error itself). Long messages are cut.
    """
    message = str(getattr(exc, "message", None) or exc)
    if "Traceback of TorchScript" in message:
        lines = [line for line in message.splitlines() if line.strip()]
        message = lines[-1] if lines else message
    return message[:_MAX_MESSAGE]


def status_of(exc: BaseException) -> int | None:
    """The integer `status_code` (400-599) an exception carries, as the toolkit's
    GenericInferenceToolkitError does; None otherwise."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 400 <= status <= 599:
        return status
    return None
