"""`serve`: the console script SageMaker runs as `docker run IMAGE serve`.

Order: configuration (exit 2 when invalid), the user's hooks and, on CPU hosts, the model
(exit 1 when they cannot be loaded), then gunicorn, which forks the workers and exits 0 after
SIGTERM. A stop signal before gunicorn serves ends it with 128+N (`serving.stopping`). Only
this module, `server.run` and a worker stopped during its start-up end the process.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from serving import config as config_mod
from serving import stopping
from serving.errors import ConfigError, ModelLoadError, Stopped

log = logging.getLogger("serving")


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="serve",
        description=(
            "Serve /opt/ml/model over HTTP (GET /ping, POST /invocations) as the SageMaker "
            "inference contract specifies. Configured by SAGEMAKER_* environment variables; "
            "see docs/serving.md."
        ),
    )


def main(argv: list[str] | None = None) -> None:
    """Run the server; exits 2 for bad configuration, 1 when the model cannot be loaded, and
    128+N when stop signal N arrives during start-up (before gunicorn serves)."""
    # First of all: from here until gunicorn takes the signals over, SIGTERM, SIGINT or SIGQUIT
    # raise Stopped wherever start-up is (pip, the user's module, model_fn).
    stopping.raise_on_stop()
    try:
        _parser().parse_args(sys.argv[1:] if argv is None else argv)
        logging.basicConfig(
            level=logging.INFO,
            format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
            stream=sys.stderr,
        )
        _start()
    except Stopped as stop:
        log.error("serve stopped by %s during start-up", stop.name)
        stopping.leave(stopping.exit_status(stop.signum))


def _start() -> None:
    from serving.gpus import visible_gpus  # noqa: PLC0415

    try:
        config = config_mod.load(os.environ, len(os.sched_getaffinity(0)), visible_gpus(os.environ))
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        sys.exit(2)
    logging.getLogger().setLevel(config.log_level.upper())
    # Libraries that size their thread pools from the environment (OpenMP in torch) read it
    # once, at import: set it before anything imports them, so every worker inherits it.
    os.environ.setdefault("OMP_NUM_THREADS", str(config.threads_per_worker))

    # Imported only now, after OMP_NUM_THREADS is set: numpy's BLAS sizes its pool at import.
    from serving import server, usercode  # noqa: PLC0415
    from serving.app import App  # noqa: PLC0415
    from serving.readiness import ReadyTable  # noqa: PLC0415
    from serving.runtime import Runtime  # noqa: PLC0415

    try:
        handler = usercode.load_handler(config)
        runtime = Runtime(config, handler)
        if config.preload:
            runtime.load_model()
    except ModelLoadError as exc:
        log.error("cannot load the model: %s", exc)
        sys.exit(1)
    log.info(
        "serving %s with %s hooks: %d workers x %d threads, port %d, timeout %gs%s",
        config.model_dir,
        handler.source,
        config.workers,
        config.threads_per_worker,
        config.port,
        config.timeout_s,
        f", GPUs {','.join(config.gpu_ids)}" if config.gpu_ids else "",
    )
    server.run(config, App(runtime, ReadyTable(config.workers)))


if __name__ == "__main__":
    main()
