"""Live view of a quantflow workflow: which jobs are done, running, pending or failed.

    python -m quantflow.live --port 8765 [--workdir .] [--configfile FILE] [--snakefile FILE]

Serves a local page (http://127.0.0.1:PORT/, bound to 127.0.0.1 only; ``/status.json`` has the same
data) that refreshes itself. The job states come from Snakemake's own records (:mod:`quantflow.jobs`);
each finished variant's decode tok/s, KL, accuracy and answers from ``results/**/bench/*.json`` (read
by :mod:`quantflow.results`), with the answer similarity once a fine-tune's variants are all measured.

``snakemake --summary --dry-run`` is the only expensive source (a DAG build, a few CPU seconds), so
it is rerun only when a job has started, finished or failed since the last time (or every
``--summary-every`` seconds): a benchmark running alongside is disturbed as little as possible.
Dry-run, so it neither takes the working directory's lock nor writes a log. Only :class:`Monitor`
and :class:`LiveServer` touch processes and sockets.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.server
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from quantflow import templating
from quantflow.jobs import (
    STATES,
    RunLog,
    SummaryRow,
    count_states,
    incomplete_outputs,
    job_states,
    latest_run_log,
    parse_run_log,
    parse_summary,
)
from quantflow.results import read_tree

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
#: Seconds before a failed ``snakemake --summary`` is tried again.
SUMMARY_RETRY_S = 15.0
HOST = "127.0.0.1"

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
    """``(path relative to workdir, result)`` of every valid result under ``workdir/results``, similarity merged.

    A file that does not validate is left out (logged): a run in progress may still hold one from an
    older code version, and the page must keep showing the rest.
    """
    root = workdir / "results"
    if not root.is_dir():
        return []
    return [(str(path.relative_to(workdir)), doc) for path, doc in read_tree(root, skip_invalid=True)]

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
    return templating.render("live.html.j2", {}, snap=snapshot, refresh_s=refresh_s)


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

