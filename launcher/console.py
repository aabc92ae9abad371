"""The launcher's own log lines: one handler on stderr, every line prefixed.

`[launcher] message`, or `[launcher algo-2] message` in multi-host jobs so that interleaved
logs of several hosts stay readable; warnings and errors say so after the prefix.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("launcher")


class Prefixed(logging.Formatter):
    def __init__(self, tag: str) -> None:
        super().__init__()
        self._tag = f"[launcher {tag}] " if tag else "[launcher] "

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"{self._tag}{level}{record.getMessage()}"


def setup_logging(tag: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Prefixed(tag))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
