"""Interruptions, isolation and determinism on the real Snakefile (a reduced tiny demo).

One workdir is interrupted four times with SIGKILL — the fine-tune job, the whole run during a
conversion (node loss), a quantize job, a bench job — and after each kill a dry run must plan that job
again (and what depends on it or had not run yet), nothing else; then it runs to the end. A second
workdir runs the same config uninterrupted: both must give byte-identical GGUFs and identical quality
figures. Last, a truncated GGUF makes its own variant fail (recorded in the report with why) while
every other variant completes.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "configs" / "tiny.yaml"

pytestmark = pytest.mark.slow


def reduced_config(path: Path) -> Path:
    cfg = yaml.safe_load(TINY.read_text())
    cfg.update(quants=["Q8_0", "Q4_K_M"], imatrix={"types": []}, hf_variants=[])
    cfg["finetunes"][0]["steps"] = 12  # long enough to be caught mid-training
    path.write_text(yaml.safe_dump(cfg))
    return path


def cmd(wd: Path, cfg: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd), "--configfile",
            str(cfg), "--cores", "2", *args]


def run(wd: Path, cfg: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd(wd, cfg, *args), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def planned(wd: Path, cfg: Path) -> dict[str, tuple[str, str]]:
    """A dry run's jobs: each output -> (rule, reason)."""
    p = run(wd, cfg, "-n")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    out = p.stdout + p.stderr
    jobs = {}
    for m in re.finditer(r"^(?:local)?rule (\w+):\n(.*?)(?=\n\s*\n|\Z)", out, re.S | re.M):
        rule, body = m.group(1), m.group(2)
        o = re.search(r"^\s*output: (.*)$", body, re.M)
        r = re.search(r"^\s*reason: (.*)$", body, re.M)
        for out in o.group(1).split(", ") if o else [f"<{rule}>"]:
            jobs[out] = (rule, r.group(1) if r else "")
    return jobs


def running_outputs(wd: Path) -> set[str]:
    """Outputs of the jobs running now, from Snakemake's own incomplete markers."""
    root = wd / ".snakemake" / "incomplete"
    out = set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f == "migration_underway":
                continue
            parts = [*Path(dirpath).relative_to(root).parts, f]
            b64 = "".join(p.removeprefix("@") for p in parts)
            try:
                out.add(base64.urlsafe_b64decode(b64).decode())
            except (ValueError, UnicodeDecodeError):
                pass
    return out


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def wait_for_job(sm: subprocess.Popen, rule: str, ready, timeout: float = 240) -> psutil.Process:
    """The process of a running job of ``rule`` once ``ready(job)`` holds (polled every 20 ms)."""
    top = psutil.Process(sm.pid)
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert sm.poll() is None, f"snakemake ended before a {rule} job was caught"
        for p in top.children(recursive=True):
            line = _cmdline(p)
            if re.search(rf"\.{rule}\.py\b", line) and "bash" not in p.name():
                if ready(p):
                    return p
        time.sleep(0.02)
    raise AssertionError(f"no {rule} job running within {timeout} s")


def has_child(pattern: str):
    return lambda job: any(pattern in _cmdline(c) for c in job.children(recursive=True))


def log_says(path: Path, text: str):
    return lambda job: path.exists() and text in path.read_text(errors="replace")


def kill(sm: subprocess.Popen, job: psutil.Process, node_loss: bool) -> None:
    if node_loss:  # every process of the run at once, Snakemake included: nothing gets to clean up
        procs = [psutil.Process(sm.pid), *psutil.Process(sm.pid).children(recursive=True)]
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
    else:
        job.send_signal(signal.SIGKILL)
    sm.wait(timeout=300)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


QUALITY = ("kl_mean", "kl_median", "kl_p99", "kl_p999", "kl_max", "top1_agreement", "dp_mean", "dp_rms", "ppl",
           "accuracy", "size_mb", "bits_per_weight")


def quality_rows(wd: Path) -> dict:
    rows = list(csv.DictReader(open(wd / "reports" / "results.csv")))
    assert rows and set(QUALITY) <= set(rows[0]), sorted(rows[0]) if rows else "no rows"
    return {(r["ft"], r["variant"]): {k: r.get(k) for k in QUALITY} for r in rows}


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> Path:
    return reduced_config(tmp_path_factory.mktemp("cfg") / "robust.yaml")


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, cfg) -> tuple[Path, list[dict]]:
    """A workdir interrupted once per stage, then completed; with what each interruption left."""
    wd = tmp_path_factory.mktemp("interrupted")
    logs = wd / "results" / "tiny"
    cases = [
        ("finetune", log_says(logs / "lora" / "logs" / "finetune.log", "step 1/"), False),
        ("convert", has_child("convert_hf_to_gguf"), True),
        ("quantize", lambda job: True, False),
        ("bench", has_child("-m quantflow.bench"), False),
    ]
    seen = []
    for rule, ready, node_loss in cases:
        with open(wd / f"snakemake-{rule}.log", "w") as out:
            sm = subprocess.Popen(cmd(wd, cfg), stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
            job = wait_for_job(sm, rule, ready)
            running = running_outputs(wd)
            kill(sm, job, node_loss)
        if node_loss:  # a run killed whole leaves its lock behind: what a user does next
            p = run(wd, cfg, "--unlock")
            assert p.returncode == 0, p.stderr[-2000:]
        existing = {str(p.relative_to(wd)) for p in (wd / "results").rglob("*") if p.is_file() or p.is_dir()}
        seen.append({"rule": rule, "running": running, "plan": planned(wd, cfg), "existing": existing})
    p = run(wd, cfg)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return wd, seen


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cfg) -> Path:
    wd = tmp_path_factory.mktemp("uninterrupted")
    p = run(wd, cfg)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return wd


@pytest.mark.parametrize("i,rule", list(enumerate(["finetune", "convert", "quantize", "bench"])))
def test_a_killed_job_is_planned_again_and_nothing_finished_is(interrupted, i, rule):
    wd, seen = interrupted
    case = seen[i]
    assert case["rule"] == rule
    plan, running = case["plan"], case["running"]
    # the caught job is planned again; any other job running beside it was either finished by Snakemake
    # before it stopped (a lone job kill) or is planned again too (node loss)
    assert rule in {plan[o][0] for o in running if o in plan}, (running, sorted(plan))
    for o in running:
        assert o in plan or o in case["existing"], o
    for out, (r, reason) in plan.items():
        if r == "all":
            continue
        # only what is missing (never run, or killed) or downstream of a rerun: nothing complete is redone
        # for another reason (changed code, params, an output taken for incomplete by mistake)
        for part in reason.split("; "):
            assert part.startswith(("Missing output files", "Input files updated by another job")), (out, reason)
        if out in running:  # a killed job's output never exists under its final name (written atomically)
            assert out not in case["existing"], out


def test_interrupted_run_completes_without_leftovers(interrupted):
    from quantflow.quantize import check_gguf

    wd, _ = interrupted
    assert (wd / "reports" / "results.csv").exists()
    for g in (wd / "results").rglob("*.gguf"):
        check_gguf(g)
    assert [str(p) for p in (wd / "results").rglob("*partial*")] == []


def test_interrupted_and_uninterrupted_runs_are_identical(interrupted, uninterrupted):
    """Byte-identical GGUFs and identical quality figures, however the run got there."""
    wd, _ = interrupted
    a = {str(p.relative_to(wd)): sha256(p) for p in sorted((wd / "results").rglob("*.gguf"))}
    b = {str(p.relative_to(uninterrupted)): sha256(p) for p in sorted((uninterrupted / "results").rglob("*.gguf"))}
    assert len(a) == 6 and a == b
    qa, qb = quality_rows(wd), quality_rows(uninterrupted)
    assert qa.keys() == qb.keys() and all(qa[k] == qb[k] for k in qa), [k for k in qa if qa[k] != qb[k]]


def test_one_broken_variant_fails_alone_and_the_report_says_why(interrupted, cfg):
    wd, _ = interrupted
    gguf = wd / "results" / "tiny" / "base" / "gguf" / "Q4_K_M.gguf"
    data = gguf.read_bytes()
    gguf.write_bytes(data[: len(data) // 2])  # e.g. a disk that filled up while it was copied in
    (wd / "results" / "tiny" / "base" / "bench" / "gguf-Q4_K_M.json").unlink()
    p = run(wd, cfg, "--keep-going")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = {(r["ft"], r["variant"]): r for r in csv.DictReader(open(wd / "reports" / "results.csv"))}
    bad = rows.pop(("base", "gguf-Q4_K_M"))
    rel = str(gguf.relative_to(wd))  # jobs run in the workdir and name files relative to it
    assert bad["status"] == "failed" and rel in bad["reason"] and "truncated" in bad["reason"], bad["reason"]
    assert "delete it and rerun" in bad["reason"]
    assert rows and all(r["status"] == "ok" for r in rows.values())
    assert "gguf-Q4_K_M" in (wd / "reports" / "summary.md").read_text().split("Failed or not run")[1]
    # the fix the reason names: delete the file (and the recorded failure), rerun
    gguf.unlink()
    (wd / "results" / "tiny" / "base" / "bench" / "gguf-Q4_K_M.json").unlink()
    plan = planned(wd, cfg)
    # one entry per output file: the report's five outputs are one job
    assert {r for r, _ in plan.values()} == {"all", "bench", "quantize", "similarity", "report"}
    assert {o for o, (r, _) in plan.items() if r in ("bench", "quantize")} == {
        str(gguf.relative_to(wd)),
        str(gguf.with_suffix(".plan.json").relative_to(wd)),  # the quantize job's second output
        "results/tiny/base/bench/gguf-Q4_K_M.json",
    }
    p = run(wd, cfg)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((wd / "results" / "tiny" / "base" / "bench" / "gguf-Q4_K_M.json").read_text())
    assert res["status"] == "ok"
