"""The HTML report in a real browser: Debian's headless Chromium renders it, dumps the DOM, screenshots it.

Two reports: one from synthetic results (every kind of recommendation line, budgets that bind) and the
real one of a tiny workflow run (conftest.py's ``tiny_run``), checked for what a reader sees: the
verdict of every model / fine-tune in the first screen at 1400 x 900, no chart text over another
(bounding boxes of the SVG text elements, measured by the browser), no sideways scrolling of the page
at 1400 and at 800 px. Screenshots land in ``test-artifacts/`` (git-ignored) for a human look.
"""

from __future__ import annotations

import html
import json
import os
import re
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
    assert dom.count("<svg") >= 2  # a Pareto chart per model / fine-tune
    assert 'class="ans wrong flip-lost"' in dom or 'class="ans right flip-gained"' in dom
    assert 'class="num g-memory miss"' in dom
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


# ------------------------------------------------------------------------ the real tiny run's report

# Injected into a copy of the page only (the report itself runs no script): measures what the browser
# laid out and writes it into the DOM, which --dump-dom then returns.
LAYOUT_PROBE = """<script>
addEventListener("load", () => {
  const out = {width: innerWidth, scroll: document.documentElement.scrollWidth, verdicts: [], clipped: [], texts: 0,
               overlaps: []};
  for (const g of document.querySelectorAll(".verdict-group")) {
    const r = g.getBoundingClientRect();
    out.verdicts.push([r.top + scrollY, r.bottom + scrollY]);
    const box = g.querySelector(".scroll");  // a comparison wider than its column scrolls: its last columns hide
    if (box && box.scrollWidth > box.clientWidth + 1) out.clipped.push([box.clientWidth, box.scrollWidth]);
  }
  document.querySelectorAll("svg.chart").forEach((svg, k) => {
    const boxes = [...svg.querySelectorAll('g[id*="text_"]')].map((g) => [g.id, g.getBoundingClientRect()])
      .filter(([, r]) => r.width > 0 && r.height > 0);
    out.texts += boxes.length;
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
      const [a, b] = [boxes[i][1], boxes[j][1]];
      const dx = Math.min(a.right, b.right) - Math.max(a.left, b.left);
      const dy = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (dx > 0.5 && dy > 0.5) out.overlaps.push([k, boxes[i][0], boxes[j][0]]);
    }
  });
  const pre = document.createElement("pre");
  pre.id = "qf-layout";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@pytest.mark.parametrize("width", [1400, 800])
def test_real_report_reads_first_and_lays_out(chromium: str, tiny_run: Path, tmp_path: Path, width: int) -> None:
    page = (tiny_run / "reports" / "index.html").read_text(encoding="utf-8")
    recs = json.loads((tiny_run / "reports" / "results.json").read_text())["recommendations"]
    groups = {(r["model"], r["ft"]) for r in recs}
    probe = tmp_path / "index.html"
    probe.write_text(page.replace("</body>", LAYOUT_PROBE + "</body>"), encoding="utf-8")
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width},900"]
    proc = _run(chromium, *flags, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r'<pre id="qf-layout">(.*?)</pre>', proc.stdout, re.S)
    assert found, "the layout probe did not run"
    layout = json.loads(html.unescape(found.group(1)))
    assert layout["scroll"] <= layout["width"], layout  # the page itself never scrolls sideways
    assert len(layout["verdicts"]) == len(groups)
    if width == 1400:  # every verdict with its whole comparison table in the first screen
        assert all(bottom <= 900 for _, bottom in layout["verdicts"]), layout["verdicts"]
        assert not layout["clipped"], layout["clipped"]
    else:
        assert layout["verdicts"][0][0] < 900
    assert layout["texts"] > 20 and not layout["overlaps"], layout["overlaps"]

    ARTIFACTS.mkdir(exist_ok=True)
    for name, height in ((f"tiny-report-{width}-first-screen.png", 900), (f"tiny-report-{width}.png", 4000)):
        png = ARTIFACTS / name
        png.unlink(missing_ok=True)
        shot = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'shot'}", "--hide-scrollbars"]
        proc = _run(chromium, *shot, f"--screenshot={png}", f"--window-size={width},{height}",
                    (tiny_run / "reports" / "index.html").as_uri())
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert _png_size(png.read_bytes()) == (width, height)
