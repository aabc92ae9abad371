#!/usr/bin/env bash
# The whole GPU tier in one run, sized for a short loan of a GPU machine (under 8 minutes):
#
#   1. pytest tests/gpu                      real NVML discovery, NCCL across the local GPUs
#   2. launcher preflight (quick)            one host: inventory, matmul TFLOPS, memory and
#                                            host-to-device bandwidth, NCCL busbw within the host
#   3. python -m collectives.bench (NCCL)    all_reduce busbw across the local GPUs
#   4. hang detection with NCCL              a rank stops joining all_reduce: exit 124 expected
#
# Usage: scripts/gpu-tier.sh [VENV]   (default .venv; run from the repository root)
#
# Every step has its own time limit; the script goes on after a failed step and exits 1 if
# any failed. Figures are printed with the card's name (nvidia-smi), and preflight.json and
# the bench's JSON lines are kept under $OUT (or a temporary folder).
set -u -o pipefail

VENV=${1:-.venv}
PY="$VENV/bin/python"
LAUNCHER="$VENV/bin/launcher"
WORK=${OUT:-$(mktemp -d -t gpu-tier-XXXXXX)}
mkdir -p "$WORK"
failed=0

step() {
    # step NAME SECONDS COMMAND...: run COMMAND with a time limit, say how it went.
    local name=$1 limit=$2
    shift 2
    local began=$SECONDS
    echo "=== $name (limit ${limit}s)"
    if timeout --kill-after=10 "$limit" "$@"; then
        echo "=== $name: ok in $((SECONDS - began)) s"
    else
        echo "=== $name: FAILED (exit $?) after $((SECONDS - began)) s"
        failed=1
    fi
}

if ! command -v nvidia-smi >/dev/null; then
    echo "no nvidia-smi: this is no GPU machine" >&2
    exit 2
fi
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
GPUS=$(nvidia-smi -L | grep -c '^GPU ')
echo "card: $CARD x $GPUS"
nvidia-smi --query-gpu=index,name,driver_version,memory.total,power.limit --format=csv

step "tests/gpu" 150 "$PY" -m pytest -p no:cacheprovider -q tests/gpu

# A one-host SageMaker tree for `launcher preflight` (tests/helpers/trees.py writes it).
"$PY" - "$WORK/tree" <<'PYEOF'
import sys
from pathlib import Path

from tests.helpers.trees import write_tree

write_tree(Path(sys.argv[1]), "algo-1", ["algo-1"], {}, "print('never runs')\n")
PYEOF
step "launcher preflight (quick)" 120 env SAGEMAKER_BASE_DIR="$WORK/tree" \
    LAUNCHER_CHECKPOINT_DIR="$WORK/checkpoints" "$LAUNCHER" preflight
"$PY" - "$WORK/tree/output/preflight.json" "$CARD" <<'PYEOF'
import json
import statistics
import sys

try:
    doc = json.load(open(sys.argv[1]))
except OSError as e:
    sys.exit(f"no preflight.json: {e}")
print(f"preflight on {sys.argv[2]}: {doc['seconds']} s, passed={doc['passed']}")
for check in ("gpu.matmul", "gpu.membw", "gpu.h2d", "allreduce.host"):
    values = [r["value"] for r in doc["rows"] if r["check"] == check]
    if values:
        unit = next(r["unit"] for r in doc["rows"] if r["check"] == check)
        print(f"  {check}: median {statistics.median(values):g} {unit}"
              f" (min {min(values):g}, max {max(values):g}, n={len(values)})")
for r in doc["rows"]:
    if r["verdict"] in ("FAIL", "WARN"):
        print(f"  {r['verdict']} {r['check']} GPU {r['gpu']}: {r['value']} {r['unit']} {r['detail']}")
PYEOF

step "collectives.bench all_reduce (NCCL)" 150 "$LAUNCHER" run --nproc-per-host gpu \
    -m collectives.bench --backend nccl --ops all_reduce --min-bytes 1M --max-bytes 1G \
    --factor 4 --iters 10 --warmup 3

if [ "$GPUS" -ge 2 ]; then
    cat >"$WORK/nccl_hang.py" <<'PYEOF'
"""Two NCCL ranks all_reduce; rank 1 stops joining at step 3 (the launcher must say: hung)."""
import time

import torch

import collectives

env = collectives.init("nccl")
x = torch.ones(1024, device="cuda")
for step in range(1000):
    if env.rank == 1 and step == 3:
        while True:
            time.sleep(3600)
    collectives.all_reduce(x)
    torch.cuda.synchronize()
    time.sleep(0.05)
PYEOF
    echo "=== hang detection with NCCL (exit 124 expected)"
    began=$SECONDS
    timeout --kill-after=10 120 "$LAUNCHER" run --nproc-per-host 2 --hang-timeout 15 \
        --output-dir "$WORK/hang-out" "$WORK/nccl_hang.py"
    code=$?
    if [ "$code" -eq 124 ]; then
        echo "=== hang detection with NCCL: ok (124) in $((SECONDS - began)) s"
        head -n 3 "$WORK/hang-out/failure"
    else
        echo "=== hang detection with NCCL: FAILED (exit $code)"
        failed=1
    fi
else
    echo "=== hang detection with NCCL: skipped (needs 2 GPUs, $GPUS here)"
fi

echo "card: $CARD; work folder: $WORK"
exit "$failed"
