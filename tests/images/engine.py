"""The container engine the image tier drives, and the scope that cleans up after each test.

`find_engine()` picks the first engine that can start a container here: `$ML_IMAGES_ENGINE`
when set, else podman, else docker (the two take the same `run`/`stop`/`wait`/`network`
arguments). It returns the engine, or the reason none can run, which the tier shows as its skip
reason. `scripts/build-images.sh` builds the images the tier runs (podman, no registry).

`Scope` gives every container and network a test creates one label, `ml-launcher-test=<id>`,
and a name that starts with `mlt-`; `Scope.close()` removes them all and fails the test,
naming them, when a container was still running or anything with the label survived removal.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CPU_IMAGE = os.environ.get("ML_IMAGES_CPU", "localhost/ml-launcher:cpu")
SERVE_IMAGE = os.environ.get("ML_IMAGES_SERVE", "localhost/ml-launcher:serve")
LABEL = "ml-launcher-test"


class EngineError(AssertionError):
    """An engine command that failed; the message holds its argv, exit code and stderr."""


@dataclass(frozen=True)
class Engine:
    """One container engine CLI (`podman` or `docker`) at `path`."""

    path: str

    @property
    def name(self) -> str:
        return Path(self.path).name

    def run(
        self, *args: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `ENGINE args...`; raise EngineError when `check` and it exits non-zero."""
        argv = [self.path, *args]
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        if check and result.returncode != 0:
            raise EngineError(f"{argv} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def has_image(self, image: str) -> bool:
        return self.run("image", "inspect", image, check=False).returncode == 0

    def exit_code(self, container: str) -> int:
        """The exit code of a container that has exited."""
        out = self.run("inspect", "--format", "{{.State.ExitCode}}", container).stdout
        return int(out.strip())

    def logs(self, container: str) -> str:
        result = self.run("logs", container, check=False)
        return result.stdout + result.stderr


def find_engine() -> Engine | str:
    """The engine that can run containers here, or why there is none (a skip reason)."""
    wanted = os.environ.get("ML_IMAGES_ENGINE")
    names = [wanted] if wanted else ["podman", "docker"]
    reasons = []
    for name in names:
        path = shutil.which(name)
        if path is None:
            reasons.append(f"{name}: not installed")
            continue
        try:
            info = subprocess.run(
                [path, "info"], capture_output=True, text=True, timeout=30, check=False
            )
        except subprocess.TimeoutExpired:
            reasons.append(f"{name}: `{name} info` hung")
            continue
        if info.returncode == 0:
            return Engine(path)
        last = (info.stderr.strip().splitlines() or ["no output"])[-1]
        reasons.append(f"{name}: {last}")
    return "no container engine can run here (" + "; ".join(reasons) + ")"


@dataclass
class Scope:
    """Names, labels and cleans up the containers and networks of one test."""

    engine: Engine
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    _count: int = 0

    def name(self, what: str) -> str:
        """A unique container or network name for `what` (mlt-<id>-<what>-<n>)."""
        self._count += 1
        return f"mlt-{self.id}-{what}-{self._count}"

    @property
    def label(self) -> str:
        return f"{LABEL}={self.id}"

    def start(self, image: str, command: Sequence[str], *options: str, name: str) -> str:
        """`run -d` a labelled container; returns its name."""
        self.engine.run(
            "run", "-d", "--name", name, "--label", self.label, *options, image, *command
        )
        return name

    def network(self) -> str:
        """A new labelled bridge network whose names resolve between its containers."""
        name = self.name("net")
        self.engine.run("network", "create", "--label", self.label, name)
        return name

    def _containers(self, *status: str) -> list[str]:
        filters = [f"--filter=label={self.label}"] + [f"--filter=status={s}" for s in status]
        out = self.engine.run("ps", "-a", "--format", "{{.Names}}", *filters).stdout
        return out.split()

    def _networks(self) -> list[str]:
        fmt = "{{.Name}}"
        out = self.engine.run("network", "ls", "--format", fmt, f"--filter=label={self.label}")
        return out.stdout.split()

    def close(self) -> None:
        """Remove everything labelled; raise EngineError naming what ran on or survived."""
        running = self._containers("running")
        for container in self._containers():
            self.engine.run("rm", "-f", "-t", "0", container, check=False)
        for network in self._networks():
            self.engine.run("network", "rm", network, check=False)
        left = self._containers() + self._networks()
        if running or left:
            raise EngineError(f"still running at the end of the test: {running}; left: {left}")
