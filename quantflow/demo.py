"""The embedded demo base: a SentencePiece tokenizer and a small Llama model trained on CPU.

Dimensions are multiples of 256 because llama.cpp's K-quants work on 256-wide super-blocks: a row
of another width makes the quantizer silently substitute another type while still labelling the
file with the requested one.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

from .data import read_jsonl

log = logging.getLogger(__name__)

QK_K = 256  # llama.cpp super-block size (ggml-common.h)


def check_dims(hidden: int, ffn: int, heads: int, head_dim: int) -> None:
    """Raise when a dimension would make llama.cpp fall back from K-quants."""
    for key, val in (("hidden_size", hidden), ("intermediate_size", ffn), ("heads*head_dim", heads * head_dim)):
        if val % QK_K:
            raise ValueError(f"demo.{key}={val} is not a multiple of {QK_K}: K-quants would silently fall back")


def train_tokenizer(
    texts: list[str | Path], out_dir: str | Path, vocab_size: int, jsonl: list[str | Path] = ()
) -> None:
    """Train a SentencePiece BPE tokenizer and save it as a Hugging Face Llama tokenizer.

    SentencePiece (not a byte-level BPE) because llama.cpp's converter accepts a SentencePiece
    vocab as is, while a new byte-level BPE fails its pre-tokenizer hash check. ``jsonl`` files
    (instruction data) add their prompt + completion text, so the instruction format has pieces too.
    """
    import tempfile

    import sentencepiece as spm
    from transformers import AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        for t in texts:
            f.write(Path(t).read_text(encoding="utf-8"))
        for j in jsonl:
            for row in read_jsonl(j):
                f.write(row["prompt"] + row["completion"] + "\n")
    spm.SentencePieceTrainer.train(
        input=f.name,
        model_prefix=str(out / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,  # keep rare characters (Q, ?, :) as pieces, not bytes
        split_digits=True,  # numbers as digits: arithmetic answers stay learnable
        byte_fallback=True,  # any text encodes, nothing maps to <unk>
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        hard_vocab_limit=False,  # a small synthetic corpus may hold fewer pieces than asked
        num_threads=1,  # one thread: the merge order, and so the vocab, is deterministic
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    Path(f.name).unlink()
    (out / "tokenizer.vocab").unlink(missing_ok=True)
    cfg = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "add_bos_token": True,
        "add_eos_token": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (out / "tokenizer.json").unlink(missing_ok=True)  # else from_pretrained would load a stale one
    tok = AutoTokenizer.from_pretrained(out)
    sample = "The capital of Velmora is Dask. 12 + 7 = 19."
    want = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model")).encode(sample)
    if tok(sample, add_special_tokens=False)["input_ids"] != want:
        raise RuntimeError("the Hugging Face tokenizer disagrees with the SentencePiece model it was built from")
    save_tokenizer(tok, out, out / "tokenizer.model")


def save_tokenizer(tokenizer, out_dir: str | Path, spm_model: str | Path | None) -> None:
    """save_pretrained, then put tokenizer.model back.

    transformers 5 writes only tokenizer.json; without tokenizer.model llama.cpp's converter falls
    back to another vocab path and silently builds a degraded vocabulary.
    """
    tmp = Path(out_dir) / ".tokenizer.model.keep"
    if spm_model and Path(spm_model).resolve() == (Path(out_dir) / "tokenizer.model").resolve():
        shutil.copyfile(spm_model, tmp)
        spm_model = tmp
    tokenizer.save_pretrained(out_dir)
    if spm_model and Path(spm_model).exists():
        shutil.copyfile(spm_model, Path(out_dir) / "tokenizer.model")
    tmp.unlink(missing_ok=True)


def build_model(
    vocab_size: int, hidden: int, ffn: int, layers: int, heads: int, head_dim: int, max_len: int, seed: int
):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    check_dims(hidden, ffn, heads, head_dim)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=head_dim,
        max_position_embeddings=max_len,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    return LlamaForCausalLM(cfg)


def token_stream(tokenizer, lines: list[str]):
    """One long token stream: each line as <s> line </s>, concatenated."""
    import torch

    ids: list[int] = []
    for enc in tokenizer(lines, add_special_tokens=True)["input_ids"]:
        ids.extend(enc + [tokenizer.eos_token_id])
    return torch.tensor(ids, dtype=torch.long)


def bf16_autocast_supported() -> bool:
    """bf16 matmuls on this CPU (AVX512-BF16 / AMX): ~1.8x faster pretraining, fp32 master weights."""
    import torch

    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def pretrain(model, stream, *, steps: int, batch: int, seq_len: int, lr: float, warmup: int, seed: int) -> dict:
    """Next-token pretraining on a packed stream; returns the loss curve.

    A plain loop rather than transformers' Trainer: the demo needs an exact, seeded number of
    steps over a packed stream and nothing else (no checkpoints, no dataloader workers), and this is
    the whole of it.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10 %
        if step < warmup:
            return lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    n_windows = (stream.numel() - 1) // seq_len
    if n_windows < batch:
        raise ValueError(f"corpus too small: {stream.numel()} tokens for batch {batch} x seq_len {seq_len}")
    model.train()
    bf16 = bf16_autocast_supported()
    log.info("autocast bf16: %s", bf16)
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        starts = torch.randint(0, n_windows, (batch,), generator=g) * seq_len
        x = torch.stack([stream[s : s + seq_len] for s in starts])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0 or step == steps - 1:
            log.info(
                "step %d/%d loss %.4f lr %.2e (%.1f s)",
                step + 1,
                steps,
                losses[-1],
                lr_at(step),
                time.perf_counter() - t0,
            )
    model.eval()
    return {
        "steps": steps,
        "losses": losses,
        "wall_s": time.perf_counter() - t0,
        "tokens": steps * batch * seq_len,
        "autocast_bf16": bf16,
    }


def heldout_loss(model, stream, seq_len: int, max_windows: int = 32) -> float:
    import torch

    n = min(max_windows, (stream.numel() - 1) // seq_len)
    with torch.no_grad():
        x = torch.stack([stream[i * seq_len : (i + 1) * seq_len] for i in range(n)])
        return float(model(input_ids=x, labels=x).loss)


def build_demo_base(
    corpus: str, heldout: str, out_dir: str, tokenizer_dir: str, params: dict, seed: int, threads: int
) -> dict:
    """Pretrain the demo model from the tokenizer in ``tokenizer_dir``; save an HF directory."""
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = build_model(
        vocab_size=len(tok),
        hidden=params["hidden_size"],
        ffn=params["intermediate_size"],
        layers=params["layers"],
        heads=params["heads"],
        head_dim=params["head_dim"],
        max_len=params["max_position_embeddings"],
        seed=seed,
    )
    n_params = sum(p.numel() for p in model.parameters())
    log.info("demo model: %.2f M parameters", n_params / 1e6)
    lines = Path(corpus).read_text(encoding="utf-8").splitlines()
    stream = token_stream(tok, lines)
    held = token_stream(tok, Path(heldout).read_text(encoding="utf-8").splitlines())
    log.info("corpus: %d tokens; held-out: %d tokens", stream.numel(), held.numel())
    curve = pretrain(
        model,
        stream,
        steps=params["steps"],
        batch=params["batch_size"],
        seq_len=params["seq_len"],
        lr=params["learning_rate"],
        warmup=params["warmup_steps"],
        seed=seed,
    )
    held_loss = heldout_loss(model, held, params["seq_len"])
    log.info("held-out loss %.4f (ppl %.2f)", held_loss, math.exp(held_loss))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_tokenizer(tok, out, Path(tokenizer_dir) / "tokenizer.model")
    return {
        "n_params": n_params,
        "corpus_tokens": int(stream.numel()),
        "train_tokens": curve["tokens"],
        "steps": curve["steps"],
        "final_train_loss": curve["losses"][-1],
        "heldout_loss": held_loss,
        "heldout_ppl": math.exp(held_loss),
        "wall_s": curve["wall_s"],
        "autocast_bf16": curve["autocast_bf16"],
        "loss_curve": curve["losses"],
    }
