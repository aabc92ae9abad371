"""The serving stacks under test: how to start each one on a port with a model tree.

Reference stacks live in their own virtual environments (see docs/benchmarks-serving.md for
the install commands); their locations come from MMS_VENV, TS_VENV and SPI_PATH (the
`sagemaker_pytorch_serving_container` package of sagemaker-pytorch-inference, put on the MMS
stack's PYTHONPATH for its default PyTorch handler).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUR_SERVE = str(Path(sys.executable).with_name("serve"))


@dataclass(frozen=True, slots=True)
class Stack:
    """One server to benchmark: argv and environment, given a tree and a port."""

    name: str
    kind: str  # "ours", "mms" or "torchserve"
    user_hooks: bool = False  # copy toolkit_hooks.py to model/code/inference.py
    extra_env: tuple[tuple[str, str], ...] = ()

    def command(
        self, base_dir: Path, port: int, workers: int, state_dir: Path
    ) -> tuple[list[str], dict[str, str]]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SERVE_"))}
        env.pop("OMP_NUM_THREADS", None)
        env.update(
            SAGEMAKER_BASE_DIR=str(base_dir),
            SAGEMAKER_BIND_TO_PORT=str(port),
            SAGEMAKER_MODEL_SERVER_WORKERS=str(workers),
            BENCH_STATE_DIR=str(state_dir),
        )
        env.update(dict(self.extra_env))
        if self.kind == "ours":
            return [OUR_SERVE], env
        venv = Path(os.environ["MMS_VENV" if self.kind == "mms" else "TS_VENV"])
        env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(venv)
        entry = HERE / "refstacks" / ("mms_entry.py" if self.kind == "mms" else "ts_entry.py")
        if self.kind == "mms":
            env["PYTHONPATH"] = os.environ["SPI_PATH"]
        return [str(venv / "bin" / "python"), str(entry)], env


STACKS = {
    s.name: s
    for s in (
        Stack("ours", "ours"),
        Stack("ours-toolkit-hooks", "ours", user_hooks=True),
        # The same-hooks comparison: both servers import toolkit_hooks.py as code/inference.py.
        Stack("mms-hooks", "mms", user_hooks=True),
        # Dynamic batching on, with our default delay (serving/config.py).
        Stack("ours-batch", "ours", extra_env=(("SAGEMAKER_TS_BATCH_SIZE", "8"),)),
        # Batches as large as the requests one worker sees at 32 connections over 2 workers.
        Stack("ours-batch16", "ours", extra_env=(("SAGEMAKER_TS_BATCH_SIZE", "16"),)),
        Stack(
            "ours-toolkit-hooks-batch",
            "ours",
            user_hooks=True,
            extra_env=(("SAGEMAKER_TS_BATCH_SIZE", "8"),),
        ),
        Stack("mms", "mms"),
        Stack("torchserve", "torchserve"),
        Stack("torchserve-omp1", "torchserve", extra_env=(("OMP_NUM_THREADS", "1"),)),
    )
}
