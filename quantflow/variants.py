"""Variant names: what a name like ``gguf-Q4_K_M-imat`` or ``hf-nf4`` says, in one place.

A variant is how a model is stored and run. GGUF variants are ``gguf-<quant>``: ``gguf-f16`` (the
converted file, every variant's reference) or ``gguf-<llama.cpp type>`` with an optional ``-imat``
suffix (quantized with an importance matrix). HF variants run through transformers: ``hf-<name>``.
Pure string facts, no imports of llama.cpp or torch: the Snakefile reads them on every DAG parse.
"""

from __future__ import annotations

GGUF_PREFIX = "gguf-"
HF_PREFIX = "hf-"
IMAT_SUFFIX = "-imat"
REFERENCE = "gguf-f16"  # every variant of a model / fine-tune is judged against this one
# HF variants and the quant label their results carry (the GGUF ones carry llama.cpp's type name).
HF_QUANT = {"hf-fp32": "F32", "hf-bnb8": "INT8", "hf-nf4": "NF4", "hf-gptq4": "GPTQ4"}
HF_VARIANTS = tuple(HF_QUANT)


def is_hf(variant: str) -> bool:
    return variant.startswith(HF_PREFIX)


def format_of(variant: str) -> str:
    """'hf' or 'gguf': the result's ``format``."""
    return "hf" if is_hf(variant) else "gguf"


def gguf_variant(quant: str) -> str:
    """The variant name of a {quant} wildcard value (``Q4_K_M`` -> ``gguf-Q4_K_M``)."""
    return GGUF_PREFIX + quant


def gguf_quant(variant: str) -> str | None:
    """The {quant} part of a GGUF variant (``f16`` for the reference); None for an HF variant."""
    return None if is_hf(variant) else variant.removeprefix(GGUF_PREFIX)


def is_reference(variant: str) -> bool:
    return variant == REFERENCE


def uses_imatrix(quant: str) -> bool:
    """True for a {quant} value quantized with an importance matrix (``Q4_K_M-imat``)."""
    return quant.endswith(IMAT_SUFFIX)


def quant_label(variant: str) -> str | None:
    """The result's ``quant``: llama.cpp's type name (F16, Q4_K_M, Q4_K_M-imat) or the HF label (NF4 ...).

    None for an HF name this module does not know (the HF bench refuses it with its own message).
    """
    if is_hf(variant):
        return HF_QUANT.get(variant)
    q = gguf_quant(variant)
    return "F16" if q == "f16" else q


def short_name(variant: str) -> str:
    """The name without its ``gguf-`` prefix, for tables and chart labels (HF names stay whole)."""
    return variant.removeprefix(GGUF_PREFIX)


def all_variants(quants, hf_variants) -> list[str]:
    """Every {variant} value of a run: the f16 reference, each {quant}, then the HF variants."""
    return [REFERENCE, *(gguf_variant(q) for q in quants), *hf_variants]
