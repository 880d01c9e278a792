"""The speed protocol both engines run (design section 5), and the fresh process it runs in.

One fresh process per variant, a fixed thread count, warm-up runs discarded, N measured repetitions
summarised by median and spread. An engine supplies what differs: how to load and free a model, one
decode repetition, one timed greedy answer and how a suite item becomes token ids
(:mod:`quantflow.bench` for llama.cpp, :mod:`quantflow.hf_bench` for transformers).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import procs, stats
from .memory import peak_rss_mb, rss_mb
from .telemetry import GpuSampler

log = logging.getLogger(__name__)


def speed_summary(cfg: dict, threads: int, prompt_tokens: int, load_s, pp, tg, ttft, lat) -> dict:
    """The result's speed block from raw repetitions: one shape for both formats."""
    return {
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
        "rounds": len(tg),
    }


def measure(
    *,
    load: Callable[[], object],
    decode: Callable[[object, list[int], int], tuple[float, float]],
    answer: Callable[[object, list[int], int], tuple[float, float]],
    encode: Callable[[object, dict], list[int]],
    cfg: dict,
    threads: int,
    prompt: list[int],
    suite: list[dict],
    close: Callable[[object], None] = lambda model: None,
    free: Callable[[], None] = lambda: None,
    companions: Sequence[Callable[[object], dict[str, float]]] = (),
    extras: Sequence[Callable[[object], dict[str, float]]] = (),
    paired: str | None = None,
    reload: Callable[[], object] | None = None,
    what: str = "",
    gpu: bool = True,
) -> tuple[dict, dict, dict[str, list[float]]]:
    """Load time, TTFT and latency over the prompt suite, prompt/decode rates; memory. Returns the speed
    and memory blocks and the raw rounds ({"decode_tps": [...], "prompt_tps": [...], companion keys}).

    ``load()`` returns a loaded model (whatever the engine's handle is); ``close(model)`` releases it
    and ``free()`` runs once the protocol has dropped its reference (garbage collection, CUDA cache).
    ``decode(model, prompt, n)`` is one repetition -> (prompt tok/s, decode tok/s over n steps);
    ``answer(model, ids, max_new)`` one timed greedy answer -> (seconds to first token, total);
    ``encode(model, item)`` the token ids of a suite item.

    Decode repetitions are *rounds*: each round runs every companion and the decode (a companion is a
    function of the model returning named figures, e.g. the f16 reference's decode rate), and in the
    first cfg["curve_rounds"] rounds (default: cfg["repetitions"]) the extras after it (costlier figures
    that need no more rounds than that: other KV depths, llama-bench), in forward order on even rounds
    and backward on odd ones (ABBA...), so the decode sits next to its companions and to the first extra
    in every round and the machine's slow and fast spells hit the figures of a round alike and cancel
    in their ratios. Rounds continue past cfg["repetitions"] (and past the extras' rounds) until the
    95 % CI of the per-round ratio decode / ``paired`` (a companion's key), or without one of the median
    decode rate, is within +-cfg["target_ci"], or cfg["max_repetitions"] is reached; one warm-up round
    (cfg["warmup"] of them) is discarded.

    The baseline RSS is read before the first load (the caller imports its framework first, so
    model_rss_mb is the model and its buffers); the peak once the timed answers ran, before the decode
    rounds (a companion may load a second model). With ``reload`` the model is loaded again that way
    for the rounds (the GGUF engine decodes from a memory-mapped file there, as llama-bench does, and
    measures memory without the map). GPU telemetry (peak VRAM, utilisation; None without a GPU, or with
    ``gpu=False``: a CPU row) is sampled in a background thread throughout; the memory block's ``gpu``
    (the GPU's name, driver, clocks and temperature at the start and the end) only where it was.
    """
    baseline = rss_mb()
    warm, reps, n_gen = cfg["warmup"], cfg["repetitions"], cfg["gen_tokens"]
    prompt = prompt[: cfg["prompt_tokens"]]
    with GpuSampler(enabled=gpu) as sampler:
        load_s, model = [], None
        for i in range(warm + reps):
            if model is not None:
                close(model)
                model = None  # the previous load is freed before the next one
                free()
            t0 = time.perf_counter()
            model = load()
            if i >= warm:
                load_s.append(time.perf_counter() - t0)
        ttft, lat = [], []
        suite_ids = [encode(model, s) for s in suite]
        for i in range(warm + reps):
            for ids in suite_ids:
                t_first, t_all = answer(model, ids, cfg["max_answer_tokens"])
                if i >= warm:
                    ttft.append(t_first)
                    lat.append(t_all)
        peak = peak_rss_mb()
        if reload is not None:
            close(model)
            model = None
            free()
            model = reload()
        for _ in range(warm):
            decode(model, prompt, n_gen)

        def main(m) -> dict[str, float]:
            pp, tg = decode(m, prompt, n_gen)
            return {"prompt_tps": pp, "decode_tps": tg}

        for _ in range(warm):
            for c in (*companions, *extras):
                c(model)
        curve = cfg.get("curve_rounds", reps)
        least = max(reps, curve) if extras else reps
        rounds: dict[str, list[float]] = {}
        while (n := len(rounds.get("decode_tps", []))) < cfg["max_repetitions"]:
            runners = [*companions, main, *(extras if n < curve else ())]
            for run in runners if n % 2 == 0 else runners[::-1]:
                for k, v in run(model).items():
                    rounds.setdefault(k, []).append(v)
            if n + 1 >= least and _converged(rounds, paired, cfg["target_ci"]):
                break
        close(model)
        model = None
        free()
    tg, pp = rounds["decode_tps"], rounds["prompt_tps"]
    speed = speed_summary(cfg, threads, len(prompt), load_s, pp, tg, ttft, lat)
    memory = {"use_mmap": False, "peak_rss_mb": peak, **sampler.summary()}
    if (state := sampler.info()) is not None:
        memory["gpu"] = state
    memory.update(baseline_rss_mb=baseline, model_rss_mb=peak - baseline)
    log.info(
        "%sdecode %.1f tok/s (CV %.1f %%, %d rounds), prompt %.1f tok/s, peak RSS %.1f MB",
        f"{what}: " if what else "",
        speed["decode_tps"]["median"],
        100 * speed["decode_tps"]["cv"],
        len(tg),
        speed["prompt_tps"]["median"],
        peak,
    )
    return speed, memory, rounds


def _converged(rounds: dict[str, list[float]], paired: str | None, target: float) -> bool:
    """The stop rule: the paired ratio's CI (the figure rankings use) or else the decode median's."""
    tg = rounds["decode_tps"]
    if paired is None:
        return stats.converged(tg, target)
    return stats.converged([a / b for a, b in zip(tg, rounds[paired], strict=True)], target)


def run_isolated(module: str, payload: dict, what: str) -> dict:
    """Run ``python -m module`` in a fresh interpreter: JSON job on stdin, JSON result on stdout,
    its log lines (stderr) forwarded to this process's log.

    The Snakemake script process carries Snakemake's own imports (~150 MB) and whatever earlier steps
    allocated; measured in there, peak RSS would mostly be the workflow engine, not the model.
    """
    pkg_root = str(Path(__file__).resolve().parent.parent)  # importable even when not pip-installed
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [pkg_root, os.environ.get("PYTHONPATH")])))
    proc = procs.run(  # a killed bench job must not leave its measurement running
        [sys.executable, "-m", module],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    for line in proc.stderr.splitlines():
        log.info("speed: %s", line)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"speed measurement of {what} failed (exit {proc.returncode}): {tail[0]}")
    return json.loads(proc.stdout)


def isolated_main(job_to_result: Callable[[dict], dict]) -> None:
    """Entry point of an isolated measurement: JSON job on stdin, ``job_to_result(job)`` as JSON on stdout."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    job = json.loads(sys.stdin.read())
    sys.stdout.write(json.dumps(job_to_result(job)))
