"""Live view of a quantflow workflow: which jobs are done, running, pending or failed.

    python -m quantflow.live --port 8765 [--workdir .] [--configfile FILE] [--snakefile FILE]

Serves a local page (http://127.0.0.1:PORT/, bound to 127.0.0.1 only; ``/status.json`` has the same
data) that refreshes itself. Nothing here is written by the jobs for the live view: the state is
derived from Snakemake's own records and the output files.

- ``snakemake --summary --dry-run`` lists every output of the DAG with its rule, status (ok,
  missing, params changed, ...) and plan (no update / update pending). Dry-run, so it neither takes
  the working directory's lock nor writes a log. It is the only expensive source (a DAG build, a
  few CPU seconds), so it is rerun only when a job has started, finished or failed since the last
  time (or every ``--summary-every`` seconds): a benchmark running alongside is disturbed as
  little as possible.
- ``.snakemake/incomplete/``: Snakemake marks each output of a job that has started and not
  finished (the file name is the output path, URL-safe base64, split into folders when long).
- ``.snakemake/log/*.snakemake.log``: the newest log of an executing run (not of a dry run, a
  summary or ``--report``) gives the jobs started ("rule X:" blocks with ``jobid`` and
  ``output``), finished ("Finished jobid: N") and failed ("Error in rule X:" blocks) in this run,
  plus the Snakefile and config files the run used (so ``--configfile`` rarely needs repeating).
- ``.snakemake/locks/``: not empty while a Snakemake process holds the directory.
- ``results/**/bench/*.json``: each finished variant's decode tok/s, KL, accuracy and answers; the answer
  similarity from ``results/**/similarity.json`` once a fine-tune's variants are all measured.

A job (the outputs one rule invocation writes) is

- **failed** when the latest run logged an error for it, or it was started and never finished
  by a run that has ended (killed or interrupted; its outputs are left marked incomplete);
- **running** when the latest run started it, has not finished it, and is still going;
- **done** when the latest run finished it, or every output exists and the DAG would not update it;
- **pending** otherwise: missing outputs, or existing ones the DAG would redo.

Outputs the latest run did not start are grouped into jobs from the summary, whose rows list one
job's outputs consecutively; two adjacent jobs of the same rule that are both still to run may show
as one row. Everything above is a pure function of text and file listings (see the ``parse_*``
functions and :func:`job_states`); only :class:`Monitor` and :func:`serve` touch processes and sockets.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import http.server
import json
import logging
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quantflow.similarity import merge_tables, read_tables, table_paths

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
STATES = ("running", "failed", "pending", "done")
#: Seconds before a failed ``snakemake --summary`` is tried again.
SUMMARY_RETRY_S = 15.0
HOST = "127.0.0.1"


# --------------------------------------------------------------------------------------------
# Parsing Snakemake's records (pure)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SummaryRow:
    output: str
    date: str
    rule: str
    log: str
    status: str
    plan: str

    @property
    def exists(self) -> bool:
        return self.date != "-" and self.status not in ("missing", "removed temp file")


def parse_summary(text: str) -> list[SummaryRow]:
    """Rows of ``snakemake --summary`` (tab separated, after the header; other lines ignored)."""
    rows: list[SummaryRow] = []
    header_seen = False
    for line in text.splitlines():
        if line.startswith("output_file\t"):
            header_seen = True
            continue
        parts = line.split("\t")
        if not header_seen or len(parts) < 6:
            continue
        # --detailed-summary adds input files and shell command between log and status.
        output, date, rule, logs = parts[:4]
        status, plan = parts[-2], parts[-1]
        rows.append(SummaryRow(output, date, rule, logs, status, plan))
    return rows


def decode_marker(relative: str | Path) -> str | None:
    """The output path of one ``.snakemake/incomplete/`` marker, given its path relative to that folder.

    Long names are split into folders whose names start with "@" (all but the last part).
    """
    parts = Path(relative).parts
    b64 = "".join(p[1:] if p.startswith("@") else p for p in parts)
    try:
        return base64.urlsafe_b64decode(b64.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def incomplete_outputs(snakemake_dir: Path) -> set[str]:
    """Outputs marked incomplete (their job started and has not finished)."""
    root = snakemake_dir / "incomplete"
    if not root.is_dir():
        return set()
    out = set()
    for path in root.rglob("*"):
        if path.is_file():
            decoded = decode_marker(path.relative_to(root))
            if decoded:
                out.add(decoded)
    return out


@dataclass
class LogJob:
    jobid: int
    rule: str
    outputs: list[str] = field(default_factory=list)
    wildcards: str = ""
    started: str = ""


@dataclass
class RunLog:
    """What one execution log says about its run."""

    name: str = ""
    jobs: dict[int, LogJob] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)
    failed: dict[int, LogJob] = field(default_factory=dict)
    ended: bool = False  #: the run printed its closing lines (success or failure)
    outcome: str = "running"  #: running, complete, failed, nothing to do, ended
    progress: tuple[int, int] | None = None  #: (done, total) steps
    snakefile: str | None = None
    configfiles: list[str] = field(default_factory=list)
    error_lines: list[str] = field(default_factory=list)


_JOB_HEAD = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):\s*$")
_ERROR_HEAD = re.compile(r"^Error in rule (\S+):\s*$")
_FIELD = re.compile(r"^    (\w[\w-]*): ?(.*)$")
_FINISHED = re.compile(r"^Finished jobid: (\d+)")
_PROGRESS = re.compile(r"^(\d+) of (\d+) steps \(.*\) done")
_TIMESTAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$")


def is_execution_log(text: str) -> bool:
    """True for the log of a run that executes jobs (not a summary, a --report or a config error)."""
    if "Creating report..." in text:
        return False
    # The "SNAKEMAKE / =========" banner opens an executing run's log before it has planned anything.
    markers = ("SNAKEMAKE\n=========", "Select jobs to execute", "Nothing to be done", "Job stats:")
    return any(marker in text for marker in markers)


def parse_run_log(text: str, name: str = "") -> RunLog:
    """Jobs started, finished and failed in one Snakemake execution log, and how the run ended."""
    run = RunLog(name=name)
    block: LogJob | None = None
    in_error = False
    stamp = ""
    for line in text.splitlines():
        if m := _TIMESTAMP.match(line):
            stamp = m.group(1)
            block, in_error = None, False
            continue
        if m := _JOB_HEAD.match(line):
            block, in_error = LogJob(jobid=-1, rule=m.group(1), started=stamp), False
            continue
        if m := _ERROR_HEAD.match(line):
            block, in_error = LogJob(jobid=-1, rule=m.group(1), started=stamp), True
            run.error_lines.append(line.strip())
            continue
        if block is not None and (m := _FIELD.match(line)):
            key, value = m.group(1), m.group(2).strip()
            if key == "jobid" and value.isdigit():
                block.jobid = int(value)
                if in_error:
                    known = run.jobs.get(block.jobid)
                    if known is not None and not block.outputs:
                        block.outputs = list(known.outputs)
                    run.failed[block.jobid] = block
                else:
                    run.jobs[block.jobid] = block
            elif key == "output":
                block.outputs = [o.strip() for o in value.split(", ") if o.strip()]
            elif key == "wildcards":
                block.wildcards = value
            elif key == "log" and in_error:
                run.error_lines.append(f"  log: {value}")
            continue
        if not line.startswith("    "):
            block, in_error = None, False
        if m := _FINISHED.match(line):
            run.finished.add(int(m.group(1)))
        elif m := _PROGRESS.match(line):
            run.progress = (int(m.group(1)), int(m.group(2)))
        elif line.startswith("  Snakefile: "):
            run.snakefile = line.split(": ", 1)[1].strip()
        elif line.startswith("  Config file(s): "):
            value = line.split(": ", 1)[1]
            run.configfiles = re.findall(r"Path\('([^']+)'\)", value) or re.findall(r"'([^']+)'", value)
        elif line.startswith("Nothing to be done"):
            run.ended, run.outcome = True, "nothing to do"
        elif line.startswith("Exiting because a job execution failed"):
            run.ended, run.outcome = True, "failed"
        elif line.startswith("Complete log(s):") or line.startswith("WorkflowError:"):
            run.ended = True
            if run.outcome == "running":
                run.outcome = "failed" if run.failed or line.startswith("WorkflowError") else "ended"
    if run.progress and run.progress[0] == run.progress[1] and not run.failed:
        run.ended, run.outcome = True, "complete"
    return run


def latest_run_log(log_dir: Path) -> tuple[str, str] | None:
    """(name, text) of the newest execution log in ``.snakemake/log/``, or None."""
    if not log_dir.is_dir():
        return None
    for path in sorted(log_dir.glob("*.snakemake.log"), reverse=True):  # ISO timestamps sort by time
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if is_execution_log(text):
            return path.name, text
    return None


# --------------------------------------------------------------------------------------------
# Job states (pure)
# --------------------------------------------------------------------------------------------


@dataclass
class Job:
    rule: str
    outputs: list[str]
    state: str
    detail: str = ""
    jobid: int | None = None
    wildcards: str = ""


def job_states(
    summary: Sequence[SummaryRow],
    run: RunLog | None,
    incomplete: Iterable[str],
    locked: bool,
) -> list[Job]:
    """Every job of the workflow with its state (see the module docstring for the rules).

    ``summary`` may be empty (the summary could not be computed): then only the jobs of the
    latest run and the incomplete markers are known.
    """
    incomplete = set(incomplete)
    active = locked and (run is None or not run.ended)
    jobs: list[Job] = []
    covered: set[str] = set()
    if run is not None:
        for jobid, lj in sorted(run.jobs.items()):
            if not lj.outputs:  # the target rule ("all") has no outputs
                continue
            if jobid in run.failed:
                state, detail = "failed", f"error logged in {run.name}"
            elif jobid in run.finished:
                state, detail = "done", "finished in the latest run"
            elif active:
                state, detail = "running", f"started {lj.started}".strip()
            else:
                state, detail = "failed", "started but never finished (run ended or was killed)"
            jobs.append(Job(lj.rule, list(lj.outputs), state, detail, jobid, lj.wildcards))
            covered.update(lj.outputs)
        for jobid, lj in sorted(run.failed.items()):
            if jobid not in run.jobs and lj.outputs:
                jobs.append(Job(lj.rule, list(lj.outputs), "failed", "error logged", jobid, lj.wildcards))
                covered.update(lj.outputs)
    for group in _summary_jobs([r for r in summary if r.output not in covered]):
        jobs.append(_summary_job_state(group, incomplete, active))
        covered.update(r.output for r in group)
    # Incomplete outputs the summary does not know (no summary available).
    leftovers = sorted(incomplete - covered)
    for output in leftovers:
        state = "running" if active else "failed"
        detail = "marked incomplete" + ("" if active else " and no run holds the directory: interrupted")
        jobs.append(Job("?", [output], state, detail))
    return jobs


def _summary_jobs(rows: Sequence[SummaryRow]) -> list[list[SummaryRow]]:
    """Consecutive rows of one rule (and, for existing files, one log) form one job."""
    groups: list[list[SummaryRow]] = []
    for row in rows:
        if groups and groups[-1][-1].rule == row.rule and groups[-1][-1].log == row.log:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def _summary_job_state(group: Sequence[SummaryRow], incomplete: set[str], active: bool) -> Job:
    outputs = [r.output for r in group]
    rule = group[0].rule
    if any(o in incomplete for o in outputs):
        if active:
            return Job(rule, outputs, "running", "outputs marked incomplete by the running workflow")
        return Job(rule, outputs, "failed", "outputs marked incomplete, no run holds the directory: interrupted")
    if all(r.exists and r.plan == "no update" for r in group):
        return Job(rule, outputs, "done", group[0].date)
    reasons = sorted({r.status for r in group if r.status != "ok"}) or ["update pending"]
    return Job(rule, outputs, "pending", ", ".join(reasons))


def count_states(jobs: Iterable[Job]) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for job in jobs:
        counts[job.state] = counts.get(job.state, 0) + 1
    return counts


# --------------------------------------------------------------------------------------------
# Finished variants (pure, given the files)
# --------------------------------------------------------------------------------------------


def variant_rows(results: Iterable[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Key numbers and answers of each bench result: ``(path, parsed JSON)`` pairs in, rows out."""
    rows = []
    for path, res in results:
        speed = res.get("speed") or {}
        quality = res.get("quality") or {}
        decode = speed.get("decode_tps") if isinstance(speed.get("decode_tps"), Mapping) else {}
        answers = [
            {
                "id": str(a.get("id")),
                "prompt": str(a.get("prompt", "")),
                "expected": str(a.get("expected", "")),
                "answer": str(a.get("answer", "")),
                "correct": bool(a.get("correct")),
            }
            for a in res.get("answers") or []
            if isinstance(a, Mapping)
        ]
        rows.append(
            {
                "path": path,
                "model": res.get("model"),
                "ft": res.get("ft"),
                "variant": res.get("variant"),
                "status": res.get("status"),
                "reason": res.get("reason"),
                "decode_tps": decode.get("median"),
                "kl_mean": quality.get("kl_mean"),
                "accuracy": quality.get("accuracy"),
                # from the fine-tune's similarity.json, once all its variants are measured
                "similarity_mean": quality.get("similarity_mean"),
                "answers": answers,
            }
        )
    rows.sort(key=lambda r: (str(r["model"]), r["ft"] != "base", str(r["ft"]), str(r["variant"])))
    return rows


def read_results(workdir: Path) -> list[tuple[str, Mapping[str, Any]]]:
    out = []
    for path in sorted((workdir / "results").glob("**/bench/*.json")):
        if path.name.startswith("."):
            continue
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # written atomically, so this is a file being replaced right now
        if isinstance(doc, Mapping):
            out.append((str(path.relative_to(workdir)), doc))
    try:
        merge_tables([doc for _, doc in out], read_tables(table_paths(workdir / "results")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        pass  # a table of another shape (or removed meanwhile): the page shows no similarity, not an error
    return out


# --------------------------------------------------------------------------------------------
# Snapshot: everything the page shows
# --------------------------------------------------------------------------------------------


def build_snapshot(
    workdir: Path,
    summary: Sequence[SummaryRow],
    summary_note: str,
    run: RunLog | None,
    incomplete: set[str],
    locked: bool,
) -> dict[str, Any]:
    jobs = job_states(summary, run, incomplete, locked)
    order = {s: i for i, s in enumerate(STATES)}
    jobs_sorted = sorted(enumerate(jobs), key=lambda ij: (order.get(ij[1].state, 9), ij[0]))
    if run is None:
        run_state = "no run logged yet"
    elif locked and not run.ended:
        run_state = "running"
    elif not run.ended:
        run_state = "stopped (killed or interrupted)"
    else:
        run_state = run.outcome
    return {
        "generated_at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "workdir": str(workdir),
        "run": {
            "state": run_state,
            "log": None if run is None else run.name,
            "progress": None if run is None or run.progress is None else list(run.progress),
            "locked": locked,
            "errors": [] if run is None else run.error_lines[-20:],
        },
        "summary_note": summary_note,
        "counts": count_states(jobs),
        "jobs": [asdict(j) for _, j in jobs_sorted],
        "variants": variant_rows(read_results(workdir)),
    }


class Monitor:
    """Keeps a fresh snapshot of one working directory (cheap sources each poll, summary on change)."""

    def __init__(
        self,
        workdir: Path,
        snakefile: Path | None = None,
        configfiles: Sequence[Path] = (),
        summary_every: float = 300.0,
        run_summary: bool = True,
    ) -> None:
        self.workdir = workdir.resolve()
        self.snakefile = snakefile
        self.configfiles = list(configfiles)
        self.summary_every = summary_every
        self.run_summary = run_summary
        self._summary: list[SummaryRow] = []
        self._summary_note = "not computed yet"
        self._summary_key: tuple[Any, ...] | None = None
        self._summary_time = 0.0
        self._retry_at = 0.0
        self._failed_key: tuple[Any, ...] | None = None
        self._lock = threading.Lock()
        self._snapshot: dict[str, Any] | None = None

    # -- the sources ---------------------------------------------------------------------------
    def _run_log(self) -> RunLog | None:
        found = latest_run_log(self.workdir / ".snakemake" / "log")
        return None if found is None else parse_run_log(found[1], found[0])

    def _locked(self) -> bool:
        locks = self.workdir / ".snakemake" / "locks"
        return locks.is_dir() and any(locks.iterdir())

    def _summary_command(self, run: RunLog | None) -> list[str]:
        snakefile = self.snakefile
        if snakefile is None and run is not None and run.snakefile:
            snakefile = Path(run.snakefile)
        if snakefile is None:
            snakefile = self.workdir / "Snakefile" if (self.workdir / "Snakefile").exists() else REPO / "Snakefile"
        configfiles = self.configfiles or ([Path(c) for c in run.configfiles] if run is not None else [])
        cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(self.workdir)]
        cmd += ["--summary", "--dry-run", "--cores", "1"]
        if configfiles:
            cmd += ["--configfile", *map(str, configfiles)]
        # Niced, so a benchmark running alongside keeps the CPU.
        return (["nice", "-n", "15"] if shutil.which("nice") else []) + cmd

    def _refresh_summary(self, run: RunLog | None) -> None:
        key = (None, 0, 0) if run is None else (run.name, len(run.jobs), len(run.finished) + len(run.failed))
        now = time.monotonic()
        stale = now - self._summary_time > self.summary_every
        if not self.run_summary or (key == self._summary_key and not stale):
            return
        if key == self._failed_key and now < self._retry_at:
            return  # failed on this very state moments ago: back off (a new job or log retries at once)
        cmd = self._summary_command(run)
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=self.workdir, capture_output=True, text=True, timeout=180)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self._summary_note = f"snakemake --summary failed: {exc}"
            self._failed_key, self._retry_at = key, time.monotonic() + SUMMARY_RETRY_S
            return
        if proc.returncode != 0:
            tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
            self._summary_note = f"snakemake --summary failed (exit {proc.returncode}): {tail[-300:]}"
            log.warning("%s", self._summary_note)
            # Keep the last good summary; try again soon (the run's log may not name its config yet).
            self._failed_key, self._retry_at = key, time.monotonic() + SUMMARY_RETRY_S
            return
        self._summary = parse_summary(proc.stdout)
        self._summary_note = (
            f"snakemake --summary at {dt.datetime.now().strftime('%H:%M:%S')} "
            f"({time.monotonic() - t0:.1f} s, {len(self._summary)} outputs)"
        )
        self._summary_key, self._summary_time = key, time.monotonic()

    def refresh(self) -> dict[str, Any]:
        with self._lock:
            run = self._run_log()
            self._refresh_summary(run)
            # Markers and lock are read after the summary, so they are at least as new as it.
            snapshot = build_snapshot(
                self.workdir,
                self._summary,
                self._summary_note,
                run,
                incomplete_outputs(self.workdir / ".snakemake"),
                self._locked(),
            )
            self._snapshot = snapshot
            return snapshot

    def latest(self) -> dict[str, Any] | None:
        return self._snapshot


# --------------------------------------------------------------------------------------------
# The page and the server
# --------------------------------------------------------------------------------------------


def render_page(snapshot: Mapping[str, Any] | None, refresh_s: int) -> str:
    from quantflow.report import _jinja_env

    return _jinja_env().get_template("live.html.j2").render(snap=snapshot, refresh_s=refresh_s)


class _Handler(http.server.BaseHTTPRequestHandler):
    monitor: Monitor
    refresh_s: int

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        snapshot = self.monitor.latest()
        if path in ("/", "/index.html"):
            self._send(200, "text/html; charset=utf-8", render_page(snapshot, self.refresh_s).encode("utf-8"))
        elif path == "/status.json":
            body = json.dumps(snapshot if snapshot is not None else {"state": "starting"}, indent=1)
            self._send(200, "application/json", body.encode("utf-8"))
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s - %s", self.address_string(), format % args)


class LiveServer:
    """The HTTP server (127.0.0.1 only) plus the thread that refreshes the monitor's snapshot."""

    def __init__(self, monitor: Monitor, port: int = 8765, interval: float = 5.0) -> None:
        handler = type("Handler", (_Handler,), {"monitor": monitor, "refresh_s": max(1, round(interval))})
        self.httpd = http.server.ThreadingHTTPServer((HOST, port), handler)
        self.httpd.daemon_threads = True
        self.monitor = monitor
        self.interval = interval
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.monitor.refresh()
            except Exception:  # a broken poll must not kill the view; the next one may work
                log.exception("refreshing the live view failed")
            self._stop.wait(self.interval)

    def start(self) -> LiveServer:
        for target in (self._poll, self.httpd.serve_forever):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=10)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quantflow.live",
        description="Serve a self-refreshing page (127.0.0.1 only) with the state of a quantflow workflow.",
    )
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--workdir", type=Path, default=Path("."), help="the workflow's working directory")
    parser.add_argument("--snakefile", type=Path, help="default: the one the latest run used, else ./Snakefile")
    parser.add_argument(
        "--configfile", type=Path, action="append", default=[], help="default: those the latest run used"
    )
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between polls and page refreshes")
    parser.add_argument(
        "--summary-every",
        type=float,
        default=300.0,
        help="rerun snakemake --summary at least this often (seconds); it also reruns whenever a job "
        "starts, finishes or fails",
    )
    parser.add_argument("--once", action="store_true", help="print one JSON snapshot and exit (no server)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not args.workdir.is_dir():
        print(f"quantflow.live: {args.workdir}: not a directory", file=sys.stderr)
        return 2
    monitor = Monitor(args.workdir, args.snakefile, args.configfile, args.summary_every)
    if args.once:
        print(json.dumps(monitor.refresh(), indent=1))
        return 0
    try:
        server = LiveServer(monitor, args.port, args.interval).start()
    except OSError as exc:
        print(f"quantflow.live: cannot listen on {HOST}:{args.port}: {exc}", file=sys.stderr)
        return 2
    print(f"quantflow live view of {monitor.workdir} on {server.url} (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
