"""The images: what a container adds to `train`, and how big the images are.

    .venv/bin/python -m bench.bench_images --rounds 10

Needs the images (`make images`) and podman (or `--engine docker`). Each round runs, in an
order that rotates from round to round, on a fresh one-host SageMaker tree whose entry point
does nothing but note the time it started:

* `container`: `ENGINE run --rm -v TREE:/opt/ml IMAGE train`, the way SageMaker starts a job;
* `host`: `.venv/bin/train` with `SAGEMAKER_BASE_DIR=TREE`, the same job without a container;
* `engine`: `ENGINE run --rm IMAGE true`, the engine's own floor (create, start, remove).

Per contender: the median start-to-exit wall time and, for the two `train` runs, the median time
from the start to the rank's first line of Python (the rank writes `time.time()`; one kernel,
one clock). The container's added cost is container - host, and the ratio container / host.

The inference image the same way: start to the first 200 on `/ping` of `ENGINE run -p
PORT:8080 -v MODEL:/opt/ml/model SERVE_IMAGE serve` against `.venv/bin/serve` on the host, on
the same TorchScript model (a linear layer, with examples/inference.py as its hooks).

Sizes: each image's size as the engine reports it (uncompressed), against the size baselines
that AWS's Deep Learning Containers CI holds its SageMaker PyTorch CPU images to
(`image_size_baseline`, MB, in aws/deep-learning-containers: pytorch/training/buildspec-2-8-sm.yml
and pytorch/inference/buildspec-2-6-sm.yml). Results are printed as JSON; docs/benchmarks-images.md
holds a run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.common import ROOT, VENV_BIN, byte_compile, free_port, median, rotate
from tests.helpers.trees import write_tree

NOOP = """\
import os, time
with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "started"), "w") as f:
    f.write(repr(time.time()))
"""

# aws/deep-learning-containers, image_size_baseline (MB) of the SageMaker x86 CPU images.
SAGEMAKER_SIZES_MB = {
    "pytorch-training:2.8.0-cpu-py312-ubuntu22.04-sagemaker": 7200,
    "pytorch-inference:2.6.0-cpu-py312-ubuntu22.04-sagemaker": 4900,
}


def one_run(argv: list[str], env: dict[str, str], tree: Path | None) -> tuple[float, float]:
    """(start-to-exit, start-to-rank) seconds of one run; the second is NaN without a tree."""
    start = time.time()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    wall = time.time() - start
    if result.returncode != 0:
        raise SystemExit(f"{argv} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    if tree is None:
        return wall, float("nan")
    started = float((tree / "output" / "data" / "started").read_text())
    return wall, started - start


def write_model(model_dir: Path) -> None:
    """A TorchScript linear model of 8 features with examples/inference.py as its hooks."""
    import torch

    model_dir.mkdir(parents=True)
    scripted = torch.jit.script(torch.nn.Linear(8, 1))
    scripted.save(str(model_dir / "model.pt"))  # type: ignore[no-untyped-call]
    (model_dir / "code").mkdir()
    shutil.copy(ROOT / "examples" / "inference.py", model_dir / "code" / "inference.py")


def pinged(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def serve_start(who: str, engine: str, image: str, model_dir: Path, env: dict[str, str]) -> float:
    """Seconds from starting `serve` (in a container or on the host) to its first 200 on /ping;
    the server is stopped (SIGTERM) before this returns."""
    port = free_port()
    start = time.time()
    if who == "container":
        name = f"bench-images-serve-{os.getpid()}-{port}"
        argv = [engine, "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8080",
                "-v", f"{model_dir}:/opt/ml/model:ro", image, "serve"]  # fmt: skip
        subprocess.run(argv, check=True, capture_output=True, timeout=120)
    else:
        host_env = {
            **env,
            "SAGEMAKER_BASE_DIR": str(model_dir.parent),
            "SERVE_BIND_HOST": "127.0.0.1",
            "SAGEMAKER_BIND_TO_PORT": str(port),
        }
        proc = subprocess.Popen(
            [str(VENV_BIN / "serve")],
            env=host_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    try:
        while not pinged(port):
            if time.time() - start > 120:
                raise SystemExit(f"serve ({who}) did not answer /ping within 120 s")
            time.sleep(0.02)  # a poll interval, not a synchronisation
        return time.time() - start
    finally:
        if who == "container":
            subprocess.run([engine, "stop", "-t", "10", name], capture_output=True, check=False)
        else:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def image_size_mb(engine: str, image: str) -> float:
    out = subprocess.run(
        [engine, "image", "inspect", "--format", "{{.Size}}", image],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return int(out.strip()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--engine", default="podman")
    parser.add_argument("--image", default="localhost/ml-launcher:cpu")
    parser.add_argument("--serve-image", default="localhost/ml-launcher:serve")
    args = parser.parse_args()
    byte_compile()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SM_"))}
    walls: dict[str, list[float]] = {"container": [], "host": [], "engine": []}
    ranks: dict[str, list[float]] = {"container": [], "host": []}
    with tempfile.TemporaryDirectory(prefix="bench-images-") as scratch:
        for round_ in range(args.rounds + 1):  # round 0 warms the page cache; not counted
            for who in rotate(list(walls), round_):
                tree = write_tree(Path(scratch) / f"{round_}-{who}", "algo-1", ["algo-1"], {}, NOOP)
                if who == "container":
                    argv = [
                        args.engine,
                        "run",
                        "--rm",
                        "-v",
                        f"{tree}:/opt/ml",
                        args.image,
                        "train",
                    ]
                    wall, rank = one_run(argv, env, tree)
                elif who == "host":
                    host_env = {**env, "SAGEMAKER_BASE_DIR": str(tree)}
                    wall, rank = one_run([str(VENV_BIN / "train")], host_env, tree)
                else:
                    wall, rank = one_run(
                        [args.engine, "run", "--rm", args.image, "true"], env, None
                    )
                if round_ > 0:
                    walls[who].append(wall)
                    if who in ranks:
                        ranks[who].append(rank)
        model_dir = Path(scratch) / "serve" / "model"
        write_model(model_dir)
        pings: dict[str, list[float]] = {"container": [], "host": []}
        for round_ in range(args.rounds + 1):
            for who in rotate(list(pings), round_):
                took = serve_start(who, args.engine, args.serve_image, model_dir, env)
                if round_ > 0:
                    pings[who].append(took)
    wall_med = {who: median(v) for who, v in walls.items()}
    rank_med = {who: median(v) for who, v in ranks.items()}
    report = {
        "rounds": args.rounds,
        "wall_s": {who: {"median": wall_med[who], "min": min(v), "max": max(v)}
                   for who, v in walls.items()},
        "to_first_rank_s": rank_med,
        "container_added_s": wall_med["container"] - wall_med["host"],
        "container_over_host": wall_med["container"] / wall_med["host"],
        "engine_floor_share": wall_med["engine"] / wall_med["container"],
        "serve_to_first_ping_s": {who: median(v) for who, v in pings.items()},
        "serve_container_over_host": median(pings["container"]) / median(pings["host"]),
        "sizes_mb": {
            args.image: image_size_mb(args.engine, args.image),
            args.serve_image: image_size_mb(args.engine, args.serve_image),
        },
        "sagemaker_sizes_mb": SAGEMAKER_SIZES_MB,
    }  # fmt: skip
    sizes = report["sizes_mb"]
    assert isinstance(sizes, dict)
    report["size_ratios"] = {
        "cpu / sagemaker training": sizes[args.image] / 7200,
        "serve / sagemaker inference": sizes[args.serve_image] / 4900,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
