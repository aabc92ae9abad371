"""Shared test configuration: the process-leak checker is available to every tier, and every
test leaves the process's signal handlers as it found them."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

pytest_plugins = ["tests.helpers.procwatch"]

# The handlers the launcher installs in-process (forwarding, lingering, raising on stop).
_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


@pytest.fixture(autouse=True)
def _restore_signal_handlers() -> Iterator[None]:
    """A test that runs the launcher in-process may leave its lingering handler installed (by
    design: a launcher ignores stop signals once its ranks ended); the next test must not see it."""
    before = {sig: signal.getsignal(sig) for sig in _HANDLED}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)
