"""GPTQ 4-bit checkpoints (variant hf-gptq4): quantize a merged HF model with GPTQModel on calibration text.

GPTQ needs calibration data, unlike bitsandbytes, so the checkpoint is made once by its own job (rule
``gptq``) and the bench loads it like any other HF directory. The calibration text is the run's
calibration split (the importance matrices' text), never the evaluation text.

GPTQModel and optimum are an optional extra. Probed on CPU with torch 2.13.0+cpu and transformers
5.23.0: gptqmodel 7.6.0 (pure Python; kernels built with torch ops, no CUDA compilation) quantizes,
saves and reloads on the CPU; 7.7.0 requires torch >= 2.14.1 and 7.0-7.6 declare numpy==2.2.6 (they run
with numpy 2.4.6). optimum is needed twice: transformers loads GPTQ checkpoints through it, and peft
0.21 refuses every LoRA once gptqmodel is importable without it.

Non-quantized tensors (embeddings, norms, lm_head) keep float32, as in the other HF variants; the
quantized linears hold packed int32 weights with float16 scales.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from .atomic import atomic_path
from .inputs import TOKENIZER_FILES, InputError

log = logging.getLogger(__name__)

# Packages a GPTQ run needs, by import name.
REQUIRED = ("gptqmodel", "optimum")
BITS = 4  # the variant's name says 4: hf-gptq4
_CONFIG_SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


def _schema_defaults() -> dict:
    """The settings' defaults, read from the config schema: they are written there alone (with their whys)."""
    props = yaml.safe_load(_CONFIG_SCHEMA.read_text(encoding="utf-8"))["properties"]["gptq"]["properties"]
    return {k: v["default"] for k, v in props.items()}


DEFAULTS = _schema_defaults()
# Tokenizer files copied from the source model over the ones GPTQModel saves, so that hf-gptq4 tokenizes
# exactly as the model it was made from (GPTQModel re-saves the tokenizer through its own wrapper).
_TOKENIZER_EXTRA = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "merges.txt")


def missing_packages() -> list[str]:
    """The required packages that are not installed (found without importing them)."""
    return [m for m in REQUIRED if importlib.util.find_spec(m) is None]


def installed() -> bool:
    return not missing_packages()


def settings_of(overrides: dict | None = None) -> dict:
    """DEFAULTS with ``overrides`` applied; unknown keys and a bit width other than 4 are refused."""
    overrides = dict(overrides or {})
    bits = overrides.pop("bits", BITS)
    if bits != BITS:
        raise ValueError(f"GPTQ bits: {bits} given, but the hf-gptq4 variant is 4-bit")
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown GPTQ setting(s) {', '.join(unknown)}: expected {', '.join(DEFAULTS)}")
    s = {**DEFAULTS, **overrides}
    if s["group_size"] != -1 and s["group_size"] < 1:
        raise ValueError(f"GPTQ group_size: {s['group_size']} (a positive width, or -1 for one group per row)")
    if not 0 < s["damp_percent"] < 1:
        raise ValueError(f"GPTQ damp_percent: {s['damp_percent']} (between 0 and 1)")
    if s["max_samples"] < 1:
        raise ValueError(f"GPTQ max_samples: {s['max_samples']} (at least 1)")
    return s


def gptq_config(settings: dict | None = None):
    """GPTQModel's quantization config for ``settings`` (see :func:`settings_of`)."""
    from gptqmodel import GPTQConfig

    s = settings_of(settings)
    return GPTQConfig(
        bits=BITS,
        group_size=s["group_size"],
        desc_act=s["desc_act"],
        sym=s["sym"],
        damp_percent=s["damp_percent"],
    )


def calibration_samples(path: str | Path, max_samples: int = DEFAULTS["max_samples"]) -> list[str]:
    """The calibration text as samples: its non-blank lines (at most ``max_samples``, in file order)."""
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    samples = [ln for ln in lines if ln][:max_samples]
    if not samples:
        raise InputError(f"{path}: no text; GPTQ calibration needs the calibration split (one sample per line)")
    return samples


def _cpu_workers() -> None:
    """GPTQModel's CPU pool defaults to (cores + 1) // 2 workers, but its model loader wants 2: with
    two cores or fewer, quantizing fails ("Virtual pool 'model_loader:cpu' requests 2 workers but parent
    'cpu' only has 1"). Read when the pool is first built, so set before quantizing."""
    if "GPTQMODEL_CPU_WORKERS" not in os.environ and ((os.cpu_count() or 1) + 1) // 2 < 2:
        os.environ["GPTQMODEL_CPU_WORKERS"] = "2"


@contextlib.contextmanager
def _stats_dir():
    """GPTQModel writes per-module stats to ./logs/gptq_log_*.log (a path relative to the working
    directory, fixed in gptqmodel.looper.loop_processor): kept in a temporary folder instead, since the
    checkpoint's quant_log.csv holds the same figures."""
    import tempfile

    from gptqmodel.looper import loop_processor

    before = getattr(loop_processor, "_PROJECT_LOG_DIR", None)
    with tempfile.TemporaryDirectory(prefix="gptq-stats-") as d:
        loop_processor._PROJECT_LOG_DIR = Path(d)
        try:
            yield
        finally:
            if before is not None:
                loop_processor._PROJECT_LOG_DIR = before


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in (*TOKENIZER_FILES, *_TOKENIZER_EXTRA):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def quantize(
    src: str | Path, out: str | Path, calibration: list[str], settings: dict | None = None, threads: int | None = None
) -> dict:
    """Quantize the HF model in ``src`` to a 4-bit GPTQ checkpoint in ``out`` (written atomically).

    Runs on CUDA when visible, else on the CPU. Returns a summary: settings, samples, seconds, bytes.
    """
    import torch

    with contextlib.redirect_stdout(sys.stderr):  # its banner
        from gptqmodel import GPTQModel

    s = settings_of(settings)
    qcfg = gptq_config(s)
    src, out = Path(src), Path(out)
    if not calibration:
        raise ValueError("GPTQ calibration: no samples")
    _cpu_workers()
    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    model = GPTQModel.load(str(src), qcfg, device=device, dtype=torch.float32)
    log.info("GPTQ %d-bit, group %d, desc_act %s on %s: %d calibration samples", BITS, s["group_size"],
             s["desc_act"], device, len(calibration))
    with _stats_dir():
        model.quantize(calibration, batch_size=1)
    with atomic_path(out, directory=True) as tmp:
        model.save(str(tmp))
        _copy_tokenizer(src, tmp)
    seconds = time.perf_counter() - t0
    del model
    summary = {**checkpoint_info(out), "settings": s, "samples": len(calibration), "device": device,
               "seconds": round(seconds, 3)}
    log.info("GPTQ checkpoint %s: %d quantized linears, %d bytes, %.1f s", out, summary["quantized_linears"],
             summary["bytes"], seconds)
    return summary


def checkpoint_info(path: str | Path) -> dict:
    """What a saved checkpoint declares and holds: its quantization config and packed-weight tensors.

    Raises InputError unless ``path`` is a 4-bit GPTQ checkpoint.
    """
    from safetensors import safe_open

    d = Path(path)
    cfg_file = d / "config.json"
    qc = json.loads(cfg_file.read_text()).get("quantization_config") if cfg_file.is_file() else None
    if not qc or qc.get("quant_method") != "gptq" or qc.get("bits") != BITS:
        raise InputError(
            f"{d}: not a {BITS}-bit GPTQ checkpoint (config.json quantization_config: {qc}); "
            "the gptq rule makes one from the merged model"
        )
    shards = sorted(d.glob("*.safetensors"))
    qweights = []
    for shard in shards:
        with safe_open(shard, "pt") as f:
            qweights += [k for k in f.keys() if k.endswith(".qweight")]
    if not qweights:
        raise InputError(f"{d}: config.json declares GPTQ but no packed weights (*.qweight) are stored")
    return {
        "bits": qc["bits"],
        "group_size": qc.get("group_size"),
        "desc_act": qc.get("desc_act"),
        "sym": qc.get("sym"),
        "quantized_linears": len(qweights),
        "bytes": sum(p.stat().st_size for p in shards),
    }


def cuda_backend() -> str:
    """GPTQModel's kernel for a checkpoint loaded on CUDA: Triton's, unless QUANTFLOW_GPTQ_BACKEND names another.

    GPTQModel's own "auto" pick on Hopper GPUs is Machete, which downloads CUTLASS's sources and
    compiles them at the first load: impossible on an offline node, and minutes where it works. The
    Triton kernel needs neither. Where Marlin or Machete can be built, QUANTFLOW_GPTQ_BACKEND=gptq_marlin
    (or gptq_machete) selects it; every result records the kernel that ran.
    """
    return os.environ.get("QUANTFLOW_GPTQ_BACKEND", "gptq_triton")


def load_quantized(path: str | Path, device: str = "cpu"):
    """A GPTQ checkpoint as a transformers model, on GPTQModel's kernels.

    On the CPU, float32 outside the quantized linears; on CUDA, float16 (GPTQModel's CUDA kernels take
    fp16/bf16 activations only) with the kernel :func:`cuda_backend` names.
    """
    import torch
    from transformers import AutoModelForCausalLM, GPTQConfig

    checkpoint_info(path)  # a plain model would load unquantized, silently
    kwargs = {"dtype": torch.float32}
    if str(device).startswith("cuda"):
        # A config passed for an already-quantized checkpoint only sets its loading attributes (the kernel).
        kwargs = {"dtype": torch.float16, "quantization_config": GPTQConfig(bits=BITS, backend=cuda_backend())}
    # GPTQModel logs (kernel selection, format conversion) to stdout: the isolated bench's result channel.
    with contextlib.redirect_stdout(sys.stderr):
        return AutoModelForCausalLM.from_pretrained(path, device_map=device, **kwargs)
