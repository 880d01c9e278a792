"""Variant names: what a name like ``gguf-Q4_K_M-imat`` or ``hf-nf4`` says, in one place.

A variant is how a model is stored and run. GGUF variants are ``gguf-<quant>``: ``gguf-f16`` (the
converted file, every variant's reference) or ``gguf-<llama.cpp type>`` with an optional ``-imat``
suffix (quantized with an importance matrix). HF variants run through transformers: ``hf-<name>``.

A GGUF variant runs on one device (config ``gguf_devices``): the CPU names above, or the same name with
``@gpu`` (``gguf-Q4_K_M@gpu``: every layer offloaded to the GPU). The CPU keeps the plain names, so a
CPU-only run's files and names are those of a run before devices existed. HF variants carry no device
in their name: transformers runs them on CUDA where torch sees one (the result's ``device`` says where).
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
DEVICE_SEP = "@"
#: GGUF devices (config gguf_devices), the first the default: its names carry no suffix.
DEVICES = ("cpu", "gpu")
CPU = DEVICES[0]


def split_device(variant: str) -> tuple[str, str]:
    """(name without its device, device): ``gguf-Q4_K_M@gpu`` -> (``gguf-Q4_K_M``, ``gpu``); no suffix: cpu.

    The one parser of the device suffix; ValueError for an unknown device, a device on an HF name, or an
    explicit ``@cpu`` (the CPU's names carry none, so each row has exactly one name).
    """
    base, sep, device = variant.partition(DEVICE_SEP)
    if not sep:
        return variant, CPU
    if device not in DEVICES[1:] or base.startswith(HF_PREFIX):
        raise ValueError(
            f"variant {variant!r}: a device suffix is {DEVICE_SEP}{f' or {DEVICE_SEP}'.join(DEVICES[1:])} "
            "on a GGUF name (CPU names carry none; HF variants run where torch puts them)"
        )
    return base, device


def device_of(variant: str) -> str:
    """The device a GGUF variant runs on ('cpu' or 'gpu'); 'cpu' for an HF name (its result says where)."""
    return split_device(variant)[1]


def on_device(variant: str, device: str) -> str:
    """The name of a GGUF variant on ``device`` (``on_device("gguf-f16", "gpu")`` -> ``gguf-f16@gpu``)."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
    base = split_device(variant)[0]
    return base if device == CPU else f"{base}{DEVICE_SEP}{device}"


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
    return None if is_hf(variant) else split_device(variant)[0].removeprefix(GGUF_PREFIX)


def is_reference(variant: str) -> bool:
    """The f16 on any device: every variant's quality reference (``gguf-f16``) and its GPU run."""
    return not is_hf(variant) and split_device(variant)[0] == REFERENCE


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
    """The name without its ``gguf-`` prefix, for tables and chart labels (HF names stay whole; a device
    suffix stays: ``Q4_K_M@gpu``)."""
    return variant.removeprefix(GGUF_PREFIX)


def all_variants(quants, hf_variants, devices=(CPU,)) -> list[str]:
    """Every {variant} value of a run: per GGUF device in ``devices`` the f16 and each {quant}, then the HF
    variants."""
    gguf = [REFERENCE, *(gguf_variant(q) for q in quants)]
    return [*(on_device(v, d) for d in devices for v in gguf), *hf_variants]
