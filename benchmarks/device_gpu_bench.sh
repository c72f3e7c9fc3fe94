#!/usr/bin/env bash
# The GPU benchmark in one call, for a session lent a device machine (an H100 or H200).
#
# That machine has torch, numpy, pillow, safetensors, tqdm and pyyaml already, so
# nothing is installed: hbpn runs from the copied working tree via PYTHONPATH.
# From the device tool, in the repository root (about 3-6 minutes; 540 s leaves
# room for the machine's start within one call):
#
#     run(command="bash benchmarks/device_gpu_bench.sh", timeout_s=540)
#
# then give_back. Extra arguments go to gpu_bench.py (e.g. --modes fp32,bf16).
# Results: $OUT/gpu_bench.md, $OUT/gpu_bench.json, $OUT/gpu_bench.log, $OUT/nvidia-smi.txt.
# Copy the table into docs/PERFORMANCE.md with the device line of the reply.
set -euo pipefail
OUT=${OUT:-./gpu-bench-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt" || true
# --deadline-s keeps the whole call inside the tool's 10-minute limit; the script
# rewrites its JSON and table after every row, so a cut-short run still reports.
timeout 500 python3 benchmarks/gpu_bench.py --out "$OUT" --deadline-s 420 "$@" 2>&1 | tee "$OUT/gpu_bench.log"
