"""Finding and importing the user's inference module, and resolving its hooks.

The module is `SAGEMAKER_PROGRAM` (default `inference.py`) in `SAGEMAKER_SUBMIT_DIRECTORY`
(default `<model_dir>/code`), as in the SageMaker PyTorch inference containers; a
`requirements.txt` beside it is pip-installed first. Hooks the module leaves out fall back to
`serving.defaults`. Every failure raises ModelLoadError naming the file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from serving import defaults
from serving.config import ServeConfig
from serving.errors import ModelLoadError, Stopped

log = logging.getLogger("serving")


@dataclass(frozen=True, slots=True)
class Handler:
    """The resolved hooks (user's or defaults) with the toolkit's names and signatures.

    `transform_fn` replaces input/predict/output when the user defines it. The `default_*`
    flags let the server skip work the defaults do not need (text decoding of the body,
    Accept negotiation up front).
    """

    model_fn: Callable[[str], Any]
    input_fn: Callable[[Any, str], Any]
    predict_fn: Callable[[Any, Any], Any]
    output_fn: Callable[[Any, str], Any]
    transform_fn: Callable[[Any, Any, str, str], Any] | None
    model_warmup_fn: Callable[[str, Any], Any] | None
    default_input: bool
    default_output: bool
    source: str


DEFAULT_HANDLER = Handler(
    model_fn=defaults.model_fn,
    input_fn=defaults.input_fn,
    predict_fn=defaults.predict_fn,
    output_fn=defaults.output_fn,
    transform_fn=None,
    model_warmup_fn=None,
    default_input=True,
    default_output=True,
    source="defaults",
)


def install_requirements(requirements: Path) -> None:
    """pip-install `requirements` into this interpreter; raises ModelLoadError on failure.

    pip runs in a session of its own; when the wait is interrupted (Stopped: a stop signal
    during start-up), pip and everything it started (build backends, compilers) are killed
    and reaped before the exception goes on, so that none outlives `serve`.
    """
    log.info("installing %s", requirements)
    pip = subprocess.Popen(
        [sys.executable, "-m", "pip", "install", "--quiet", "-r", str(requirements)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = pip.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pip.pid, signal.SIGKILL)
        pip.wait()
        raise
    if pip.returncode != 0:
        tail = (stderr or stdout).strip()[-2000:]
        raise ModelLoadError(f"pip install -r {requirements} failed ({pip.returncode}): {tail}")


def import_module(path: Path) -> ModuleType:
    """Import the file at `path` as a module named after it, its folder on sys.path."""
    folder = str(path.parent)
    # Helper modules shipped beside inference.py must be importable from it.
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except Stopped:
        sys.modules.pop(path.stem, None)
        raise
    except BaseException as exc:
        # SystemExit or KeyboardInterrupt from the module's top level too: unloadable code.
        sys.modules.pop(path.stem, None)
        raise ModelLoadError(f"importing {path} raised {type(exc).__name__}: {exc}") from exc
    return module


def _hook(module: ModuleType, name: str) -> Callable[..., Any] | None:
    value = getattr(module, name, None)
    if value is not None and not callable(value):
        raise ModelLoadError(f"{module.__file__}: {name} is a {type(value).__name__}, not callable")
    return value


def from_module(module: ModuleType) -> Handler:
    """The hooks of `module`, defaults filling the gaps, with the toolkit's validation."""
    transform_fn = _hook(module, "transform_fn")
    input_fn = _hook(module, "input_fn")
    predict_fn = _hook(module, "predict_fn")
    output_fn = _hook(module, "output_fn")
    if transform_fn and (input_fn or predict_fn or output_fn):
        raise ModelLoadError(
            f"{module.__file__}: transform_fn cannot be combined with input_fn, predict_fn "
            "or output_fn (the toolkit refuses this too)"
        )
    model_fn = _hook(module, "model_fn")
    build_model = _hook(module, "build_model")
    if model_fn is None:
        if build_model is not None:
            builder = build_model

            def model_fn(model_dir: str) -> Any:
                return defaults.load_model(model_dir, builder)
        else:
            model_fn = defaults.model_fn
    return Handler(
        model_fn=model_fn,
        input_fn=input_fn or defaults.input_fn,
        predict_fn=predict_fn or defaults.predict_fn,
        output_fn=output_fn or defaults.output_fn,
        transform_fn=transform_fn,
        model_warmup_fn=_hook(module, "model_warmup_fn"),
        default_input=input_fn is None and transform_fn is None,
        default_output=output_fn is None and transform_fn is None,
        source=str(module.__file__),
    )


def load_handler(config: ServeConfig) -> Handler:
    """Import the user's module if there is one and return the resolved hooks.

    A missing module is fine (defaults serve a TorchScript model.pt) unless it was named
    explicitly through SAGEMAKER_PROGRAM or SAGEMAKER_SUBMIT_DIRECTORY.
    """
    path = config.program_path
    if not path.is_file():
        if config.program_required:
            raise ModelLoadError(f"inference module {path} does not exist")
        return DEFAULT_HANDLER
    requirements = path.parent / "requirements.txt"
    if requirements.is_file():
        install_requirements(requirements)
    return from_module(import_module(path))
