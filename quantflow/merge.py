"""Merging a fine-tune into its base, and proving it: the saved model, reloaded from disk, computes
what base + adapter computed, on held-out text.

The merge is done in the base's own dtype (bf16 stays bf16: a 7B model in fp32 needs twice the
memory and gains nothing the weights held), never into a quantized base: QLoRA adapters merge onto
the base's full-precision weights, and the merged model's drift from the quantized model the adapter
was trained on is measured and recorded.

Tied embeddings: a tied model stays tied, unless the adapter trains ``embed_tokens`` or ``lm_head``.
A LoRA on a tied layer merges its update into the one shared matrix, which changes the other layer
too; a trained copy (``modules_to_save``) is lost on reload if the saved config still says tied, as
the reload ties the head back to the embeddings. Such a model is untied on purpose (the head gets its
own copy before merging, and the config says ``tie_word_embeddings: false``), and the reloaded logits
show whether that worked.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

from .demo import save_tokenizer

log = logging.getLogger(__name__)

N_SEQUENCES = 4
SEQ_LEN = 64
HELDOUT_BYTES = 1 << 16  # enough text for N_SEQUENCES x SEQ_LEN tokens with any tokenizer

# Tolerances, in units of the merge dtype's machine epsilon times the logit scale (max |logit| of
# base + adapter, at least 1). Merging rounds each weight once to the dtype, where the unmerged model
# rounds base and adapter outputs separately: the two differ by rounding noise that grows with the
# dtype's epsilon and the logits' size. Measured on random Llama models (2 and 8 layers, LoRA r 8 on
# attention and MLP): max |dlogit| ~2.6 eps x scale and mean ~0.33 for bf16 and fp16; ~13 and ~1.7
# for fp32 (whose epsilon is so small that accumulation order dominates). The bounds leave 12x (16-bit)
# and 80x (fp32) room for deeper, wider models; a broken merge (a lost head, a doubly applied
# update) is off by the size of the logits themselves, far above either.
TOLERANCE_EPS = {"float32": (1024, 64), "bfloat16": (32, 4), "float16": (32, 4)}  # (max, mean)
EMBEDDING_TYPES = ("embed_tokens", "lm_head")


class MergeCheckError(RuntimeError):
    """The merged model, reloaded, does not compute what base + adapter computed."""


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def heldout_ids(tokenizer, text: str, n: int = N_SEQUENCES, length: int = SEQ_LEN):
    """Up to ``n`` consecutive held-out sequences of ``length`` tokens (fewer, or shorter, on a short text)."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise ValueError("the held-out text has fewer than 2 tokens; the merge check needs some held-out text")
    length = min(length, len(ids))
    n = max(1, min(n, len(ids) // length))
    return torch.tensor([ids[i * length : (i + 1) * length] for i in range(n)])


def logits(model, ids):
    """fp32 logits on the CPU, wherever the model runs (a QLoRA base is loaded on the GPU when there is one)."""
    import torch

    with torch.no_grad():
        return model(input_ids=ids.to(model.device)).logits.float().cpu()


def compare(got, want) -> dict:
    """max and mean |dlogit| and top-1 agreement of two logit tensors of the same tokens."""
    d = (got - want).abs()
    return {
        "max_abs_dlogit": float(d.max()),
        "mean_abs_dlogit": float(d.mean()),
        "top1_agreement": float((got.argmax(-1) == want.argmax(-1)).float().mean()),
    }


def drift(quantized, merged) -> dict:
    """How far the merged model is from the quantized one: mean / max KL(quantized || merged) per token, |dlogit|."""
    import torch.nn.functional as F

    lq, lm = F.log_softmax(quantized, -1), F.log_softmax(merged, -1)
    kl = (lq.exp() * (lq - lm)).sum(-1)
    return {"mean_kl": float(kl.mean()), "max_kl": float(kl.max()), **compare(merged, quantized)}


def tolerance(dtype: str, want) -> dict:
    import torch

    eps = torch.finfo(torch_dtype(dtype)).eps
    scale = max(1.0, float(want.abs().max()))
    k_max, k_mean = TOLERANCE_EPS[dtype]
    return {"dtype": dtype, "eps": eps, "logit_scale": scale, "max_abs_dlogit": k_max * eps * scale,
            "mean_abs_dlogit": k_mean * eps * scale, "eps_factors": {"max": k_max, "mean": k_mean}}


def is_tied(model) -> bool:
    """Input and output embeddings are one tensor (the same storage, as the reload makes them when tied)."""
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or inp is None:
        return False
    return _weight(out).data_ptr() == _weight(inp).data_ptr()


def _weight(module):
    """The weight a layer computes with, under any peft wrapper (LoRA layer, modules_to_save copy)."""
    while True:
        if hasattr(module, "base_layer"):
            module = module.base_layer
        elif hasattr(module, "original_module"):
            module = module.original_module
        else:
            return module.weight


def adapter_touches_embeddings(peft_model) -> bool:
    """The adapter trains embed_tokens or lm_head (LoRA on them, or a trained copy in modules_to_save)."""
    base = peft_model.get_base_model()
    layers = (base.get_input_embeddings(), base.get_output_embeddings())
    return any(m is not None and (hasattr(m, "base_layer") or hasattr(m, "original_module")) for m in layers)


def untie(model) -> None:
    """Give the output embedding its own copy of the shared matrix; the config says untied from now on."""
    import torch

    inner = model.get_output_embeddings()
    while hasattr(inner, "base_layer") or hasattr(inner, "original_module"):
        inner = getattr(inner, "base_layer", None) or inner.original_module
    inner.weight = torch.nn.Parameter(inner.weight.detach().clone(), requires_grad=False)
    for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        cfg.tie_word_embeddings = False


def reloaded_logits(hf_dir: str | Path, dtype: str, ids) -> tuple:
    """(logits, tied) of the model saved in ``hf_dir``, loaded from disk as any later stage will load it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch_dtype(dtype)).eval()
    return logits(model, ids), is_tied(model)


def problems(err: dict, tol: dict, tied: dict) -> list[str]:
    """What is wrong with a reloaded merge (none: it passed): its logits, its embeddings' tying."""
    out = []
    if err["max_abs_dlogit"] > tol["max_abs_dlogit"] or err["mean_abs_dlogit"] > tol["mean_abs_dlogit"]:
        out.append(
            f"max |dlogit| {err['max_abs_dlogit']:.3g} / mean {err['mean_abs_dlogit']:.3g} from base + adapter "
            f"(tolerance {tol['max_abs_dlogit']:.3g} / {tol['mean_abs_dlogit']:.3g} for {tol['dtype']})"
        )
    if tied["base"] and not tied["untied_on_purpose"] and not tied["reloaded"]:
        out.append("the base has tied embeddings and the reloaded merged model does not")
    if tied["reloaded"] != tied["merged"]:
        out.append(f"embeddings {'tied' if tied['merged'] else 'untied'} when saved, not so when reloaded")
    if tied["config"] and not tied["merged"]:
        out.append(
            "config.json says tie_word_embeddings: true but lm_head differs from embed_tokens (a loader that "
            "ties them, or llama.cpp's converter, would replace the trained head)"
        )
    return out


def config_tied(hf_dir: str | Path) -> bool:
    """tie_word_embeddings as the saved config.json says (transformers' default, true, when it is absent)."""
    from transformers import AutoConfig

    return bool(AutoConfig.from_pretrained(hf_dir).get_text_config().tie_word_embeddings)


def merge_checked(
    base_dir: str | Path, adapter_dir: str | Path, heldout: str | Path, out_dir: str | Path, method: str = "lora"
) -> dict:
    """Merge ``adapter_dir`` (or, for a full fine-tune, the model saved there) in ``base_dir``'s dtype,
    save it to ``out_dir``, reload it and check it; return the check's figures, or raise MergeCheckError.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .finetune import load_base
    from .inputs import hf_dtype
    from .memory import check_merge_memory, peak_rss_mb

    t0 = time.perf_counter()
    base_dir, adapter_dir, out = Path(base_dir), Path(adapter_dir), Path(out_dir)
    dtype = hf_dtype(base_dir)
    has_adapter = (adapter_dir / "adapter_config.json").exists()
    check_merge_memory(base_dir, adapter_dir, dtype, method, N_SEQUENCES * SEQ_LEN)  # before loading anything
    tok = AutoTokenizer.from_pretrained(base_dir)
    with open(heldout, encoding="utf-8", errors="replace") as f:
        ids = heldout_ids(tok, f.read(HELDOUT_BYTES))
    log.info("merging in %s; checking on %d held-out sequence(s) of %d tokens", dtype, *ids.shape)
    effect = None
    if has_adapter:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch_dtype(dtype))
        tied_base = is_tied(base)
        model = PeftModel.from_pretrained(base, adapter_dir).eval()
        want = logits(model, ids)  # base + adapter, unmerged: what the merged model must compute
        with model.disable_adapter():
            effect = compare(want, logits(model, ids))  # how much the adapter changes: the check's power
        untied = tied_base and adapter_touches_embeddings(model)
        if untied:
            log.warning("the adapter trains tied embed_tokens / lm_head: untying them on purpose before merging")
            untie(model.get_base_model())
        merged = model.merge_and_unload()
    else:  # a full fine-tune: its model, in the base's dtype, saved as is
        merged = AutoModelForCausalLM.from_pretrained(adapter_dir, dtype=torch_dtype(dtype)).eval()
        tied_base = config_tied(base_dir)
        untied = tied_base and not is_tied(merged)
        want = logits(merged, ids)
    tied = {"base": tied_base, "merged": is_tied(merged), "untied_on_purpose": untied}
    merged.save_pretrained(out)
    save_tokenizer(tok, out, base_dir / "tokenizer.model")
    tied["config"] = config_tied(out)
    model = base = merged = None  # one model in memory at a time: free this one before the reload
    gc.collect()
    got, tied["reloaded"] = reloaded_logits(out, dtype, ids)
    gc.collect()
    tol = tolerance(dtype, want)
    err = compare(got, want)
    check = {
        "dtype": dtype,
        "method": method if has_adapter else "full",
        "n_sequences": int(ids.shape[0]),
        "seq_len": int(ids.shape[1]),
        "reloaded_vs_unmerged": err,
        "tolerance": tol,
        "adapter_effect": effect,
        # A check that cannot see the adapter could not see a lost one either: say so.
        "adapter_visible": None if effect is None else effect["mean_abs_dlogit"] > tol["mean_abs_dlogit"],
        "tied": tied,
    }
    log.info("merge check: %s", check)
    wrong = problems(err, tol, tied)
    if wrong:
        raise MergeCheckError(
            f"merge of {adapter_dir} into {base_dir}: the merged model reloaded from disk is wrong on "
            f"{ids.shape[0]} held-out sequence(s): {'; '.join(wrong)}"
        )
    want = None
    if has_adapter and method in ("qlora4", "qlora8"):
        from peft import PeftModel

        q = PeftModel.from_pretrained(load_base(str(base_dir), method), adapter_dir).eval()
        check["qlora_drift"] = drift(logits(q, ids), got)
        q = None
        gc.collect()
        log.info("merged vs the %s model the adapter was trained on: %s", method, check["qlora_drift"])
    check.update(wall_s=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb())
    return check


def merge_job(
    base_dir: str | Path, adapter_dir: str | Path, heldout: str | Path, hf_out: str | Path, check_out: str | Path,
    method: str, meta: dict,
) -> dict:
    """The merge rule: the merged directory and its check's JSON appear only when the check passed."""
    from .atomic import atomic_path, write_json

    with atomic_path(hf_out, directory=True) as tmp:
        check = merge_checked(base_dir, adapter_dir, heldout, tmp, method)
    check = {**meta, **check}
    write_json(check_out, check)
    return check
