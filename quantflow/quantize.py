"""GGUF quantization through llama.cpp's quantizer, and a check of what it really wrote.

llama.cpp falls back to other tensor types when a row width does not fit a type's block (K-quants
need multiples of 256: Qwen2.5-0.5B's 896, SmolLM2's 576), returns success and keeps the requested
label in the file. That is what the GGUFs people download contain, so it is never refused: every
output is read back with gguf's reader, and its plan (the type of every tensor, the effective bits per
weight, what fell back and why) goes with the result.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

from .atomic import atomic_path
from .gguf_file import read_header
from .gguf_types import default_type, parse_quantizer_log

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


def check_gguf(path: str | Path) -> None:
    """Raise unless ``path`` is a complete GGUF file (magic, header, every tensor inside the file).

    The message names the file and the fix: a GGUF in the workflow's tree is remade by deleting it
    and rerunning (Snakemake then reruns the job that writes it).
    """
    p = Path(path)
    fix = "delete it and rerun (the workflow remakes it), or copy it again if it came from elsewhere"
    size = p.stat().st_size
    with open(p, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            what = "an empty file" if size == 0 else "not a GGUF file (bad magic)"
            raise ValueError(f"{p}: {what}; {fix}")
    try:
        h = read_header(p)
    except Exception as e:  # noqa: BLE001 - a cut header raises struct.error, a garbled one ValueError
        raise ValueError(f"{p}: truncated or corrupted GGUF ({size} bytes; {e}); {fix}") from e
    if not h.tensors:
        raise ValueError(f"{p}: GGUF holds no tensors ({size} bytes); {fix}")
    end = max(t.data_offset + t.n_bytes for t in h.tensors)
    if end > size:
        short = [t.name for t in h.tensors if t.data_offset + t.n_bytes > size]
        raise ValueError(
            f"{p}: truncated GGUF ({size} of {end} bytes; {len(short)} tensor(s) cut, first {short[0]}); {fix}"
        )


def tensor_summary(path: str | Path) -> dict:
    """Parameter count, bits per weight, a count of tensors per ggml type, and each tensor's type, shape
    and bytes, from the file itself."""
    tensors = read_header(path).tensors
    n_params = sum(t.n_elements for t in tensors)
    n_bytes = sum(t.n_bytes for t in tensors)
    return {
        "n_params": n_params,
        "bits_per_weight": 8.0 * n_bytes / n_params,
        "tensor_types": dict(Counter(t.type_name for t in tensors)),
        "tensors": {t.name: (t.type_name, t.shape, t.n_bytes) for t in tensors},
    }


def is_weight(shape: list[int]) -> bool:
    """A matrix llama.cpp quantizes; norms and biases (one dimension above 1) stay F32 by design."""
    return sum(1 for s in shape if s > 1) >= 2


def quant_plan(summary: dict, opts: dict, quantizer_log: str) -> dict:
    """What llama.cpp wrote for ``opts['type']``, tensor by tensor, with the reason for every weight whose
    type is not the ftype's own (e.g. Q4_K for Q4_K_M).

    Fallbacks are the tensors llama.cpp's quantizer itself says it had to give another type (its
    per-tensor warnings and closing count); the other reasons follow its source (gguf_types): an explicit
    override, token_embd following the output type when the embeddings are tied, the ftype's own mix.
    """
    ftype = opts["type"]
    base = default_type(ftype)
    report = parse_quantizer_log(quantizer_log)
    fell = {f["tensor"]: f for f in report["fallbacks"]}
    tensors = summary["tensors"]
    tied = "output.weight" not in tensors
    asked = {"output.weight": opts.get("output_tensor_type"), "token_embd.weight": opts.get("token_embedding_type")}
    by_type: dict[str, dict] = {}
    off_type = []
    for name, (ttype, shape, n_bytes) in tensors.items():
        n = 1
        for s in shape:
            n *= s
        t = by_type.setdefault(ttype, {"tensors": 0, "params": 0, "bytes": 0})
        t["tensors"] += 1
        t["params"] += n
        t["bytes"] += n_bytes
        if not is_weight(shape) or ttype == base:
            continue
        if name in fell:
            f = fell[name]
            why = f"fallback: rows of {f['ncols']} do not fit {f['planned']}'s {f['block']}-block ({f['written']})"
        elif asked.get(name):
            why = f"override: {asked[name].upper()} asked"
        elif name == "output.weight" and opts.get("leave_output_tensor"):
            why = "override: output tensor left unquantized"
        elif name == "token_embd.weight" and tied:
            why = "tied embeddings: token_embd takes the output tensor's type"
        else:
            why = f"llama.cpp's {ftype} mix"
        off_type.append({"tensor": name, "type": ttype, "reason": why})
    n_params = sum(t["params"] for t in by_type.values())
    n_bytes = sum(t["bytes"] for t in by_type.values())
    return {
        "requested": ftype,
        "default_type": base,
        "tied_embeddings": tied,
        "bits_per_weight": 8.0 * n_bytes / n_params,
        "types": dict(sorted(by_type.items())),
        "fallbacks": report["fallbacks"],
        "n_fallback": len(report["fallbacks"]),
        "reported_fallback_count": report["reported_count"],
        "off_type": off_type,
    }


def gguf_plan(gguf: str | Path, plan_file: str | Path | None, ftype: str) -> dict:
    """The plan rule quantize recorded for ``gguf``, or (the f16, which nothing quantized) the plan read
    from the file itself."""
    if plan_file:
        return json.loads(Path(plan_file).read_text())
    summary = tensor_summary(gguf)
    # The converter's --outtype auto keeps a bf16 model BF16: the file's own weight type is what was asked.
    weights = Counter(t for t, shape, _ in summary["tensors"].values() if is_weight(shape))
    return quant_plan(summary, {"type": weights.most_common(1)[0][0] if weights else ftype}, "")


def quantize(src: str | Path, dst: str | Path, opts: dict, threads: int, llama_cpp_dir, imatrix=None) -> dict:
    """Quantize ``src`` (f16/bf16 GGUF) into ``dst`` with llama.cpp's llama-quantize; return its plan.

    Whatever llama.cpp accepts is written: a tensor whose rows do not fit the requested type gets the
    type llama.cpp falls back to, and the plan says which and why. ``strict_types: true`` in ``opts``
    turns any fallback into a failure instead (nothing is left at ``dst``).
    """
    from .llama_tools import quantize as llama_quantize

    check_gguf(src)
    ftype = opts["type"]
    with atomic_path(dst) as tmp:
        text = llama_quantize(llama_cpp_dir, src, tmp, opts, threads, imatrix=imatrix)
        check_gguf(tmp)
        plan = quant_plan(tensor_summary(tmp), opts, text)
        if plan["fallbacks"] and opts.get("strict_types"):
            names = ", ".join(f"{f['tensor']}={f['written']}" for f in plan["fallbacks"][:8])
            raise RuntimeError(
                f"{ftype}: llama.cpp fell back to other types for {plan['n_fallback']} tensor(s) ({names}"
                f"{' ...' if plan['n_fallback'] > 8 else ''}) and quants[].strict_types is true; drop strict_types "
                "to keep the file (the report marks it), or choose a type whose block fits these row widths"
            )
    if plan["fallbacks"]:
        log.warning(
            "%s: llama.cpp fell back to other types for %d tensor(s), e.g. %s; effective %.2f bits/weight",
            ftype, plan["n_fallback"], plan["fallbacks"][0]["tensor"], plan["bits_per_weight"],
        )
    counts = {k: v["tensors"] for k, v in plan["types"].items()}
    log.info("%s: %.2f bits/weight, types %s", dst, plan["bits_per_weight"], counts)
    return plan


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()
