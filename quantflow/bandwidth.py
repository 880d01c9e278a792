"""How close a decode rate is to the machine's memory limit.

Decoding one token reads every weight once (the token embedding excepted: one row of it) plus the
KV cache up to the current depth, so bytes per token x tokens per second is the memory traffic a
decode rate implies. Divided by the bandwidth the machine sustains (a copy benchmark, measured once
per run), it says how much faster that variant could decode at best. A fraction above 1 means the
model, or part of it, is served from the CPU caches rather than from memory (small models).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

KV_BYTES = 2  # llama.cpp's default KV cache type is f16 (type_k / type_v)


def copy_bandwidth(threads: int, mib: int = 256, repetitions: int = 7) -> dict:
    """Sustained memory bandwidth (GB/s) of a multi-threaded copy of ``mib`` MiB, STREAM-style.

    Each of ``threads`` threads copies its own slice with numpy (which releases the GIL for the
    copy); bytes counted = read + written, as STREAM's Copy counts them. The best of ``repetitions``
    after one warm-up: the machine's limit, not its average load (the decode figures are medians,
    so the fraction errs towards the low side).
    """
    n = mib * 2**20 // 8
    src = np.ones(n, dtype=np.float64)
    dst = np.empty_like(src)
    bounds = np.linspace(0, n, threads + 1, dtype=np.int64)
    parts = [(src[a:b], dst[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    times = []
    with ThreadPoolExecutor(threads) as pool:
        for i in range(repetitions + 1):
            t0 = time.perf_counter()
            list(pool.map(lambda sd: np.copyto(sd[1], sd[0]), parts))
            if i:  # the first copy faults the destination's pages in
                times.append(time.perf_counter() - t0)
    gbps = 2 * src.nbytes / min(times) / 1e9
    log.info("copy bandwidth %.1f GB/s (%d threads, %d MiB)", gbps, threads, mib)
    out = {"copy_gbps": gbps, "median_gbps": 2 * src.nbytes / float(np.median(times)) / 1e9}
    return out | {"threads": threads, "mib": mib, "repetitions": repetitions}


def model_bytes(path: str | Path) -> dict:
    """What one decoded token reads from a GGUF file: its weights and the KV cache bytes per token of depth."""
    from .gguf_file import read_header

    h = read_header(path)
    field = h.get
    arch = field("general.architecture")
    sizes = {t.name: t.n_bytes for t in h.tensors}
    weights = sum(sizes.values())
    if "output.weight" in sizes:  # untied: the embedding is looked up (one row), not read whole
        weights -= sizes.get("token_embd.weight", 0)
    layers = int(field(f"{arch}.block_count"))
    heads = int(field(f"{arch}.attention.head_count"))
    kv_heads = int(field(f"{arch}.attention.head_count_kv") or heads)
    head_dim = field(f"{arch}.attention.key_length") or int(field(f"{arch}.embedding_length")) // heads
    v_dim = field(f"{arch}.attention.value_length") or head_dim
    kv_per_token = layers * kv_heads * (int(head_dim) + int(v_dim)) * KV_BYTES
    return {"weights_bytes": weights, "kv_bytes_per_token": kv_per_token}


def fraction(model: dict, depth: int, tokens_per_s: float, machine_gbps: float) -> dict:
    """Bytes read per decoded token at ``depth`` and the share of the machine's bandwidth that rate uses."""
    per_token = model["weights_bytes"] + model["kv_bytes_per_token"] * depth
    return {"bytes_per_token": int(per_token), "bandwidth_fraction": per_token * tokens_per_s / (machine_gbps * 1e9)}
