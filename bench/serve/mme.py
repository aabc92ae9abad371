"""Multi-model endpoints: `serve` against sagemaker-inference + Multi Model Server's multi-model
mode, side by side in the same run, with the same 8 models and the same hooks.

Each model directory holds a TorchScript MLP 64->256->256->10 and `code/inference.py` =
`toolkit_hooks.py` (stdlib json in, json out), as SageMaker lays them out under
/opt/ml/models. Both servers start with SAGEMAKER_MULTI_MODEL=true and their contract's
defaults (MMS: one worker per model; `serve`: `--workers` workers, each loading on demand).

1. cold load, alternating between the servers model by model: POST /models -> 200, then the
   first 200 of POST /models/{name}/invoke; the time from the POST to that first answer;
2. throughput across the 8 models: `--concurrency` keep-alive connections, connection i
   invoking model i mod 8, `--rounds` rounds alternating the servers, `--rows` rows per request.

    MMS_VENV=... SPI_PATH=... .venv/bin/python -m bench.serve.mme --rounds 5
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.serve import loadgen, spread
from bench.serve.run import HOST, Running, launch, payload, save_mlp, status_of, stop
from bench.serve.stacks import HERE, Stack

MODELS = 8
STACKS = (
    Stack("ours-mme", "ours", extra_env=(("SAGEMAKER_MULTI_MODEL", "true"),)),
    Stack("mms-mme", "mms", extra_env=(("SAGEMAKER_MULTI_MODEL", "true"),)),
)


def _tree(base: Path, model_file: Path) -> list[Path]:
    dirs = []
    for index in range(MODELS):
        folder = base / "models" / f"m{index}" / "model"
        (folder / "code").mkdir(parents=True)
        shutil.copy(model_file, folder / "model.pt")
        shutil.copy(HERE / "toolkit_hooks.py", folder / "code" / "inference.py")
        dirs.append(folder)
    return dirs


def _start(stack: Stack, work: Path, workers: int) -> Running:
    return launch(stack, work, work, workers)  # the stacks find the models under `work`


def _request(port: int, method: str, path: str, body: bytes) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def cold_load(run: Running, name: str, url: Path) -> dict[str, Any]:
    """POST /models, then invoke until the first 200; seconds for each step."""
    body = json.dumps({"model_name": name, "url": str(url)}).encode()
    started = time.monotonic()
    status = _request(run.port, "POST", "/models", body)
    if status != 200:
        raise RuntimeError(f"{run.stack.name}: POST /models {name} answered {status}")
    loaded = time.monotonic()
    while _request(run.port, "POST", f"/models/{name}/invoke", payload(1)) != 200:
        if time.monotonic() - started > 120:
            raise RuntimeError(f"{run.stack.name}: {name} never answered")
        time.sleep(0.01)
    answered = time.monotonic()
    return {"load_s": loaded - started, "first_answer_s": answered - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prewarm", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--measure", type=float, default=2.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    load_start = os.getloadavg()
    cold: list[dict[str, Any]] = []
    load: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="serve-mme-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model = tmp / "model.pt"
        save_mlp(model)
        runs = []
        try:
            for stack in STACKS:
                work = tmp / stack.name
                runs.append((_start(stack, work, args.workers), _tree(work, model)))
            for run, _ in runs:
                deadline = time.monotonic() + 180
                while status_of(run.port, "GET", "/ping") != 200:
                    if run.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{run.stack.name}: /ping never 200; see {run.work}")
                    time.sleep(0.05)
            for index in range(MODELS):
                order = runs if index % 2 == 0 else runs[::-1]
                for run, dirs in order:
                    result = {"stack": run.stack.name, "model": index}
                    result |= cold_load(run, f"m{index}", dirs[index])
                    print(json.dumps(result), flush=True)
                    cold.append(result)
            body = payload(args.rows)
            requests = [
                loadgen.build_request(
                    HOST, f"/models/m{i}/invoke", body, "application/json", "application/json"
                )
                for i in range(MODELS)
            ]
            for run, _ in runs:
                loadgen.prewarm(
                    HOST, run.port, requests, concurrency=args.concurrency, seconds=args.prewarm
                )
            for number in range(args.rounds):
                order = runs if number % 2 == 0 else runs[::-1]
                for run, _ in order:
                    measured = loadgen.run(
                        HOST,
                        run.port,
                        requests,
                        concurrency=args.concurrency,
                        warmup_s=args.warmup,
                        measure_s=args.measure,
                    )
                    result = {"stack": run.stack.name, "group": 0, "round": number}
                    result |= {"rows": args.rows} | asdict(measured) | {"rps": measured.rps}
                    print(json.dumps(result), flush=True)
                    load.append(result)
        finally:
            for run, _ in runs:
                stop(run)
    names = [stack.name for stack in STACKS]
    lines = ["| stack | cold load: POST /models s | POST -> first answer s |", "|---|---|---|"]
    for name in names:
        mine = [r for r in cold if r["stack"] == name]
        lines.append(
            f"| {name} | {spread.mmm([r['load_s'] for r in mine], '.2f')} | "
            f"{spread.mmm([r['first_answer_s'] for r in mine], '.2f')} |"
        )
    text = "\n".join(lines) + "\n\n" + spread.table(names, [args.rows], load)
    text += "\n\n" + spread.pairs("ours-mme/mms-mme", [args.rows], load)
    text += f"\n\nload average at start {load_start}, at end {os.getloadavg()}"
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"cold": cold, "load": load, "report": text}, indent=1))


if __name__ == "__main__":
    main()
