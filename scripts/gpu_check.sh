#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA GPU (nvidia-smi lists it): builds llama.cpp with CUDA, runs
# the GPU tests, then benchmarks a tiny demo model's f16, Q8_0 and Q4_K_M on the CPU and on the GPU
# through the real Snakefile, and prints tok/s, peak VRAM and llama-bench -ngl 99 beside ours.
#
#   bash scripts/gpu_check.sh [WORKDIR]      # WORKDIR: where the tiny run goes (default: a new temp dir)
#
# Needs what `make venv` needs (cmake, a C++ compiler, the package index) plus a CUDA toolkit or the
# package index's NVIDIA wheels (see README, GPU). Stops at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d "${TMPDIR:-/tmp}/quantflow-gpu.XXXXXX")}
PY=.venv/bin/python

echo "==> GPU(s)"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader

echo "==> make venv (llama.cpp with CUDA)"
time make venv LLAMA_CUDA=on
test "$(cat .venv/.llama-flavour)" = cuda
$PY -c 'import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else "llama.cpp sees no GPU")'

echo "==> GPU tests"
$PY -m pytest -q tests/unit/test_gpu.py tests/unit/test_telemetry.py tests/unit/test_devices.py tests/unit/test_setup.py

echo "==> tiny run: f16, Q8_0, Q4_K_M on cpu and gpu (in $work)"
cat > "$work/gpu.yaml" <<'YAML'
finetunes: []
quants: [Q8_0, Q4_K_M]
imatrix: {types: []}
hf_variants: []
gguf_devices: [cpu, gpu]
YAML
time .venv/bin/snakemake -d "$work" --configfile tests/configs/tiny.yaml "$work/gpu.yaml" --cores "$(nproc)"

echo "==> figures (ours: median decode tok/s; llama-bench: tg at the same depth, -ngl 0 / 99)"
$PY - "$work" <<'PYTHON'
import sys
from pathlib import Path

import pandas as pd

df = pd.read_csv(Path(sys.argv[1]) / "reports" / "results.csv")
cols = ["variant", "device", "status", "decode_tps", "speedup_vs_f16", "engine_tg_tps", "python_vs_engine_tg",
        "prompt_tps", "engine_pp_tps", "peak_vram_mb", "gpu_util_mean_pct", "peak_rss_mb", "kl_mean", "device_name"]
print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
bad = df[df["status"] != "ok"]
if len(bad):
    sys.exit(f"not ok: {', '.join(bad['variant'])}: {bad['reason'].iloc[0]}")
gpu = df[df["device"] == "gpu"]
if len(gpu) != 3 or not (gpu["peak_vram_mb"] > 0).all():
    sys.exit("expected 3 GPU rows with peak VRAM measured")
PYTHON
echo "==> report: $work/reports/summary.md"
