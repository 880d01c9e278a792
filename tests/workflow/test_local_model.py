"""A local Hugging Face directory of a second architecture (Mistral) through the real Snakefile."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from conftest import build_tiny_hf
from test_workflow import snakemake

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
