"""Fine-tuning with trl's SFTTrainer + peft (the merge and its check: quantflow.merge)."""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

from .demo import save_tokenizer
from .memory import peak_rss_mb

log = logging.getLogger(__name__)


METHODS = ("lora", "qlora8", "qlora4", "full")


HUB_PREFIX = "hub:"


def parse_hub_spec(spec: str) -> tuple[str, str]:
    """'hub:org/name' or 'hub:org/name:split' -> (dataset id, split); split defaults to train."""
    ident, _, split = spec.removeprefix(HUB_PREFIX).partition(":")
    return ident, split or "train"


def load_sft_dataset(path: str | Path):
    """A local JSONL / CSV / Parquet file, or a hub dataset ('hub:org/name[:split]'), as a
    `datasets` Dataset in one of trl's two formats, of string columns only.

    prompt/completion rows train on the completion only; chat rows (a "messages" list of
    {role, content}) go through the tokenizer's chat template. A local file is read by the reader
    the config check used (quantflow.sft_data), so the job trains on exactly the rows it validated.
    """
    from .sft_data import check_rows, read_sft, to_dataset

    if str(path).startswith(HUB_PREFIX):
        from datasets import load_dataset

        ident, split = parse_hub_spec(str(path))
        ds = load_dataset(ident, split=split)
        fmt, rows = check_rows(((f"row {i}", r) for i, r in enumerate(ds, 1)), str(path))
    else:
        fmt, rows = read_sft(path)
    return to_dataset(fmt, rows)


def quantization_config(method: str):
    """bitsandbytes settings for the QLoRA methods (bitsandbytes >= 0.49 runs them on CPU too)."""
    import torch
    from transformers import BitsAndBytesConfig

    if method == "qlora8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if method == "qlora4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
    return None


def load_base(base_dir: str, method: str):
    """The base model as the method trains it: fp32, or quantized at load for QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM

    qc = quantization_config(method)
    if qc is None:
        return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    from peft import prepare_model_for_kbit_training

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, quantization_config=qc, dtype=torch.float32, device_map={"": device}
    )
    # No gradient checkpointing: on CPU it costs 2-4x the step time and memory is not short.
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def lora_config(params: dict):
    from peft import LoraConfig

    return LoraConfig(
        r=params["r"],
        lora_alpha=params["alpha"],
        lora_dropout=params["dropout"],
        target_modules=params["target_modules"],
        task_type="CAUSAL_LM",
    )


def _progress_callback():
    """Training progress (step, loss, lr) into the rule's log as it happens."""
    from transformers import TrainerCallback

    class LogProgress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items())
                log.info("step %d/%d: %s", state.global_step, state.max_steps, shown)

    return LogProgress()


def train(base_dir: str, train_path: str, eval_path: str, adapter_dir: str, params: dict, threads: int) -> dict:
    """Train one fine-tune variant; save the adapter (or, for `full`, the model); return its metrics.

    Uses a GPU when one is visible, else the CPU (QLoRA included: bitsandbytes runs 8-bit and NF4
    on CPU), so a `gpu=1` job that Snakemake runs on a GPU-less node still completes.
    """
    import torch
    from transformers import AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(threads)
    set_seed(params["seed"], deterministic=True)
    tok = AutoTokenizer.from_pretrained(base_dir)
    method = params["method"]
    if method not in METHODS:
        raise ValueError(f"unknown fine-tune method {method!r}; expected one of {', '.join(METHODS)}")
    model = load_base(base_dir, method)
    train_ds, eval_ds = load_sft_dataset(train_path), load_sft_dataset(eval_path)
    out = Path(adapter_dir)
    cfg = SFTConfig(
        output_dir=str(out / ".trainer"),  # inside the (temporary) output: a killed job leaves nothing elsewhere
        max_steps=params["steps"],
        per_device_train_batch_size=params["batch_size"],
        per_device_eval_batch_size=params["batch_size"],
        learning_rate=params["learning_rate"],
        lr_scheduler_type="cosine",
        warmup_steps=params.get("warmup_steps", 0),
        max_length=params["max_length"],
        seed=params["seed"],
        data_seed=params["seed"],
        use_cpu=not torch.cuda.is_available(),
        activation_checkpointing=False,  # on CPU it costs 2-4x the step time and memory is not short
        logging_steps=10,
        logging_first_step=True,
        eval_strategy="no",  # one evaluation after training: the report needs the final numbers
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=True,
        completion_only_loss=None,  # trl's default: completion-only for prompt/completion rows
    )
    trainer = SFTTrainer(
        model=model,
        args=cfg,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tok,
        peft_config=None if method == "full" else lora_config(params),
        callbacks=[_progress_callback()],
    )
    if hasattr(trainer.model, "get_nb_trainable_parameters"):  # peft counts packed 4-bit weights right
        trainable, total = trainer.model.get_nb_trainable_parameters()
    else:
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in trainer.model.parameters())
    size_mb = trainer.model.get_memory_footprint() / 2**20
    log.info("trainable parameters: %d of %d (%.3f %%)", trainable, total, 100 * trainable / total)
    t0 = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - t0
    ev = trainer.evaluate()
    shutil.rmtree(out / ".trainer", ignore_errors=True)
    trainer.model.save_pretrained(out)
    save_tokenizer(tok, out, Path(base_dir) / "tokenizer.model")
    train_logs = [r for r in trainer.state.log_history if "loss" in r]
    metrics = {
        "method": method,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "trainable_params": int(trainable),
        "total_params": int(total),
        "trainable_pct": 100.0 * trainable / total,
        "model_size_mb": size_mb,
        "steps": int(result.global_step),
        "train_loss": float(result.training_loss),
        "final_train_loss": float(train_logs[-1]["loss"]) if train_logs else float("nan"),
        "eval_loss": float(ev["eval_loss"]),
        "eval_ppl": math.exp(ev["eval_loss"]),
        "mean_token_accuracy": float(ev.get("eval_mean_token_accuracy", float("nan"))),
        "train_samples_per_s": float(result.metrics.get("train_samples_per_second", float("nan"))),
        "eval_samples_per_s": float(ev.get("eval_samples_per_second", float("nan"))),
        "wall_s": wall,
        "peak_rss_mb": peak_rss_mb(),
        "loss_curve": [(int(r["step"]), float(r["loss"])) for r in train_logs],
    }
    log.info("done: train loss %.4f, eval loss %.4f, %.1f s", metrics["train_loss"], metrics["eval_loss"], wall)
    return metrics
