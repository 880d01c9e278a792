"""llama.cpp's quantization types, and the rules it follows when it picks each tensor's type.

The config check (a warning before any job) and the quantize job (the record of what was written)
both need these facts; they live here so that neither imports the other. The rules mirror
src/llama-quant.cpp of the llama.cpp vendored in the pinned llama-cpp-python sdist:
``llama_ftype_get_default_type``, ``tensor_type_fallback`` and the output / tied-embedding branch
of ``llama_tensor_get_type_impl``. They are used to *predict* (a warning) and to *explain* a
tensor's type; whether a tensor really fell back is what llama.cpp's quantizer itself reports.
"""

from __future__ import annotations

import functools
import re

# llama.cpp's aliases: the type without a size suffix is the medium size (llama-quantize --help).
QUANT_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
FTYPE_PREFIX = "LLAMA_FTYPE_MOSTLY_"
UNQUANTIZED = ("F16", "F32", "BF16", "ALL_F32")

# llama_ftype_get_default_type(): the ggml type an ftype writes for most 2-D weights. Where the name
# is not the type, the exception is listed; a K-quant drops its _S/_M/_L size; the rest are their type.
_DEFAULT_TYPE_EXCEPTIONS = {
    "IQ3_XS": "IQ3_S",
    "IQ3_M": "IQ3_S",
    "IQ2_S": "IQ2_XS",
    "IQ2_M": "IQ2_S",
    "MXFP4_MOE": "MXFP4",
}
# tensor_type_fallback(): the type written instead when a row (ne[0]) is not a multiple of the
# target type's block. A 32-block type that does not fit, and a fallback that does not fit either,
# become F16.
_SHAPE_FALLBACK = {
    **dict.fromkeys(("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS"), "IQ4_NL"),
    **dict.fromkeys(("Q2_0", "Q2_K", "Q3_K", "TQ1_0", "TQ2_0"), "Q4_0"),
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}
# The output tensor (and token_embd when tied to it) of these ftypes gets Q5_K rather than Q6_K.
_LOW_IQ_FTYPES = {"IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"}


@functools.cache
def llama_quant_types() -> dict[str, int]:
    """Quantization types llama.cpp accepts, from llama-cpp-python's own ftype constants."""
    import llama_cpp

    return {
        name[len(FTYPE_PREFIX) :]: getattr(llama_cpp, name)
        for name in dir(llama_cpp)
        if name.startswith(FTYPE_PREFIX) and not name.endswith("GUESSED")
    }


def ggml_types() -> dict[str, int]:
    """ggml tensor type names (for per-tensor overrides), from the gguf reader's enum."""
    from gguf import GGMLQuantizationType

    return {t.name: int(t.value) for t in GGMLQuantizationType}


def canonical_quant(name: str) -> str:
    up = name.upper()
    return QUANT_ALIASES.get(up, up)


def block_size(ggml_type: str) -> int:
    """Elements per quantization block of a ggml type (gguf's table; 1 for F16/F32)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    return GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type]][0]


def default_type(ftype: str) -> str:
    """The ggml type llama.cpp's ftype ``ftype`` (e.g. Q4_K_M) writes for most weights (Q4_K)."""
    ftype = canonical_quant(ftype)
    if ftype in _DEFAULT_TYPE_EXCEPTIONS:
        return _DEFAULT_TYPE_EXCEPTIONS[ftype]
    if ftype == "ALL_F32":
        return "F32"
    k = re.fullmatch(r"(Q\d_K)(?:_[SML])?", ftype)  # Q4_K_M -> Q4_K; every other ftype is its own type
    return k.group(1) if k else ftype


def shape_fallback(ncols: int, target: str) -> str | None:
    """The type llama.cpp writes instead of ``target`` for rows of ``ncols``; None when it fits."""
    if target in UNQUANTIZED or ncols % block_size(target) == 0:
        return None
    sub = _SHAPE_FALLBACK.get(target, target)
    return sub if ncols % block_size(sub) == 0 else "F16"


def output_type(ftype: str, ncols: int, override: str | None = None) -> str:
    """The type llama.cpp picks for output.weight (and for token_embd.weight when tied to it), before
    any shape fallback: an explicit --output-tensor-type; else Q8_0 when the row does not fit the
    ftype's own block; Q5_K for the lowest IQ types; Q6_K for everything but Q8_0."""
    if override:
        return override.upper()
    base = default_type(ftype)
    if ftype == "MXFP4_MOE" or ncols % block_size(base) != 0:
        return "Q8_0"
    if ftype in _LOW_IQ_FTYPES:
        return "Q5_K"
    return base if base == "Q8_0" else "Q6_K"


def planned_type(name: str, ncols: int, ftype: str, tied: bool, opts: dict | None = None) -> str:
    """The type llama.cpp plans for a weight role of rows ``ncols`` wide, before any shape fallback:
    ``name`` 'output', 'token_embd' (the output's type when tied to it) or any block weight (the ftype's
    default type; the per-layer mix's extra bits for some attn_v / ffn_down are not predicted)."""
    opts = opts or {}
    ftype = canonical_quant(ftype)
    if name == "output" or (tied and name == "token_embd"):
        return output_type(ftype, ncols, opts.get("output_tensor_type"))
    if name == "token_embd" and opts.get("token_embedding_type"):
        return opts["token_embedding_type"].upper()
    return default_type(ftype)


def predicted_fallbacks(widths: dict[str, int], ftype: str, tied: bool, opts: dict | None = None) -> list[str]:
    """Tensors that llama.cpp would have to give another type than the one it planned, as
    'name (width W: T -> F)', from the row widths of a model's tensor roles.

    ``widths`` maps GGUF tensor names (patterns such as 'blk.*.ffn_down') to ne[0], the Linear's input
    features. A prediction only: the per-layer mix can raise a few tensors to other types of the same
    family, and what llama.cpp really did is read from its own report after quantizing.
    """
    out = []
    for name, ncols in widths.items():
        planned = planned_type(name, ncols, ftype, tied, opts)
        got = shape_fallback(ncols, planned)
        if got is not None:
            out.append(f"{name} (width {ncols}: {planned} -> {got})")
    return out


def model_widths(hidden: int, ffn: int, q_width: int, tied: bool) -> dict[str, int]:
    """Row width (ne[0]) of each weight role of a Llama-like decoder.

    ne[0] is the Linear's input features: ``hidden`` for token_embd, output, attn_q/k/v and
    ffn_gate/up; heads x head_dim for attn_output; ``ffn`` for ffn_down. k/v read the hidden state,
    so grouped-query attention does not change their width. A tied model has no output tensor.
    """
    widths = {
        "token_embd": hidden,
        "blk.*.attn_q": hidden,
        "blk.*.attn_k": hidden,
        "blk.*.attn_v": hidden,
        "blk.*.ffn_gate": hidden,
        "blk.*.ffn_up": hidden,
        "blk.*.attn_output": q_width,
        "blk.*.ffn_down": ffn,
    }
    return widths if tied else {"output": hidden, **widths}


# One line per tensor from tensor_type_fallback(), e.g.
#   warning: blk.0.attn_q.weight - ncols 896 not divisible by 256 (required for type q4_K) -> falling back to q5_0
# (llama.cpp pads the fields with spaces).
_FALLBACK_LINE = re.compile(
    r"warning:\s+(?P<name>\S+)\s+-\s+ncols\s+(?P<ncols>\d+)\s+not divisible by\s+(?P<block>\d+)\s+"
    r"\(required for type\s+(?P<want>\S+)\)\s*(?:\(WARNING: must use F16 due to unusual shape\)\s*)?"
    r"->\s*falling back to\s+(?P<got>\S+)"
)
# The quantizer's closing count (llama_model_quantize_impl).
_FALLBACK_COUNT = re.compile(r"(\d+) of (\d+) tensor\(s\) required fallback quantization")


def parse_quantizer_log(text: str) -> dict:
    """llama.cpp's own report of its fallbacks: each tensor it had to give another type, and its
    closing count (None when that line is missing: the tool's last lines can be lost at exit)."""
    fallbacks = [
        {
            "tensor": m["name"],
            "ncols": int(m["ncols"]),
            "block": int(m["block"]),
            "planned": m["want"].upper(),
            "written": m["got"].upper(),
        }
        for m in _FALLBACK_LINE.finditer(text)
    ]
    count = _FALLBACK_COUNT.search(text)
    return {"fallbacks": fallbacks, "reported_count": int(count.group(1)) if count else None}
