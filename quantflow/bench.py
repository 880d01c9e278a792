"""The llama.cpp engine: speed, memory and quality of one GGUF variant through llama-cpp-python.

The protocol is :mod:`quantflow.speed`'s and the quality figures :mod:`quantflow.quality`'s; this module
holds what is llama.cpp's own: loading, the greedy and timed decode loops, and the tokenization of a
suite item (:func:`encode_item`, the one place it happens on this engine).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from . import quality, speed
from .tasks import checked_answers

log = logging.getLogger(__name__)


def load(path: str | Path, n_ctx: int, threads: int, logits_all: bool = False):
    """Load without mmap: weights then live in anonymous memory, so RSS counts each byte once.

    With mmap, llama.cpp's load-time repacking of Q4_0/Q4_K weights keeps both the mapped file pages
    and the repacked copy resident, and RSS would count those weights twice.
    """
    from llama_cpp import Llama

    return Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=logits_all,
        use_mmap=False,
        verbose=False,
        seed=0,
    )


def last_logits(llm) -> np.ndarray:
    """A view of the logits of the last evaluated token.

    llama-cpp-python copies logits into ``llm.scores`` only with logits_all=True, so the speed path
    reads llama.cpp's own buffer (no copy, as llama-cli does).
    """
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def greedy(llm, prompt_tokens: list[int], max_new: int, stop_newline: bool = True) -> tuple[list[int], float, float]:
    """Greedy decoding by argmax (deterministic, no sampler state).

    Returns (new tokens, seconds to the first token, total seconds).
    """
    llm.reset()
    nl = llm.tokenize(b"\n", add_bos=False, special=False)[-1] if stop_newline else None
    eos = llm.token_eos()
    t0 = time.perf_counter()
    llm.eval(prompt_tokens)
    out: list[int] = []
    ttft = None
    for _ in range(max_new):
        tok = int(np.argmax(last_logits(llm)))
        if ttft is None:
            ttft = time.perf_counter() - t0
        if tok == eos or (stop_newline and tok == nl):
            break
        out.append(tok)
        llm.eval([tok])
    return out, ttft if ttft is not None else 0.0, time.perf_counter() - t0


def decode_run(llm, prompt: list[int], n_gen: int) -> tuple[float, float]:
    """One repetition: prompt tok/s (batched prompt eval) and decode tok/s (n_gen single-token steps).

    EOS is ignored on purpose: the decode rate must cover exactly n_gen steps for every variant.
    The decode loop calls llama_decode on one preallocated one-token batch, as llama-bench's tg does,
    plus a greedy argmax over the logits (what a real generation needs): `Llama.eval` would add a KV
    cache scan, a batch rebuild and bookkeeping per token, Python cost that is not the engine's.
    """
    import llama_cpp

    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    ctx, n_vocab, pos = llm._ctx.ctx, llm.n_vocab(), llm.n_tokens
    batch = llama_cpp.llama_batch_init(1, 0, 1)
    try:
        batch.n_tokens = 1
        batch.seq_id[0][0] = 0
        batch.n_seq_id[0] = 1
        batch.logits[0] = True
        t_dec = time.perf_counter()
        for _ in range(n_gen):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            batch.token[0] = int(np.argmax(logits))
            batch.pos[0] = pos
            if (rc := llama_cpp.llama_decode(ctx, batch)) != 0:
                raise RuntimeError(f"llama_decode failed (code {rc}) at position {pos}")
            pos += 1
        t2 = time.perf_counter()
    finally:
        llama_cpp.llama_batch_free(batch)
    llm.n_tokens = pos  # the wrapper's view of the cache: the next reset()/eval() clears it as usual
    return len(prompt) / (t1 - t0), n_gen / (t2 - t_dec)


def encode_item(llm, item: dict) -> list[int]:
    """A suite item's tokens, as hf_bench.encode_item makes them: the text prompt_format rendered, its
    special tokens parsed as such (a chat template's), BOS added only where the item says."""
    return llm.tokenize(item["prompt"].encode("utf-8"), add_bos=item.get("add_bos", True), special=True)


def _timed_answer(llm, ids: list[int], max_new: int) -> tuple[float, float]:
    _, ttft, total = greedy(llm, ids, max_new)
    return ttft, total


def measure_speed(path: str | Path, cfg: dict, threads: int, prompt: list[int], suite: list[dict]) -> tuple[dict, dict]:
    """:func:`quantflow.speed.measure` for a GGUF file (loaded without mmap, see :func:`load`)."""
    Path(path).read_bytes()  # page cache warm: load time measures llama.cpp, not the disk
    return speed.measure(
        load=lambda: load(path, cfg["n_ctx"], threads),
        close=lambda llm: llm.close(),
        decode=decode_run,
        answer=_timed_answer,
        encode=encode_item,
        cfg=cfg,
        threads=threads,
        prompt=prompt,
        suite=suite,
    )


def measure_speed_isolated(path: str | Path, cfg: dict, threads: int, prompt: list[int], suite: list[dict]):
    """:func:`measure_speed` in a fresh interpreter that imports only llama_cpp and numpy."""
    payload = {"path": str(path), "cfg": cfg, "threads": threads, "prompt": prompt, "suite": suite}
    out = speed.run_isolated("quantflow.bench", payload, str(path))
    return out["speed"], out["memory"]


def _isolated_job(job: dict) -> dict:
    sp, memory = measure_speed(job["path"], job["cfg"], job["threads"], job["prompt"], job["suite"])
    return {"speed": sp, "memory": memory}


def make_reference(path: str | Path, heldout_text: str, cfg: dict, threads: int) -> dict[str, np.ndarray]:
    """Tokenize the held-out text once with the f16 model and keep its top-k log-probs per token."""
    llm = load(path, cfg["n_ctx"], threads, logits_all=True)
    try:
        tokens = llm.tokenize(heldout_text.encode(), add_bos=True)
        bos = llm.token_bos() if llm._model.add_bos_token() else None
        return quality.reference_of(llm, tokens, bos, cfg)
    finally:
        llm.close()


def measure_quality(path: str | Path, ref: dict[str, np.ndarray], cfg: dict, threads: int) -> dict:
    """:func:`quantflow.quality.quality_of` for a GGUF file."""
    llm = load(path, cfg["n_ctx"], threads, logits_all=True)
    try:
        return quality.quality_of(llm, ref)
    finally:
        llm.close()


def answer_tasks(path: str | Path, items: list[dict], cfg: dict, threads: int) -> tuple[list[dict], dict]:
    """Greedy answers to the test set, checked; accuracy overall and per category."""
    llm = load(path, cfg["n_ctx"], threads)
    try:
        texts = []
        for it in items:
            out, _, _ = greedy(llm, encode_item(llm, it), cfg["max_answer_tokens"])
            texts.append(llm.detokenize(out).decode("utf-8", errors="replace"))
    finally:
        llm.close()
    return checked_answers(items, texts)


def run_variant(
    gguf: str | Path,
    reference: str | Path,
    test: list[dict],
    prompts: list[dict],
    cfg: dict,
    threads: int,
    meta: dict,
    llama_cpp_dir: str | Path | None = None,
) -> dict:
    """Every measurement of one GGUF variant, as a result dict (see result.schema.yaml).

    Speed and memory come first, so the peak RSS is that of load + inference alone, before the
    quality passes allocate their buffers.
    """
    from .quantize import sha256, tensor_summary

    ref = quality.load_reference(reference)
    if not prompts:
        raise ValueError("the prompt suite is empty: latency and answers need at least one prompt")
    sp, memory = measure_speed_isolated(gguf, cfg, threads, quality.prompt_of(ref, cfg["prompt_tokens"]), prompts)
    engine = None
    if llama_cpp_dir is not None:  # llama.cpp's own figure beside ours, same threads and token counts
        from .llama_tools import llama_bench

        engine = llama_bench(
            llama_cpp_dir, gguf, threads, sp["prompt_tokens"], cfg["gen_tokens"], cfg["repetitions"]
        )
        engine["python_vs_engine_tg"] = sp["decode_tps"]["median"] / engine["tg_tps"]
        engine["python_vs_engine_pp"] = sp["prompt_tps"]["median"] / engine["pp_tps"]
    qual = measure_quality(gguf, ref, cfg, threads)
    answers, acc = answer_tasks(gguf, test, cfg, threads)
    qual.update(acc)
    summ = tensor_summary(gguf)
    return {
        "schema_version": 1,
        **meta,
        "format": "gguf",
        "status": "ok",
        "reason": None,
        "file": {
            "path": str(gguf),
            "bytes": Path(gguf).stat().st_size,
            "sha256": sha256(gguf),
            "n_params": summ["n_params"],
            "bits_per_weight": summ["bits_per_weight"],
            "tensor_types": summ["tensor_types"],
        },
        "speed": sp,
        **({"llama_bench": engine} if engine else {}),
        "memory": memory,
        "quality": qual,
        "answers": answers,
    }


if __name__ == "__main__":
    speed.isolated_main(_isolated_job)
