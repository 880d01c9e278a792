"""GGUF quantization through llama.cpp's quantizer, and a check of what it really wrote.

llama.cpp silently falls back to other tensor types when a row width does not fit a type's block
(K-quants need multiples of 256), returns success and keeps the requested label in the file. So
every output is read back with gguf's reader and each tensor's real type is checked.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
from collections import Counter
from pathlib import Path

from .atomic import atomic_path

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
QK_K = 256  # llama.cpp's K-quant super-block (ggml-common.h): a row must be a multiple of it
# Block sizes of the non-K types that llama.cpp's fallbacks use; every other type listed here needs QK_K.
_SMALL_BLOCK_TYPES = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "MXFP4_MOE", "F16", "BF16", "F32"}


def needs_qk_k(ftype: str) -> bool:
    """Whether llama.cpp's type ``ftype`` (e.g. Q4_K_M, IQ3_XS, TQ1_0) quantizes rows in 256-wide super-blocks."""
    return ftype.upper() not in _SMALL_BLOCK_TYPES


def predicted_fallbacks(hidden: int, ffn: int, q_width: int) -> dict[str, int]:
    """Tensors whose row width is not a multiple of QK_K, so K-quants would fall back for them.

    The row width of a ggml weight is its first dimension (ne[0]), the Linear's input features:
    ``hidden`` for token_embd, output, attn_q/k/v, ffn_gate/up; heads x head_dim (``q_width``) for
    attn_output; ``ffn`` for ffn_down (llama_tensor_get_type() in llama.cpp's src/llama-quant.cpp
    checks ``ne[0] % QK_K``); k/v read the hidden state, so GQA does not change their width.
    Returns {GGUF tensor name pattern: offending width}.
    """
    widths = {
        "token_embd": hidden,
        "output": hidden,
        "blk.*.attn_q": hidden,
        "blk.*.attn_k": hidden,
        "blk.*.attn_v": hidden,
        "blk.*.ffn_gate": hidden,
        "blk.*.ffn_up": hidden,
        "blk.*.attn_output": q_width,
        "blk.*.ffn_down": ffn,
    }
    return {name: w for name, w in widths.items() if w % QK_K}


def check_gguf(path: str | Path) -> None:
    """Raise unless ``path`` is a complete GGUF file (magic, header, every tensor inside the file).

    The message names the file and the fix: a GGUF in the workflow's tree is remade by deleting it
    and rerunning (Snakemake then reruns the job that writes it).
    """
    from gguf import GGUFReader

    p = Path(path)
    fix = "delete it and rerun (the workflow remakes it), or copy it again if it came from elsewhere"
    size = p.stat().st_size
    with open(p, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            what = "an empty file" if size == 0 else "not a GGUF file (bad magic)"
            raise ValueError(f"{p}: {what}; {fix}")
    try:
        r = GGUFReader(p)
    except Exception as e:  # noqa: BLE001 - the reader raises many types on truncated files
        raise ValueError(f"{p}: truncated or corrupted GGUF ({size} bytes; {e}); {fix}") from e
    if not r.tensors:
        raise ValueError(f"{p}: GGUF holds no tensors ({size} bytes); {fix}")
    end = max(int(t.data_offset) + int(t.n_bytes) for t in r.tensors)
    if end > size:
        short = [t.name for t in r.tensors if int(t.data_offset) + int(t.n_bytes) > size]
        raise ValueError(
            f"{p}: truncated GGUF ({size} of {end} bytes; {len(short)} tensor(s) cut, first {short[0]}); {fix}"
        )


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

    check_gguf(src)
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
    with atomic_path(dst) as tmp:
        if imatrix is not None:
            from .llama_tools import quantize_with_imatrix

            quantize_with_imatrix(llama_cpp_dir, src, tmp, opts, imatrix, threads)
        else:
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
            if rc != 0:
                raise RuntimeError(f"llama_model_quantize({src} -> {ftype}) returned {rc}")
        check_gguf(tmp)
        summary = tensor_summary(tmp)
        if opts.get("leave_output_tensor") and "output.weight" in summary["tensors"]:
            overrides.setdefault("output.weight", summary["tensors"]["output.weight"][0])
        bad = fallback_tensors(summary["tensors"], ftype, overrides)
        if bad:
            raise RuntimeError(
                f"{ftype}: llama.cpp fell back to other types for {len(bad)} tensor(s): {', '.join(bad[:12])}"
                + (" ..." if len(bad) > 12 else "")
                + " (K-quants need row sizes that are multiples of 256)"
            )
    log.info("%s: %.2f bits/weight, types %s", dst, summary["bits_per_weight"], summary["tensor_types"])
    return summary


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()
