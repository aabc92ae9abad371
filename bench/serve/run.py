"""Benchmark `serve` against sagemaker-inference + MMS and TorchServe, side by side, same run.

Every stack serves the same TorchScript model from its own /opt/ml-shaped tree with 2 workers,
JSON in and JSON out, and is driven by the same closed-loop load generator. `--model mlp` (the
default) is an MLP 64->256->256->10; `--model demo` is the demo's own regressor
(`examples/train_regression.py`, 8->32->32->1), whose stacks with user hooks import the demo's
own `examples/inference.py` (what `make demo` writes beside its model).
The machine is shared, so load from elsewhere drifts during a run; the bench therefore
interleaves the stacks finely and compares them within each round:

1. cold start, `--cold-rounds` rounds: each stack alone, process start -> first 200 on /ping
   and -> first 200 on /invocations, then SIGTERM and a count of the processes left behind;
2. throughput: all stacks of a group up at once (idle ones cost little), each pre-warmed with
   `--prewarm` s of untimed load, then `--rounds` rounds in which every stack gets `--warmup` s
   + `--measure` s of load at each payload size in turn (the order rotating every round).

Ratios are ours / theirs within a round, then the median over rounds.

    MMS_VENV=... TS_VENV=... SPI_PATH=... .venv/bin/python -m bench.serve.run --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.common import free_port, median
from bench.serve import loadgen, spread
from bench.serve.stacks import HERE, STACKS, Stack

HOST = "127.0.0.1"
EXAMPLES = HERE.parents[1] / "examples"
# `--server-cpus`: the CPUs every stack runs on (empty: all); see main.
SERVER_CPUS = ""


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


def save_demo(path: Path) -> None:
    """The demo job's model (untrained: serving cost does not depend on the weights)."""
    import torch

    spec = importlib.util.spec_from_file_location(
        "train_regression", EXAMPLES / "train_regression.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    torch.jit.script(module.Regressor(32)).save(str(path))


@dataclass(frozen=True, slots=True)
class BenchModel:
    """A model the stacks serve: how to save it, its row width, and the user hooks that
    stacks with `user_hooks` import as `code/inference.py`."""

    name: str
    features: int
    hooks: Path
    save: Callable[[Path], None]


MODELS = {
    m.name: m
    for m in (
        BenchModel("mlp", 64, HERE / "toolkit_hooks.py", save_mlp),
        BenchModel("demo", 8, EXAMPLES / "inference.py", save_demo),
    )
}


def payload(rows: int, features: int = 64) -> bytes:
    rng = random.Random(rows)
    return json.dumps([[rng.random() for _ in range(features)] for _ in range(rows)]).encode()


def status_of(port: int, method: str, path: str, body: bytes | None = None) -> int | None:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
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


def cpu_s(sid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of session `sid`."""
    total = 0.0
    for proc in session_processes(sid):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def pss_mib(procs: list[psutil.Process]) -> float:
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_full_info().pss
    return total / 2**20


@dataclass
class Running:
    """A started stack: its entry process (leader of its own session) and where it listens."""

    stack: Stack
    proc: subprocess.Popen[bytes]
    port: int
    work: Path
    started: float
    log: Any
    # A one-row request this stack's model answers (readiness checks, pre-warming).
    probe: bytes

    @property
    def sid(self) -> int:
        return self.proc.pid


def start(
    stack: Stack, model_file: Path, work: Path, workers: int, model: BenchModel = MODELS["mlp"]
) -> Running:
    root = work / "ml"
    (root / "model").mkdir(parents=True)
    shutil.copy(model_file, root / "model" / "model.pt")
    if stack.user_hooks:
        (root / "model" / "code").mkdir()
        shutil.copy(model.hooks, root / "model" / "code" / "inference.py")
    return launch(stack, root, work, workers, payload(1, model.features))


def launch(
    stack: Stack, root: Path, work: Path, workers: int, probe: bytes | None = None
) -> Running:
    """Start `stack` serving the model tree `root` (its state and log under `work`) on a free
    port below MMS's limit; it runs in a session of its own (`stop` ends it)."""
    state = work / "state"
    state.mkdir(parents=True)
    port = free_port(host="0.0.0.0", below=32000)  # MMS refuses ports above 32767
    argv, env = stack.command(root, port, workers, state)
    if SERVER_CPUS:
        # Every process of the stack (forked workers, the JVM's threads) inherits it.
        argv = ["taskset", "--cpu-list", SERVER_CPUS, *argv]
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
    return Running(stack, proc, port, work, started, log, probe or payload(1))


def wait_ready(run: Running, deadline_s: float = 180) -> tuple[float, float]:
    """Seconds from process start to the first 200 on /ping, then on /invocations."""
    deadline = run.started + deadline_s
    times = []
    for method, path, body in (("GET", "/ping", None), ("POST", "/invocations", run.probe)):
        while status_of(run.port, method, path, body) != 200:
            if run.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{run.stack.name}: no 200 on {path}; see {run.work}")
            time.sleep(0.01)
        times.append(time.monotonic() - run.started)
    return times[0], times[1]


def stop(run: Running) -> dict[str, Any]:
    """SIGTERM the entry process; count what of its session is still alive 1 s after it
    exited (or after 30 s); then kill all of it."""
    seen = session_processes(run.sid)
    with contextlib.suppress(ProcessLookupError):
        run.proc.send_signal(signal.SIGTERM)
    began = time.monotonic()
    code: int | None
    try:
        code = run.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        code = None
    stop_s = time.monotonic() - began
    time.sleep(1.0)
    left = [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    left += [p for p in session_processes(run.sid) if p not in left]
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(run.sid, signal.SIGKILL)
    run.log.close()
    return {"exit_code": code, "stop_s": stop_s, "left_behind": len(left)}


def cold_starts(
    stacks: list[Stack], args: argparse.Namespace, model: Path, tmp: Path
) -> list[dict[str, Any]]:
    results = []
    for number in range(args.cold_rounds):
        # The order rotates every round, so that no stack always follows the same neighbour.
        for stack in stacks[number % len(stacks) :] + stacks[: number % len(stacks)]:
            work = tmp / f"cold-{stack.name}-{number}"
            run = start(stack, model, work, args.workers, MODELS[args.model])
            try:
                ping_s, first_s = wait_ready(run)
                pss = pss_mib(session_processes(run.sid))
            finally:
                stopped = stop(run)
            result = {"stack": stack.name, "round": number, "first_ping_s": ping_s}
            result |= {"first_invocation_s": first_s, "pss_loaded_mib": pss} | stopped
            print(json.dumps(result), flush=True)
            results.append(result)
            time.sleep(args.settle)
    return results


def throughput(
    group: int, stacks: list[Stack], args: argparse.Namespace, model: Path, tmp: Path
) -> list[dict[str, Any]]:
    served = MODELS[args.model]
    runs = [start(s, model, tmp / f"load{group}-{s.name}", args.workers, served) for s in stacks]
    results = []
    try:
        for run in runs:
            wait_ready(run)
        for run in runs:
            request = loadgen.build_request(
                HOST, "/invocations", run.probe, "application/json", "application/json"
            )
            loadgen.prewarm(
                HOST, run.port, request, concurrency=args.concurrency, seconds=args.prewarm
            )
        for number in range(args.rounds):
            for rows in args.rows:
                body = payload(rows, served.features)
                request = loadgen.build_request(
                    HOST, "/invocations", body, "application/json", "application/json"
                )
                shift = number % len(runs)
                for run in runs[shift:] + runs[:shift]:
                    cpu_before = cpu_s(run.sid)
                    load = loadgen.run(
                        HOST,
                        run.port,
                        request,
                        concurrency=args.concurrency,
                        warmup_s=args.warmup,
                        measure_s=args.measure,
                    )
                    # The server's CPU per request: robust to how much of the shared cores
                    # the scheduler gave each stack (its processes and threads compete with
                    # everything else running). Spread evenly over warm-up and window.
                    window = args.measure / (args.warmup + args.measure)
                    cpu = (cpu_s(run.sid) - cpu_before) * window
                    result = {"stack": run.stack.name, "group": group, "round": number}
                    result["server_cpu_ms_per_request"] = 1000 * cpu / max(1, load.requests)
                    result["rows"] = rows
                    result |= asdict(load) | {"rps": load.rps}
                    print(json.dumps(result), flush=True)
                    results.append(result)
        for run in runs:
            pss = pss_mib(session_processes(run.sid))
            results.append({"stack": run.stack.name, "group": group, "pss_after_load_mib": pss})
    finally:
        for run in runs:
            stop(run)
    return results


def med(runs: list[dict[str, Any]], key: str) -> float:
    return median([r[key] for r in runs])


def report(
    stacks: list[Stack], rows: list[int], cold: list[dict[str, Any]], load: list[dict[str, Any]]
) -> str:
    """Markdown: medians per stack, then ours / theirs paired within rounds."""

    def loads(name: str, n: int) -> list[dict[str, Any]]:
        return [r for r in load if r["stack"] == name and r.get("rows") == n]

    def colds(name: str) -> list[dict[str, Any]]:
        return [r for r in cold if r["stack"] == name]

    out = [
        "| stack | rows | req/s | p50 ms | p99 ms | client µs/req |",
        "|---|---|---|---|---|---|",
    ]
    for stack in stacks:
        for n in rows:
            runs = loads(stack.name, n)
            if runs:
                out.append(
                    f"| {stack.name} | {n} | {med(runs, 'rps'):,.0f} | {med(runs, 'p50_ms'):.2f} | "
                    f"{med(runs, 'p99_ms'):.2f} | {med(runs, 'client_cpu_us_per_request'):.0f} |"
                )
    out += [
        "",
        "| stack | first /ping s | first /invocations s | PSS loaded MiB | stop s"
        " | left after SIGTERM |",
        "|---|---|---|---|---|---|",
    ]
    for stack in stacks:
        runs = colds(stack.name)
        if runs:
            left = [r["left_behind"] for r in runs]
            out.append(
                f"| {stack.name} | {med(runs, 'first_ping_s'):.2f} | "
                f"{med(runs, 'first_invocation_s'):.2f} | {med(runs, 'pss_loaded_mib'):.0f} | "
                f"{med(runs, 'stop_s'):.1f} | {left} |"
            )
    out.append("")
    for stack in stacks:
        if stack.name == "ours":
            continue
        parts = []
        for n in rows:
            ours = {(r["group"], r["round"]): r for r in loads("ours", n)}
            pairs = [
                (ours[(r["group"], r["round"])], r)
                for r in loads(stack.name, n)
                if (r["group"], r["round"]) in ours
            ]
            if pairs:
                rps = median([o["rps"] / t["rps"] for o, t in pairs])
                p99 = median([o["p99_ms"] / t["p99_ms"] for o, t in pairs])
                parts.append(f"{n} rows {rps:.2f}x req/s at {p99:.2f}x p99")
        pairs_cold = list(zip(colds("ours"), colds(stack.name), strict=False))
        if pairs_cold:
            ping = median([o["first_ping_s"] / t["first_ping_s"] for o, t in pairs_cold])
            first = median(
                [o["first_invocation_s"] / t["first_invocation_s"] for o, t in pairs_cold]
            )
            parts.append(f"cold start {ping:.2f}x to /ping, {first:.2f}x to the first answer")
        out.append(f"- ours / {stack.name}: " + "; ".join(parts))
    return "\n".join(out)


def _cpu_list(text: str) -> set[int]:
    """The CPUs of a taskset-style list ("0", "0,2", "0-3")."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--stacks", default="ours,ours-toolkit-hooks,mms,torchserve,torchserve-omp1"
    )
    parser.add_argument("--rows", default="1,32")
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--cold-rounds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--groups",
        default="ours,ours-toolkit-hooks,mms,torchserve;ours,torchserve-omp1",
        help="stacks that run the throughput phase side by side; groups separated by ;",
    )
    # Long enough for the JVM stacks to JIT their hot paths (serving.md: the first ~15 s of load
    # run slow on them).
    parser.add_argument("--prewarm", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--measure", type=float, default=2.0)
    parser.add_argument("--settle", type=float, default=2.0, help="pause between cold starts")
    parser.add_argument(
        "--pairs",
        default="ours-toolkit-hooks/mms-hooks,ours/mms-hooks",
        help="A/B pairs whose per-round ratios are reported min-median-max",
    )
    parser.add_argument(
        "--server-cpus",
        default="",
        help="run every stack on these CPUs (taskset list, e.g. 0) and the load generator on "
        "the others, so that the client takes nothing from the server measured",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.server_cpus:
        global SERVER_CPUS  # noqa: PLW0603 (set once, before any stack starts)
        SERVER_CPUS = args.server_cpus
        server = _cpu_list(args.server_cpus)
        client = os.sched_getaffinity(0) - server
        if not client:
            parser.error(f"--server-cpus {args.server_cpus} leaves no CPU for the client")
        os.sched_setaffinity(0, client)
    args.rows = [int(n) for n in args.rows.split(",")]
    stacks = [STACKS[name] for name in args.stacks.split(",")]
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model = tmp / "model.pt"
        MODELS[args.model].save(model)
        cold = cold_starts(stacks, args, model, tmp) if args.cold_rounds else []
        load = []
        if args.rounds:
            # Two TorchServes (or two MMSs) cannot run at once: they share fixed ports and
            # socket names. Each group runs side by side, with `ours` in every group.
            for group, names in enumerate(args.groups.split(";")):
                members = [STACKS[n] for n in names.split(",") if STACKS[n] in stacks]
                load += throughput(group, members, args, model, tmp)
    text = report(stacks, args.rows, cold, load)
    names = [stack.name for stack in stacks]
    text += "\n\n" + spread.table(names, args.rows, load)
    text += "\n\n" + spread.pairs(args.pairs, args.rows, load)
    # Other work on the machine moves every number; the load average says how much there was.
    text += f"\n\nload average at start {load_start}, at end {os.getloadavg()}"
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"cold": cold, "load": load, "report": text}, indent=1))


if __name__ == "__main__":
    main()
