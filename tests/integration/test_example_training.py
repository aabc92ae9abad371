"""The demo job (examples/train_regression.py) on 2 real gloo ranks, then its serving hooks.

Ranks are started by `spawn_ranks.run_ranks`: the real `launcher run`, or a stand-in where the
scenario needs ranks to outlive a failed peer (see spawn_ranks.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from tests.helpers.procwatch import no_leaks  # noqa: F401 - fixture
from tests.integration.spawn_ranks import run_ranks

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_regression.py"
pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.timeout(90)]


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_ranks_train_and_save_a_servable_model(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    args = ["--epochs", "4", "--max-steps", "15", "--samples", "2048", "--seed", "1"]
    run = run_ranks(
        [sys.executable, str(EXAMPLE), *args, "--unknown-hyperparameter", "x"],
        2,
        tmp_path / "job",
        env={"SM_MODEL_DIR": str(model_dir)},
        real_launcher=True,
    )
    run.check_no_survivors()
    assert [r.returncode for r in run.ranks] == [0, 0], run.describe()
    primary, other = run.ranks
    assert "training on 2 rank(s)" in primary.stdout
    losses = [float(x) for x in re.findall(r"^epoch \d+/4 loss ([\d.]+)", primary.stdout, re.M)]
    assert len(losses) == 4, primary.stdout
    assert losses[-1] < 0.6 * losses[0], losses  # it learns
    assert "epoch" not in other.stdout  # only the primary reports
    assert not primary.error_file.exists() and not other.error_file.exists()

    # The saved model is TorchScript: it loads without the training code.
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*")) == [
        "code",
        "code/inference.py",
        "model.pt",
    ]
    scripted = torch.jit.load(str(model_dir / "model.pt"))  # type: ignore[no-untyped-call]
    assert scripted(torch.zeros(3, 8)).shape == (3, 1)

    # And the copied hooks serve it: JSON rows in, one prediction per row out.
    hooks = load_module(model_dir / "code" / "inference.py")
    model = hooks.model_fn(str(model_dir))
    rows = [[0.1 * i] * 8 for i in range(4)]
    data = hooks.input_fn(json.dumps({"instances": rows}), "application/json; charset=utf-8")
    body = hooks.output_fn(hooks.predict_fn(data, model), "application/json")
    predictions = json.loads(body)
    assert len(predictions) == 4 and all(isinstance(p, float) for p in predictions)
    expected = scripted(torch.tensor(rows)).reshape(-1).tolist()
    assert predictions == pytest.approx(expected)
    one = hooks.input_fn(json.dumps(rows[0]).encode(), "application/json")
    assert one.shape == (1, 8)
    for body, ctype in (
        ("[[1, 2]]", "application/json"),
        ("1,2", "text/csv"),
        ("{", "application/json"),
    ):
        with pytest.raises(ValueError):
            hooks.input_fn(body, ctype)


LAUNCHER = str(Path(sys.executable).with_name("launcher"))


def losses(text: str) -> dict[int, float]:
    """epoch -> the loss the primary printed for it (the last time, if printed twice)."""
    found = {}
    for line in text.splitlines():
        match = re.search(r"\] epoch (\d)/3 loss ([\d.]+)", line)
        if match and ":0] " in line:
            found[int(match[1])] = float(match[2])
    return found


def test_the_demo_fails_once_resumes_from_its_checkpoint_and_the_loss_goes_on(
    tmp_path: Path,
) -> None:
    """Issue 15's demo on 2 simulated hosts: the last rank fails in epoch 2 of the first
    attempt; the job restarts by itself, resumes from epoch 1's checkpoint and finishes, with
    epochs 2 and 3 giving the losses an uninterrupted run of the same job gives."""
    args = ["--epochs", "3", "--max-steps", "15", "--samples", "2048", "--seed", "1"]
    args += ["--checkpoint-every", "1"]
    local = [LAUNCHER, "local", "--hosts", "2", "--nproc-per-host", "1", "--max-restarts", "1"]
    local += ["--job-dir", str(tmp_path / "jobs"), str(EXAMPLE), *args, "--fail-once-at", "2"]
    failed_once = subprocess.run(local, capture_output=True, text=True, timeout=80, check=False)
    assert failed_once.returncode == 0, failed_once.stderr
    text = failed_once.stdout + failed_once.stderr
    assert "RuntimeError: injected failure in epoch 2 (--fail-once-at)" in text
    assert "[launcher algo-1] warning: restarting the job as attempt 1" in text
    assert "resumed from the checkpoint of epoch 1" in text
    assert "job succeeded after 2 attempts" in text
    plain = [LAUNCHER, "run", "--nproc-per-host", "2", str(EXAMPLE), *args]
    env = {**os.environ, "LAUNCHER_CHECKPOINT_DIR": str(tmp_path / "ckpt")}
    env["SM_MODEL_DIR"] = str(tmp_path / "model")  # not /opt/ml/model
    uninterrupted = subprocess.run(
        plain, capture_output=True, text=True, timeout=60, check=False, env=env, cwd=tmp_path
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    resumed, reference = losses(text), losses(uninterrupted.stdout)
    assert sorted(resumed) == sorted(reference) == [1, 2, 3], (text, uninterrupted.stdout)
    assert resumed == pytest.approx(reference, rel=1e-4)
