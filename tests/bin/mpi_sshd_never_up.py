#!/usr/bin/env python3
"""Stands in for sshd on a host whose sshd never comes up: it starts, never listens, and waits
to be stopped (tests set LAUNCHER_SSHD to this file on that host only)."""

import signal
import sys

signal.sigwait({signal.SIGTERM, signal.SIGINT})
sys.exit(0)
