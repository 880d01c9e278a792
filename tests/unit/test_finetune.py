"""A real trl/peft training run on a tiny model: steps, determinism, merge == base + adapter.

The fine-tune data's reader: tests/unit/test_sft_data.py; the merge job's check: tests/unit/test_merge.py."""

import json

import pytest
import torch
from safetensors.torch import load_file

from quantflow.finetune import train
from quantflow.merge import merge_checked

PARAMS = dict(
    method="lora",
    r=4,
    alpha=8,
    dropout=0.0,
    target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
    learning_rate=5e-3,
    steps=3,
    batch_size=4,
    max_length=48,
    warmup_steps=0,
    seed=11,
)


@pytest.fixture(scope="module")
def adapter(tiny_hf, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "adapter"
    metrics = train(str(tiny_hf), str(tiny_data["sft_train"]), str(tiny_data["sft_eval"]), str(out), PARAMS, threads=2)
    return out, metrics


@pytest.mark.parametrize("method", ["qlora8", "qlora4", "full"])
def test_every_method_trains_and_merges_exactly(method, tiny_hf, tiny_data, tmp_path):
    """Real optimizer steps per method; the merged fp32 model equals base + adapter (or the trained model)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    params = {**PARAMS, "method": method}
    out = tmp_path / "adapter"
    m = train(str(tiny_hf), str(tiny_data["sft_train"]), str(tiny_data["sft_eval"]), str(out), params, threads=2)
    assert m["steps"] == 3 and m["method"] == method
    if method == "full":
        assert m["trainable_params"] == m["total_params"]
    else:
        assert 0 < m["trainable_pct"] < 50
        assert (out / "adapter_config.json").exists()
    check = merge_checked(tiny_hf, out, tiny_data["heldout"], tmp_path / "merged", method)
    assert check["dtype"] == "float32" and check["method"] == method
    if method.startswith("qlora"):  # how far the merged fp32 model is from the quantized one it was trained on
        d = check["qlora_drift"]
        assert 0 < d["mean_kl"] <= d["max_kl"] and 0 < d["max_abs_dlogit"] and 0 <= d["top1_agreement"] <= 1
    else:
        assert "qlora_drift" not in check
    x = torch.tensor([[1, 20, 30, 40, 50, 60, 70]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_hf, dtype=torch.float32)
        if method == "full":
            want = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()(x).logits
        else:
            # The adapter applied to the full-precision base: what the merged model must equal.
            want = PeftModel.from_pretrained(base, out).eval()(x).logits
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()(x).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_hf, dtype=torch.float32).eval()(x).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-4)
    merged_dtypes = {t.dtype for t in load_file(tmp_path / "merged" / "model.safetensors").values()}
    assert merged_dtypes == {torch.float32}  # never merged into quantized weights


def test_training_metrics(adapter):
    _, m = adapter
    assert m["steps"] == 3
    assert 0 < m["trainable_params"] < m["total_params"]
    assert m["trainable_pct"] == pytest.approx(100 * m["trainable_params"] / m["total_params"])
    for k in (
        "train_loss",
        "eval_loss",
        "eval_ppl",
        "mean_token_accuracy",
        "train_samples_per_s",
        "wall_s",
        "peak_rss_mb",
    ):
        assert m[k] == m[k] and m[k] >= 0, k  # not NaN
    json.dumps(m)


def test_same_seed_same_adapter(adapter, tiny_hf, tiny_data, tmp_path):
    out, _ = adapter
    train(str(tiny_hf), str(tiny_data["sft_train"]), str(tiny_data["sft_eval"]), str(tmp_path / "a2"), PARAMS, 2)
    a = load_file(out / "adapter_model.safetensors")
    b = load_file(tmp_path / "a2" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the B matrices start at zero; after real optimizer steps they are not
    assert any(k.endswith("lora_B.weight") and a[k].abs().sum() > 0 for k in a)


def test_merged_logits_equal_base_plus_adapter(adapter, tiny_hf, tiny_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _ = adapter
    check = merge_checked(tiny_hf, out, tiny_data["heldout"], tmp_path / "merged")
    err, tol = check["reloaded_vs_unmerged"], check["tolerance"]
    assert err["max_abs_dlogit"] <= tol["max_abs_dlogit"] and err["mean_abs_dlogit"] <= tol["mean_abs_dlogit"]
    assert check["adapter_visible"] and check["adapter_effect"]["max_abs_dlogit"] > 100 * tol["max_abs_dlogit"]
    assert (tmp_path / "merged" / "tokenizer.model").exists()
    x = torch.tensor([[1, 20, 30, 40, 50, 60, 70]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_hf, dtype=torch.float32)
        want = PeftModel.from_pretrained(base, out).eval()(x).logits
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()(x).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_hf, dtype=torch.float32).eval()(x).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-4)  # the adapter changed something
