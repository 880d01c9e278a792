"""Configuration: JSON-schema validation with defaults, then the checks a schema cannot express.

Every problem is reported as one line naming the key path, before any job runs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators

# llama.cpp's aliases: the type without a size suffix is the medium size (llama-quantize --help).
QUANT_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
FTYPE_PREFIX = "LLAMA_FTYPE_MOSTLY_"


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


def key_path(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _describe(err) -> str:
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        allowed = ", ".join(sorted(err.schema.get("properties", {})))
        return f"unknown key(s) {', '.join(extra)}; allowed here: {allowed}"
    if err.validator == "required":
        return err.message.replace("is a required property", "is required but missing")
    if err.validator == "enum":
        return f"{err.instance!r} is not one of {err.validator_value}"
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


def normalise_quants(entries: list) -> dict[str, dict]:
    """Config quant entries -> {canonical type: options}; raises ConfigError on unknown names."""
    known = llama_quant_types()
    tensor_types = ggml_types()
    out: dict[str, dict] = {}
    for i, e in enumerate(entries):
        opts = {"type": e} if isinstance(e, str) else dict(e)
        t = canonical_quant(opts["type"])
        if t not in known or t in ("F16", "F32", "BF16", "ALL_F32"):
            valid = ", ".join(sorted(k for k in known if k not in ("F16", "F32", "BF16", "ALL_F32")))
            raise ConfigError(f"config key quants[{i}]: unknown quantization type {opts['type']!r}; valid: {valid}")
        if t in out:
            raise ConfigError(f"config key quants[{i}]: {t} is listed twice (aliases resolve to one name)")
        for k in ("output_tensor_type", "token_embedding_type"):
            if k in opts and opts[k].upper() not in tensor_types:
                raise ConfigError(f"config key quants[{i}].{k}: unknown ggml type {opts[k]!r}; e.g. Q8_0, Q6_K, F16")
        opts["type"] = t
        out[t] = canonical(opts)
    return out


IMAT_SUFFIX = "-imat"


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
        if m["source"] == "hub":
            if not m.get("hf"):
                errs.append(
                    f"config key models[{i}].hf: required for source hub (e.g. TinyLlama/TinyLlama-1.1B-Chat-v1.0)"
                )
            else:
                errs.extend(_hub_errors(i, m["hf"]))
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
    b = cfg["bench"]
    if b["prompt_tokens"] + b["gen_tokens"] > b["n_ctx"]:
        errs.append(
            f"config key bench.n_ctx: {b['n_ctx']} is smaller than prompt_tokens + gen_tokens "
            f"({b['prompt_tokens']} + {b['gen_tokens']})"
        )
    return errs


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
    errs = schema_errors(cfg, schema)
    if errs:
        raise ConfigError(errs[0] + (f" (and {len(errs) - 1} more problem(s))" if len(errs) > 1 else ""))
    errs = semantic_errors(cfg, Path(base_dir))
    if errs:
        raise ConfigError(errs[0] + (f" (and {len(errs) - 1} more problem(s))" if len(errs) > 1 else ""))
    return canonical(cfg)
