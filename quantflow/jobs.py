"""Jobs of a workflow and their states (done, running, pending, failed), from Snakemake's own records.

Nothing is written by the jobs for this: the sources are

- ``snakemake --summary --dry-run``: every output of the DAG with its rule, status (ok, missing,
  params changed, ...) and plan (no update / update pending); :func:`parse_summary` reads it;
- ``.snakemake/incomplete/``: Snakemake marks each output of a job that has started and not
  finished (the file name is the output path, URL-safe base64, split into folders when long);
- ``.snakemake/log/*.snakemake.log``: the newest log of an executing run (not of a dry run, a
  summary or ``--report``) gives the jobs started ("rule X:" blocks with ``jobid`` and
  ``output``), finished ("Finished jobid: N") and failed ("Error in rule X:" blocks) in this run,
  plus the Snakefile and config files the run used;
- ``.snakemake/locks/``: not empty while a Snakemake process holds the directory.

A job (the outputs one rule invocation writes) is

- **failed** when the latest run logged an error for it, or it was started and never finished
  by a run that has ended (killed or interrupted; its outputs are left marked incomplete);
- **running** when the latest run started it, has not finished it, and is still going;
- **done** when the latest run finished it, or every output exists and the DAG would not update it;
- **pending** otherwise: missing outputs, or existing ones the DAG would redo.

Outputs the latest run did not start are grouped into jobs from the summary, whose rows list one
job's outputs consecutively; two adjacent jobs of the same rule that are both still to run may show
as one row. Everything here is a pure function of text and file listings.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STATES = ("running", "failed", "pending", "done")

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
