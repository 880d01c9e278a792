"""What the decision leads to: a folder per model / fine-tune holding the recommended variant, ready to serve.

``reports/deploy/<model>-<ft>/`` gets, for a GGUF variant:

- the GGUF itself, hard-linked to the benchmarked file (copied across filesystems), never re-quantized:
  its sha256 is checked against the bench result's before anything is written;
- ``Modelfile`` for Ollama: ``FROM`` the file, the model's chat template (or a note that Ollama reads the
  template from the GGUF), ``stop`` tokens from the GGUF's tokenizer, ``num_ctx`` and ``num_thread`` as in
  the bench, greedy decoding as the bench's answers were generated;
- ``llama-server.sh``: the llama-server command line with the settings the figures were measured with;
- ``README.md``: a model card in Hugging Face's format (YAML front matter: base_model, quantization,
  library) with the measured figures, their uncertainty, and the machine they were measured on.

For an HF variant (bitsandbytes, GPTQ) the folder holds the model card and ``load.py``, the loading
snippet. The whole ``deploy`` folder is written at once (atomically) by the report rule, so a change of
the recommendation replaces it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import atomic

log = logging.getLogger(__name__)

#: The bench generates answers greedily and stops at a newline (quantflow.bench.greedy).
ANSWER_STOPS = ("\n",)


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gguf_facts(path: str | Path) -> dict[str, Any]:
    """What the deployment needs from the GGUF's metadata: stop tokens, chat template, context length."""
    from .gguf_file import read_header

    field = read_header(path, arrays=("tokenizer.ggml.tokens",)).get

    tokens = field("tokenizer.ggml.tokens") or []
    stops = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
        tid = field(key)
        if isinstance(tid, int) and 0 <= tid < len(tokens) and tokens[tid] not in stops:
            stops.append(str(tokens[tid]))
    arch = field("general.architecture")
    return {
        "architecture": arch,
        "stop_tokens": stops,
        "chat_template": field("tokenizer.chat_template"),
        "context_length": field(f"{arch}.context_length") if arch else None,
    }


def settings(result: Mapping[str, Any]) -> dict[str, Any]:
    """The run settings the figures were measured with (quantflow.bench.load), from the result itself."""
    speed = result.get("speed") or {}
    n_ctx = int(speed.get("n_ctx") or 0) or None
    return {
        "n_ctx": n_ctx,
        "threads": speed.get("threads"),
        # The bench loads with n_batch = n_ubatch = n_ctx, no mmap, flash attention off, unless the
        # result records other values.
        "n_batch": speed.get("n_batch") or n_ctx,
        "n_ubatch": speed.get("n_ubatch") or n_ctx,
        "use_mmap": bool((result.get("memory") or {}).get("use_mmap", False)),
        "flash_attn": speed.get("flash_attn", False),
        # A GPU row ran with every layer offloaded (llama.cpp's idiom for "all": 99).
        "n_gpu_layers": 99 if result.get("device") == "gpu" else speed.get("n_gpu_layers", 0),
    }


def modelfile(gguf_name: str, facts: Mapping[str, Any], run: Mapping[str, Any]) -> str:
    lines = [
        "# Ollama Modelfile: `ollama create <name> -f Modelfile`, then `ollama run <name>`.",
        "# Parameters as in the benchmark that measured this file (greedy decoding, same context).",
        f"FROM ./{gguf_name}",
    ]
    if facts.get("chat_template"):
        lines.append("# The chat template is in the GGUF (tokenizer.chat_template); Ollama reads it from there.")
    else:
        lines += [
            "# The GGUF carries no chat template: the model was benchmarked on raw prompts, so pass them as they are.",
            'TEMPLATE """{{ .Prompt }}"""',
        ]
    if run.get("n_ctx"):
        lines.append(f"PARAMETER num_ctx {int(run['n_ctx'])}")
    if run.get("threads"):
        lines.append(f"PARAMETER num_thread {int(run['threads'])}")
    lines += ["PARAMETER temperature 0", "PARAMETER top_k 1", "PARAMETER seed 0"]
    for stop in [*facts.get("stop_tokens", []), *ANSWER_STOPS]:
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    return "\n".join(lines) + "\n"


def parse_modelfile(text: str) -> dict[str, Any]:
    """``{from, parameters: {name: [values]}}`` of a Modelfile (the subset :func:`modelfile` writes)."""
    out: dict[str, Any] = {"from": None, "parameters": {}}
    for line in text.splitlines():
        if line.startswith("FROM "):
            out["from"] = line[5:].strip()
        elif line.startswith("PARAMETER "):
            name, value = line[10:].split(" ", 1)
            value = json.loads(value) if value.startswith('"') else value
            out["parameters"].setdefault(name, []).append(value)
    return out


def server_command(gguf_name: str, run: Mapping[str, Any]) -> str:
    args = ["llama-server", "-m", gguf_name]
    if run.get("n_ctx"):
        args += [
            "--ctx-size",
            str(run["n_ctx"]),
            "--batch-size",
            str(run["n_batch"]),
            "--ubatch-size",
            str(run["n_ubatch"]),
        ]
    if run.get("threads"):
        args += ["--threads", str(run["threads"]), "--threads-batch", str(run["threads"])]
    args += [
        "--flash-attn",
        "on" if run.get("flash_attn") else "off",
        "--n-gpu-layers",
        str(run.get("n_gpu_layers") or 0),
    ]
    if not run.get("use_mmap"):
        args += ["--load-mode", "none"]  # the bench loads without mmap (RSS counts each weight once)
    args += ["--temp", "0", "--seed", "0", "--host", "127.0.0.1", "--port", "8080"]
    return (
        "#!/bin/sh\n"
        "# llama.cpp's server with the settings the report's figures were measured with.\n"
        'cd "$(dirname "$0")"\n' + shlex.join(args) + ' "$@"\n'
    )


def hf_snippet(result: Mapping[str, Any]) -> str:
    variant = result.get("variant")
    where = (result.get("file") or {}).get("path") or "<path to the model directory>"
    quant = {
        "hf-nf4": "BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', "
        "bnb_4bit_compute_dtype=torch.bfloat16)",
        "hf-bnb8": "BitsAndBytesConfig(load_in_8bit=True)",
    }.get(str(variant))
    lines = [
        f'"""Load {result.get("model")} / {result.get("ft")} as the benchmarked {variant} (transformers)."""',
        "import torch",
        "from transformers import AutoModelForCausalLM, AutoTokenizer" + (", BitsAndBytesConfig" if quant else ""),
        "",
        f"path = {where!r}",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
    ]
    if quant:
        lines.append(f"model = AutoModelForCausalLM.from_pretrained(path, quantization_config={quant})")
    else:  # GPTQ checkpoints and unquantized models carry their own config
        lines.append("model = AutoModelForCausalLM.from_pretrained(path, device_map='auto')")
    lines += [
        "ids = tokenizer('Question: What is 2 plus 3?\\nAnswer:', return_tensors='pt').to(model.device)",
        "print(tokenizer.decode(model.generate(**ids, max_new_tokens=16, do_sample=False)[0]))",
    ]
    return "\n".join(lines) + "\n"


def model_card(
    result: Mapping[str, Any],
    row: Mapping[str, Any],
    rec: Mapping[str, Any],
    base_model: str | None,
    files: Sequence[str],
) -> str:
    """A Hugging Face model card: YAML front matter, then the measured figures with their uncertainty."""
    from .display import fmt, p_value, with_ci, with_se

    def ci(col: str, prefix: str, spec: str, **kw: Any) -> str:
        return with_ci(row[col], row[f"{prefix}_lo"], row[f"{prefix}_hi"], spec, **kw)

    prov = result.get("provenance") or {}
    is_gguf = result.get("format") == "gguf"
    front = {
        "base_model": base_model or f"{result.get('model')} (built by quantflow)",
        "base_model_relation": "quantized",
        "library_name": "gguf" if is_gguf else "transformers",
        "quantization": result.get("quant"),
        "tags": ["quantflow", "gguf" if is_gguf else "transformers", str(result.get("quant"))],
    }
    lines = ["---", *(f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in front.items()), "---", ""]
    lines += [
        f"# {result.get('model')} / {result.get('ft')}: {result.get('variant')}",
        "",
        f"Recommended by quantflow's report: {rec.get('why')}.",
        "",
        "## Measured",
        "",
        "| Figure | Value |",
        "|---|---|",
        f"| Decode tok/s (median [95 % CI]) | {ci('decode_tps', 'decode_tps', '.1f')} |",
        f"| Speedup vs f16 [95 % CI] | {ci('speedup_vs_f16', 'speedup_vs_f16', '.2f', suffix='x')} |",
        f"| File size MB | {fmt(row['size_mb'], '.1f')} ({fmt(row['bits_per_weight'], '.2f')} bits per weight) |",
        f"| Peak RSS MB | {fmt(row['peak_rss_mb'], '.0f')} |",
        f"| KL vs f16 (mean ± SE) | {with_se(row['kl_mean'], row['kl_mean_se'], '.3g')} |",
        f"| Top-1 agreement with f16 % | {with_se(row['top1_agreement'], row['top1_se'], '.1f', scale=100)} |",
        f"| Task accuracy % [95 % CI] | {ci('accuracy', 'accuracy', '.1f', scale=100)} |",
        f"| McNemar p vs f16 | {p_value(row['mcnemar_p'])} |",
        "",
        "## Machine",
        "",
        f"CPU: {prov.get('cpu', 'unknown')}; threads: {(result.get('speed') or {}).get('threads', 'unknown')}; "
        f"llama.cpp: {prov.get('llama_cpp_commit', 'unknown')}; config hash: {prov.get('config_hash', 'unknown')}.",
        "",
        "## Files",
        "",
        *(f"- `{f}`" for f in files),
        "",
    ]
    return "\n".join(lines)


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed: a copy holds the same bytes
        shutil.copy2(src, dst)


def write(
    out_dir: str | Path,
    recs: Sequence[Mapping[str, Any]],
    results: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    base_models: Mapping[str, str | None] | None = None,
) -> list[Path]:
    """Write ``out_dir/<model>-<ft>/`` for every recommended variant (replacing ``out_dir`` whole); a GPU
    recommendation goes to ``<model>-<ft>-gpu/`` (each device has its own).

    ``rows``: the results table's rows (:func:`quantflow.table.results_table`); ``base_models``: model
    name -> what it was made from (a hub id or a path; None for the demo). An HF variant's snippet loads
    the directory its result names (``file.path``). Raises ``ValueError`` when a GGUF differs from the
    file the bench measured (its sha256), before anything is written.
    """
    by_key = {(r.get("model"), r.get("ft"), r.get("variant")): r for r in results}
    row_by_key = {(r.get("model"), r.get("ft"), r.get("variant")): r for r in rows}
    plans = []
    for rec in recs:
        if rec.get("kind") != "recommended" or not rec.get("variant"):
            continue
        key = (rec["model"], rec["ft"], rec["variant"])
        result, row = by_key.get(key), row_by_key.get(key)
        if result is None or row is None:
            continue
        src = Path((result.get("file") or {}).get("path", ""))
        if result.get("format") == "gguf":
            if not src.is_file():
                raise ValueError(
                    f"{src}: the recommended {key[2]} of {key[0]}/{key[1]} is missing; rerun its quantize rule"
                )
            want = (result.get("file") or {}).get("sha256")
            if want and sha256(src) != want:
                raise ValueError(
                    f"{src}: sha256 differs from the bench result's ({want[:12]}…): "
                    "the file changed after it was measured"
                )
        plans.append((rec, result, row, src))
    with atomic.atomic_path(out_dir, directory=True) as tmp:
        for rec, result, row, src in plans:
            folder = tmp / folder_name(rec)
            folder.mkdir()
            if result.get("format") == "gguf":
                name = f"{rec['model']}-{rec['ft']}-{result.get('quant')}.gguf"
                link_or_copy(src, folder / name)
                run = settings(result)
                (folder / "Modelfile").write_text(modelfile(name, gguf_facts(src), run), encoding="utf-8")
                (folder / "llama-server.sh").write_text(server_command(name, run), encoding="utf-8")
                (folder / "llama-server.sh").chmod(0o755)
                files = [name, "Modelfile", "llama-server.sh", "README.md"]
            else:
                (folder / "load.py").write_text(hf_snippet(result), encoding="utf-8")
                files = ["load.py", "README.md"]
            card = model_card(result, row, rec, (base_models or {}).get(rec["model"]), files)
            (folder / "README.md").write_text(card, encoding="utf-8")
            log.info("deploy: %s", folder.name)
    return [Path(out_dir) / folder_name(rec) for rec, *_ in plans]


def folder_name(rec: Mapping[str, Any]) -> str:
    return f"{rec['model']}-{rec['ft']}" + ("-gpu" if rec.get("device") == "gpu" else "")
