"""llama.cpp's own command-line tools, built from the pinned sources by `make venv`.

llama-bench (its JSON output) gives the engine's figures beside ours; llama-perplexity cross-checks
our perplexity and KL; llama-imatrix makes importance matrices; llama-quantize makes every GGUF type,
with or without one (the binding's quantize call takes no importance matrix), and its log is
llama.cpp's own report of the tensors that needed a fallback type.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import tempfile
from pathlib import Path

from . import procs
from .atomic import atomic_path

log = logging.getLogger(__name__)

# llama-perplexity prints its results as text only (no JSON mode); these are its own labels.
_PPL = re.compile(r"(?:Final estimate: PPL =|Mean PPL\(Q\)\s+:)\s*([0-9.]+)")
_KLD = re.compile(r"Mean\s+KLD:\s+([-0-9.eE+]+)")
_TOP1 = re.compile(r"Same top p:\s+([0-9.]+)")


def resolve_dir(configured: str | Path, repo: str | Path) -> Path:
    """The configured llama.cpp folder (config ``llama_cpp_dir``): a relative one is relative to the repository.

    Resolved inside the job: a rule's params hold the configured value, never this checkout's absolute
    path, which would rerun every job of a moved or freshly cloned checkout.
    """
    return Path(repo) / configured


def tool(llama_cpp_dir: str | Path, name: str) -> Path:
    p = Path(llama_cpp_dir) / "bin" / name
    if not p.is_file():
        raise FileNotFoundError(
            f"{p} is missing: run `make venv` (it builds llama.cpp's tools from the pinned sources)"
        )
    return p


def _run(cmd: list[str], expect: re.Pattern | None = None, timeout: int = 3600, tries: int = 3) -> str:
    """Run a tool and return its output; rerun it when the line it must print (``expect``) is missing.

    llama.cpp's logger writes from a background thread and is deliberately never torn down, so the
    last lines can be lost at exit (llama.cpp issue #22142): seen here for llama-perplexity's final
    estimate about one run in six. The computation is deterministic, so a rerun is a safe remedy.
    A tool that reports an error (" E " lines) with exit 0 is caught too.
    """
    name = Path(cmd[0]).name
    for attempt in range(1, tries + 1):
        log.info("running %s", " ".join(cmd))
        with tempfile.TemporaryFile("w+") as out:
            proc = procs.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
            out.seek(0)
            text = out.read()
        for line in text.splitlines()[-40:]:
            log.info("%s: %s", name, line)
        errors = [ln for ln in text.splitlines() if re.search(r"^\S+ E ", ln)]
        if proc.returncode != 0 or errors:
            raise RuntimeError(f"{name} failed (exit {proc.returncode}): {(errors or [text.strip()[-300:]])[0]}")
        if expect is None or expect.search(text):
            return text
        log.warning("%s printed no %r (attempt %d of %d); running it again", name, expect.pattern, attempt, tries)
    raise RuntimeError(f"{name} printed no {expect.pattern!r} in {tries} runs")


def llama_bench(
    llama_cpp_dir, gguf, threads: int, n_prompt: int, n_gen: int, reps: int, depths=(), n_gpu_layers: int = 0
) -> dict:
    """pp and tg rates as llama-bench measures them (mean and stdev over `reps`, its own warm-up).

    Measured like our own path, so the two figures compare like for like: pp from an empty context,
    tg after an `n_prompt`-token prompt is in the KV cache (``-d``); llama-bench's default tg starts
    from an empty cache, where attention is cheaper. tg is also measured at each of ``depths``
    (``tg_by_depth``: {depth: (mean, stdev)}). One invocation: llama-bench crosses -p and -n with -d,
    so it also times pp at the other depths, which costs one short prompt each and is not used.

    ``n_gpu_layers`` is passed as -ngl always: llama-bench's own default offloads every layer, which on
    a CUDA build would put a CPU row on the GPU. The result carries what llama-bench reports back
    (``n_gpu_layers``, ``backends``).
    """
    all_depths = sorted({0, n_prompt, *(int(d) for d in depths)})
    # Offloaded: one GPU, as quantflow.bench.load has it (llama-bench would split the layers across all).
    one_gpu = ["-sm", "none", "-mg", "0"] if n_gpu_layers else []
    out = procs.run(
        [str(tool(llama_cpp_dir, "llama-bench")), "-m", str(gguf), "-t", str(threads), "-p", str(n_prompt),
         "-n", str(n_gen), "-d", ",".join(map(str, all_depths)), "-r", str(reps), "-ngl", str(n_gpu_layers),
         *one_gpu, "-o", "json"],
        capture_output=True, text=True, timeout=1800, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"llama-bench failed (exit {out.returncode}): {out.stderr.strip()[-300:]}")
    res: dict = {"tg_by_depth": {}}
    for rec in json.loads(out.stdout):
        depth, rate, sd = int(rec.get("n_depth", 0)), float(rec["avg_ts"]), float(rec["stddev_ts"])
        res.update({k: rec[k] for k in ("n_gpu_layers", "backends") if k in rec})
        if rec["n_prompt"] and not rec["n_gen"]:
            if depth == 0:
                res.update(pp_tps=rate, pp_sd=sd, pp_tokens=int(rec["n_prompt"]), pp_depth=0)
        else:
            res["tg_by_depth"][depth] = (rate, sd)
            if depth == n_prompt:
                res.update(tg_tps=rate, tg_sd=sd, tg_tokens=int(rec["n_gen"]), tg_depth=depth)
    if "pp_tps" not in res or "tg_tps" not in res:
        raise RuntimeError(f"llama-bench reported no pp/tg pair at depths 0/{n_prompt}: {out.stdout[:300]}")
    res["reps"] = reps
    res["threads"] = threads
    return res


def llama_perplexity(
    llama_cpp_dir, gguf, text_file, n_ctx: int, chunks: int, threads: int, kl_base=None, save_base=None
) -> dict:
    """llama-perplexity's PPL (and, against a saved base, mean KLD and top-1 agreement).

    With ``save_base`` it only writes the base logits: in that mode it prints no final estimate.
    """
    cmd = [str(tool(llama_cpp_dir, "llama-perplexity")), "-m", str(gguf), "-f", str(text_file), "-c", str(n_ctx),
           "-b", str(n_ctx), "--chunks", str(chunks), "-t", str(threads)]
    if save_base:
        cmd += ["--kl-divergence-base", str(save_base)]
    if kl_base:
        cmd += ["--kl-divergence-base", str(kl_base), "--kl-divergence"]
    text = _run(cmd, expect=None if save_base else (_KLD if kl_base else _PPL))
    res = {}
    if m := _PPL.search(text):
        res["ppl"] = float(m.group(1))
    if m := _KLD.search(text):
        res["kl_mean"] = float(m.group(1))
    if m := _TOP1.search(text):
        res["top1_agreement"] = float(m.group(1)) / 100
    return res


def imatrix(llama_cpp_dir, gguf, calib_file, out, n_ctx: int, chunks: int, threads: int) -> None:
    """Importance matrix of `gguf` over the calibration text, written atomically to `out`."""
    with atomic_path(out) as tmp:
        _run([str(tool(llama_cpp_dir, "llama-imatrix")), "-m", str(gguf), "-f", str(calib_file), "-o", str(tmp),
              "-c", str(n_ctx), "-b", str(n_ctx), "--chunks", str(chunks), "-t", str(threads)])


def quantize(llama_cpp_dir, src, dst, opts: dict, threads: int, imatrix=None) -> str:
    """llama-quantize ``src`` into ``dst`` as ``opts['type']``; returns its log, which holds llama.cpp's
    own report of the tensors that needed a fallback type (quantize.quant_plan reads it)."""
    cmd = [str(tool(llama_cpp_dir, "llama-quantize"))]
    if imatrix is not None:
        cmd += ["--imatrix", str(imatrix)]
    if "output_tensor_type" in opts:
        cmd += ["--output-tensor-type", opts["output_tensor_type"]]
    if "token_embedding_type" in opts:
        cmd += ["--token-embedding-type", opts["token_embedding_type"]]
    if opts.get("leave_output_tensor"):
        cmd += ["--leave-output-tensor"]
    return _run([*cmd, str(src), str(dst), opts["type"], str(threads)])
