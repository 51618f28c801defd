"""``tritune report``: the page is checked in real headless Chromium (Debian's ``chromium``; .ci/run
installs it): it renders, its scripts raise nothing and the console stays silent (a blocked fetch
would log a Content-Security-Policy violation there), and it draws as many front points as the front
has. The checker itself is shown to catch a broken page."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tritune.cli.main import main
from tritune.search.export import export_run, load_run, read_manifest
from tritune.search.html_report import StageSummary, search_stage, write_report

from .test_export import make_tiny_run

pytestmark = pytest.mark.timeout(600)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]


def chromium(page: Path, tmp: Path, *extra: str) -> tuple[str, list[str]]:
    """(what ``--dump-dom`` prints after the page's scripts ran, the console lines Chromium logged)."""
    if CHROMIUM is None:
        pytest.fail("headless Chromium is needed: apt-get install -y chromium (.ci/run installs it)")
    profile = tmp / f"chromium-{len(list(tmp.glob('chromium-*')))}"
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


@pytest.fixture(scope="module")
def run_with_export(tmp_path_factory) -> Path:
    run = make_tiny_run(tmp_path_factory.mktemp("report-run"))
    export_run(run, select="knee")
    return run


def test_report_renders_in_chromium(run_with_export, tmp_path):
    run = load_run(run_with_export)
    assert main(["report", str(run_with_export)]) == 0
    page = run_with_export / "report.html"
    text = page.read_text()
    # self-contained: nothing to fetch (the SVG namespace is a name, not a request)
    assert not re.search(r"\b(src|srcset)\s*=", text) and "<link" not in text and "url(" not in text
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', text))
    dom, console = chromium(page, tmp_path, "--dump-dom")
    assert console == [], console
    assert 'data-ready="1"' in dom and 'data-js-errors="0"' in dom
    points = re.findall(r'<g class="front-point[^"]*"', dom)
    assert len(points) == len(run.front) > 0
    assert re.search(r'id="front-rendered">(\d+)<', dom).group(1) == str(len(run.front))
    assert sum(" knee" in p for p in points) == 1
    knee_id = run.knee.candidate.id
    assert re.search(rf'<g class="front-point knee exported" data-candidate="{knee_id}"', dom)
    assert f'id="model-{knee_id}-ort-cpu"' in dom and f'href="#model-{knee_id}-ort-cpu"' in dom
    rows = re.findall(r'<g class="layer-row">', dom)
    manifest = read_manifest(run_with_export / "export" / knee_id / "manifest.json")
    assert len(rows) == sum("weights" in L for L in manifest["layers"]) > 0
    assert all(f"candidate {r.candidate.id} " in dom for r in run.front)  # hover titles name every candidate
    shot = tmp_path / "report.png"
    chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1100,1600")
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1100, 1600)
        colours = im.convert("RGB").getcolors(1 << 20)
        assert colours is not None and len(colours) > 20  # drawn, not a blank page


def test_the_checker_catches_a_broken_page(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><head><meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
                    "script-src 'unsafe-inline'\"></head><body><img src='http://example.invalid/x.png'>"
                    "<script>console.error('boom'); notDefined();</script></body></html>")
    _, console = chromium(page, tmp_path, "--dump-dom")
    joined = "\n".join(console)
    assert "boom" in joined and "notDefined" in joined and "Content Security Policy" in joined


def test_stage_summaries_are_a_list(run_with_export, tmp_path):
    run = load_run(run_with_export)
    search = search_stage(run)
    assert search.trials == len(run.records) and search.front_size == len(run.front) and "accuracy" in search.best
    finetune = StageSummary("fine-tune <top-3>", trials=3, complete=3, infeasible=0, failed=0, evaluations=3, front_size=2,
                            best={"accuracy": 99.0})
    path = write_report(run_with_export, out=tmp_path / "r.html", stages=[search, finetune])
    text = path.read_text()
    assert "<td>search</td>" in text and "fine-tune &lt;top-3&gt;" in text and "<top-3>" not in text
