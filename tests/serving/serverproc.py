"""A real `serve` process on loopback for the tests, and the clients that talk to it.

`ServeProcess` starts the console script in its own session with an /opt/ml-shaped tree,
waits for `/ping` with a deadline (polling, never sleeping blind), remembers every process of
the server's tree, and on `stop()` SIGTERMs the master and checks that none of them survived.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

SERVE = str(Path(sys.executable).with_name("serve"))
MLP_SHAPE = (64, 256, 256, 10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One keep-alive HTTP connection to the server."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        self.conn.request(method, path, body=body, headers=headers or {})
        response = self.conn.getresponse()
        data = response.read()
        if response.getheader("connection", "").lower() == "close":
            self.conn.close()
        return Answer(response.status, response.getheader("content-type", ""), data)

    def invoke(
        self, body: bytes, content_type: str | None = "application/json", accept: str | None = None
    ) -> Answer:
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if accept is not None:
            headers["Accept"] = accept
        return self.request("POST", "/invocations", body, headers)

    def close(self) -> None:
        self.conn.close()


def ping(port: int, timeout: float = 2.0) -> int | None:
    """The status of one GET /ping on a fresh connection, None if nothing answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/ping")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


class ServeProcess:
    """`serve` started on a free loopback port with `base_dir` as SAGEMAKER_BASE_DIR."""

    def __init__(self, base_dir: Path, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        full_env = dict(os.environ)
        for name in list(full_env):
            if name.startswith(("SAGEMAKER_", "SERVE_")) or name == "OMP_NUM_THREADS":
                del full_env[name]
        full_env.update(
            SAGEMAKER_BASE_DIR=str(base_dir),
            SAGEMAKER_BIND_TO_PORT=str(self.port),
            SERVE_BIND_HOST="127.0.0.1",
            SAGEMAKER_MODEL_SERVER_WORKERS="2",
        )
        full_env.update(env)
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [SERVE],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started = time.monotonic()
        self.known: dict[int, psutil.Process] = {}

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def remember(self) -> None:
        """Record the master and its current children, for the leak check in `stop`."""
        with contextlib.suppress(psutil.NoSuchProcess):
            master = psutil.Process(self.proc.pid)
            self.known.setdefault(master.pid, master)
            for child in master.children(recursive=True):
                self.known.setdefault(child.pid, child)

    def workers(self) -> list[int]:
        """Pids of the master's live children, sorted."""
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        pids = sorted(c.pid for c in children if c.status() != psutil.STATUS_ZOMBIE)
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                self.known.setdefault(pid, psutil.Process(pid))
        return pids

    def wait_ready(self, deadline_s: float = 30.0) -> float:
        """Poll /ping until 200; returns seconds since start. Fails if the server exits."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.log()}")
            if ping(self.port, timeout=1.0) == 200:
                self.remember()
                return time.monotonic() - self.started
            time.sleep(0.02)
        raise AssertionError(f"serve not ready after {deadline_s} s:\n{self.log()}")

    def client(self) -> Client:
        return Client(self.port)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int:
        """SIGTERM the master, wait, and assert no process of its tree survives."""
        self.remember()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=20)
        finally:
            leftovers = [p for p in self.known.values() if _alive(p)]
            for proc in leftovers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self._log.close()
        assert not leftovers, f"processes survived serve: {[p.pid for p in leftovers]}"
        return code


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@contextlib.contextmanager
def running(base_dir: Path, log_path: Path, **env: str) -> Iterator[ServeProcess]:
    server = ServeProcess(base_dir, log_path, **env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def build_mlp(path: Path) -> None:
    """Save the TorchScript MLP 64->256->256->10 of serving.md at `path`."""
    import torch

    torch.manual_seed(0)
    a, b, c, d = MLP_SHAPE
    model = torch.nn.Sequential(
        torch.nn.Linear(a, b),
        torch.nn.ReLU(),
        torch.nn.Linear(b, c),
        torch.nn.ReLU(),
        torch.nn.Linear(c, d),
    )
    torch.jit.script(model).save(str(path))  # type: ignore[no-untyped-call]
