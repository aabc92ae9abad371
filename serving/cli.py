"""`serve`: the console script SageMaker runs as `docker run IMAGE serve`.

Order: configuration (exit 2 when invalid), the user's hooks and, on CPU hosts, the model
(exit 1 when they cannot be loaded), then gunicorn, which forks the workers and exits 0 after
SIGTERM. A stop signal before gunicorn serves ends it with 128+N (`serving.stopping`). The exit
codes are named in `serving.errors`. This module is the only one that ends `serve` with its
status, the master's and every worker's (they return through here from `server.run`), through
`stopping.leave`; the one other exit is a worker stopped during its start-up (`app`).
Every error it understands is one prefixed line on stderr (`serving.console`), no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from serving import config as config_mod
from serving import console, stopping
from serving.errors import (
    ConfigError,
    ModelLoadError,
    ServeError,
    Stopped,
    UsageError,
    signal_exit_code,
)

log = logging.getLogger("serving")


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad command line raised as `UsageError` (one line, exit 2) instead of
    a usage block and `sys.exit` from inside argparse."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"command line: {message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    return _Parser(
        prog="serve",
        description=(
            "Serve /opt/ml/model over HTTP (GET /ping, POST /invocations) as the SageMaker "
            "inference contract specifies. Configured by SAGEMAKER_* environment variables; "
            "see docs/serving.md."
        ),
    )


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the server and end the process with its status (`serving.errors`): gunicorn's
    (0 after SIGTERM), 2 for a bad setting or command line, 1 when the model or the user's
    code cannot be loaded, and 128+N when stop signal N arrives during start-up."""
    # First of all: from here until gunicorn takes the signals over, SIGTERM, SIGINT or SIGQUIT
    # raise Stopped wherever start-up is (pip, the user's module, model_fn).
    stopping.raise_on_stop()
    try:
        console.setup_logging()
        _parser().parse_args(sys.argv[1:] if argv is None else argv)
        code = _start()
    except Stopped as stop:
        log.error("serve stopped by %s during start-up", stop.name)
        code = signal_exit_code(stop.signum)
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        code = exc.exit_code
    except ModelLoadError as exc:
        log.error("cannot load the model: %s", exc)
        code = exc.exit_code
    except ServeError as exc:
        log.error("%s", exc)
        code = exc.exit_code
    stopping.leave(code)


def _start() -> int:
    """Configure, load and serve; returns the exit status of the process it returns in (the
    master, or a worker leaving gunicorn). Raises ServeError or Stopped before serving."""
    from serving import gpus  # noqa: PLC0415

    devices = gpus.visible(os.environ)
    config = config_mod.load(
        os.environ, len(os.sched_getaffinity(0)), tuple(device.uuid for device in devices)
    )
    console.set_level(config.log_level)
    # Libraries that size their thread pools from the environment (OpenMP in torch) read it
    # once, at import: set it before anything imports them, so every worker inherits it.
    os.environ.setdefault("OMP_NUM_THREADS", str(config.threads_per_worker))

    # Imported only now, after OMP_NUM_THREADS is set: numpy's BLAS sizes its pool at import.
    from serving import server, usercode  # noqa: PLC0415
    from serving.app import App  # noqa: PLC0415
    from serving.readiness import ReadyTable  # noqa: PLC0415
    from serving.runtime import Runtime  # noqa: PLC0415

    handler = usercode.load_handler(config)
    runtime = Runtime(config, handler)
    if config.preload:
        runtime.load_model()
    elif config.multi_model:
        _preimport_torch()
    log.info(
        "serving %s with %s hooks: %d workers x %d threads, port %d, timeout %gs%s",
        config.model_dir,
        handler.source,
        config.workers,
        config.threads_per_worker,
        config.port,
        config.timeout_s,
        f", GPUs {','.join(str(device.index) for device in devices)}" if devices else "",
    )
    return server.run(config, App(runtime, ReadyTable(config.workers)))


def _preimport_torch() -> None:
    """Import torch in the master of a multi-model endpoint, which starts with no model: the
    workers inherit it across fork instead of each paying ~1 s for it on their first load."""
    import importlib  # noqa: PLC0415

    try:
        importlib.import_module("torch")
    except ImportError:
        log.debug("torch is not installed: models bring their own framework")


if __name__ == "__main__":
    main()
