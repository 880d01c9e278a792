"""The merge job's own check: the merged model, reloaded from disk, computes what base + adapter computed;
tied embeddings stay tied or are untied on purpose; the merge keeps the base's dtype; a broken merge fails
the job and leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from quantflow import merge as merge_mod
from quantflow.merge import MergeCheckError, compare, heldout_ids, logits, merge_checked, merge_job, problems

LORA = dict(method="lora", r=4, alpha=8, dropout=0.0, learning_rate=5e-3, steps=3, batch_size=4, max_length=48,
            warmup_steps=0, seed=11)


def tiny_model(tokenizer_dir: Path, out: Path, tied: bool, dtype=torch.float32) -> Path:
    """A random tiny Llama saved like a checkpoint, with tied embeddings or not, in ``dtype``."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from quantflow.demo import save_tokenizer

    torch.manual_seed(1)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=256,
                      tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    model.to(dtype).save_pretrained(out)
    save_tokenizer(tok, out, tokenizer_dir / "tokenizer.model")
    return out


def peft_adapter(base: Path, out: Path, **lora) -> Path:
    """A saved peft adapter with non-zero updates (random B; trained copies nudged), without training."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, init_lora_weights=False, **lora))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.mul_(0.2)
            if "modules_to_save" in n:
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tied_hf(tiny_tokenizer, tmp_path_factory) -> Path:
    return tiny_model(tiny_tokenizer, tmp_path_factory.mktemp("tied") / "hf", tied=True)


def _saved_tensors(d: Path) -> dict:
    with safe_open(d / "model.safetensors", "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _oracle(base: Path, adapter: Path, ids):
    """base + adapter as peft computes it on the base as saved (tied): independent of the merge code."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    b = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    plain = logits(b, ids)  # before peft injects its layers into b
    return logits(PeftModel.from_pretrained(b, adapter).eval(), ids), plain


def _ids(base: Path, heldout: Path):
    from transformers import AutoTokenizer

    return heldout_ids(AutoTokenizer.from_pretrained(base), heldout.read_text())


@pytest.mark.parametrize("kind", ["trl_lora_on_embed_tokens", "lora_on_lm_head", "trained_head_copy"])
def test_tied_model_with_an_adapter_on_its_embeddings_survives_save_and_reload(
    kind, tied_hf, tiny_data, tmp_path
):
    from transformers import AutoModelForCausalLM

    from quantflow.finetune import train

    if kind == "trl_lora_on_embed_tokens":  # a real trl run (trl refuses LoRA on lm_head: it reads its weight)
        adapter = tmp_path / "adapter"
        params = {**LORA, "target_modules": ["q_proj", "v_proj", "embed_tokens"]}
        train(str(tied_hf), str(tiny_data["sft_train"]), str(tiny_data["sft_eval"]), str(adapter), params, 2)
    elif kind == "lora_on_lm_head":  # merged naively, the update lands in the shared matrix, embeddings too
        adapter = peft_adapter(tied_hf, tmp_path / "adapter", target_modules=["q_proj", "lm_head"])
    else:  # a trained copy of the head (modules_to_save): the known failure is that the reload drops it
        adapter = peft_adapter(tied_hf, tmp_path / "adapter", target_modules=["q_proj"], modules_to_save=["lm_head"])
    out = tmp_path / "merged"
    check = merge_checked(tied_hf, adapter, tiny_data["heldout"], out)
    assert check["tied"] == {"base": True, "merged": False, "untied_on_purpose": True, "reloaded": False,
                             "config": False}
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    saved = _saved_tensors(out)
    assert not torch.equal(saved["lm_head.weight"], saved["model.embed_tokens.weight"])
    ids = _ids(tied_hf, tiny_data["heldout"])
    want, plain = _oracle(tied_hf, adapter, ids)
    got = logits(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval(), ids)
    assert compare(got, want)["max_abs_dlogit"] <= check["tolerance"]["max_abs_dlogit"] < 1e-3
    assert compare(plain, want)["max_abs_dlogit"] > 0.1  # the adapter changed the model; the check could see it


def test_a_tied_model_stays_tied_when_the_adapter_leaves_its_embeddings(tied_hf, tiny_data, tmp_path):
    adapter = peft_adapter(tied_hf, tmp_path / "adapter", target_modules=["q_proj", "v_proj", "down_proj"])
    out = tmp_path / "merged"
    check = merge_checked(tied_hf, adapter, tiny_data["heldout"], out)
    assert check["tied"] == {"base": True, "merged": True, "untied_on_purpose": False, "reloaded": True,
                             "config": True}
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    assert "lm_head.weight" not in _saved_tensors(out)  # one matrix on disk, as in the base


def test_a_broken_merge_fails_the_job_in_one_line_and_leaves_nothing(tied_hf, tiny_data, tmp_path, monkeypatch):
    """Without untying, LoRA on a tied head merges into the shared matrix and changes the embeddings too."""
    adapter = peft_adapter(tied_hf, tmp_path / "adapter", target_modules=["q_proj", "lm_head"])
    monkeypatch.setattr(merge_mod, "untie", lambda model: None)  # our own step, skipped: the plain peft merge
    out = tmp_path / "ft" / "hf"
    check_json = tmp_path / "ft" / "merge_check.json"
    with pytest.raises(MergeCheckError) as e:
        merge_job(tied_hf, adapter, tiny_data["heldout"], out, check_json, "lora", {"model": "m", "ft": "lora"})
    msg = str(e.value)
    assert "\n" not in msg and "reloaded from disk is wrong" in msg and "max |dlogit|" in msg and "float32" in msg
    assert not out.exists() and not check_json.exists()
    assert list(out.parent.iterdir()) == []  # no partial directory either


def test_a_trained_head_saved_under_a_tied_config_is_caught(tied_hf, tiny_data, tmp_path):
    """The known failure elsewhere: the trained head is saved, the config still says tied, and a loader that
    ties (or llama.cpp's converter, which drops lm_head for tied models) replaces it with the embeddings."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = peft_adapter(tied_hf, tmp_path / "adapter", target_modules=["q_proj"], modules_to_save=["lm_head"])
    ids = _ids(tied_hf, tiny_data["heldout"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tied_hf), adapter).eval()
    want = logits(model, ids)
    merged = model.merge_and_unload()
    merged.config.tie_word_embeddings = True  # what the saved config said before peft learnt to untie it
    merged.save_pretrained(tmp_path / "merged")
    got, tied_reloaded = merge_mod.reloaded_logits(tmp_path / "merged", "float32", ids)
    tied = {"base": True, "merged": False, "untied_on_purpose": False, "reloaded": tied_reloaded,
            "config": merge_mod.config_tied(tmp_path / "merged")}
    wrong = problems(compare(got, want), merge_mod.tolerance("float32", want), tied)
    assert any("config.json says tie_word_embeddings: true" in w for w in wrong)
    # the same save with the config telling the truth passes
    assert (
        problems(
            compare(got, want),
            merge_mod.tolerance("float32", want),
            {**tied, "config": False, "untied_on_purpose": True},
        )
        == []
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_merge_keeps_the_base_dtype(dtype, tiny_tokenizer, tiny_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    name = str(dtype).removeprefix("torch.")
    base = tiny_model(tiny_tokenizer, tmp_path / "base", tied=False, dtype=dtype)
    adapter = peft_adapter(base, tmp_path / "adapter", target_modules=["q_proj", "v_proj", "up_proj"])
    out = tmp_path / "merged"
    check = merge_checked(base, adapter, tiny_data["heldout"], out)
    assert check["dtype"] == name and check["tolerance"]["dtype"] == name
    assert {t.dtype for t in _saved_tensors(out).values()} == {dtype}  # never widened to fp32
    tol, err = check["tolerance"], check["reloaded_vs_unmerged"]
    assert tol["eps"] == torch.finfo(dtype).eps and err["max_abs_dlogit"] <= tol["max_abs_dlogit"]
    assert check["adapter_visible"]
    # the same merge in fp32 is the exact answer: the 16-bit merge is within its tolerance of it, too
    ids = _ids(base, tiny_data["heldout"])
    b32 = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    exact = logits(PeftModel.from_pretrained(b32, adapter).eval(), ids)
    got = logits(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval(), ids)
    assert compare(got, exact)["mean_abs_dlogit"] <= tol["mean_abs_dlogit"]


def test_heldout_sequences(tiny_tokenizer, tiny_data):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer)
    ids = heldout_ids(tok, tiny_data["heldout"].read_text())
    assert tuple(ids.shape) == (merge_mod.N_SEQUENCES, merge_mod.SEQ_LEN)
    assert heldout_ids(tok, "one two three", n=4, length=64).shape[0] == 1  # a short text: what there is
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        heldout_ids(tok, "")
