"""One factory of result JSONs, valid against workflow/schemas/result.schema.yaml, for every test that needs one.

``make_result(ft, variant, quant, bpw, size_mb, decode_tps, kl_mean, accuracy)`` gives an ok result in
the shape the bench stage writes; keyword arguments set the rest. Figures that the factory derives
(peak RSS = size + 40 MB, PPL = 10 (1 + KL), top-1 = 1 - KL, prompt tok/s = 10 x decode) are stated
here so that tests may rely on them.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from quantflow.variants import device_of, on_device, quant_label

MIB = 2**20
PROVENANCE = {
    "config_hash": "cafe1234",
    "llama_cpp_commit": "b4567",
    "cpu": "Test CPU @ 3GHz",
    "timestamp": "2025-01-01T00:00:00Z",
}


def dist(median: float, *, spread: float = 0.05, cv: float = 0.02, n: int = 5, ci: float | None = None) -> dict:
    """A repeated measurement: p10 / p90 at ``median * (1 -+ spread)``, a 95 % CI of +-``ci`` when given."""
    d: dict[str, Any] = {
        "median": median,
        "mean": median,
        "p10": median * (1 - spread),
        "p90": median * (1 + spread),
        "cv": cv,
        "n": n,
    }
    if ci is not None:
        d["ci95"] = [median * (1 - ci), median * (1 + ci)]
    return d


def answer(i: int, correct: bool, category: str = "math") -> dict[str, Any]:
    """Test question ``q<i>`` ("What is i plus 2?"), answered right or wrong."""
    expected = str(i + 2)
    return {
        "id": f"q{i}",
        "category": category,
        "prompt": f"Question: What is {i} plus 2?\nAnswer:",
        "expected": expected,
        "answer": expected if correct else f"wrong-{i}",
        "correct": correct,
    }


def make_result(
    ft: str = "base",
    variant: str = "gguf-Q4_K_M",
    quant: str | None = None,
    bpw: float = 4.9,
    size_mb: float = 30.0,
    decode_tps: float = 50.0,
    kl_mean: float = 0.03,
    accuracy: float = 0.45,
    *,
    model: str = "tiny-lm",
    status: str = "ok",
    reason: str | None = None,
    latency_s: float = 1.5,
    ttft_s: float = 0.05,
    prompt_tps: float | None = None,
    spread: float = 0.05,
    cv: float = 0.02,
    n: int = 5,
    ci: float | None = None,
    n_test: int = 20,
    answers: list[bool] | None = None,
    categories: list[str] | None = None,
    engine_ratio: float | None = None,
    f16_tps: float = 20.0,
    provenance: dict[str, Any] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """One result (schema_version 1); ``answers`` are right / wrong flags of questions q0, q1, ...

    ``device`` as the bench records it: a GGUF result where its name says (gpu for '@gpu'), an ok HF one
    on the CPU unless told (a failed HF result has none).

    Uncertainties the schema requires are derived: KL SE = 5 % of the mean, PPL SE = 1 % of PPL,
    top-1 SE 0.01, accuracy's interval +-0.05; a GGUF variant's paired speedup vs its f16 (decoding at
    ``f16_tps`` in the same rounds) is decode_tps / f16_tps with an interval of +-``ci`` (or +-1 %), and
    it has no flips against the f16 (McNemar p 1).
    """
    res: dict[str, Any] = {
        "schema_version": 1,
        "model": model,
        "ft": ft,
        "variant": variant,
        "format": "hf" if variant.startswith("hf-") else "gguf",
        "quant": quant or (variant if variant.startswith("hf-") else quant_label(variant)),
        "status": status,
        "reason": reason if status == "ok" or reason else "it broke",
        "provenance": dict(PROVENANCE if provenance is None else provenance),
    }
    if res["format"] == "gguf":
        res["device"] = device or device_of(variant)
    if status != "ok":
        return res
    if res["format"] == "hf":
        res["device"] = device or "cpu"
    res["device_name"] = "NVIDIA Test GPU" if res["device"] in ("gpu", "cuda") else PROVENANCE.get("cpu", "Test CPU")

    def d(median: float) -> dict[str, Any]:
        return dist(median, spread=spread, cv=cv, n=n, ci=ci)

    res["file"] = {
        "path": f"models/{model}/{ft}/{variant}.gguf",
        "bytes": int(size_mb * MIB),
        "sha256": "0" * 64,
        "n_params": 50_000_000,
        "bits_per_weight": bpw,
    }
    res["speed"] = {
        "threads": 8,
        "n_ctx": 512,
        "prompt_tokens": 128,
        "gen_tokens": 64,
        "warmup": 1,
        "load_s": d(0.2),
        "prompt_tps": d(decode_tps * 10 if prompt_tps is None else prompt_tps),
        "decode_tps": d(decode_tps),
        "ttft_s": d(ttft_s),
        "latency_s": d(latency_s),
        "rounds": n,
    }
    if res["format"] == "gguf":
        speedup = decode_tps / f16_tps
        half = speedup * (ci if ci is not None else 0.01)
        res["speed"]["f16_decode_tps"] = d(f16_tps)
        res["speed"]["speedup_vs_f16"] = {"median": speedup, "ci95": [speedup - half, speedup + half], "n": n}
    res["memory"] = {
        "peak_rss_mb": size_mb + 40.0,
        "baseline_rss_mb": 40.0,
        "model_rss_mb": size_mb,
        "use_mmap": True,
    }
    res["quality"] = {
        "n_tokens": 4096,
        "ppl": 10.0 * (1 + kl_mean),
        "kl_mean": kl_mean,
        "kl_median": kl_mean / 2,
        "kl_p99": kl_mean * 10,
        "kl_max": kl_mean * 30,
        "top1_agreement": 1.0 - kl_mean,
        "accuracy": accuracy,
        "n_test": n_test,
        "kl_mean_se": kl_mean * 0.05,
        "ppl_se": 0.1 * (1 + kl_mean),
        "top1_se": 0.01,
        "accuracy_ci95": [max(0.0, accuracy - 0.05), min(1.0, accuracy + 0.05)],
    }
    if res["format"] == "gguf":
        res["quality"].update(flips_lost=0, flips_gained=0, mcnemar_p=1.0)
    if engine_ratio is not None:
        # llama-bench on the same file: our decode median is engine_ratio of its tg.
        res["llama_bench"] = {
            "pp_tps": decode_tps * 12,
            "pp_sd": 1.0,
            "pp_tokens": 128,
            "tg_tps": decode_tps / engine_ratio,
            "tg_sd": 0.5,
            "tg_tokens": 64,
            "reps": 5,
            "threads": 8,
            "python_vs_engine_tg": engine_ratio,
            "python_vs_engine_pp": 10 / 12,
        }
    if answers is not None:
        cats = categories or ["math"] * len(answers)
        res["answers"] = [answer(i, ok, cat) for i, (ok, cat) in enumerate(zip(answers, cats, strict=True))]
    return res


# ------------------------------------------------------------------ one small run, as the report sees it

#: Training metrics of the lora fine-tune and run provenance, as the report's inputs carry them.
TRAINING = [
    {"model": "tiny-lm", "ft": "lora", "method": "lora", "trainable_params": 1_200_000,
     "total_params": 50_000_000, "trainable_pct": 2.4, "train_loss": 1.23, "eval_loss": 1.31,
     "eval_ppl": 3.71, "mean_token_accuracy": 0.61, "wall_s": 123.4, "steps": 200,
     "loss_curve": [[10, 2.9], [50, 2.1], [100, 1.6], [150, 1.35], [200, 1.23]]},
]
RUN = {
    "config_hash": "cafe1234",
    "date": "2025-01-01",
    "machine": "ci-runner",
    "versions": {"llama_cpp": "b4567", "pandas": "3.1.1"},
}

NOT_RUN_REASON = "Q2_K skipped: needs >= 2 GiB & <AVX512>"
#: (variant, quant, bits/weight, size MiB, decode tok/s, KL mean, accuracy) per fine-tune.
#: Chosen so the answers differ by group: base's fastest is Q4_K_M, lora's is Q3_K_M.
VARIANTS: dict[str, list[tuple[str, str, float, float, float, float, float]]] = {
    "base": [
        ("gguf-f16", "F16", 16.0, 100.0, 20.0, 0.0, 0.50),
        ("gguf-Q8_0", "Q8_0", 8.5, 53.0, 35.0, 0.002, 0.50),
        ("gguf-Q4_K_M", "Q4_K_M", 4.9, 30.0, 50.0, 0.03, 0.45),
        ("gguf-Q3_K_M", "Q3_K_M", 3.9, 25.0, 48.0, 0.12, 0.40),
    ],
    "lora": [
        ("gguf-f16", "F16", 16.0, 100.0, 21.0, 0.0, 0.70),
        ("gguf-Q8_0", "Q8_0", 8.5, 53.0, 36.0, 0.003, 0.69),
        ("gguf-Q4_K_M", "Q4_K_M", 4.9, 30.0, 52.0, 0.04, 0.66),
        ("gguf-Q3_K_M", "Q3_K_M", 3.9, 25.0, 55.0, 0.15, 0.55),
    ],
}
#: Our decode / llama-bench tg for the base fine-tune's results; lora's carry no llama_bench block.
ENGINE_RATIO = 0.8


def all_results() -> list[dict[str, Any]]:
    """Both groups of VARIANTS, plus a lora Q2_K that was not run."""
    results = [
        make_result(ft, *spec, engine_ratio=ENGINE_RATIO if ft == "base" else None, f16_tps=specs[0][4])
        for ft, specs in VARIANTS.items()
        for spec in specs
    ]
    results.append(make_result("lora", "gguf-Q2_K", "Q2_K", status="not_run", reason=NOT_RUN_REASON))
    return results


#: Reference right, right, wrong, wrong; Q8_0 identical; Q4_K_M loses q1 and gains q3.
ANSWERS = {
    "gguf-f16": [True, True, False, False],
    "gguf-Q8_0": [True, True, False, False],
    "gguf-Q4_K_M": [True, False, False, True],
}


def answer_results() -> list[dict[str, Any]]:
    specs = {spec[0]: spec for spec in VARIANTS["base"]}
    return [make_result("base", *specs[v], answers=a) for v, a in ANSWERS.items()]


#: base group: peak RSS = size + 40 -> f16 140, Q8_0 93, Q4_K_M 70, Q3_K_M 65 MB;
#: decode 20 / 35 / 50 / 48 tok/s; KL 0 / 0.002 / 0.03 / 0.12; accuracy 0.50 / 0.50 / 0.45 / 0.40.
LATENCY_S = {"gguf-f16": 0.40, "gguf-Q8_0": 0.25, "gguf-Q4_K_M": 0.18, "gguf-Q3_K_M": 0.19}


def budget_results() -> list[dict[str, Any]]:
    return [make_result("base", *spec, latency_s=LATENCY_S[spec[0]]) for spec in VARIANTS["base"]]


def with_similarity(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each answer scored 1.0 when right, 0.25 when wrong, as the similarity rule would merge it."""
    for r in results:
        if r.get("answers"):
            sims = [1.0 if a["correct"] else 0.25 for a in r["answers"]]
            for a, s in zip(r["answers"], sims, strict=True):
                a["similarity"] = s
            r["quality"].update(similarity_mean=sum(sims) / len(sims), similarity_min=min(sims))
    return results


def table_row(df: pd.DataFrame, ft: str, variant: str) -> pd.Series:
    """The one row of (ft, variant) in a results table."""
    rows = df[(df["ft"] == ft) & (df["variant"] == variant)]
    assert len(rows) == 1
    return rows.iloc[0]


def two_device_results(gpu_speedup: float = 10.0) -> list[dict[str, Any]]:
    """The base group of VARIANTS on the CPU and again on the GPU (``@gpu``), there ``gpu_speedup`` times as
    fast and with its peak VRAM (the file's size plus 300 MiB of context)."""
    cpu = [make_result("base", *spec, f16_tps=VARIANTS["base"][0][4]) for spec in VARIANTS["base"]]
    gpu = []
    for variant, quant, bpw, size, tps, kl, acc in VARIANTS["base"]:
        r = make_result("base", on_device(variant, "gpu"), quant, bpw, size, tps * gpu_speedup, kl, acc,
                        f16_tps=VARIANTS["base"][0][4] * gpu_speedup)
        r["memory"].update(peak_vram_mb=size + 300.0, gpu_util_mean_pct=80.0, vram_scope="process")
        gpu.append(r)
    return cpu + gpu
