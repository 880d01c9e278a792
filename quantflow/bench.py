"""Speed, memory and quality of one GGUF variant through llama-cpp-python.

Protocol (design section 5): one fresh process per variant, a fixed thread count, warm-up runs
discarded, N measured repetitions summarised by median and spread. Quality is measured on the exact
tokens stored in the reference, so every variant of a model/fine-tune is judged on identical input.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import stats
from .atomic import die_with_parent
from .tasks import accuracy_summary, check, first_line
from .telemetry import GpuSampler

log = logging.getLogger(__name__)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


def encode(llm, item: dict) -> list[int]:
    """A suite item's tokens, as the HF path makes them (prompt_format.render_item): the rendered text, its
    special tokens parsed as such, BOS added only where the item says."""
    return llm.tokenize(item["prompt"].encode("utf-8"), add_bos=item.get("add_bos", True), special=True)


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


def speed_summary(cfg: dict, threads: int, prompt_tokens: int, load_s, pp, tg, ttft, lat) -> tuple[dict, dict]:
    """The result's speed block (and an empty memory block) from raw repetitions: one shape for both formats."""
    speed = {
        "threads": threads,
        "n_ctx": cfg["n_ctx"],
        "prompt_tokens": prompt_tokens,
        "gen_tokens": cfg["gen_tokens"],
        "warmup": cfg["warmup"],
        "converged": stats.converged(tg, cfg["target_ci"]),
        "target_ci": cfg["target_ci"],
        "load_s": stats.summarize(load_s),
        "prompt_tps": stats.summarize(pp),
        "decode_tps": stats.summarize(tg),
        "ttft_s": stats.summarize(ttft),
        "latency_s": stats.summarize(lat),
    }
    return speed, {"use_mmap": False}


def measure_speed(path: str | Path, cfg: dict, threads: int, prompt: list[int], suite: list[dict]) -> tuple[dict, dict]:
    """Load time, prompt/decode rates, TTFT and latency over the prompt suite; then memory.

    Decode repetitions continue past cfg["repetitions"] until the 95 % CI of the median decode
    rate is within +-cfg["target_ci"] or cfg["max_repetitions"] is reached. GPU telemetry (peak VRAM,
    utilisation; None without a GPU) is sampled in a background thread throughout.
    """
    baseline = rss_mb()
    with GpuSampler() as gpu:
        speed, memory = _measure_speed(path, cfg, threads, prompt, suite)
    memory.update(gpu.summary(), baseline_rss_mb=baseline, model_rss_mb=memory["peak_rss_mb"] - baseline)
    return speed, memory


def _measure_speed(
    path: str | Path, cfg: dict, threads: int, prompt: list[int], suite: list[dict]
) -> tuple[dict, dict]:
    warm, reps = cfg["warmup"], cfg["repetitions"]
    load_s, llm = [], None
    Path(path).read_bytes()  # page cache warm: load time measures llama.cpp, not the disk
    for i in range(warm + reps):
        if llm is not None:
            llm.close()
        t0 = time.perf_counter()
        llm = load(path, cfg["n_ctx"], threads)
        if i >= warm:
            load_s.append(time.perf_counter() - t0)
    pp, tg = [], []
    for _ in range(warm):
        decode_run(llm, prompt[: cfg["prompt_tokens"]], cfg["gen_tokens"])
    while len(tg) < cfg["max_repetitions"]:
        p, d = decode_run(llm, prompt[: cfg["prompt_tokens"]], cfg["gen_tokens"])
        pp.append(p)
        tg.append(d)
        if len(tg) >= reps and stats.converged(tg, cfg["target_ci"]):
            break
    ttft, lat = [], []
    suite_tokens = [encode(llm, s) for s in suite]
    for i in range(warm + reps):
        for toks in suite_tokens:
            _, t_first, t_all = greedy(llm, toks, cfg["max_answer_tokens"])
            if i >= warm:
                ttft.append(t_first)
                lat.append(t_all)
    peak = peak_rss_mb()
    llm.close()
    speed, memory = speed_summary(cfg, threads, min(cfg["prompt_tokens"], len(prompt)), load_s, pp, tg, ttft, lat)
    memory["peak_rss_mb"] = peak
    log.info(
        "decode %.1f tok/s (CV %.1f %%, %d runs), prompt %.1f tok/s, peak RSS %.1f MB",
        speed["decode_tps"]["median"],
        100 * speed["decode_tps"]["cv"],
        len(tg),
        speed["prompt_tps"]["median"],
        peak,
    )
    return speed, memory


def measure_speed_isolated(path: str | Path, cfg: dict, threads: int, prompt: list[int], suite: list[dict]):
    """:func:`measure_speed` in a fresh interpreter that imports only llama_cpp and numpy.

    The Snakemake script process carries Snakemake's own imports (~150 MB); measured in there, peak
    RSS would mostly be the workflow engine, not the model.
    """
    payload = {"path": str(path), "cfg": cfg, "threads": threads, "prompt": prompt, "suite": suite}
    out = run_isolated("quantflow.bench", payload, str(path))
    return out["speed"], out["memory"]


def run_isolated(module: str, payload: dict, what: str) -> dict:
    """Run ``python -m module`` in a fresh interpreter: JSON job on stdin, JSON result on stdout,
    its log lines (stderr) forwarded to this process's log."""
    pkg_root = str(Path(__file__).resolve().parent.parent)  # importable even when not pip-installed
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [pkg_root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-m", module],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=env,
        check=False,
        preexec_fn=die_with_parent,  # a killed bench job must not leave its measurement running
    )
    for line in proc.stderr.splitlines():
        log.info("speed: %s", line)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"speed measurement of {what} failed (exit {proc.returncode}): {tail[0]}")
    return json.loads(proc.stdout)


def _main() -> None:
    """Entry point of the isolated speed measurement: JSON job on stdin, JSON result on stdout."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    job = json.loads(sys.stdin.read())
    speed, memory = measure_speed(job["path"], job["cfg"], job["threads"], job["prompt"], job["suite"])
    sys.stdout.write(json.dumps({"speed": speed, "memory": memory}))


def chunk_tokens(tokens: list[int], n_ctx: int, max_chunks: int, bos: int | None) -> list[list[int]]:
    """Split a token stream into n_ctx windows, first token replaced by BOS (as llama-perplexity does)."""
    chunks = []
    for c in range(min(max_chunks, len(tokens) // n_ctx)):
        ch = list(tokens[c * n_ctx : (c + 1) * n_ctx])
        if bos is not None:
            ch[0] = bos
        chunks.append(ch)
    if not chunks:
        raise ValueError(f"held-out text has {len(tokens)} tokens, fewer than one context of {n_ctx}")
    return chunks


def chunk_logprobs(llm, chunk: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Log-probs for the second half of a chunk and the tokens they predict.

    Only the second half is scored, so every scored token has at least n_ctx/2 tokens of context
    (llama-perplexity's convention, which makes our figures comparable with its own).
    """
    n = len(chunk)
    first = n // 2
    llm.reset()
    llm.eval(chunk)
    logits = np.asarray(llm.scores[first : n - 1])
    return stats.log_softmax(logits), np.asarray(chunk[first + 1 : n])


def make_reference(path: str | Path, heldout_text: str, cfg: dict, threads: int) -> dict[str, np.ndarray]:
    """Tokenize the held-out text once with the f16 model and keep its top-k log-probs per token."""
    llm = load(path, cfg["n_ctx"], threads, logits_all=True)
    tokens = llm.tokenize(heldout_text.encode(), add_bos=True)
    bos = llm.token_bos() if llm._model.add_bos_token() else None
    chunks = chunk_tokens(tokens, cfg["n_ctx"], cfg["max_chunks"], bos)
    ids, lps, rests, nll = [], [], [], []
    for ch in chunks:
        lp, tgt = chunk_logprobs(llm, ch)
        i, p, r = stats.topk_reference(lp, cfg["topk"])
        ids.append(i)
        lps.append(p)
        rests.append(r)
        nll.append(-lp[np.arange(len(tgt)), tgt])
    llm.close()
    return {
        "chunks": np.asarray(chunks, dtype=np.int32),
        "topk_ids": np.concatenate(ids),
        "topk_logp": np.concatenate(lps),
        "log_rest": np.concatenate(rests),
        "nll": np.concatenate(nll),
    }


def quality_of(scorer, ref: dict[str, np.ndarray]) -> dict:
    """Perplexity, KL, top-1 agreement and delta-p on the reference's own tokens.

    ``scorer`` is anything :func:`chunk_logprobs` can drive (a llama_cpp.Llama with logits_all, or the
    HF side's wrapper), so both formats are scored by this one function. Delta-p is the change in the
    probability of the actual next token against the reference (llama-perplexity's "Δp").
    """
    kls, nll, agree, dp = [], [], [], []
    start = 0
    for ch in ref["chunks"]:
        lp, tgt = chunk_logprobs(scorer, [int(t) for t in ch])
        n = len(tgt)
        s = slice(start, start + n)
        start += n
        kls.append(stats.kl_from_topk(ref["topk_ids"][s], ref["topk_logp"][s], ref["log_rest"][s], lp))
        own = -lp[np.arange(n), tgt]
        nll.append(own)
        dp.append(np.exp(-own) - np.exp(-ref["nll"][s]))
        agree.append(lp.argmax(axis=-1) == ref["topk_ids"][s][:, 0])
    kl, dp = np.concatenate(kls), np.concatenate(dp)
    d = stats.distribution(kl)
    return {
        "n_tokens": int(kl.size),
        "ppl": float(np.exp(np.concatenate(nll).mean())),
        "kl_mean": d["mean"],
        "kl_median": d["median"],
        "kl_p99": d["p99"],
        "kl_p999": d["p999"],
        "kl_max": d["max"],
        "top1_agreement": float(np.concatenate(agree).mean()),
        "dp_mean": float(dp.mean()),
        "dp_rms": float(np.sqrt((dp**2).mean())),
    }


def measure_quality(path: str | Path, ref: dict[str, np.ndarray], cfg: dict, threads: int) -> dict:
    """:func:`quality_of` for a GGUF file."""
    llm = load(path, cfg["n_ctx"], threads, logits_all=True)
    try:
        return quality_of(llm, ref)
    finally:
        llm.close()


def answer_tasks(path: str | Path, items: list[dict], cfg: dict, threads: int) -> tuple[list[dict], dict]:
    """Greedy answers to the test set, checked; accuracy overall and per category."""
    llm = load(path, cfg["n_ctx"], threads)
    rows = []
    for it in items:
        out, _, _ = greedy(llm, encode(llm, it), cfg["max_answer_tokens"])
        text = first_line(llm.detokenize(out).decode("utf-8", errors="replace"))
        rows.append(
            {
                "id": str(it["id"]),
                "category": it["category"],
                "prompt": it["prompt"],
                "expected": str(it["answer"]),
                "answer": text,
                "correct": check(text, str(it["answer"]), it["checker"]),
            }
        )
    llm.close()
    return rows, accuracy_summary(rows)


def save_reference(path: str | Path, ref: dict[str, np.ndarray]) -> None:
    p = Path(path)
    tmp = p.with_name(f".{p.name}.partial.npz")
    np.savez_compressed(tmp, **ref)
    tmp.replace(p)


def load_reference(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


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

    ref = load_reference(reference)
    if not prompts:
        raise ValueError("the prompt suite is empty: latency and answers need at least one prompt")
    prompt = [int(t) for t in ref["chunks"].reshape(-1)[: cfg["prompt_tokens"]]]
    speed, memory = measure_speed_isolated(gguf, cfg, threads, prompt, prompts)
    engine = None
    if llama_cpp_dir is not None:  # llama.cpp's own figure beside ours, same threads and token counts
        from .llama_tools import llama_bench

        engine = llama_bench(
            llama_cpp_dir, gguf, threads, speed["prompt_tokens"], cfg["gen_tokens"], cfg["repetitions"]
        )
        engine["python_vs_engine_tg"] = speed["decode_tps"]["median"] / engine["tg_tps"]
        engine["python_vs_engine_pp"] = speed["prompt_tps"]["median"] / engine["pp_tps"]
    quality = measure_quality(gguf, ref, cfg, threads)
    answers, acc = answer_tasks(gguf, test, cfg, threads)
    quality.update(acc)
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
        "speed": speed,
        **({"llama_bench": engine} if engine else {}),
        "memory": memory,
        "quality": quality,
        "answers": answers,
    }


if __name__ == "__main__":
    _main()
