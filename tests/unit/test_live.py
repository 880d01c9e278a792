"""Unit tests for quantflow.live: parsing Snakemake's records, job states, the page and the server."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from factories import answer, make_result

from quantflow import live
from quantflow.jobs import (
    Job,
    RunLog,
    SummaryRow,
    count_states,
    decode_marker,
    incomplete_outputs,
    is_execution_log,
    job_states,
    latest_run_log,
    parse_run_log,
    parse_summary,
)

T1, T2, T3 = "Tue Nov 24 03:49:53 2026", "Tue Nov 24 03:50:21 2026", "Tue Nov 24 03:51:00 2026"
SUMMARY_ROWS = [
    ("reports/summary.md", "-", "report", "-", "missing", "update pending"),
    ("reports/index.html", "-", "report", "-", "missing", "update pending"),
    ("results/tiny/base/bench/gguf-f16.json", "-", "bench", "-", "missing", "update pending"),
    ("results/tiny/base/gguf/f16.gguf", "-", "convert", "-", "missing", "update pending"),
    ("results/tiny/base/hf", T2, "demo_base", "results/tiny/logs/demo_base.log", "ok", "no update"),
    ("results/tiny/base/pretrain_metrics.json", T2, "demo_base", "results/tiny/logs/demo_base.log", "ok", "no update"),
    ("results/tiny/data/corpus.txt", T1, "demo_data", "results/tiny/logs/demo_data.log", "ok", "no update"),
    ("results/tiny/data/test.jsonl", T1, "demo_data", "results/tiny/logs/demo_data.log", "ok", "no update"),
    (
        "results/tiny/base/gguf/Q8_0.gguf",
        T3,
        "quantize",
        "results/tiny/base/logs/q.log",
        "params changed",
        "update pending",
    ),
]
# As `snakemake --summary` prints it: a preamble line, the header, one tab-separated row per output.
SUMMARY = "Building DAG of jobs...\noutput_file\tdate\trule\tlog-file(s)\tstatus\tplan\n" + "".join(
    "\t".join(row) + "\n" for row in SUMMARY_ROWS
)

HEADER = """\
Assuming unrestricted shared filesystem usage.

SNAKEMAKE
=========
  Date: 2026-11-24 03:49:51
  Snakemake version: 9.27.1
  Snakefile: /home/user/quantflow/Snakefile
  Working directory: /tmp/wd
  Config file(s): [PosixPath('/home/user/quantflow/tests/configs/tiny.yaml')]
  Config MD5: 1e446054536bf9805d6ab534ce43fcc3

Building DAG of jobs...
Provided cores: 2
Job stats:
job               count
--------------  -------
demo_data             1
total                 3

Select jobs to execute...
Execute 1 jobs...
"""

STARTED_DATA = """\
[Tue Nov 24 03:49:52 2026]
localrule demo_data:
    output: results/tiny/data/corpus.txt, results/tiny/data/test.jsonl
    log: results/tiny/logs/demo_data.log
    jobid: 5
    reason: Missing output files: results/tiny/data/test.jsonl
    wildcards: model=tiny
    resources: tmpdir=/tmp
Shell command: None
"""

FINISHED_DATA = """\
[Tue Nov 24 03:49:53 2026]
Finished jobid: 5 (Rule: demo_data)
1 of 3 steps (33%) done
Select jobs to execute...
Execute 1 jobs...
"""

STARTED_BASE = """\
[Tue Nov 24 03:49:53 2026]
localrule demo_base:
    input: results/tiny/data/corpus.txt
    output: results/tiny/base/hf, results/tiny/base/pretrain_metrics.json
    log: results/tiny/logs/demo_base.log
    jobid: 4
    wildcards: model=tiny
    threads: 2
    resources: tmpdir=/tmp
Shell command: None
"""

FAILED_BASE = """\
[Tue Nov 24 03:50:01 2026]
Error in rule demo_base:
    message: None
    jobid: 4
    input: results/tiny/data/corpus.txt
    output: results/tiny/base/hf, results/tiny/base/pretrain_metrics.json
    log: results/tiny/logs/demo_base.log (check log file(s) for error details)
Logfile results/tiny/logs/demo_base.log: empty file
Shutting down, this might take some time.
Exiting because a job execution failed. Look above for error messages
Complete log(s): /tmp/wd/.snakemake/log/2026-11-24T034951.553514.snakemake.log
"""

RUNNING_LOG = HEADER + STARTED_DATA + FINISHED_DATA + STARTED_BASE
FAILED_LOG = RUNNING_LOG + FAILED_BASE
COMPLETE_LOG = (
    HEADER
    + STARTED_DATA
    + FINISHED_DATA
    + STARTED_BASE
    + """\
[Tue Nov 24 03:50:21 2026]
Finished jobid: 4 (Rule: demo_base)
2 of 2 steps (100%) done
Complete log(s): /tmp/wd/.snakemake/log/x.snakemake.log
"""
)


def _marker(path: str) -> str:
    return base64.urlsafe_b64encode(path.encode()).decode()


# ------------------------------------------------------------------------------------ parsing


def test_parse_summary_skips_preamble_and_reads_rows() -> None:
    rows = parse_summary(SUMMARY)
    assert len(rows) == 9
    assert rows[0] == SummaryRow("reports/summary.md", "-", "report", "-", "missing", "update pending")
    assert not rows[0].exists and rows[4].exists
    assert rows[-1].status == "params changed"


def test_parse_detailed_summary() -> None:
    text = (
        "output_file\tdate\trule\tlog-file(s)\tinput-file(s)\tshellcmd\tstatus\tplan\n"
        "a.txt\tTue Nov 24 03:49:53 2026\tr\tlogs/r.log\tin.txt\techo hi\tok\tno update\n"
    )
    (row,) = parse_summary(text)
    assert (row.output, row.rule, row.log, row.status, row.plan) == ("a.txt", "r", "logs/r.log", "ok", "no update")


def test_decode_marker_plain_split_and_invalid() -> None:
    assert decode_marker("cmVzdWx0cy90aW55L2Jhc2UvaGY=") == "results/tiny/base/hf"
    long = "results/" + "x" * 400 + "/out.json"
    b64 = _marker(long)
    split = Path("@" + b64[:254], "@" + b64[254:508], b64[508:])
    assert decode_marker(split) == long
    assert decode_marker("not base64!") is None


def test_incomplete_outputs_reads_the_folder(tmp_path: Path) -> None:
    inc = tmp_path / ".snakemake" / "incomplete"
    inc.mkdir(parents=True)
    (inc / _marker("results/a.json")).write_text("{}")
    b64 = _marker("results/" + "y" * 300)
    (inc / ("@" + b64[:200])).mkdir()
    (inc / ("@" + b64[:200]) / b64[200:]).write_text("{}")
    assert incomplete_outputs(tmp_path / ".snakemake") == {"results/a.json", "results/" + "y" * 300}
    assert incomplete_outputs(tmp_path / "nowhere") == set()


def test_is_execution_log() -> None:
    assert is_execution_log(RUNNING_LOG)
    # Just started: only the banner, nothing planned yet (it already names the config files).
    assert is_execution_log(HEADER.split("Building DAG")[0])
    assert is_execution_log("Building DAG of jobs...\nNothing to be done (all requested files are present).")
    assert not is_execution_log("Building DAG of jobs...\n")  # a --summary without -n
    assert not is_execution_log("Building DAG of jobs...\nCreating report...\nJob stats:\n")
    assert not is_execution_log('WorkflowError in file "x.smk", line 56:\nWorkflow requires cores')


def test_parse_running_log() -> None:
    run = parse_run_log(RUNNING_LOG, "r.log")
    assert sorted(run.jobs) == [4, 5]
    assert run.jobs[5].rule == "demo_data"
    assert run.jobs[5].outputs == ["results/tiny/data/corpus.txt", "results/tiny/data/test.jsonl"]
    assert run.jobs[4].wildcards == "model=tiny" and run.jobs[4].started == "Tue Nov 24 03:49:53 2026"
    assert run.finished == {5} and run.failed == {}
    assert not run.ended and run.outcome == "running"
    assert run.progress == (1, 3)
    assert run.snakefile == "/home/user/quantflow/Snakefile"
    assert run.configfiles == ["/home/user/quantflow/tests/configs/tiny.yaml"]


def test_parse_failed_and_complete_logs() -> None:
    failed = parse_run_log(FAILED_LOG)
    assert list(failed.failed) == [4] and failed.failed[4].rule == "demo_base"
    assert failed.failed[4].outputs == ["results/tiny/base/hf", "results/tiny/base/pretrain_metrics.json"]
    assert failed.ended and failed.outcome == "failed"
    assert failed.error_lines[0] == "Error in rule demo_base:"
    complete = parse_run_log(COMPLETE_LOG)
    assert complete.finished == {4, 5} and complete.ended and complete.outcome == "complete"


def test_latest_run_log_skips_summary_and_report_logs(tmp_path: Path) -> None:
    logs = tmp_path / "log"
    logs.mkdir()
    (logs / "2026-11-24T034951.000000.snakemake.log").write_text(RUNNING_LOG)
    (logs / "2026-11-24T035000.000000.snakemake.log").write_text("Building DAG of jobs...\n")
    (logs / "2026-11-24T035100.000000.snakemake.log").write_text("Building DAG of jobs...\nCreating report...\n")
    name, text = latest_run_log(logs)
    assert name == "2026-11-24T034951.000000.snakemake.log" and text == RUNNING_LOG
    assert latest_run_log(tmp_path / "none") is None


# ---------------------------------------------------------------------------------- job states


def _states(jobs: list[Job]) -> dict[str, str]:
    return {job.outputs[0]: job.state for job in jobs}


def test_job_states_while_running() -> None:
    summary = parse_summary(SUMMARY)
    run = parse_run_log(RUNNING_LOG, "r.log")
    incomplete = {"results/tiny/base/hf", "results/tiny/base/pretrain_metrics.json"}
    jobs = job_states(summary, run, incomplete, locked=True)
    states = _states(jobs)
    assert states["results/tiny/base/hf"] == "running"
    assert states["results/tiny/data/corpus.txt"] == "done"  # finished in this run
    assert states["reports/summary.md"] == "pending"
    assert states["results/tiny/base/gguf/f16.gguf"] == "pending"
    assert states["results/tiny/base/gguf/Q8_0.gguf"] == "pending"  # exists, but params changed
    assert count_states(jobs) == {"running": 1, "failed": 0, "pending": 4, "done": 1}
    # The two report outputs are one job; demo_base's two outputs come from its log block.
    report = next(j for j in jobs if j.rule == "report")
    assert report.outputs == ["reports/summary.md", "reports/index.html"]
    base = next(j for j in jobs if j.rule == "demo_base")
    assert base.jobid == 4 and len(base.outputs) == 2 and base.wildcards == "model=tiny"


def test_job_states_after_a_failure() -> None:
    jobs = job_states(parse_summary(SUMMARY), parse_run_log(FAILED_LOG, "f.log"), set(), locked=False)
    states = _states(jobs)
    assert states["results/tiny/base/hf"] == "failed"
    assert states["results/tiny/data/corpus.txt"] == "done"
    assert count_states(jobs)["failed"] == 1


def test_started_job_of_a_killed_run_is_failed() -> None:
    # The log never ended but no Snakemake holds the directory: the run was killed.
    jobs = job_states([], parse_run_log(RUNNING_LOG), {"results/tiny/base/hf"}, locked=False)
    base = next(j for j in jobs if j.rule == "demo_base")
    assert base.state == "failed" and "never finished" in base.detail


def test_incomplete_markers_without_log() -> None:
    summary = parse_summary(SUMMARY)
    running = job_states(summary, None, {"results/tiny/base/gguf/f16.gguf"}, locked=True)
    assert _states(running)["results/tiny/base/gguf/f16.gguf"] == "running"
    stale = job_states(summary, None, {"results/tiny/base/gguf/f16.gguf", "results/x"}, locked=False)
    assert _states(stale)["results/tiny/base/gguf/f16.gguf"] == "failed"
    assert _states(stale)["results/x"] == "failed"  # unknown to the summary, still shown


def test_done_from_summary_alone() -> None:
    jobs = job_states(parse_summary(SUMMARY), None, set(), locked=False)
    done = [j for j in jobs if j.state == "done"]
    assert [j.rule for j in done] == ["demo_base", "demo_data"]
    assert done[1].outputs == ["results/tiny/data/corpus.txt", "results/tiny/data/test.jsonl"]


# ------------------------------------------------------------------------ variants and snapshot


def _bench(tmp: Path, ft: str, variant: str) -> None:
    path = tmp / "results" / "tiny" / ft / "bench" / f"{variant}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = make_result(ft, variant, decode_tps=123.4, kl_mean=0.012, accuracy=0.25, model="tiny", answers=[])
    q1 = {**answer(1, False), "prompt": "<b>2+2</b>?"}  # markup, which the page must escape
    doc["answers"] = [answer(0, True), q1]
    path.write_text(json.dumps(doc), encoding="utf-8")


def make_workdir(tmp: Path, log_text: str = RUNNING_LOG, locked: bool = True) -> Path:
    sm = tmp / ".snakemake"
    (sm / "log").mkdir(parents=True)
    (sm / "log" / "2026-11-24T034951.000000.snakemake.log").write_text(log_text)
    (sm / "incomplete").mkdir()
    (sm / "incomplete" / _marker("results/tiny/base/hf")).write_text("{}")
    (sm / "locks").mkdir()
    if locked:
        (sm / "locks" / "0.output.lock").write_text("x")
    _bench(tmp, "base", "gguf-Q4_K_M")
    _bench(tmp, "base", "gguf-f16")
    (tmp / "results" / "tiny" / "base" / "bench" / ".gguf-Q8_0.json.partial").write_text("{")
    return tmp


def test_variant_rows_from_results(tmp_path: Path) -> None:
    make_workdir(tmp_path)
    rows = live.variant_rows(live.read_results(tmp_path))
    assert [r["variant"] for r in rows] == ["gguf-Q4_K_M", "gguf-f16"]
    assert rows[0]["decode_tps"] == 123.4 and rows[0]["kl_mean"] == 0.012 and rows[0]["accuracy"] == 0.25
    assert [a["correct"] for a in rows[0]["answers"]] == [True, False]
    assert rows[0]["similarity_mean"] is None  # no similarity table yet
    entry = {"similarity_mean": 0.75, "similarity_min": 0.5, "answers": {"q1": 0.5}}
    table = {"model": "tiny", "ft": "base", "similarity_model": "m", "variants": {"gguf-Q4_K_M": entry}}
    (tmp_path / "results" / "tiny" / "base" / "similarity.json").write_text(json.dumps(table), encoding="utf-8")
    rows = live.variant_rows(live.read_results(tmp_path))
    assert rows[0]["similarity_mean"] == 0.75 and rows[1]["similarity_mean"] is None
    assert "0.750" in live.render_page(live.Monitor(tmp_path, run_summary=False).refresh(), refresh_s=5)


def test_snapshot_and_page(tmp_path: Path) -> None:
    monitor = live.Monitor(make_workdir(tmp_path), run_summary=False)
    snap = monitor.refresh()
    assert snap["run"]["state"] == "running" and snap["run"]["progress"] == [1, 3]
    assert snap["counts"] == {"running": 1, "failed": 0, "pending": 0, "done": 1}
    assert snap["jobs"][0]["state"] == "running"  # running first
    html = live.render_page(snap, refresh_s=5)
    assert '<meta http-equiv="refresh" content="5">' in html
    assert "1 running" in html and "1 done" in html
    assert "&lt;b&gt;2+2&lt;/b&gt;?" in html and "<b>2+2" not in html  # answers are escaped
    assert "<script" not in html
    assert "Collecting" in live.render_page(None, refresh_s=5)


def test_summary_command_reuses_the_runs_snakefile_and_configs(tmp_path: Path) -> None:
    monitor = live.Monitor(tmp_path)
    cmd = monitor._summary_command(parse_run_log(RUNNING_LOG))
    assert "--summary" in cmd and "--dry-run" in cmd  # dry-run: no lock taken, no log written
    assert cmd[cmd.index("-s") + 1] == "/home/user/quantflow/Snakefile"
    assert cmd[cmd.index("--configfile") + 1] == "/home/user/quantflow/tests/configs/tiny.yaml"
    explicit = live.Monitor(tmp_path, configfiles=[Path("other.yaml")])._summary_command(parse_run_log(RUNNING_LOG))
    assert explicit[explicit.index("--configfile") + 1] == "other.yaml"


def test_failed_summary_is_kept_out_and_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monitor = live.Monitor(make_workdir(tmp_path))
    calls = []

    def command(run: RunLog | None) -> list[str]:
        calls.append(1)
        return [sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"]

    monkeypatch.setattr(monitor, "_summary_command", command)
    snap = monitor.refresh()
    assert "failed (exit 3): boom" in snap["summary_note"]
    assert snap["counts"]["running"] == 1  # log and markers still give a useful page
    monitor.refresh()
    assert len(calls) == 1  # same state: backing off
    # A new job in the run's log is a new state: retried at once.
    monkeypatch.setattr(live, "SUMMARY_RETRY_S", 0.0)
    log_file = next((tmp_path / ".snakemake" / "log").iterdir())
    log_file.write_text(RUNNING_LOG + FAILED_BASE)
    monitor.refresh()
    assert len(calls) == 2
    monitor.refresh()  # same state again, but the backoff (now 0 s) is over
    assert len(calls) == 3


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode("utf-8")


def test_server_serves_page_and_json_on_localhost(tmp_path: Path) -> None:
    monitor = live.Monitor(make_workdir(tmp_path), run_summary=False)
    server = live.LiveServer(monitor, port=0, interval=0.2).start()
    try:
        assert server.httpd.server_address[0] == "127.0.0.1"
        for _ in range(50):
            if monitor.latest() is not None:
                break
            time.sleep(0.1)
        status, ctype, body = _get(server.url)
        assert status == 200 and ctype.startswith("text/html")
        assert "1 running" in body and "gguf-Q4_K_M" in body
        status, ctype, body = _get(server.url + "status.json")
        assert status == 200 and ctype == "application/json"
        assert json.loads(body)["counts"]["done"] == 1
        assert _get(server.url + "nope")[0] == 404
    finally:
        server.stop()


def test_main_rejects_missing_workdir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert live.main(["--workdir", str(tmp_path / "nope"), "--once"]) == 2
    assert "not a directory" in capsys.readouterr().err


# ------------------------------------------------------------------ against a running workflow

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "configs" / "tiny.yaml"


def _stop_group(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Stop a process started with start_new_session=True, and its children (its own group only)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.mark.slow
def test_live_view_of_a_running_workflow(tmp_path: Path) -> None:
    """Start the tiny workflow, watch it through the live server, stop it once a job is done."""
    wd = tmp_path / "wd"
    wd.mkdir()
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd)]
    cmd += ["--configfile", str(TINY), "--cores", "2"]
    with open(tmp_path / "workflow.out", "w") as out:
        workflow = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = live.LiveServer(live.Monitor(wd), port=0, interval=1.0).start()
    seen: dict | None = None
    page = ""
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and workflow.poll() is None:
            snap = json.loads(_get(server.url + "status.json")[2])
            counts = snap.get("counts", {})
            # Pending jobs come from snakemake --summary, which may lag a poll or two behind.
            if counts.get("done", 0) >= 1 and counts.get("running", 0) >= 1 and counts.get("pending", 0) >= 1:
                page = _get(server.url)[2]
                if workflow.poll() is None:  # still alive after the page was read
                    seen = snap
                    break
            time.sleep(1.0)
        log_tail = (tmp_path / "workflow.out").read_text()[-3000:]
        assert seen is not None, f"never saw a done and a running job while the workflow ran:\n{log_tail}"
        assert seen["run"]["state"] == "running" and seen["run"]["locked"]
        assert seen["counts"]["pending"] >= 10  # the tiny DAG has ~25 jobs; most are still ahead
        running = [j for j in seen["jobs"] if j["state"] == "running"]
        done = [j for j in seen["jobs"] if j["state"] == "done"]
        assert running and done
        assert done[0]["rule"] in ("demo_data", "demo_tokenizer", "demo_base")
        assert "running" in page and "done" in page and "pending" in page
        assert 'class="job-running"' in page and 'class="job-done"' in page
    finally:
        _stop_group(workflow)
        # Once the workflow is gone, nothing may still read as running.
        after = server.monitor.refresh()
        server.stop()
    assert after["counts"]["running"] == 0
    assert after["run"]["state"] != "running"
