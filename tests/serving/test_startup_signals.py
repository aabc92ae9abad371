"""SIGTERM or SIGINT to `serve` while it is still starting: inside model_fn in the master
(CPU hosts preload), inside model_fn in every worker (GPU hosts), and while pip installs the
module's requirements. serve stops at once with 128+N, no traceback, nothing left running."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.helpers.procwatch import LeakWatch
from tests.helpers.waiting import wait_for
from tests.serving.conftest import make_tree
from tests.serving.serverproc import ServeProcess, ping

pytestmark = [
    pytest.mark.timeout(60),
    # The tests build their models with torch.jit, which torch 2.13 marks deprecated.
    pytest.mark.filterwarnings("ignore:`torch.jit.* is deprecated:DeprecationWarning"),
]


def assert_stopped_cleanly(server: ServeProcess, signum: int) -> None:
    """serve exits 128+N promptly with one line naming the signal, and no traceback."""
    started = time.monotonic()
    code = server.wait_exit(timeout=15)
    log = server.log()
    assert code == 128 + signum, log
    assert time.monotonic() - started < 10, log
    assert f"serve stopped by {signal.Signals(signum).name} during start-up" in log
    assert "Traceback" not in log, log


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
@pytest.mark.parametrize("preload", ["true", "false"], ids=["in-master", "in-workers"])
def test_stop_signal_while_model_fn_loads_exits_128_plus_n(
    tmp_path: Path, mlp_file: Path, no_leaks: LeakWatch, preload: str, signum: int
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)  # model_fn blocks opening it: a load that ends only by a signal
    root = make_tree(tmp_path / "ml", mlp_file, inference="blocking_load.py")
    server = ServeProcess(
        root,
        tmp_path / "serve.log",
        SERVE_PRELOAD_MODEL=preload,
        LOAD_MARKERS=str(markers),
        LOAD_FIFO=str(fifo),
    )
    try:
        loaders = 1 if preload == "true" else 2
        wait_for(
            lambda: len(list(markers.iterdir())) == loaders or server.proc.poll() is not None,
            30,
            "model_fn to start",
        )
        assert server.proc.poll() is None, server.log()
        server.remember()
        in_model_fn = {int(marker.name) for marker in markers.iterdir()}
        if preload == "true":
            assert in_model_fn == {server.proc.pid}
        else:
            assert in_model_fn == set(server.workers())
            assert ping(server.port) in (None, 503)  # listening, not ready
        server.signal(signum)
        assert_stopped_cleanly(server, signum)
    finally:
        server.stop()  # asserts that no process of its tree (workers included) survived


@contextlib.contextmanager
def silent_index() -> Iterator[socket.socket]:
    """A loopback 'package index' that accepts connections and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(45)
        yield listener


def test_sigterm_while_pip_installs_requirements_stops_pip_too(
    tmp_path: Path, mlp_file: Path, no_leaks: LeakWatch
) -> None:
    root = make_tree(tmp_path / "ml", mlp_file, inference="triggers.py")
    with silent_index() as index:
        port = index.getsockname()[1]
        (root / "model" / "code" / "requirements.txt").write_text(
            f"--index-url http://127.0.0.1:{port}/simple/\n"
            "--trusted-host 127.0.0.1\n"
            "serve-test-package-that-does-not-exist\n"
        )
        server = ServeProcess(
            root,
            tmp_path / "serve.log",
            PIP_CONFIG_FILE=os.devnull,
            PIP_DISABLE_PIP_VERSION_CHECK="1",
            NO_PROXY="127.0.0.1",
            no_proxy="127.0.0.1",
        )
        try:
            # pip's request arriving here is how the test knows pip is running.
            conn, _ = index.accept()
            with conn:
                server.remember()
                pips = [
                    p
                    for p in psutil.Process(server.proc.pid).children(recursive=True)
                    if "pip" in " ".join(p.cmdline())
                ]
                assert pips, server.log()
                server.signal(signal.SIGTERM)
                assert_stopped_cleanly(server, signal.SIGTERM)
                for pip in pips:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        assert pip.status() == psutil.STATUS_ZOMBIE, f"pip {pip.pid} survived"
        finally:
            server.stop()
