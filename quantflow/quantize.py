"""GGUF quantization through llama.cpp's quantizer, and a check of what it really wrote.

llama.cpp silently falls back to other tensor types when a row width does not fit a type's block
(K-quants need multiples of 256), returns success and keeps the requested label in the file. So
every output is read back with gguf's reader and each tensor's real type is checked.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
from collections import Counter
from pathlib import Path

log = logging.getLogger(__name__)

# ggml tensor types each llama.cpp ftype may legitimately write for 2-D weights. The mixes
# (e.g. Q4_K_M keeping some attn_v / ffn_down in Q6_K) follow llama_tensor_get_type() in
# llama.cpp's src/llama-quant.cpp; anything else is a fallback.
ALLOWED_TYPES = {
    "Q8_0": {"Q8_0"},
    "Q6_K": {"Q6_K"},
    "Q5_K_M": {"Q5_K", "Q6_K"},
    "Q5_K_S": {"Q5_K", "Q6_K"},
    "Q4_K_M": {"Q4_K", "Q6_K"},
    "Q4_K_S": {"Q4_K", "Q5_K", "Q6_K"},
    "Q3_K_L": {"Q3_K", "Q5_K", "Q6_K"},
    "Q3_K_M": {"Q3_K", "Q4_K", "Q5_K", "Q6_K"},
    "Q3_K_S": {"Q3_K", "Q6_K"},
    "Q2_K": {"Q2_K", "Q3_K", "Q4_K", "Q6_K"},
    "Q2_K_S": {"Q2_K", "Q4_K", "Q6_K"},
    "Q4_0": {"Q4_0", "Q6_K"},
    "Q4_1": {"Q4_1", "Q6_K"},
    "Q5_0": {"Q5_0", "Q6_K"},
    "Q5_1": {"Q5_1", "Q6_K"},
}
# Types llama.cpp substitutes when a K-quant or IQ type does not fit a row.
FALLBACK_TYPES = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "F16", "BF16", "F32"}
GGUF_MAGIC = b"GGUF"


def check_gguf(path: str | Path) -> None:
    """Raise unless ``path`` is a complete GGUF file (magic, header, every tensor inside the file)."""
    from gguf import GGUFReader

    p = Path(path)
    with open(p, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ValueError(f"{p}: not a GGUF file (bad magic); delete it and rerun the job that made it")
    try:
        r = GGUFReader(p)
    except Exception as e:  # noqa: BLE001 - the reader raises many types on truncated files
        raise ValueError(f"{p}: truncated or corrupted GGUF ({e}); delete it and rerun") from e
    size = p.stat().st_size
    for t in r.tensors:
        if t.data_offset + t.n_bytes > size:
            raise ValueError(f"{p}: tensor {t.name} extends past the end of the file; delete it and rerun")


def tensor_summary(path: str | Path) -> dict:
    """Parameter count, bits per weight and a count of tensors per ggml type, from the file itself."""
    from gguf import GGUFReader

    r = GGUFReader(path)
    n_params = sum(int(t.n_elements) for t in r.tensors)
    n_bytes = sum(int(t.n_bytes) for t in r.tensors)
    return {
        "n_params": n_params,
        "bits_per_weight": 8.0 * n_bytes / n_params,
        "tensor_types": dict(Counter(t.tensor_type.name for t in r.tensors)),
        "tensors": {t.name: (t.tensor_type.name, [int(x) for x in t.shape]) for t in r.tensors},
    }


def fallback_tensors(tensors: dict[str, tuple[str, list[int]]], ftype: str, overrides: dict[str, str]) -> list[str]:
    """Names of 2-D tensors whose type is not one the requested ftype (or an override) allows."""
    allowed = ALLOWED_TYPES.get(ftype)
    bad = []
    for name, (ttype, shape) in tensors.items():
        if len(shape) < 2 or sum(1 for s in shape if s > 1) < 2:
            continue  # norms and biases stay F32 by design
        want = overrides.get(name)
        if want is not None:
            if ttype != want:
                bad.append(f"{name}={ttype} (asked {want})")
            continue
        if allowed is not None:
            ok = ttype in allowed
        else:  # a type without a table entry: only the known fallback types are suspicious
            ok = ttype not in FALLBACK_TYPES or ttype == ftype
        if not ok:
            bad.append(f"{name}={ttype}")
    return bad


def quantize(
    src: str | Path, dst: str | Path, opts: dict, threads: int, imatrix: str | Path | None = None, llama_cpp_dir=None
) -> dict:
    """Quantize ``src`` (f16/bf16 GGUF) into ``dst`` with llama.cpp; verify; return the summary.

    Without an importance matrix the binding's llama_model_quantize does it in-process; with one,
    llama.cpp's llama-quantize tool (the binding cannot pass an importance matrix).
    """
    import llama_cpp

    from .config import ggml_types, llama_quant_types

    ftype = opts["type"]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_quant_types()[ftype]
    params.nthread = threads
    overrides = {}
    gt = ggml_types()
    if "output_tensor_type" in opts:
        params.output_tensor_type = gt[opts["output_tensor_type"].upper()]
        overrides["output.weight"] = opts["output_tensor_type"].upper()
    if "token_embedding_type" in opts:
        params.token_embedding_type = gt[opts["token_embedding_type"].upper()]
        overrides["token_embd.weight"] = opts["token_embedding_type"].upper()
    if opts.get("leave_output_tensor"):
        params.quantize_output_tensor = False
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.partial")
    if imatrix is not None:
        from .llama_tools import quantize_with_imatrix

        try:
            quantize_with_imatrix(llama_cpp_dir, src, tmp, opts, imatrix, threads)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    else:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"llama_model_quantize({src} -> {ftype}) returned {rc}")
    check_gguf(tmp)
    summary = tensor_summary(tmp)
    if opts.get("leave_output_tensor") and "output.weight" in summary["tensors"]:
        overrides.setdefault("output.weight", summary["tensors"]["output.weight"][0])
    bad = fallback_tensors(summary["tensors"], ftype, overrides)
    if bad:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"{ftype}: llama.cpp fell back to other types for {len(bad)} tensor(s): {', '.join(bad[:12])}"
            + (" ..." if len(bad) > 12 else "")
            + " (K-quants need row sizes that are multiples of 256)"
        )
    os.replace(tmp, dst)
    log.info("%s: %.2f bits/weight, types %s", dst, summary["bits_per_weight"], summary["tensor_types"])
    return summary


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()
