"""`serve`'s log lines: one handler on stderr, every line prefixed, as the launcher's are.

`[serve] message` from the master, `[serve worker 2] message` from the worker in readiness slot
2, so that the interleaved lines of several workers stay readable; warnings and errors say so
after the prefix (`[serve] error: invalid configuration: ...`). A traceback keeps its lines,
each prefixed too. The shape is the launcher's (`launcher/console.py`); no code is shared.

Three places write in this format: the `serving` logger, gunicorn's error log (its handler gets
this formatter, see `server`), and Python's handler of last resort (`logging.lastResort`), which
takes a record only when no handler exists anywhere on its logger's path. `serve` adds no
handler to the root logger: a user's `logging.basicConfig` or handlers on their own loggers
(at import or in `model_fn`) take effect as in any Python program, and until then their records
(and those of libraries that configure nothing) come out in this format, with the logger's
name after the prefix. The root level follows `SAGEMAKER_CONTAINER_LOG_LEVEL` (as before), so
an unconfigured user's INFO lines still show; their own `basicConfig(level=...)` overrides it.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("serving")

# Loggers whose records are `serve`'s own lines, shown without their logger name.
_OWN = ("serving", "gunicorn")


def _own(name: str) -> bool:
    return name == "root" or any(name == own or name.startswith(f"{own}.") for own in _OWN)


class Prefixed(logging.Formatter):
    """`[serve] message`, `[serve worker 2] warning: message`, `[serve] user.module: message`.

    `tag` is read at each record: a forked worker sets it once (`set_worker`) and from then on
    every handler sharing this formatter writes the worker's prefix.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tag = ""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"[serve {self.tag}] " if self.tag else "[serve] "
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        source = "" if _own(record.name) else f"{record.name}: "
        text = f"{level}{source}{record.getMessage()}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text = f"{text}\n{record.exc_text}"
        if record.stack_info:
            text = f"{text}\n{self.formatStack(record.stack_info)}"
        # Every line prefixed, a traceback's too: a line from another worker may come between.
        return "\n".join(prefix + line for line in text.split("\n"))


FORMATTER = Prefixed()


def setup_logging(level: int | str = logging.INFO) -> None:
    """Route the `serving` logger, and records no handler takes, to stderr in this format.

    Idempotent; never touches the root logger's handlers. Call again with the configured level
    (`set_level`) once the configuration is known.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FORMATTER)
    log.handlers[:] = [handler]
    log.propagate = False
    # Documented as replaceable: the handler Python uses when a record finds none at all.
    logging.lastResort = handler
    set_level(level)


def set_level(level: int | str) -> None:
    """`level` (a number or a name such as "info") for `serve`'s lines and for the root logger,
    which a user's own configuration may change afterwards. Raises ValueError for an unknown
    name (the configuration has validated it before)."""
    value = level.upper() if isinstance(level, str) else level
    log.setLevel(value)
    logging.getLogger().setLevel(value)


def set_worker(slot: int) -> None:
    """In a forked worker: prefix every line from now on with the worker's slot."""
    FORMATTER.tag = f"worker {slot}"
