"""The llama.cpp engine: speed, memory and quality of one GGUF variant through llama-cpp-python.

The protocol is :mod:`quantflow.speed`'s and the quality figures :mod:`quantflow.quality`'s; this module
holds what is llama.cpp's own: loading, the greedy and timed decode loops, and the tokenization of a
suite item (:func:`encode_item`, the one place it happens on this engine).
"""

from __future__ import annotations

import ctypes
import logging
import time
from pathlib import Path

import numpy as np

from . import quality, speed, stats
from .devices import ALL_LAYERS, BENCH_ALL_LAYERS
from .tasks import checked_answers, flips_against

log = logging.getLogger(__name__)


def load(path: str | Path, n_ctx: int, threads: int, logits_all: bool = False, mmap: bool = False, gpu: bool = False):
    """Load the GGUF with flash attention on, as llama-bench, llama-perplexity and llama-cli have it
    (their default "auto" turns it on for the CPU; llama-cpp-python's flash_attn=False turns it off,
    which cost ~11 % of the decode rate on the demo, measured paired against llama-bench).

    Without mmap (the default here) the weights live in anonymous memory, so RSS counts each byte
    once: with mmap, llama.cpp's load-time repacking of Q4_0/Q4_K weights keeps both the mapped file
    pages and the repacked copy resident, and RSS would count those weights twice. The decode rounds
    load with ``mmap`` (llama-bench's default): decoding from the mapped file ran ~7 % faster than
    from the anonymous copy on the demo, paired and interleaved.

    ``gpu``: every layer on the process's CUDA device 0 (a GPU row), one GPU only (no split across the
    visible ones, so the figure is one GPU's); else none, and no op offload either (a CPU row: with a CUDA
    build, llama.cpp would still send large prompt batches to a GPU it sees; see quantflow.devices).
    """
    from llama_cpp import LLAMA_SPLIT_MODE_NONE, Llama

    placement = (
        {"n_gpu_layers": ALL_LAYERS, "split_mode": LLAMA_SPLIT_MODE_NONE, "main_gpu": 0}
        if gpu
        else {"n_gpu_layers": 0, "op_offload": False}
    )
    return Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=logits_all,
        use_mmap=mmap,
        flash_attn=True,
        verbose=False,
        seed=0,
        **placement,
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
    import llama_cpp

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
    llama_cpp.llama_synchronize(llm._ctx.ctx)  # the last step's GPU work is part of the latency
    return out, ttft if ttft is not None else 0.0, time.perf_counter() - t0


def decode_run(llm, prompt: list[int], n_gen: int, states: dict | None = None) -> tuple[float | None, float]:
    """One repetition: prompt tok/s (batched prompt eval) and decode tok/s (n_gen single-token steps).

    The prompt is the KV depth the decode starts at; an empty one starts from an empty cache with BOS
    (prompt tok/s is then None), as llama-bench's tg at depth 0 does. EOS is ignored on purpose: the
    decode rate must cover exactly n_gen steps for every variant. The decode loop calls llama_decode on
    one preallocated one-token batch, as llama-bench's tg does, plus a greedy argmax over the logits
    (what a real generation needs): `Llama.eval` would add a KV cache scan, a batch rebuild and
    bookkeeping per token, Python cost that is not the engine's.

    With ``states`` (a dict kept by the caller) the context after the prompt is saved once and restored
    in later calls instead of evaluating the prompt again, as llama-bench restores its depth between
    repetitions: a deep curve point then costs its decode alone. A restored call has no prompt rate
    (None), and its first step feeds the prompt's last token again (the step's cost does not depend on
    which token it is).

    llama_decode returns before a GPU has finished (reading the logits waits for it): the clock is read
    after llama_synchronize, so the prompt and the last step are timed to their end (a no-op on the CPU).
    """
    import llama_cpp

    llm.reset()
    llm._ctx.kv_cache_seq_rm(-1, 0, -1)  # eval() clears the cache itself; with no prompt nothing else does
    restored = states is not None and len(prompt) in states
    t0 = time.perf_counter()
    if restored:
        llm.load_state(states[len(prompt)])
    elif prompt:
        llm.eval(prompt)
        llama_cpp.llama_synchronize(llm._ctx.ctx)
    t1 = time.perf_counter()
    if prompt and states is not None and not restored:
        states[len(prompt)] = llm.save_state()
    ctx, n_vocab, pos = llm._ctx.ctx, llm.n_vocab(), llm.n_tokens
    batch = llama_cpp.llama_batch_init(1, 0, 1)
    get_logits, decode, token, position = llama_cpp.llama_get_logits_ith, llama_cpp.llama_decode, batch.token, batch.pos
    # The logits of the one output live at the same address from step to step: the numpy view over
    # them is rebuilt only when it moves (as_array per token cost ~1.5 % of the demo's decode rate).
    address, logits = None, None
    try:
        batch.n_tokens = 1
        batch.seq_id[0][0] = 0
        batch.n_seq_id[0] = 1
        batch.logits[0] = True
        t_dec = time.perf_counter()
        for i in range(n_gen):
            if i == 0 and not prompt:
                token[0] = llm.token_bos()
            elif i == 0 and restored:
                token[0] = prompt[-1]
            else:
                ptr = get_logits(ctx, -1)
                if (at := ctypes.cast(ptr, ctypes.c_void_p).value) != address:
                    address, logits = at, np.ctypeslib.as_array(ptr, shape=(n_vocab,))
                token[0] = int(logits.argmax())
            position[0] = pos
            if (rc := decode(ctx, batch)) != 0:
                raise RuntimeError(f"llama_decode failed (code {rc}) at position {pos}")
            pos += 1
        llama_cpp.llama_synchronize(ctx)
        t2 = time.perf_counter()
    finally:
        llama_cpp.llama_batch_free(batch)
    llm.n_tokens = pos  # the wrapper's view of the cache: the next reset()/eval() clears it as usual
    return (len(prompt) / (t1 - t0) if prompt and not restored else None), n_gen / (t2 - t_dec)


def encode_item(llm, item: dict) -> list[int]:
    """A suite item's tokens, as hf_bench.encode_item makes them: the text prompt_format rendered, its
    special tokens parsed as such (a chat template's), BOS added only where the item says."""
    return llm.tokenize(item["prompt"].encode("utf-8"), add_bos=item.get("add_bos", True), special=True)


def _timed_answer(llm, ids: list[int], max_new: int) -> tuple[float, float]:
    _, ttft, total = greedy(llm, ids, max_new)
    return ttft, total


def speed_context(cfg: dict) -> int:
    """Context of the speed runs: room for the prompt or the deepest depth, plus the decoded tokens."""
    deepest = max([cfg["prompt_tokens"], *cfg.get("depths", [])])
    return max(cfg["n_ctx"], deepest + cfg["gen_tokens"])


def measure_speed(
    path: str | Path,
    cfg: dict,
    threads: int,
    prompt: list[int],
    suite: list[dict],
    f16: str | Path | None = None,
    llama_cpp_dir: str | Path | None = None,
    gpu: bool = False,
) -> tuple[dict, dict]:
    """:func:`quantflow.speed.measure` for a GGUF file (loaded without mmap, see :func:`load`), on the CPU or,
    with ``gpu``, every layer on the GPU (the f16 it is paired with too; llama-bench with -ngl 99).

    Every round also decodes with the f16 reference ``f16`` just before or after ours (``speedup_vs_f16``:
    the paired ratio, the figure the rounds continue for; the f16 file itself is paired with a second
    run of itself, so its ratio shows the pairing's own noise). The first cfg["curve_rounds"] rounds also
    run llama-bench once on the same file, threads and token counts, next to our decode (``llama_bench``:
    the engine's figures and ours/engine as paired ratios), and decode at every other depth of
    cfg["depths"]. ``prompt`` must hold the deepest depth's tokens.
    """
    Path(path).read_bytes()  # page cache warm: load time measures llama.cpp, not the disk
    n_ctx, n_gen, n_prompt = speed_context(cfg), cfg["gen_tokens"], min(cfg["prompt_tokens"], len(prompt))
    depths = [int(d) for d in cfg.get("depths", [])]
    if max(depths, default=0) > len(prompt):
        raise ValueError(f"bench.depths: {max(depths)} tokens deep, but the reference holds {len(prompt)}")
    companions, extras, others = [], [], {}
    f16_states: dict = {}  # the f16's context after the prompt, restored in every round after the first
    if f16 is not None:
        same = Path(f16).resolve() == Path(path).resolve()

        def f16_run(model) -> dict[str, float]:
            if not same and "f16" not in others:
                others["f16"] = load(f16, n_ctx, threads, mmap=True, gpu=gpu)  # after the peak RSS was read
            m = model if same else others["f16"]
            # Four untimed steps first: the other model's run just evicted the f16's weights from the
            # caches, which on a small model swung its rate by +-25 % from round to round (measured on the
            # demo); every timed run then starts warm, as llama-bench's repetitions do.
            decode_run(m, [], 4)
            return {"f16_decode_tps": decode_run(m, prompt[:n_prompt], n_gen, f16_states)[1]}

        companions.append(f16_run)
    # The depth equal to the prompt's is the main decode itself: paired_blocks takes it from there.
    depth_states: dict = {}  # each depth's context, restored in later rounds as llama-bench restores its own
    if other_depths := [d for d in depths if d != n_prompt]:
        extras.append(
            lambda m: {f"decode_tps_d{d}": decode_run(m, prompt[:d], n_gen, depth_states)[1] for d in other_depths}
        )
    # llama-bench at the prompt's depth (and 0) by default; at every depth only when asked: each depth
    # costs it a prefill and n_gen more steps per round, as much as our own curve.
    engine_depths = depths if cfg.get("engine_every_depth") else []
    engine_setup: dict = {}  # what llama-bench reports it ran on (its -ngl, its backends)
    if llama_cpp_dir is not None:
        from .llama_tools import llama_bench

        def engine_run(_) -> dict[str, float]:
            r = llama_bench(llama_cpp_dir, path, threads, n_prompt, n_gen, 1, engine_depths,
                            n_gpu_layers=BENCH_ALL_LAYERS if gpu else 0)
            engine_setup.update({k: r[k] for k in ("n_gpu_layers", "backends") if k in r})
            tg = {f"engine_tg_tps_d{d}": rate for d, (rate, _) in r["tg_by_depth"].items()}
            return {"engine_pp_tps": r["pp_tps"], **tg}

        extras.insert(0, engine_run)  # first: next to our decode in both orders of a round
    try:
        sp, memory, rounds = speed.measure(
            load=lambda: load(path, n_ctx, threads, gpu=gpu),
            close=lambda llm: llm.close(),
            decode=decode_run,
            answer=_timed_answer,
            encode=encode_item,
            cfg=cfg,
            threads=threads,
            prompt=prompt[:n_prompt],
            suite=suite,
            companions=companions,
            extras=extras,
            paired="f16_decode_tps" if f16 is not None else None,
            reload=lambda: load(path, n_ctx, threads, mmap=True, gpu=gpu),
            gpu=gpu,
        )
    finally:
        for m in others.values():
            m.close()
    sp.update(paired_blocks(rounds, n_prompt, depths, threads, n_gen))
    if "llama_bench" in sp:
        sp["llama_bench"].update(engine_setup)
    return sp, memory


def paired_blocks(rounds: dict[str, list[float]], n_prompt: int, depths: list[int], threads: int, n_gen: int) -> dict:
    """The speed block's paired figures from the rounds of :func:`quantflow.speed.measure`.

    The extras (llama-bench, the other depths) ran in the first rounds only: a ratio against our decode
    pairs them with our decode of those same rounds.
    """
    out: dict = {}
    tg = rounds["decode_tps"]
    if n_prompt in depths:  # measured once per round, as the main decode
        rounds = {**rounds, f"decode_tps_d{n_prompt}": tg}
    if "f16_decode_tps" in rounds:
        out["f16_decode_tps"] = stats.summarize(rounds["f16_decode_tps"])
        out["speedup_vs_f16"] = stats.paired_ratio(tg, rounds["f16_decode_tps"])
    if "engine_pp_tps" in rounds:
        eng_tg, eng_pp = rounds[f"engine_tg_tps_d{n_prompt}"], rounds["engine_pp_tps"]
        ratio = stats.paired_ratio(tg[: len(eng_tg)], eng_tg)
        out["llama_bench"] = {
            "pp_tps": float(np.mean(eng_pp)),
            "pp_sd": float(np.std(eng_pp, ddof=1)) if len(eng_pp) > 1 else 0.0,
            "pp_tokens": n_prompt,
            "pp_depth": 0,
            "tg_tps": float(np.mean(eng_tg)),
            "tg_sd": float(np.std(eng_tg, ddof=1)) if len(eng_tg) > 1 else 0.0,
            "tg_tokens": n_gen,
            "tg_depth": n_prompt,
            "reps": len(eng_tg),
            "threads": threads,
            "python_vs_engine_tg": ratio["median"],
            "python_vs_engine_tg_ci95": ratio["ci95"],
            "python_vs_engine_pp": stats.paired_ratio(rounds["prompt_tps"][: len(eng_pp)], eng_pp)["median"],
        }
    by_depth = []
    for d in depths:
        ours = rounds[f"decode_tps_d{d}"]
        row: dict = {"depth": d, "decode_tps": stats.summarize(ours)}
        if (key := f"engine_tg_tps_d{d}") in rounds:
            row["engine_tg_tps"] = stats.summarize(rounds[key])
            row["python_vs_engine"] = stats.paired_ratio(ours[: len(rounds[key])], rounds[key])
        by_depth.append(row)
    if by_depth:
        out["by_depth"] = by_depth
    return out


def measure_speed_isolated(
    path: str | Path, cfg: dict, threads: int, prompt: list[int], suite: list[dict], f16=None, llama_cpp_dir=None,
    gpu: bool = False,
):
    """:func:`measure_speed` in a fresh interpreter that imports only llama_cpp and numpy."""
    job = {"path": path, "cfg": cfg, "threads": threads, "prompt": prompt, "suite": suite, "f16": f16}
    job.update(llama_cpp_dir=llama_cpp_dir, gpu=gpu)
    payload = {k: str(v) if isinstance(v, Path) else v for k, v in job.items()}
    out = speed.run_isolated("quantflow.bench", payload, str(path))
    return out["speed"], out["memory"]


def _isolated_job(job: dict) -> dict:
    args = (job["path"], job["cfg"], job["threads"], job["prompt"], job["suite"], job["f16"], job["llama_cpp_dir"])
    sp, memory = measure_speed(*args, gpu=job.get("gpu", False))
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


def measure_quality(path: str | Path, ref: dict[str, np.ndarray], cfg: dict, threads: int, gpu: bool = False) -> dict:
    """:func:`quantflow.quality.quality_of` for a GGUF file."""
    llm = load(path, cfg["n_ctx"], threads, logits_all=True, gpu=gpu)
    try:
        return quality.quality_of(llm, ref)
    finally:
        llm.close()


def answer_tasks(
    path: str | Path, items: list[dict], cfg: dict, threads: int, gpu: bool = False
) -> tuple[list[dict], dict]:
    """Greedy answers to the test set, checked; accuracy overall and per category."""
    llm = load(path, cfg["n_ctx"], threads, gpu=gpu)
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
    f16: str | Path | None = None,
    reference_answers: list[dict] | None = None,
    machine: dict | None = None,
    device: str = "cpu",
) -> dict:
    """Every measurement of one GGUF variant, as a result dict (see result.schema.yaml).

    Speed and memory come first, so the peak RSS is that of load + inference alone, before the
    quality passes allocate their buffers. With ``f16`` the speed rounds pair this variant with its f16
    reference; with ``llama_cpp_dir`` with llama-bench; ``reference_answers`` (the f16's checked
    answers) give the flips and McNemar's p; ``machine`` (:func:`quantflow.bandwidth.copy_bandwidth`)
    the bandwidth fractions. ``device``: "cpu", or "gpu" (every layer offloaded; the GPU's telemetry and
    state are recorded, the result's ``gpu`` block).
    """
    from .provenance import cpu_model
    from .quantize import sha256, tensor_summary

    gpu = device == "gpu"

    ref = quality.load_reference(reference)
    if not prompts:
        raise ValueError("the prompt suite is empty: latency and answers need at least one prompt")
    deepest = max([cfg["prompt_tokens"], *cfg.get("depths", [])])
    prompt = quality.prompt_of(ref, deepest)
    sp, memory = measure_speed_isolated(gguf, cfg, threads, prompt, prompts, f16, llama_cpp_dir, gpu)
    engine = sp.pop("llama_bench", None)
    gpu_state = memory.pop("gpu", None)
    # The machine's bandwidth is the CPU's copy rate: a GPU row's decode reads VRAM, another bandwidth.
    if machine is not None and not gpu:
        sp["bandwidth"] = bandwidth_block(gguf, sp, machine)
    qual = measure_quality(gguf, ref, cfg, threads, gpu)
    answers, acc = answer_tasks(gguf, test, cfg, threads, gpu)
    qual.update(acc)
    if reference_answers is not None:
        qual.update(flips_against(answers, reference_answers))
    summ = tensor_summary(gguf)
    return {
        "schema_version": 1,
        **meta,
        "format": "gguf",
        "status": "ok",
        "reason": None,
        "device": device,
        "device_name": (gpu_state or {}).get("name") or ("GPU (NVML n/a)" if gpu else cpu_model()),
        **({"gpu": gpu_state} if gpu_state else {}),
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


def bandwidth_block(gguf: str | Path, sp: dict, machine: dict) -> dict:
    """Bytes per decoded token and the share of the machine's copy bandwidth the median decode uses,
    at the prompt's depth; each depth row of ``sp["by_depth"]`` gets its own fraction."""
    from . import bandwidth

    model = bandwidth.model_bytes(gguf)
    gbps = machine["copy_gbps"]
    for row in sp.get("by_depth", []):
        at_depth = bandwidth.fraction(model, row["depth"], row["decode_tps"]["median"], gbps)
        row["bandwidth_fraction"] = at_depth["bandwidth_fraction"]
    at_prompt = bandwidth.fraction(model, sp["prompt_tokens"], sp["decode_tps"]["median"], gbps)
    return {**model, **at_prompt, "machine_copy_gbps": gbps, "depth": sp["prompt_tokens"]}


if __name__ == "__main__":
    speed.isolated_main(_isolated_job)
