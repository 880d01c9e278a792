"""The HTML report in a real browser: Debian's headless Chromium renders it, dumps the DOM, screenshots it.

The report is rendered from synthetic results through ``quantflow.report.render`` (a real tiny
workflow run takes ~3 minutes on 2 cores; the rendering path is the same). The screenshot lands in
``test-artifacts/report.png`` (git-ignored) for a human look.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from factories import make_result

from quantflow import report

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # The report must not need the network: any attempt to resolve a host fails.
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


def _chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing (root only), else the test is skipped."""
    found = _chromium_binary()
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and apt-get is not available to install it")
    if os.geteuid() != 0:
        pytest.skip("chromium is not installed and installing it with apt-get needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        except subprocess.TimeoutExpired:
            pytest.skip(f"{' '.join(cmd)} timed out")
        if proc.returncode != 0:
            pytest.skip(f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    found = _chromium_binary()
    if not found:
        pytest.skip("apt-get installed chromium but no chromium binary is on PATH")
    return found


# ------------------------------------------------------------------------------- the report

# (variant, bits/weight, size MiB, decode tok/s, KL mean, accuracy) per fine-tune.
SPECS = {
    "base": [
        ("gguf-f16", 16.0, 28.0, 800.0, 0.0, 0.10),
        ("gguf-Q8_0", 8.5, 15.0, 1200.0, 6e-5, 0.10),
        ("gguf-Q4_K_M", 4.9, 8.6, 1530.0, 0.012, 0.09),
        ("gguf-Q3_K_M", 3.9, 7.0, 1480.0, 0.04, 0.07),
    ],
    "lora": [
        ("gguf-f16", 16.0, 28.0, 790.0, 0.0, 0.19),
        ("gguf-Q8_0", 8.5, 15.0, 1190.0, 7e-5, 0.19),
        ("gguf-Q4_K_M", 4.9, 8.6, 1510.0, 0.014, 0.17),
        ("gguf-Q3_K_M", 3.9, 7.0, 1560.0, 0.06, 0.14),
    ],
}
N_ANSWERS = 12


def _result(ft: str, variant: str, bpw: float, size: float, tps: float, kl: float, acc: float) -> dict[str, Any]:
    right = round(acc * N_ANSWERS * 5)  # a few right answers per variant, differing by variant
    answers = [(i * 7 + len(variant)) % N_ANSWERS < right for i in range(N_ANSWERS)]
    timing = dict(latency_s=12.0 / tps, ttft_s=0.004, prompt_tps=tps * 8, spread=0.1, cv=0.05, n=7, ci=0.03)
    timing.update(n_test=N_ANSWERS, answers=answers)
    return make_result(ft, variant, None, bpw, size, tps, kl, acc, model="demo", **timing)


def synthetic_results() -> list[dict[str, Any]]:
    results = [_result(ft, *spec) for ft, specs in SPECS.items() for spec in specs]
    results.append(make_result("lora", "gguf-Q2_K", model="demo", status="not_run", reason="upstream quantize failed"))
    return results


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    training = [{"model": "demo", "ft": "lora", "method": "lora", "train_loss": 1.2, "eval_loss": 1.3, "steps": 150}]
    run = {"config_hash": "0123abcd", "versions": {"snakemake": "9.27.1"}}
    # Peak RSS is size + 40 MB: Q4_K_M 48.6, Q3_K_M 47. A 48 MB budget binds on base (Q3_K_M instead
    # of Q4_K_M) and leaves nothing for lora (Q3_K_M is over the KL floor there): both paths show.
    # VRAM is n/a on a CPU run.
    paths = report.render(synthetic_results(), training, run, out, 0.05, {"ram_budget_mb": 48, "vram_budget_mb": 1000})
    return paths["index.html"]


def _run(chromium: str, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, *args], capture_output=True, text=True, timeout=timeout)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_renders_in_chromium(chromium: str, report_html: Path, tmp_path: Path) -> None:
    url = report_html.as_uri()
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile-dom'}", "--enable-logging=stderr", "--v=0"]
    proc = _run(chromium, *flags, "--dump-dom", url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dom = proc.stdout
    # The rendered DOM, not just the file: the browser parsed it into these elements.
    assert "<h1>quantflow benchmark report</h1>" in dom
    assert "Best overall (recommended)" in dom
    assert "bound by the RAM budget" in dom
    assert "no variant meets the KL floor 0.05 and the RAM budget 48 MB; closest: gguf-Q4_K_M" in dom
    assert "n/a (not measured in this run)" in dom
    assert dom.count("<svg") >= 2  # the two Pareto charts
    assert 'class="ans wrong flip-lost"' in dom or 'class="ans right flip-gained"' in dom
    assert 'class="num miss"' in dom
    # No console errors or failed loads from the page (it has no scripts and no remote references).
    problems = [
        line
        for line in proc.stderr.splitlines()
        if ("Uncaught" in line or "ERROR:CONSOLE" in line or ":CONSOLE(" in line) or (url in line and "ERROR" in line)
    ]
    assert not problems, "\n".join(problems)


def test_report_screenshot(chromium: str, report_html: Path, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    png = ARTIFACTS / "report.png"
    png.unlink(missing_ok=True)
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile-shot'}", "--hide-scrollbars"]
    proc = _run(chromium, *flags, f"--screenshot={png}", "--window-size=1400,3000", report_html.as_uri())
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = png.read_bytes()
    assert _png_size(data) == (1400, 3000)
    # A blank 1400x3000 PNG compresses to a few KB; charts, tables and text take far more.
    assert len(data) > 100_000, len(data)
