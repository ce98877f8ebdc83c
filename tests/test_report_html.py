"""report.html: one self-contained page rendered from report.json, opened in a real headless browser."""

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeprune.report import render_html

from conftest import DIGITS, build_report

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no headless browser here (apt-get install chromium; "
                                                           ".ci/run installs it)")
GREEN, RED = (0x1a, 0x7f, 0x37), (0xcf, 0x22, 0x2e)  # the PASSED and FAILED badges


def open_in_browser(page: Path, shot: Path, height: int = 2400) -> list[str]:
    """Returns the console messages of the page after a headless browser rendered it to ``shot``.

    The page holds no script, so any console line at all (an error, a failed load) is a defect;
    name resolution is switched off, so nothing outside the file could be fetched either.
    """
    proc = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         f"--user-data-dir={shot.parent / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--enable-logging=stderr", "--v=0", f"--window-size=1100,{height}", f"--screenshot={shot}",
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def pixels(shot: Path) -> np.ndarray:
    return np.asarray(Image.open(shot).convert("RGB")).astype(int)


def has_colour(image: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool((np.abs(image - np.array(rgb)).sum(axis=2) < 12).sum() > 200)


def test_every_build_writes_a_self_contained_page_of_its_report(digits_build):
    proc, out, report = digits_build
    assert proc.returncode == 0, proc.stderr
    page = (out / "report.html").read_text()
    assert page == render_html(json.loads((out / "report.json").read_text()))  # a rendering of the report
    # nothing to fetch: no script, no external stylesheet, font or image
    assert "<script" not in page and not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    assert "PASSED" in page and page.count("<svg") >= 3
    for budget in report["budgets"]:
        assert budget["name"] in page
    assert all(html.escape(reason) in page for reason in report["strategy"]["reasons"])


def test_the_layer_profile_is_recorded_in_the_report(digits_build):
    _, _, report = digits_build
    layers = report["layers"]
    # the host profile: this machine stands in, and the report says so
    assert layers["source"] == "measured" and layers["on_target"] is True
    assert layers["machine"] == report["latency"]["host"] and layers["runtime"].startswith("onnxruntime")
    rows = {r["layer"]: r for r in layers["rows"]}
    convs = [r for r in layers["rows"] if r["ops"].startswith("Conv")]
    # ONNX Runtime's fused nodes are mapped back to the estimator's kernels: 7 conv+relu layers, both figures each
    assert len(convs) == 7 and all(r["built_ms"] > 0 and r["built_estimated_ms"] > 0 for r in convs)
    assert abs(sum(r["built_ms"] or 0 for r in rows.values()) - layers["built_ms"]) < 1e-3 * len(rows)
    assert abs(sum(r["built_estimated_ms"] or 0 for r in rows.values()) - layers["built_estimated_ms"]) < 1e-3
    assert layers["built_estimated_ms"] == pytest.approx(report["latency"]["estimated_ms"], rel=1e-3)
    # a dense fp32 build is its own baseline: one profile, both columns
    assert all(r["built_ms"] == r["dense_ms"] for r in rows.values())
    # the estimate (no timing: the model's own arithmetic) puts the time in the convolutions
    assert sum(r["built_estimated_ms"] for r in convs) > 0.5 * layers["built_estimated_ms"]
    lat = report["latency"]
    assert lat["min_ms"] <= lat["p25_ms"] <= lat["median_ms"] <= lat["p75_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
    assert lat["baseline"]["median_ms"] == lat["baseline_median_ms"] and lat["baseline"]["runs"] == lat["runs"]


def test_a_structured_build_for_another_cpu_shows_its_widths_and_a_labelled_host_profile(tmp_path):
    from edgeprune.target import options_from

    out = tmp_path / "structured"
    report = build_report(options_from(str(DIGITS), {"profile": "x86-avx2", "strategy": "structured",
                                                     "sparsity": 0.5, "quantize": "none", "output": out}))
    groups = report["strategy"]["details"]["groups"]
    page = (out / "report.html").read_text()
    assert "Widths before and after pruning" in page and "Channels kept per pruned group" in page
    for g in groups:  # every pruned group is a row of the widths chart, with both widths
        assert f"{g['layers'][0]}" in page and g["channels_after"] < g["channels"]
        assert f">{g['channels']}<" in page and f">{g['channels_after']}<" in page
    rows = report["layers"]["rows"]
    convs = [r for r in rows if r["ops"].startswith("Conv") and r["dense_estimated_ms"] > 0.1]
    # dense and built are profiled separately; the pruned convolutions are cheaper in the estimate
    assert convs and all(r["built_estimated_ms"] < 0.8 * r["dense_estimated_ms"] for r in convs)
    assert all(r["dense_ms"] > 0 and r["built_ms"] > 0 for r in convs)
    # this machine is not the profile's device: the profile is labelled a host profile, the estimate the device's
    layers = report["layers"]
    assert report["latency"]["source"] == "estimated" and layers["on_target"] is False
    assert layers["note"].startswith("host profile") and "x86-avx2" in layers["note"]
    assert "HOST PROFILE, not the device" in page and "Roofline estimate per fused kernel on profile x86-avx2" in page


def test_per_slice_drops_render_when_the_report_has_them(digits_build):
    _, _, report = digits_build
    assert "Per-slice drop" in render_html(report)  # the digits workload scores every digit
    plain = {**report, "accuracy": {k: v for k, v in report["accuracy"].items() if k not in ("slices", "worst_slice")}}
    assert "Per-slice drop" not in render_html(plain)  # absent: nothing rendered, nothing broken
    slices = [{"name": "digit 0", "baseline": 1.0, "value": 0.98, "drop": 0.02},
              {"name": "digit 8", "baseline": 0.99, "value": 0.9, "drop": 0.09}]
    page = render_html({**report, "accuracy": {**report["accuracy"], "slices": slices, "worst_slice": "digit 8"}})
    assert "Per-slice drop" in page and '<tr class="worst"><td>digit 8</td>' in page
    assert "Worst slice: digit 8" in page


@needs_browser
def test_the_page_renders_in_a_headless_browser_without_console_errors(digits_build, tmp_path):
    _, out, report = digits_build
    shot = tmp_path / "report.png"
    console = open_in_browser(out / "report.html", shot)
    assert console == []
    image = pixels(shot)
    assert image.shape[1] == 1100 and image.std() > 20  # not a blank page
    assert (image.sum(axis=2) < 600).mean() > 0.02  # text and charts, not a white sheet
    assert has_colour(image, GREEN) and not has_colour(image, RED)  # the PASSED badge, drawn
    # a failed build's page shows the red badge: the colour check is not a constant
    failed = tmp_path / "failed.html"
    failed.write_text(render_html({**report, "passed": False}))
    assert open_in_browser(failed, tmp_path / "failed.png", 600) == []
    assert has_colour(pixels(tmp_path / "failed.png"), RED)


@needs_browser
def test_the_console_check_catches_a_page_with_an_error(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><p>x</p><script>undefinedFunction();</script></body></html>")
    console = open_in_browser(page, tmp_path / "broken.png", 400)
    assert any("undefinedFunction" in line for line in console)
