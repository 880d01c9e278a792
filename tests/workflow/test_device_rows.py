"""gguf_devices: [cpu, gpu] through the real Snakefile on a machine without a CUDA GPU: the CPU rows are
measured, every @gpu row is a failed result with one actionable line, the report still builds, and the
GPU rows' jobs are the ones that request a GPU."""

from __future__ import annotations

import csv
import json
import re

import pytest
import yaml
from test_workflow import snakemake

from quantflow import devices

pytestmark = pytest.mark.slow

REASON = (
    "llama.cpp here was built without CUDA (llama_supports_gpu_offload() is false); rebuild with make venv "
    "on a machine with a CUDA GPU, or drop gpu from gguf_devices"
)


def _config(tiny_hf, tiny_data, tmp_path):
    cfg = {
        "models": [{"name": "tiny", "source": "local", "path": str(tiny_hf),
                    "data": {k: str(tiny_data[k]) for k in ("sft_train", "sft_eval", "test", "heldout", "prompts")}}],
        "finetunes": [],
        "quants": ["Q8_0"],
        "gguf_devices": ["cpu", "gpu"],
        "bench": {"n_ctx": 64, "max_chunks": 2, "topk": 16, "prompt_tokens": 16, "gen_tokens": 8, "repetitions": 3,
                  "max_repetitions": 3, "max_answer_tokens": 4, "depths": [0]},
    }
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.skipif(devices.cuda_in_build(), reason="llama.cpp here has CUDA: scripts/gpu_check.sh runs the GPU rows")
def test_gpu_rows_fail_with_their_reason_and_the_report_builds(tiny_hf, tiny_data, tmp_path):
    configfile = _config(tiny_hf, tiny_data, tmp_path)
    dry = snakemake(tmp_path / "run", "-n", "-p", configfile=configfile)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "gguf_devices lists gpu but the llama.cpp installed here was built without CUDA" in dry.stderr
    # The bench jobs' resources: a GPU for the @gpu rows, none for the CPU's.
    jobs = [j for j in dry.stdout.split("\nrule ") if j.startswith("bench:")]
    gpu = {re.search(r"bench/(\S+)\.json", j)[1]: bool(re.search(r"resources:.*\bgpu=1\b", j)) for j in jobs}
    assert gpu == {"gguf-f16": False, "gguf-Q8_0": False, "gguf-f16@gpu": True, "gguf-Q8_0@gpu": True}

    p = snakemake(tmp_path / "run", configfile=configfile)
    assert p.returncode == 0, p.stderr[-3000:]
    run = tmp_path / "run"
    rows = {r["variant"]: r for r in csv.DictReader(open(run / "reports" / "results.csv"))}
    assert set(rows) == {"gguf-f16", "gguf-Q8_0", "gguf-f16@gpu", "gguf-Q8_0@gpu"}
    for v in ("gguf-f16", "gguf-Q8_0"):
        assert rows[v]["status"] == "ok" and rows[v]["device"] == "cpu" and rows[v]["device_name"], rows[v]
        assert rows[v]["peak_vram_mb"] == ""  # a CPU row samples no GPU
    for v in ("gguf-f16@gpu", "gguf-Q8_0@gpu"):
        assert (rows[v]["status"], rows[v]["reason"], rows[v]["device"]) == ("failed", f"{v}: {REASON}", "gpu")
        result = json.loads((run / "results" / "tiny" / "base" / "bench" / f"{v}.json").read_text())
        assert result["device"] == "gpu" and result["quant"] in ("F16", "Q8_0") and "speed" not in result
    q8 = json.loads((run / "results" / "tiny" / "base" / "bench" / "gguf-Q8_0.json").read_text())
    assert q8["llama_bench"]["n_gpu_layers"] == 0 and q8["llama_bench"]["backends"] == "CPU"
    md = (run / "reports" / "summary.md").read_text(encoding="utf-8")
    assert "**tiny / base**: " in md  # one device measured: the verdict reads as on a CPU-only run
    failed = [line for line in md.splitlines() if line.startswith("| tiny | base | gguf-Q8_0@gpu | failed |")]
    assert failed == [f"| tiny | base | gguf-Q8_0@gpu | failed | gguf-Q8_0@gpu: {REASON} |"]
    recs = json.loads((run / "reports" / "results.json").read_text())["recommendations"]
    assert {r["device"] for r in recs} == {"cpu"} and all(r["variant"] is None or "@" not in r["variant"] for r in recs)
