"""The disk a run will write for a user's model, estimated before it starts, against the free space.

A 7B model is 13.5 GB per f16 GGUF, and each fine-tune writes its merged weights and every GGUF again: a
disk that fills half-way through fails a job deep in the run (llama-quantize then says only "iostream
error"). The config check warns when the estimate exceeds the free space; it never refuses, since the
tools would start, and space may be freed meanwhile.

The estimate counts the large files only, from the weights' own headers. Each GGUF is summed tensor
by tensor at the type llama.cpp plans for it (gguf_types.planned_type: the output and a tied embedding
at the output's type, a row that does not fit its block at the fallback type; norms in F32), per model
and fine-tune: the f16 GGUF and each quantized one. Each fine-tune adds its merged weights (in the base's
own dtype: the size of its files), and hf-gptq4 a 4-bit checkpoint per model and fine-tune. The K-quant
mixes give some attn_v / ffn_down tensors more bits than planned here, and the tokenizer's metadata (a
few MB) is not counted: the figure is an "about". Measured: on a Llama-2-7B-shaped model, Q8_0, Q6_K and
Q4_0 come within 0.1 % of the published GGUFs (7.16, 5.53 and 3.83 GB), Q5_K_M, Q4_K_M and Q3_K_M at
0.97, 0.94 and 0.89 of them (4.78, 4.08, 3.30 GB: the mixes' extra bits); against llama.cpp's files of
two-layer models, 0.96-0.98 (Qwen2.5-0.5B-shaped, 896 wide, tied) and 0.84-0.95 (Llama-3-shaped, whose
128 k-token vocabulary weighs in so small a file).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from .gguf_types import planned_type, shape_fallback
from .inputs import hf_dims, hf_tensors

# A GPTQ checkpoint: 4-bit weights, and per group of 128 a 16-bit scale and a packed zero point
GPTQ_BITS = 4 + (16 + 4) / 128


def weight_files(model_dir: str | Path) -> list[Path]:
    d = Path(model_dir)
    return sorted(d.glob("*.safetensors")) or sorted(d.glob("*.bin"))


def type_bits(ggml_type: str) -> float:
    """Bits a weight of a ggml type (gguf's block sizes: Q4_K 4.5, Q8_0 8.5, F16 16)."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[ggml_type]]
    return 8 * size / block


def _role(hf_name: str) -> str:
    if "embed_tokens" in hf_name or hf_name.endswith("wte.weight"):
        return "token_embd"
    return "output" if "lm_head" in hf_name else "blk"


def gguf_bytes(tensors: list[tuple[str, list[int]]], ftype: str, tied: bool, opts: dict | None = None) -> int:
    """About the size of the GGUF of llama.cpp type ``ftype`` ('F16' for the converted file)."""
    bits = 0.0
    for name, shape in tensors:
        n = math.prod(shape)
        if len(shape) < 2:
            bits += 32 * n  # norms and biases stay F32
            continue
        ncols = shape[-1]  # a Linear's input features: ne[0] in the GGUF
        if ftype == "F16":
            bits += 16 * n
            continue
        planned = planned_type(_role(name), ncols, ftype, tied, opts)
        try:
            bits += type_bits(shape_fallback(ncols, planned) or planned) * n
        except KeyError:  # a type gguf does not name: counted as 16 bits
            bits += 16 * n
    return int(bits / 8)


def run_bytes(tensors, tied: bool, weights: int, finetunes: int, quants: dict[str, dict], gptq: bool) -> int:
    """Bytes the run writes for one model: per model and fine-tune the f16 GGUF, each quantized GGUF
    (``quants``: variant -> options, as config.quant_variants gives them) and the GPTQ checkpoint; per
    fine-tune its merged weights (``weights``: the size of the base's files)."""
    per_ft = gguf_bytes(tensors, "F16", tied)
    per_ft += sum(gguf_bytes(tensors, q["type"], tied, q) for q in quants.values())
    if gptq:
        per_ft += int(sum(math.prod(s) for _, s in tensors if len(s) >= 2) * GPTQ_BITS / 8)
    return (1 + finetunes) * per_ft + finetunes * weights


def _model_dir(m: dict, base_dir: Path) -> Path | None:
    """A configured model's directory: a local path, or a hub model's snapshot in the local Hugging Face
    cache (its files are links to the cache's blobs); None for the demo model (small, and built by the run)
    and for a hub model not cached (the config check says so)."""
    if m["source"] == "local":
        return base_dir / m["path"]
    if m["source"] == "hub":
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(m["hf"], local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached: config._hub_errors reports it
            return None
    return None


def disk_warnings(cfg: dict, quants: dict[str, dict], base_dir: Path, workdir: Path) -> list[str]:
    """One line where the local and cached hub models' estimated outputs exceed the free space of the workdir's disk.

    What is already under results/ counts as written (a rerun does not write it again); it is walked only
    when the estimate alone exceeds the free space, since every Snakemake start (each cluster job's too)
    runs this check.
    """
    need, what = 0, []
    for m in cfg["models"]:
        if (d := _model_dir(m, base_dir)) is None:
            continue
        try:
            found, weights = hf_tensors(d), sum(f.stat().st_size for f in weight_files(d))
            tied = bool((hf_dims(d) or {}).get("tied"))
        except (OSError, ValueError):  # unreadable weights are the checks' business, not the estimate's
            continue
        if not found:
            continue
        need += run_bytes(found, tied, weights, len(cfg["finetunes"]), quants, "hf-gptq4" in cfg["hf_variants"])
        what.append(f"{m['name']} ({sum(math.prod(s) for _, s in found) / 1e9:.2f} B parameters")
    free = shutil.disk_usage(workdir).free
    if need <= free:
        return []
    results = workdir / "results"
    have = sum(f.stat().st_size for f in results.rglob("*") if f.is_file()) if results.is_dir() else 0
    if need - have <= free:
        return []
    return [
        f"config key models: {', '.join(what)}; base + {len(cfg['finetunes'])} fine-tune(s), {len(quants)} GGUF "
        f"type(s)) will write about {need / 1e9:.1f} GB under results/ "
        f"({have / 1e9:.1f} GB there already), and the disk of {workdir} has {free / 1e9:.1f} GB free: "
        "free some space, or drop quants, finetunes or hf_variants"
    ]
