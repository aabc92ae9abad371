"""Benchmark `serve` against sagemaker-inference + MMS and TorchServe, side by side, same run.

For each stack: start it on a fresh /opt/ml-shaped tree holding the TorchScript MLP
64->256->256->10, time process start -> first 200 on /ping and -> first 200 on /invocations,
pre-warm, then drive it with the same closed-loop load generator at 1 and 32 rows per request
(JSON in, JSON out), then SIGTERM it and count the processes it left behind.

    .venv/bin/python -m bench.serve.run --stacks ours,mms,torchserve --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil

from bench.serve import loadgen
from bench.serve.stacks import HERE, STACKS, Stack


def free_port() -> int:
    """A free port below 32768: MMS rejects larger ones ("Invalid port number")."""
    while True:
        port = random.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port


def build_tree(root: Path, stack: Stack, model_file: Path) -> Path:
    (root / "model").mkdir(parents=True)
    shutil.copy(model_file, root / "model" / "model.pt")
    if stack.user_hooks:
        (root / "model" / "code").mkdir()
        shutil.copy(HERE / "toolkit_hooks.py", root / "model" / "code" / "inference.py")
    return root


def save_mlp(path: Path) -> None:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )
    torch.jit.script(net).save(str(path))  # type: ignore[no-untyped-call]


def payload(rows: int) -> bytes:
    rng = random.Random(rows)
    return json.dumps([[rng.random() for _ in range(64)] for _ in range(rows)]).encode()


def status_of(port: int, method: str, path: str, body: bytes | None = None) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        conn.close()


def session_processes(sid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def pss_mib(procs: list[psutil.Process]) -> float:
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_full_info().pss
    return total / 2**20


def bench_stack(
    stack: Stack, args: argparse.Namespace, model_file: Path, work: Path
) -> dict[str, Any]:
    root = build_tree(work / "ml", stack, model_file)
    state = work / "state"
    state.mkdir()
    port = free_port()
    argv, env = stack.command(root, port, args.workers, state)
    log = (work / "server.log").open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=state,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    sid = proc.pid
    result: dict[str, Any] = {"stack": stack.name}
    try:
        deadline = started + 120
        one = payload(1)
        while status_of(port, "GET", "/ping") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{stack.name} never answered /ping; see {work / 'server.log'}")
            time.sleep(0.01)
        result["first_ping_s"] = time.monotonic() - started
        while status_of(port, "POST", "/invocations", one) != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{stack.name} never answered /invocations")
            time.sleep(0.01)
        result["first_invocation_s"] = time.monotonic() - started
        result["pss_loaded_mib"] = pss_mib(session_processes(sid))
        request1 = loadgen.build_request(
            "127.0.0.1", "/invocations", one, "application/json", "application/json"
        )
        loadgen.run(
            "127.0.0.1",
            port,
            request1,
            concurrency=args.concurrency,
            warmup_s=args.prewarm,
            measure_s=0.001,
        )
        for rows in args.rows:
            request = loadgen.build_request(
                "127.0.0.1", "/invocations", payload(rows), "application/json", "application/json"
            )
            load = loadgen.run(
                "127.0.0.1",
                port,
                request,
                concurrency=args.concurrency,
                warmup_s=args.warmup,
                measure_s=args.measure,
            )
            result[f"rows{rows}"] = asdict(load) | {"rps": load.rps}
        result["pss_after_mib"] = pss_mib(session_processes(sid))
    finally:
        seen = session_processes(sid)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        stop_started = time.monotonic()
        code: int | None
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
        # Children get one more second past the entry process before they count as left.
        time.sleep(1.0)
        left = [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        left += [p for p in session_processes(sid) if p not in left]
        result["stop_s"] = time.monotonic() - stop_started
        result["exit_code"] = code
        result["left_behind"] = len(left)
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(sid, signal.SIGKILL)
        log.close()
    return result


def table(results: list[dict[str, Any]], rows: list[int]) -> str:
    lines = [
        "| stack | rows | req/s | p50 ms | p99 ms | client µs/req | first /ping s"
        " | first /invocations s | PSS loaded → after MiB | left after SIGTERM |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for i, n in enumerate(rows):
            load = r[f"rows{n}"]
            extra = (
                f"{r['first_ping_s']:.2f} | {r['first_invocation_s']:.2f} | "
                f"{r['pss_loaded_mib']:.0f} → {r['pss_after_mib']:.0f} | "
                f"{r['left_behind']} (exit {r['exit_code']})"
                if i == 0
                else " | | | "
            )
            name = r["stack"] if i == 0 else ""
            lines.append(
                f"| {name} | {n} | {load['rps']:,.0f} | {load['p50_ms']:.2f} | "
                f"{load['p99_ms']:.2f} | {load['client_cpu_us_per_request']:.0f} | {extra} |"
            )
    return "\n".join(lines)


def ratios(results: list[dict[str, Any]], rows: list[int]) -> str:
    ours = next((r for r in results if r["stack"] == "ours"), None)
    if ours is None:
        return ""
    lines = []
    for r in results:
        if r is ours:
            continue
        parts = [
            f"{n} rows: {ours[f'rows{n}']['rps'] / r[f'rows{n}']['rps']:.2f}x req/s, "
            f"p99 {ours[f'rows{n}']['p99_ms']:.2f} vs {r[f'rows{n}']['p99_ms']:.2f} ms"
            for n in rows
        ]
        parts.append(
            f"cold start /ping {ours['first_ping_s'] / r['first_ping_s']:.2f}x, "
            f"/invocations {ours['first_invocation_s'] / r['first_invocation_s']:.2f}x"
        )
        lines.append(f"- ours vs {r['stack']}: " + "; ".join(parts))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--stacks", default="ours,ours-toolkit-hooks,mms,torchserve,torchserve-omp1"
    )
    parser.add_argument("--rows", default="1,32")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--prewarm", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--measure", type=float, default=8.0)
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.rows = [int(n) for n in args.rows.split(",")]
    stacks = [STACKS[name] for name in args.stacks.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        model_file = Path(tmp) / "model.pt"
        save_mlp(model_file)
        for number in range(args.passes):
            for stack in stacks:
                work = Path(tmp) / f"{stack.name}-{number}"
                work.mkdir()
                try:
                    result = bench_stack(stack, args, model_file, work)
                except Exception as exc:
                    tail = (work / "server.log").read_text(errors="replace")[-3000:]
                    print(f"{stack.name}: FAILED: {exc}\n{tail}", flush=True)
                    continue
                result["pass"] = number
                results.append(result)
                print(json.dumps(result), flush=True)
    print(table(results, args.rows))
    print(ratios(results, args.rows))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
