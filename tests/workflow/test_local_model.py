"""A local Hugging Face directory of a second architecture (Mistral) through the real Snakefile."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import yaml
from conftest import build_tiny_hf
from test_workflow import job_stats, snakemake

pytestmark = pytest.mark.slow


def test_local_mistral_model_finetunes_converts_and_benchmarks(tiny_tokenizer, tiny_data, tmp_path):
    hf = build_tiny_hf(tiny_tokenizer, tmp_path / "mistral-hf", arch="mistral")
    assert json.loads((hf / "config.json").read_text())["model_type"] == "mistral"
    cfg = {
        "models": [
            {
                "name": "mistral",
                "source": "local",
                "path": str(hf),
                "data": {k: str(tiny_data[k]) for k in ("sft_train", "sft_eval", "test", "heldout", "prompts")},
            }
        ],
        "finetunes": [{"name": "lora", "method": "lora", "r": 4, "alpha": 8, "steps": 3, "batch_size": 4}],
        "quants": ["Q8_0"],
        "bench": {
            "n_ctx": 64,
            "max_chunks": 2,
            "topk": 16,
            "prompt_tokens": 16,
            "gen_tokens": 8,
            "repetitions": 3,
            "max_repetitions": 4,
            "max_answer_tokens": 4,
            "depths": [0, 32],  # within the 2 x 64-token reference
        },
    }
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = snakemake(tmp_path / "run", configfile=path)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "run" / "reports" / "results.csv")))
    assert {(r["model"], r["ft"], r["variant"]) for r in rows} == {
        ("mistral", ft, v) for ft in ("base", "lora") for v in ("gguf-f16", "gguf-Q8_0")
    }
    assert all(r["status"] == "ok" and float(r["kl_mean"]) >= 0 for r in rows)


def test_a_run_larger_than_the_free_disk_is_warned_of_and_still_planned(tiny_tokenizer, tiny_data, tmp_path):
    """A Llama-2-7B-shaped model (sparse: real headers, no data) with layers enough that its GGUFs cannot
    fit the disk: the config check says so in one line before any job, and plans the whole chain."""
    from real_models import sparse_model

    layers = math.ceil(shutil.disk_usage(tmp_path).free / (2 * 2 * 202e6)) + 1  # 202 M parameters a layer
    big = sparse_model(tmp_path / "big", tiny_tokenizer, layers=layers)
    cfg = {
        "models": [{"name": "big", "source": "local", "path": str(big),
                    "data": {k: str(tiny_data[k]) for k in ("sft_train", "sft_eval", "test", "heldout", "prompts")}}],
        "finetunes": [{"name": "lora", "method": "lora", "r": 4, "alpha": 8, "steps": 3, "batch_size": 4}],
        "quants": ["Q8_0", "Q4_K_M"],
        "hf_variants": [],
        "bench": {"n_ctx": 64, "max_chunks": 2, "prompt_tokens": 16, "gen_tokens": 8, "depths": [0]},
    }
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = snakemake(tmp_path / "run", "-n", configfile=path)
    assert p.returncode == 0, p.stderr[-3000:]
    (line,) = [x for x in p.stderr.splitlines() if "under results/" in x]
    assert line.startswith("quantflow: warning: config key models: big (") and "GB free: free some space" in line
    stats = job_stats(p.stdout)
    assert stats["convert"] == 2 and stats["quantize"] == 4 and stats["finetune"] == 1, stats
