"""Ignore SIGTERM, announce this rank, sleep: only SIGKILL ends it."""

import signal

import _common

signal.signal(signal.SIGTERM, signal.SIG_IGN)
_common.ready()
_common.sleep_forever()
