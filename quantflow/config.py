"""Configuration: JSON-schema validation with defaults, then the checks a schema cannot express.

Every problem is reported as one line naming the key path, before any job runs.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators

from .gguf_types import UNQUANTIZED, canonical_quant, ggml_types, llama_quant_types, model_widths, predicted_fallbacks
from .schema import escape_line_breaks, key_path, quote_key
from .variants import IMAT_SUFFIX


class ConfigError(ValueError):
    """A configuration problem, phrased as one actionable line."""


def _with_defaults(validator_class):
    """A validator that also fills in schema defaults (the jsonschema FAQ's recipe)."""
    validate_props = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


DefaultFillingValidator = _with_defaults(Draft202012Validator)


def _describe(err) -> str:
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})), key=repr)  # keys of any type
        allowed = ", ".join(sorted(err.schema.get("properties", {})))
        return f"unknown key(s) {', '.join(map(quote_key, extra))}; allowed here: {allowed}"
    if err.validator == "required":
        return err.message.replace("is a required property", "is required but missing")
    if err.validator == "enum":
        return f"{err.instance!r} is not one of {err.validator_value}"
    if err.validator == "type" and err.absolute_path:
        hint = unit_hint(str(err.absolute_path[-1]), err.instance)
        if hint:
            return hint
    if err.validator == "maximum" and err.absolute_path and err.absolute_path[-1] == "min_accuracy":
        v = err.instance
        return f"{v} is above 1; min_accuracy is a fraction of the test questions (for {v} % write {v / 100:g})"
    return err.message


def schema_errors(cfg: dict, schema: dict) -> list[str]:
    """All schema violations as one-line messages, deepest first (most specific)."""
    v = DefaultFillingValidator(schema)
    errs = sorted(v.iter_errors(cfg), key=lambda e: (-len(e.absolute_path), key_path(e.absolute_path)))
    lines = []
    for e in errs:
        # A oneOf failure explains itself best through its own sub-errors' deepest message.
        if e.validator == "oneOf" and e.context:
            e = max(e.context, key=lambda c: len(c.absolute_path))
        lines.append(f"config key {key_path(e.absolute_path)}: {_describe(e)}")
    return lines


def normalise_quants(entries: list) -> dict[str, dict]:
    """Config quant entries -> {canonical type: options}; raises ConfigError on unknown names."""
    known = llama_quant_types()
    tensor_types = ggml_types()
    out: dict[str, dict] = {}
    for i, e in enumerate(entries):
        opts = {"type": e} if isinstance(e, str) else dict(e)
        t = canonical_quant(opts["type"])
        if t not in known or t in UNQUANTIZED:
            valid = ", ".join(sorted(k for k in known if k not in UNQUANTIZED))
            raise ConfigError(f"config key quants[{i}]: unknown quantization type {opts['type']!r}; valid: {valid}")
        if t in out:
            raise ConfigError(f"config key quants[{i}]: {t} is listed twice (aliases resolve to one name)")
        for k in ("output_tensor_type", "token_embedding_type"):
            if k in opts and opts[k].upper() not in tensor_types:
                raise ConfigError(f"config key quants[{i}].{k}: unknown ggml type {opts[k]!r}; e.g. Q8_0, Q6_K, F16")
        opts["type"] = t
        out[t] = canonical(opts)
    return out


def quant_variants(cfg: dict) -> dict[str, dict]:
    """Every {quant} wildcard value -> its options: the listed types, plus '<type>-imat' variants."""
    out = normalise_quants(cfg["quants"])
    known = llama_quant_types()
    for i, t in enumerate(cfg.get("imatrix", {}).get("types", [])):
        c = canonical_quant(t)
        if c not in known:
            raise ConfigError(f"config key imatrix.types[{i}]: unknown quantization type {t!r}")
        out[c + IMAT_SUFFIX] = canonical({**out.get(c, {"type": c}), "imatrix": True})
    return out


def semantic_errors(cfg: dict, base_dir: Path) -> list[str]:
    errs = []
    names = [m["name"] for m in cfg["models"]]
    for i, m in enumerate(cfg["models"]):
        if names.count(m["name"]) > 1:
            errs.append(f"config key models[{i}].name: {m['name']!r} is used twice; names must be unique")
        if m["source"] == "local":
            p = Path(m.get("path", ""))
            if not m.get("path"):
                errs.append(f"config key models[{i}].path: required for source local (a Hugging Face directory)")
            elif not (base_dir / p).is_dir() or not (base_dir / p / "config.json").exists():
                errs.append(f"config key models[{i}].path: {p} is not a Hugging Face model directory (no config.json)")
            else:
                errs.extend(_model_dir_errors(f"models[{i}].path", base_dir / p, cfg))
        if m["source"] == "hub":
            if not m.get("hf"):
                errs.append(
                    f"config key models[{i}].hf: required for source hub (e.g. TinyLlama/TinyLlama-1.1B-Chat-v1.0)"
                )
            else:
                errs.extend(_hub_errors(i, m["hf"]))
        if m.get("suite"):
            from .suites import config_errors

            errs.extend(config_errors(f"models[{i}].suite", m["suite"], base_dir))
        if m["source"] != "demo":
            if "data" not in m:
                errs.append(
                    f"config key models[{i}].data: required for source {m['source']} (only the demo makes its own)"
                )
            else:
                for k, v in m["data"].items():
                    if v.startswith("hub:"):
                        errs.extend(_hub_dataset_errors(f"models[{i}].data.{k}", k, v))
                    elif not (base_dir / v).is_file():
                        errs.append(f"config key models[{i}].data.{k}: file {v} does not exist")
                    else:
                        errs.extend(_data_file_errors(f"models[{i}].data.{k}", k, base_dir / v))
    ft_names = [f["name"] for f in cfg["finetunes"]]
    for i, f in enumerate(cfg["finetunes"]):
        if ft_names.count(f["name"]) > 1:
            errs.append(f"config key finetunes[{i}].name: {f['name']!r} is used twice; names must be unique")
    try:
        quant_variants(cfg)
    except ConfigError as e:
        errs.append(str(e))
    if cfg["imatrix"]["types"]:
        for i, m in enumerate(cfg["models"]):
            if m["source"] != "demo" and "calibration" not in m.get("data", {}):
                errs.append(
                    f"config key models[{i}].data.calibration: required when imatrix.types is set "
                    "(calibration text for the importance matrix; never the held-out text)"
                )
    errs.extend(_gpu_errors(cfg))
    errs.extend(_budget_unit_errors(cfg.get("report", {})))
    b = cfg["bench"]
    if b["prompt_tokens"] + b["gen_tokens"] > b["n_ctx"]:
        errs.append(
            f"config key bench.n_ctx: {b['n_ctx']} is smaller than prompt_tokens + gen_tokens "
            f"({b['prompt_tokens']} + {b['gen_tokens']})"
        )
    held = b["max_chunks"] * b["n_ctx"]  # the reference's tokens: the deepest KV depth is read from them
    if max(b.get("depths", []), default=0) > held:
        errs.append(
            f"config key bench.depths: {max(b['depths'])} tokens deep, but the reference holds at most "
            f"bench.max_chunks x bench.n_ctx = {held}; lower the depth or raise max_chunks"
        )
    errs.extend(_repetition_errors(b))
    return errs


def _repetition_errors(bench: dict) -> list[str]:
    """The minimum of measured repetitions above the maximum, for GGUF variants and for hf-* (bench.hf)."""
    hf = bench.get("hf", {})
    errs = []
    for section in (None, "hf"):
        if section and not {"repetitions", "max_repetitions"} & set(hf):
            continue  # hf-* variants take both from bench: checked above

        def setting(k, section=section):
            return (f"bench.hf.{k}", hf[k]) if section and k in hf else (f"bench.{k}", bench[k])

        (low_key, low), (high_key, high) = setting("repetitions"), setting("max_repetitions")
        if low > high:
            errs.append(
                f"config key {low_key}: {low} is above {high_key} ({high}); the minimum of measured repetitions "
                f"cannot exceed the maximum: raise {high_key} or lower {low_key}"
            )
    return errs


def fallback_warnings(key: str, dims: dict[str, int], cfg: dict, what: str) -> list[str]:
    """One line per configured type for which llama.cpp is predicted to write fallback types.

    A warning, never an error: llama.cpp makes these files (the GGUFs published for such models hold
    the same fallback tensors), and the quantize job records what it really did.
    """
    widths = model_widths(dims["hidden"], dims["ffn"], dims["q_width"], dims.get("tied", False))
    out = []
    for variant, opts in quant_variants(cfg).items():
        bad = predicted_fallbacks(widths, opts["type"], dims.get("tied", False), opts)
        if bad:
            strict = " and strict_types is set, so its quantize job will fail" if opts.get("strict_types") else ""
            out.append(
                f"config key {key}: {what}: llama.cpp will write other types for {len(bad)} tensor role(s) of "
                f"{variant}{strict}: {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''} (the report marks it)"
            )
    return out


def _model_dir_errors(key: str, d: Path, cfg: dict) -> list[str]:
    """A local model directory: complete weights and a tokenizer."""
    from .inputs import InputError, check_hf_dir

    try:
        check_hf_dir(d)
    except (InputError, OSError, ValueError) as e:
        return [f"config key {key}: {e}"]
    return []


def model_warnings(cfg: dict, base_dir: Path) -> list[str]:
    """Things a user should know before the run that are not errors: predicted fallback types, and a run
    whose outputs will not fit the free disk (base_dir is the workdir)."""
    from .disk import disk_warnings
    from .inputs import hf_dims

    out = []
    for i, m in enumerate(cfg["models"]):
        if m["source"] == "local":
            try:
                dims = hf_dims(base_dir / m["path"])
            except (OSError, ValueError):
                continue
            if dims:
                out.extend(fallback_warnings(f"models[{i}].path", dims, cfg, m["path"]))
        elif m["source"] == "demo":
            d = cfg["demo"]["model"]
            dims = {"hidden": d["hidden_size"], "ffn": d["intermediate_size"], "q_width": d["heads"] * d["head_dim"]}
            out.extend(fallback_warnings("demo.model", dims, cfg, "the demo model"))
    return out + disk_warnings(cfg, quant_variants(cfg), base_dir, base_dir)


def _data_file_errors(key: str, field: str, path: Path) -> list[str]:
    from .inputs import InputError, check_data_file

    try:
        check_data_file(field, path)
    except (InputError, OSError, ValueError) as e:
        return [f"config key {key}: {e}"]
    return []


# Variants that cannot run without a CUDA GPU (quantflow.hf_bench.unavailable_reason says why at run time).
# None at present: GPTQModel (hf-gptq4) runs on the CPU too; a GPU-only variant added later goes here.
GPU_ONLY_VARIANTS: tuple[str, ...] = ()


def _gpu_errors(cfg: dict) -> list[str]:
    """gpu_jobs: false declares a run without GPUs: a GPU-only variant could never be measured."""
    if cfg["gpu_jobs"]:
        return []
    errs = [
        f"config key hf_variants[{i}]: {v} needs a CUDA GPU but gpu_jobs is false (no GPU in this run); "
        f"remove {v}, or set gpu_jobs: true and run where a GPU is visible"
        for i, v in enumerate(cfg["hf_variants"])
        if v in GPU_ONLY_VARIANTS
    ]
    devices = cfg.get("gguf_devices", [])
    if "gpu" in devices:
        errs.append(
            f"config key gguf_devices[{devices.index('gpu')}]: gpu rows need a CUDA GPU but gpu_jobs is false "
            "(no GPU in this run); remove gpu from gguf_devices, or set gpu_jobs: true and run where a GPU is visible"
        )
    return errs


# Budgets below these cannot be meant in their unit: no model process runs in under 16 MiB (Python and
# llama.cpp alone take more; a CUDA context takes hundreds), and no prompt is answered end to end in under 1 ms.
# Values there are almost surely in GB / seconds.
UNIT_FLOORS = {"ram_budget_mb": (16, "MiB", "GB", 1024), "vram_budget_mb": (16, "MiB", "GB", 1024),
               "latency_target_ms": (1, "ms", "s", 1000)}


def _budget_unit_errors(report: dict) -> list[str]:
    errs = []
    for k, (floor, unit, meant, factor) in UNIT_FLOORS.items():
        v = report.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < floor:
            errs.append(
                f"config key report.{k}: {v} {unit} is too small to be meant in {unit} (the unit of this key); "
                f"for {v} {meant} write {v * factor:g}"
            )
    return errs


_UNIT_VALUE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([A-Za-z%]+)\s*$")
# unit (lower case) -> factor to the key's own unit, per key suffix
_UNITS = {
    "_mb": {"b": 1 / 2**20, "kb": 1 / 1024, "kib": 1 / 1024, "mb": 1, "mib": 1, "m": 1, "gb": 1024, "gib": 1024,
            "g": 1024, "tb": 2**20, "tib": 2**20},
    "_ms": {"us": 1e-3, "ms": 1, "s": 1000, "sec": 1000, "m": 60000, "min": 60000},
}


def unit_hint(key: str, value) -> str | None:
    """For a number given with a unit ('4GB', '250 ms', '15%'), the message saying what to write instead."""
    if not isinstance(value, str):
        return None
    m = _UNIT_VALUE.match(value)
    if not m:
        return None
    num, unit = float(m.group(1)), m.group(2).lower()
    if key == "min_accuracy" and unit == "%":
        return f"{value!r} is text; min_accuracy is a fraction of the test questions: write {num / 100:g}"
    for suffix, table in _UNITS.items():
        if key.endswith(suffix) and unit in table:
            own = "MiB" if suffix == "_mb" else "ms"
            return f"{value!r} is text; {key} is a number in {own}: write {num * table[unit]:g}"
    return None


def _hub_dataset_errors(key: str, field: str, spec: str) -> list[str]:
    """Hub datasets serve the fine-tune splits only, and offline only from the local cache."""
    if field not in ("sft_train", "sft_eval"):
        return [f"config key {key}: a hub dataset can feed sft_train / sft_eval only; give {field} as a local file"]
    from huggingface_hub import snapshot_download

    ident = spec.removeprefix("hub:").partition(":")[0]
    try:
        snapshot_download(ident, repo_type="dataset", local_files_only=True)
        return []
    except Exception:  # noqa: BLE001 - any failure means: not available without network
        return [
            f"config key {key}: hub dataset {ident!r} is not in the local Hugging Face cache and the hub is not "
            f"reachable from here; save it where there is network (datasets.load_dataset({ident!r}, split=...)"
            f".to_json('train.jsonl')), copy the file here and give its path instead"
        ]


def _hub_errors(i: int, hf_id: str) -> list[str]:
    """A hub id is usable offline only when already in the local Hugging Face cache."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(hf_id, local_files_only=True)
        return []
    except Exception:  # noqa: BLE001 - any failure means: not available without network
        return [
            f"config key models[{i}].hf: {hf_id!r} is not in the local Hugging Face cache and the hub is not "
            f"reachable from here; download it where there is network (huggingface-cli download {hf_id} "
            f"--local-dir DIR), copy DIR here and use source: local with path: DIR"
        ]


def canonical(obj):
    """Dicts rebuilt with sorted keys, recursively.

    Snakemake compares a job's params by their repr, and a dict's repr follows insertion order:
    without this, reordering keys in a config file would rerun every job.
    """
    if isinstance(obj, dict):
        return {k: canonical(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [canonical(v) for v in obj]
    return obj


def load_and_validate(cfg: dict, schema_path: str | Path, base_dir: str | Path = ".") -> dict:
    """Validate (filling defaults) and return the config; raise ConfigError with one line per problem."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    cfg = copy.deepcopy(cfg)
    errs = schema_errors(cfg, schema) or semantic_errors(cfg, Path(base_dir))
    if errs:
        raise ConfigError(
            escape_line_breaks(errs[0]) + (f" (and {len(errs) - 1} more problem(s))" if len(errs) > 1 else "")
        )
    return canonical(cfg)
