"""The transformers engine: speed, memory and quality of HF-side variants (unquantized and quantized at load).

The variants run through transformers instead of llama.cpp but are measured exactly like the GGUF ones:
the protocol is :mod:`quantflow.speed`'s, the quality figures :mod:`quantflow.quality`'s (on the
reference's own token ids), answers by greedy decoding stopped at newline/EOS. A suite item becomes
token ids in :func:`encode_item` alone.

    hf-fp32   unquantized float32 (a bf16 run would be named hf-bf16; on CPU fp32 is the baseline)
    hf-bnb8   bitsandbytes LLM.int8, quantized at load
    hf-nf4    bitsandbytes NF4 with double quantization, quantized at load, float32 compute
    hf-gptq4  GPTQModel 4-bit, the checkpoint the gptq rule wrote (quantflow.gptq); CPU or GPU
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import quality, speed
from .tasks import checked_answers, flips_against
from .variants import HF_QUANT as QUANT
from .variants import HF_VARIANTS

log = logging.getLogger(__name__)

GPTQ_NOT_INSTALLED = (
    "GPTQModel is not installed: `make venv` installs it (by hand: pip install -e '.[gptq]' then "
    "pip install --no-deps gptqmodel==7.6.0); AutoGPTQ is archived and does not import on transformers 5"
)

# A streamed generation that produces nothing for this long has failed (the generating thread died).
_STREAM_TIMEOUT_S = 600.0


def _check_variant(variant: str) -> None:
    if variant not in HF_VARIANTS:
        raise ValueError(f"unknown HF variant {variant!r}: expected one of {', '.join(HF_VARIANTS)}")


def unavailable_reason(variant: str) -> str | None:
    """None when ``variant`` can run on this machine, else a one-line reason (for a not_run result)."""
    _check_variant(variant)
    if variant in ("hf-bnb8", "hf-nf4") and importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    if variant == "hf-gptq4":
        # GPTQModel runs on the CPU too (its torch kernels); no GPU is needed (see quantflow.gptq).
        import contextlib

        try:
            # It prints a banner to stdout, which carries the isolated speed run's JSON result.
            with contextlib.redirect_stdout(sys.stderr):
                import gptqmodel  # noqa: F401
        except Exception:  # an ImportError, or a kernel extension that fails to load
            return GPTQ_NOT_INSTALLED
        try:
            import optimum.gptq  # noqa: F401
        except Exception:
            return (
                "optimum is not installed: transformers loads GPTQ checkpoints through it "
                "(part of the gptq extra: pip install optimum==2.3.0)"
            )
    return None


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name() -> str:
    """What the HF variants run on: the GPU's name (torch's CUDA device 0), else the CPU's model name."""
    import torch

    from .provenance import cpu_model

    return torch.cuda.get_device_name(0) if _device() == "cuda" else cpu_model()


def quant_kernel(model) -> str | None:
    """The class that runs the quantized matmuls (e.g. bnb's Linear4bit, GPTQModel's TorchQuantLinear).

    GPTQModel picks its kernel at load from the device and dtype (Marlin, Triton, Torch ...): the
    figures depend on which one ran, so the result records it. None for an unquantized model.
    """
    for module in model.modules():
        name = type(module).__name__
        if hasattr(module, "qweight") or name in ("Linear8bitLt", "Linear4bit"):
            return name
    return None


def _sync(device) -> None:
    """Wait for queued GPU work, so that a timer read after it covers the work (no-op on CPU)."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _quant_config(variant: str):
    """bitsandbytes settings: the same as the QLoRA fine-tunes' (8-bit; NF4 with double quantization).

    On CPUs with AVX512-BF16, bnb's single-token (decode) NF4 kernel computes in bf16 whatever the
    compute dtype; multi-token forwards (prompt, quality) dequantize to float32.
    """
    from .finetune import quantization_config

    return quantization_config({"hf-bnb8": "qlora8", "hf-nf4": "qlora4"}.get(variant, ""))


def load_hf(hf_dir: str | Path, variant: str, threads: int):
    """(model, tokenizer) for ``variant``, in eval mode, on CUDA when visible else on CPU.

    bitsandbytes variants are quantized here, at load, from the unquantized checkpoint in ``hf_dir``;
    hf-gptq4 loads the GPTQ checkpoint in ``hf_dir`` (calibrated beforehand by the gptq rule).
    """
    reason = unavailable_reason(variant)
    if reason is not None:
        raise RuntimeError(f"{variant} cannot run here: {reason}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    device = _device()
    if variant == "hf-gptq4":
        from .gptq import load_quantized

        model = load_quantized(hf_dir, device)  # the 4-bit checkpoint the gptq rule made (refuses anything else)
    elif (qcfg := _quant_config(variant)) is None:
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(device)
    else:
        # On CPU, LLM.int8 logs one warning per matmul call (fp32 inputs cast to fp16): thousands of lines.
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
        model = AutoModelForCausalLM.from_pretrained(
            hf_dir, dtype=torch.float32, quantization_config=qcfg, device_map=device
        )
    model.eval()
    return model, AutoTokenizer.from_pretrained(hf_dir)


def n_params(model) -> int:
    """Parameters of the unquantized model: a packed 4-bit tensor counts its logical elements, not bytes.

    bitsandbytes keeps the packed weight as a parameter with a quant_state; GPTQ linears keep it as a
    `qweight` buffer (no parameter at all), so they count as in_features x out_features.
    """
    total = 0
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)
        total += int(np.prod(qs.shape)) if qs is not None else p.numel()
    for m in model.modules():
        if hasattr(m, "qweight") and hasattr(m, "in_features") and hasattr(m, "out_features"):
            total += int(m.in_features) * int(m.out_features)
    return total


def _stop_ids(tok) -> list[int]:
    """EOS and the newline token: greedy answers end at either (as bench.greedy's do)."""
    nl = tok.encode("\n", add_special_tokens=False)[-1]
    return [t for t in (tok.eos_token_id, nl) if t is not None]


def encode_item(tok, item: dict) -> list[int]:
    """A suite item's tokens, as bench.encode_item makes them on the GGUF path: the same rendered text, BOS
    added only where the item says (a chat template writes its own)."""
    return tok(item["prompt"], add_special_tokens=item.get("add_bos", True)).input_ids


def _generate_kwargs(tok, ids: list[int], max_new: int, device) -> dict:
    import torch

    x = torch.tensor([ids], device=device)
    return {
        "input_ids": x,
        "attention_mask": torch.ones_like(x),
        "do_sample": False,
        "num_beams": 1,
        "max_new_tokens": max_new,
        "eos_token_id": _stop_ids(tok),
        "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    }


def stream_greedy(model, tok, ids: list[int], max_new: int) -> tuple[str, float, float]:
    """Greedy generation through ``generate`` + TextIteratorStreamer in a thread.

    Returns (text, seconds to the first token, total seconds). The streamer queues one item per
    generated token (an empty string while a word is incomplete), so the first item marks the first
    token, not the first complete word.
    """
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=_STREAM_TIMEOUT_S)
    kwargs = _generate_kwargs(tok, ids, max_new, model.device) | {"streamer": streamer}
    errors: list[BaseException] = []

    def work() -> None:
        try:
            model.generate(**kwargs)
        except BaseException as e:  # re-raised in the caller; end() unblocks its loop
            errors.append(e)
            streamer.end()

    t0 = time.perf_counter()
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    ttft, parts = None, []
    for piece in streamer:
        if ttft is None:
            ttft = time.perf_counter() - t0
        parts.append(piece)
    total = time.perf_counter() - t0
    worker.join()
    if errors:
        raise errors[0]
    return "".join(parts), ttft if ttft is not None else 0.0, total


def decode_run(model, prompt: list[int], n_gen: int) -> tuple[float, float]:
    """One repetition: prompt tok/s (one forward) and decode tok/s (n_gen single-token KV-cache steps).

    EOS is ignored on purpose: the decode rate must cover exactly n_gen steps for every variant.
    """
    import torch

    device = model.device
    with torch.inference_mode():
        x = torch.tensor([prompt], device=device)
        _sync(device)
        t0 = time.perf_counter()
        out = model(input_ids=x, use_cache=True, logits_to_keep=1)
        _sync(device)
        t1 = time.perf_counter()
        for _ in range(n_gen):
            nxt = out.logits[:, -1].argmax(dim=-1, keepdim=True)
            out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
        _sync(device)
        t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), n_gen / (t2 - t1)


def _free_memory() -> None:
    """Collect a model the caller has just dropped its references to (and its CUDA blocks)."""
    gc.collect()
    if _device() == "cuda":
        import torch

        torch.cuda.empty_cache()


def measure_speed(
    hf_dir: str | Path, variant: str, cfg: dict, threads: int, prompt_ids: list[int], suite: list[dict]
) -> tuple[dict, dict]:
    """:func:`quantflow.speed.measure` for an HF variant.

    torch/transformers (and bitsandbytes) are imported first, so the baseline RSS holds the framework
    and model_rss_mb is the model and its inference buffers; peak_rss_mb includes everything.
    """
    import torch  # noqa: F401
    import transformers  # noqa: F401

    if QUANT[variant] in ("INT8", "NF4"):
        import bitsandbytes  # noqa: F401
    for f in sorted(Path(hf_dir).glob("*.safetensors")):
        f.read_bytes()  # page cache warm: load time measures loading (and quantizing), not the disk

    def answer(loaded, ids: list[int], max_new: int) -> tuple[float, float]:
        _, ttft, total = stream_greedy(*loaded, ids, max_new)
        return ttft, total

    sp, memory, _ = speed.measure(
        load=lambda: load_hf(hf_dir, variant, threads),
        free=_free_memory,
        decode=lambda loaded, prompt, n_gen: decode_run(loaded[0], prompt, n_gen),
        answer=answer,
        encode=lambda loaded, item: encode_item(loaded[1], item),
        cfg=cfg,
        threads=threads,
        prompt=[int(t) for t in prompt_ids],
        suite=suite,
        what=variant,
        gpu=_device() == "cuda",  # a CPU run on a machine with a GPU measures no VRAM
    )
    return sp, memory


def measure_isolated(
    hf_dir: str | Path,
    variant: str,
    cfg: dict,
    threads: int,
    prompt_ids: list[int],
    suite: list[dict],
    reference_path: str | Path,
    test: list[dict],
) -> dict:
    """:func:`measure_speed` in a fresh interpreter (``python -m quantflow.hf_bench``), then, in the same
    interpreter, quality against ``reference_path``, answers to ``test`` and the loaded model's size.

    As for the GGUF bench: measured inside the Snakemake script process, peak RSS would include
    Snakemake's own imports and whatever earlier steps allocated. The peak is read when the speed
    protocol ends, before the quality passes; doing them in the same process saves a second import of
    torch and transformers (~5 s on two cores) per job.
    Returns {"speed", "memory", "quality", "answers", "size", "n_params", "kernel", "device", "device_name"}.
    """
    payload = {
        "hf_dir": str(hf_dir),
        "variant": variant,
        "cfg": cfg,
        "threads": threads,
        "prompt": prompt_ids,
        "suite": suite,
        "reference": str(reference_path),
        "test": test,
    }
    return speed.run_isolated("quantflow.hf_bench", payload, f"{variant} ({hf_dir})")


def quality_and_answers(hf_dir: str | Path, variant: str, ref: dict, test: list[dict], cfg: dict, threads: int) -> dict:
    """Quality against the reference, checked answers and the size figures, from one load of the variant."""
    model, tok = load_hf(hf_dir, variant, threads)
    qual = quality_of(model, ref, cfg.get("max_chunks"))
    answers, acc = answers_of(model, tok, test, cfg)
    qual.update(acc)
    # bitsandbytes quantizes at load: there is no file of the variant, so its size is the loaded
    # model's parameters and buffers (get_memory_footprint; bnb's quantization constants excluded).
    # GPTQ has a checkpoint: its weights' bytes on disk, as for a GGUF file.
    if variant == "hf-gptq4":
        size = sum(f.stat().st_size for f in Path(hf_dir).glob("*.safetensors"))
    else:
        size = int(model.get_memory_footprint())
    out = {"quality": qual, "answers": answers, "size": size, "n_params": n_params(model)}
    out.update(kernel=quant_kernel(model), device=_device(), device_name=device_name())
    del model, tok
    _free_memory()
    return out


def _isolated_job(job: dict) -> dict:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per load, all carriage returns, in the caller's log
    sp, memory = measure_speed(job["hf_dir"], job["variant"], job["cfg"], job["threads"], job["prompt"], job["suite"])
    ref = quality.load_reference(job["reference"])
    out = quality_and_answers(job["hf_dir"], job["variant"], ref, job["test"], job["cfg"], job["threads"])
    return {"speed": sp, "memory": memory, **out}


class Scores:
    """An HF model seen as the scorer :func:`quantflow.quality.chunk_logprobs` drives.

    reset() / eval(tokens) / scores (one row of logits per evaluated token), so the scored positions
    are the quality module's own, not a copy of its slicing.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.scores: np.ndarray | None = None

    def reset(self) -> None:
        self.scores = None

    def eval(self, tokens: list[int]) -> None:
        import torch

        with torch.inference_mode():
            x = torch.tensor([tokens], device=self.model.device)
            self.scores = self.model(input_ids=x).logits[0].float().cpu().numpy()


def quality_of(model, ref: dict[str, np.ndarray], max_chunks: int | None = None) -> dict:
    """:func:`quantflow.quality.quality_of` on a loaded HF model (one forward per reference chunk)."""
    return quality.quality_of(Scores(model), ref, max_chunks)


def measure_quality(hf_dir: str | Path, variant: str, ref: dict[str, np.ndarray], cfg: dict, threads: int) -> dict:
    """Same keys as :func:`quantflow.bench.measure_quality`, on the same token ids."""
    model, _ = load_hf(hf_dir, variant, threads)
    q = quality_of(model, ref)
    del model
    _free_memory()
    return q


def greedy_ids(model, tok, ids: list[int], max_new: int) -> list[int]:
    """Greedy continuation of ``ids``: new token ids, without the EOS/newline that ended it (as bench.greedy)."""
    import torch

    with torch.inference_mode():
        out = model.generate(**_generate_kwargs(tok, ids, max_new, model.device))[0, len(ids) :].tolist()
    return out[:-1] if out and out[-1] in _stop_ids(tok) else out


def answers_of(model, tok, items: list[dict], cfg: dict) -> tuple[list[dict], dict]:
    """Greedy answers of a loaded model to the test set, checked; accuracy overall and per category."""
    texts = []
    for it in items:
        out = greedy_ids(model, tok, encode_item(tok, it), cfg["max_answer_tokens"])
        # HF's decoder, not llama.cpp's: they differ only on byte tokens that are not valid UTF-8 (see report)
        texts.append(tok.decode(out, skip_special_tokens=True))
    return checked_answers(items, texts)


def answer_tasks(
    hf_dir: str | Path, variant: str, items: list[dict], cfg: dict, threads: int
) -> tuple[list[dict], dict]:
    """Same rows and accuracy keys as :func:`quantflow.bench.answer_tasks`."""
    model, tok = load_hf(hf_dir, variant, threads)
    out = answers_of(model, tok, items, cfg)
    del model, tok
    _free_memory()
    return out


def run_hf_variant(
    hf_dir: str | Path,
    variant: str,
    reference_path: str | Path,
    test: list[dict],
    prompts: list[dict],
    cfg: dict,
    threads: int,
    meta: dict,
    reference_answers: list[dict] | None = None,
) -> dict:
    """Every measurement of one HF variant, as a result dict (see result.schema.yaml); no provenance.

    ``reference_answers`` (the f16 GGUF's checked answers) give the flips and McNemar's p.

    A variant that cannot run here gets status not_run and its reason, with no measurement blocks.
    Speed and memory come first (in their own process); quality and answers then share one load.
    """
    _check_variant(variant)
    if meta.get("variant", variant) != variant:
        raise ValueError(f"meta names variant {meta['variant']!r} but {variant!r} was asked for")
    head = {"schema_version": 1, **meta, "variant": variant, "format": "hf", "quant": QUANT[variant]}
    reason = unavailable_reason(variant)
    if reason is not None:
        log.info("%s not run: %s", variant, reason)
        return {**head, "status": "not_run", "reason": reason}
    if not prompts:
        raise ValueError("the prompt suite is empty: latency and answers need at least one prompt")
    prompt = quality.prompt_of(quality.load_reference(reference_path), cfg["prompt_tokens"])
    m = measure_isolated(hf_dir, variant, cfg, threads, prompt, prompts, reference_path, test)
    size, count = m["size"], m["n_params"]
    if reference_answers is not None:
        m["quality"].update(flips_against(m["answers"], reference_answers))
    gpu_state = m["memory"].pop("gpu", None)
    return {
        **head,
        "status": "ok",
        "reason": None,
        "device": m["device"],
        "device_name": m["device_name"],
        **({"gpu": gpu_state} if gpu_state else {}),
        "kernel": m["kernel"],
        "file": {"path": str(hf_dir), "bytes": size, "n_params": count, "bits_per_weight": 8.0 * size / count},
        "speed": m["speed"],
        "memory": m["memory"],
        "quality": m["quality"],
        "answers": m["answers"],
    }


if __name__ == "__main__":
    speed.isolated_main(_isolated_job)
