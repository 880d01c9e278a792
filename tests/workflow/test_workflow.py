"""The real Snakefile on a tiny demo: full run, report rows, tensor types, reruns, config errors."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "configs" / "tiny.yaml"

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str, configfile: Path = TINY, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(configfile),
        "--cores",
        "2",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def job_stats(out: str) -> dict[str, int]:
    """Snakemake's 'Job stats' table (rule -> count) from a dry run's output."""
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal", out, re.S)
    if not m:
        return {}
    return {r.split()[0]: int(r.split()[1]) for r in m.group(1).strip().splitlines()}


@pytest.fixture(scope="module")
def run(tiny_run) -> Path:
    return tiny_run  # one full run per session (conftest.py), shared with the browser test


# What the jobs' libraries print on their own (torch, torchao, GPTQModel, llama.cpp, the trainer): rule logs only.
NOISE = ("_pytree", "Failed to load", "GPT-QModel", "torchao", "Python GIL", "llama_model_loader", "'train_loss'")


def _noise(console: str) -> list[str]:
    return [line for line in console.splitlines() if any(n in line for n in NOISE) or "Warning" in line]


def test_the_console_shows_snakemake_not_the_jobs_libraries(run):
    """finetune, merge, gptq, quantize and bench jobs: their libraries' output is in their logs."""
    assert not _noise((run / "console.txt").read_text())
    from quantflow.gptq import installed

    if installed():  # peft imports GPTQModel in the fine-tune: its banner is kept in that job's log
        assert "GPT-QModel" in (run / "results" / "tiny" / "lora" / "logs" / "finetune.log").read_text()


def test_report_has_one_row_per_variant(run):
    rows = list(csv.DictReader(open(run / "reports" / "results.csv")))
    got = {(r["model"], r["ft"], r["variant"]) for r in rows}
    cfg = yaml.safe_load(TINY.read_text())
    gguf = ["gguf-f16", *(f"gguf-{q}" for q in cfg["quants"]), *(f"gguf-{q}-imat" for q in cfg["imatrix"]["types"])]
    want = {("tiny", ft, v) for ft in ("base", "lora") for v in [*gguf, *cfg["hf_variants"]]}
    assert got == want and len(rows) == len(want)
    ran = rows  # GPTQ included: GPTQModel quantizes and runs on the CPU
    assert all(r["status"] == "ok" for r in ran), [(r["variant"], r["reason"]) for r in rows if r["status"] != "ok"]
    assert all(float(r["decode_tps"]) > 0 and float(r["kl_mean"]) >= 0 for r in ran)
    # llama.cpp's own llama-bench figure sits beside ours for every GGUF variant
    for r in ran:
        res = json.loads((run / f"results/tiny/{r['ft']}/bench/{r['variant']}.json").read_text())
        assert ("llama_bench" in res) == r["variant"].startswith("gguf-")
    assert all(r["config_hash"] and r["cpu"] for r in rows)
    # answer similarity: scored once per fine-tune (similarity.json), merged into the report's rows
    for ft in ("base", "lora"):
        table = json.loads((run / f"results/tiny/{ft}/similarity.json").read_text())
        assert set(table["variants"]) == {v for m, f, v in want if f == ft}
    assert all(0 <= float(r["similarity_mean"]) <= 1 for r in ran)
    assert {float(r["similarity_mean"]) for r in ran if r["variant"] == "gguf-f16"} == {1.0}
    html = (run / "reports" / "index.html").read_text()
    assert "<svg" in html and "gguf-Q4_K_M" in html
    assert "gguf-Q3_K_M" in (run / "reports" / "summary.md").read_text()


def test_deploy_folder_serves_the_recommended_file(run):
    """reports/deploy/tiny-lora/: the benchmarked GGUF (same sha256), loaded as the Modelfile says, answers."""
    from llama_cpp import Llama

    from quantflow import deploy

    doc = json.loads((run / "reports" / "results.json").read_text())
    rec = next(r for r in doc["recommendations"] if (r["ft"], r["kind"]) == ("lora", "recommended"))
    folder = run / "reports" / "deploy" / "tiny-lora"
    served = ["Modelfile", "README.md", "llama-server.sh"]
    assert sorted(p.name for p in folder.iterdir() if p.suffix != ".gguf") == served
    result = json.loads((run / f"results/tiny/lora/bench/{rec['variant']}.json").read_text())
    modelfile = deploy.parse_modelfile((folder / "Modelfile").read_text())
    gguf = folder / modelfile["from"]
    assert deploy.sha256(gguf) == result["file"]["sha256"]
    params = modelfile["parameters"]
    assert params["num_ctx"] == [str(result["speed"]["n_ctx"])]
    llm = Llama(model_path=str(gguf), n_ctx=int(params["num_ctx"][0]), n_threads=int(params["num_thread"][0]),
                seed=0, verbose=False)
    out = llm.create_completion(result["answers"][0]["prompt"], max_tokens=8, temperature=0.0, top_k=1,
                                stop=params["stop"])
    assert out["usage"]["completion_tokens"] >= 1
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and "## Machine" in card


def test_bench_jobs_never_overlap(run):
    """Each bench job takes every core, so Snakemake runs it alone: their time spans are disjoint."""
    from datetime import datetime

    spans = []
    for f in sorted((run / "results").glob("*/*/bench/*.json")):
        prov = json.loads(f.read_text())["provenance"]
        spans.append((datetime.fromisoformat(prov["started"]), datetime.fromisoformat(prov["finished"]), f.name))
    spans.sort()
    assert len(spans) >= 8
    for (_, e1, a), (s2, _, b) in zip(spans, spans[1:], strict=False):
        assert e1 <= s2, f"{a} and {b} overlapped"


def test_gguf_files_hold_the_types_their_plans_record(run):
    import json

    from quantflow.gguf_types import default_type
    from quantflow.quantize import is_weight, tensor_summary

    for ft in ("base", "lora"):
        for q in ("Q8_0", "Q4_K_M", "Q3_K_M", "Q4_K_M-imat"):
            summary = tensor_summary(run / f"results/tiny/{ft}/gguf/{q}.gguf")
            plan = json.loads((run / f"results/tiny/{ft}/gguf/{q}.plan.json").read_text())
            assert plan["n_fallback"] == 0, (ft, q, plan["fallbacks"])  # the tiny model's widths all fit
            weights = {n: t for n, (t, shape, _) in summary["tensors"].items() if is_weight(shape)}
            assert default_type(q.removesuffix("-imat")) in weights.values()
            assert {o["tensor"] for o in plan["off_type"]} == {
                n for n, t in weights.items() if t != default_type(q.removesuffix("-imat"))
            }
            result = json.loads((run / f"results/tiny/{ft}/bench/gguf-{q}.json").read_text())
            assert result["file"]["plan"] == plan


def test_second_run_has_nothing_to_do(run):
    p = snakemake(run, "-n")
    assert p.returncode == 0
    assert "Nothing to be done" in p.stdout + p.stderr


def _variant_config(tmp_path: Path, quants: list) -> Path:
    cfg = yaml.safe_load(TINY.read_text())
    cfg["quants"] = quants
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_changing_one_quant_entry_reruns_only_that_variant(run, tmp_path):
    cfg = _variant_config(tmp_path, ["Q8_0", "Q4_K_M", {"type": "Q3_K_M", "output_tensor_type": "Q8_0"}])
    p = snakemake(run, "-n", configfile=cfg)
    assert p.returncode == 0, p.stderr[-2000:]
    # one similarity table per fine-tune, rescored from its (partly new) results
    assert job_stats(p.stdout) == {"quantize": 2, "bench": 2, "similarity": 2, "report": 1, "all": 1}
    assert "Q3_K_M" in p.stdout and "gguf/Q4_K_M.gguf\n" not in p.stdout


def test_adding_a_quant_type_adds_only_its_jobs(run, tmp_path):
    cfg = _variant_config(tmp_path, ["Q8_0", "Q4_K_M", "Q3_K_M", "Q6_K"])
    p = snakemake(run, "-n", configfile=cfg)
    assert p.returncode == 0, p.stderr[-2000:]
    # one similarity table per fine-tune, rescored from its (partly new) results
    assert job_stats(p.stdout) == {"quantize": 2, "bench": 2, "similarity": 2, "report": 1, "all": 1}


def _planned_jobs(out: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job in a dry run's output."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        m = re.match(r"(?:local)?rule (\w+):", block.strip())
        if not m:
            continue
        w = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        wildcards = dict(kv.split("=", 1) for kv in w.group(1).split(", ")) if w else {}
        jobs.append((m.group(1), wildcards))
    return jobs


def test_changing_a_finetune_learning_rate_reruns_its_whole_subtree(run, tmp_path):
    cfg = yaml.safe_load(TINY.read_text())
    cfg["finetunes"][0]["learning_rate"] = 0.0042
    path = tmp_path / "lr.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = snakemake(run, "-n", configfile=path)
    assert p.returncode == 0, p.stderr[-2000:]
    jobs = _planned_jobs(p.stdout)
    n_gguf = 1 + len(cfg["quants"]) + len(cfg["imatrix"]["types"])
    # the fine-tune and everything built from it, nothing of the base model's tree
    want = {
        "finetune": 1,
        "merge": 1,
        "convert": 1,
        "imatrix": 1,
        "quantize": n_gguf - 1,
        "gptq": int("hf-gptq4" in cfg["hf_variants"]),
        "reference": 1,
        "bench": n_gguf + len(cfg["hf_variants"]),
        "similarity": 1,
        "report": 1,
        "all": 1,
    }
    assert job_stats(p.stdout) == {rule: n for rule, n in want.items() if n}
    assert {w.get("ft") for rule, w in jobs if rule not in ("report", "all")} == {"lora"}


def test_editing_a_library_module_reruns_the_stages_that_import_it(run, tmp_path):
    """Snakemake tracks a rule's script, not the modules it imports: the rules' `code` params do.

    The test edits a copy of the workflow (the hashes cover the package beside the Snakefile), never
    the source tree itself; an unedited copy elsewhere plans nothing (hashes ignore the location).
    """

    def copy_workflow(dest: Path) -> Path:
        dest.mkdir()
        for name in ("Snakefile", "config.yaml"):
            shutil.copy2(REPO / name, dest / name)
        for name in ("workflow", "scripts", "quantflow", "profiles"):
            shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        (dest / ".venv").symlink_to(REPO / ".venv")  # the same llama.cpp build (its commit is a param)
        return dest

    def dry_run(wf: Path) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "snakemake", "-s", str(wf / "Snakefile"), "-d", str(run)]
        cmd += ["--configfile", str(TINY), "--cores", "2", "-n"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    untouched = dry_run(copy_workflow(tmp_path / "same"))
    assert "Nothing to be done" in untouched.stdout + untouched.stderr, untouched.stdout[-2000:]

    edited = copy_workflow(tmp_path / "edited")
    with open(edited / "quantflow" / "hf_bench.py", "a") as f:
        f.write("\n# an edit that changes the module's bytes\n")
    p = dry_run(edited)
    assert p.returncode == 0, p.stderr[-2000:]
    cfg = yaml.safe_load(TINY.read_text())
    n_bench = 1 + len(cfg["quants"]) + len(cfg["imatrix"]["types"]) + len(cfg["hf_variants"])  # f16 first
    # hf_bench.py is imported by the bench script alone (GGUF variants included: one script): every bench
    # job of both the base model and the fine-tune reruns, and the report after them; nothing upstream
    assert job_stats(p.stdout) == {"bench": 2 * n_bench, "similarity": 2, "report": 1, "all": 1}

    # A script's own bytes count too (Snakemake's own trigger, its modification time, is off: see the profile)
    edited = copy_workflow(tmp_path / "script-edited")
    with open(edited / "scripts" / "similarity.py", "a") as f:
        f.write("\n# an edit that changes the script's bytes\n")
    p = dry_run(edited)
    assert p.returncode == 0, p.stderr[-2000:]
    assert job_stats(p.stdout) == {"similarity": 2, "report": 1, "all": 1}


def _clone_checkout(dest: Path) -> Path:
    """What a fresh clone of this commit elsewhere holds: the repository's files, all with new times
    (tracked and untracked-but-not-ignored, so uncommitted edits count), and its own .venv (here the same
    one, linked)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes((REPO / name).read_bytes())
    (dest / ".venv").symlink_to(REPO / ".venv")
    return dest


def test_a_moved_checkout_with_its_results_reruns_nothing(run, tmp_path):
    """A clone at another path, with results/, reports/ and .snakemake/ copied over keeping their times
    (`cp -a`), has nothing to do: no param holds an absolute path, no input is named by one, and the
    scripts' new modification times trigger nothing."""
    moved = _clone_checkout(tmp_path / "elsewhere" / "quantflow")
    for name in ("results", "reports", ".snakemake"):
        shutil.copytree(run / name, moved / name, symlinks=True)  # copy2: times kept
    # The experiment as a user keeps it, in config.yaml: the first run's config was tiny.yaml alone (its
    # working directory has no config.yaml for --configfile to extend).
    shutil.copyfile(TINY, moved / "config.yaml")
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "-n"]
    p = subprocess.run(cmd, cwd=moved, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Nothing to be done" in p.stdout + p.stderr, (p.stdout + p.stderr)[-3000:]


@pytest.mark.parametrize(
    "mutate,key",
    [
        (lambda c: c.__setitem__("quants", ["Q8_0", "Q4_K_X"]), "quants[1]"),
        (lambda c: c.pop("bench"), "'bench' is required"),
        (lambda c: c["bench"].__setitem__("n_ctx", "big"), "bench.n_ctx"),
        (lambda c: c.__setitem__("quantz", []), "unknown key(s) quantz"),
    ],
)
def test_broken_config_fails_before_any_job(tmp_path, mutate, key):
    cfg = yaml.safe_load(TINY.read_text())
    mutate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    wd = tmp_path / "wd"
    wd.mkdir()
    p = snakemake(wd, configfile=path, timeout=120)
    assert p.returncode != 0
    errors = [line for line in (p.stdout + p.stderr).splitlines() if line.startswith("quantflow: config key")]
    assert len(errors) == 1 and key in errors[0], p.stdout + p.stderr
    assert not (wd / "results").exists()


def test_default_config_dry_run_plans_the_whole_chain(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(tmp_path),
        "--configfile",
        str(REPO / "config.yaml"),
        "--cores",
        "2",
        "-n",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert not _noise(p.stdout + p.stderr)  # building the DAG imports no heavy library
    stats = job_stats(p.stdout)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    n_quants = len(cfg["quants"]) + len(cfg["imatrix"]["types"])
    n_fts = 1 + len(cfg["finetunes"])
    assert {f["method"] for f in cfg["finetunes"]} >= {"lora"}
    assert {"hf-nf4", "hf-gptq4"} <= set(cfg["hf_variants"])
    assert stats["quantize"] == n_fts * n_quants and stats["imatrix"] == n_fts
    assert stats["bench"] == n_fts * (n_quants + 1 + len(cfg["hf_variants"]))
    assert stats["similarity"] == n_fts  # one embedding-model load per model / fine-tune, not per bench job
    assert stats["finetune"] == n_fts - 1 and stats["merge"] == n_fts - 1 and stats["convert"] == n_fts


def test_reordering_config_keys_reruns_nothing(run, tmp_path):
    def reverse(obj):
        if isinstance(obj, dict):
            return {k: reverse(obj[k]) for k in reversed(list(obj))}
        if isinstance(obj, list):
            return [reverse(v) for v in obj]
        return obj

    path = tmp_path / "reordered.yaml"
    path.write_text(yaml.safe_dump(reverse(yaml.safe_load(TINY.read_text())), sort_keys=False))
    p = snakemake(run, "-n", configfile=path)
    assert "Nothing to be done" in p.stdout + p.stderr, p.stdout[-2000:]
