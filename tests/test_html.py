"""`diffcheck run --html`: a self-contained page, checked as text and in a real headless browser (Chromium)."""

import json
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from diffcheck.cli import main

from .conftest import ROOT

CASES = '''
devices = ["cpu"]

[[case]]
name = "good_J"
expr = "3*(a + b*c)"
vars.a = { shape = [], value = 5.0 }
vars.b = { shape = [], value = 3.0 }
vars.c = { shape = [], value = 2.0 }

[[case]]
name = "bad_weight_grad"
expr = "sum((x @ w)**2)"
impl = "kern:f"
vars.x = { shape = [6, 10] }
vars.w = { shape = [10, 12] }

[[case]]
name = "bad_mul"
expr = "x*y"
impl = "kern:Mul"
vars.x = { shape = [], value = 2.0 }
vars.y = { shape = [], value = 5.0 }

[[case]]
name = "<b>name</b>"
expr = "x*2"
vars.x = { shape = [] }
'''

KERNEL = '''
import torch

class F(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return ((x @ w) ** 2).sum()

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        r = 2 * (x @ w) * g
        gw = x.T @ r
        gw[2:5, 3:7] *= 1.001  # a block of the weight gradient off by 0.1%
        return r @ w.T, gw

def f(x, w):
    return F.apply(x, w)


class Mul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return x * y

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        return g * y, g * y  # the gradient of y should be g * x
'''


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("html")
    (d / "cases.toml").write_text(CASES)
    (d / "kern.py").write_text(KERNEL)
    page = d / "out" / "report.html"
    result = CliRunner().invoke(main, ["run", str(d / "cases.toml"), str(ROOT / "cases/train/seeds.toml"), "-k",
                                       "good_J or bad_weight or bad_mul or name or T5", "--device", "cpu",
                                       "--html", str(page)])
    assert result.exit_code == 1, result.output
    return page


def test_page_is_self_contained_and_shows_the_failure(report):
    text = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing fetched
    assert "<link" not in text and not re.search(r"<script[^>]+src", text)
    assert "bad_weight_grad" in text and "the impl&#x27;s backward is wrong" in text
    assert 'class="heatmap"' in text and "data:image/png;base64," in text
    assert "diagnosis: " in text and "<table class=worst>" in text
    assert "&lt;b&gt;name&lt;/b&gt;" in text and "<b>name</b>" not in text  # case text is escaped
    assert "training plot" in text  # T5's loss curves and fit, inlined
    assert "computation graph (diffcheck explain)" in text and "<svg" in text
    assert text.count("<svg") == 3  # good_J, bad_mul and the scalar case; the 6x10 @ 10x12 case is not small
    assert "departs from the chain rule here:" in text  # bad_mul's impl, marked at y
    assert (report.parent / "report_plots" / "T5_nn_linear_sgd_100_steps.png").exists() or \
        list((report.parent / "report_plots").glob("T5*.png"))


def _browser():
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


PROBE_HEAD = ("<script>window.__errors=[];window.addEventListener('error',function(e){"
              "window.__errors.push(String(e.message))});</script>")
PROBE_TAIL = """<script>window.addEventListener('load', function () {
  var b = document.body, out = {errors: window.__errors, ready: b.getAttribute('data-ready')};
  var img = document.querySelector('img.heatmap');
  out.heatmap = img ? [img.complete, img.naturalWidth, img.getBoundingClientRect().height] : null;
  var fail = Array.prototype.filter.call(document.querySelectorAll('tbody.case-block'),
    function (t) { return t.getAttribute('data-status') === 'fail'; })[0];
  out.failVisible = !!fail && fail.getBoundingClientRect().height > 0
    && fail.textContent.indexOf('bad_weight_grad') >= 0;
  var pass = document.querySelector('.filters input[value=pass]');
  pass.checked = false; pass.dispatchEvent(new Event('change'));
  var passRow = document.querySelector('tbody.case-block[data-status=pass]');
  out.passHidden = passRow.getBoundingClientRect().height === 0;
  out.failStillVisible = fail.getBoundingClientRect().height > 0;
  b.setAttribute('data-probe', JSON.stringify(out));
});</script>"""


def _load_in_browser(browser, page, tmp_path):
    probe = tmp_path / "probe.html"
    text = page.read_text()
    probe.write_text(text.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_TAIL + "</body>"))
    run = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                          "--v=0", "--virtual-time-budget=5000", "--window-size=1200,900", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120)
    match = re.search(r'data-probe="([^"]*)"', run.stdout)
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    probe_result = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&")) if match else None
    return probe_result, console, run


@pytest.mark.skipif(_browser() is None, reason="no headless browser installed (apt-get install chromium; "
                                               ".ci/run installs it where it can)")
def test_page_in_a_headless_browser(report, tmp_path):
    result, console, run = _load_in_browser(_browser(), report, tmp_path)
    assert result is not None, run.stderr[-2000:]
    assert result["errors"] == [] and console == [], (result, console)
    assert result["ready"] == "1"  # the page's own script ran to its end
    complete, width, height = result["heatmap"]
    assert complete and width > 100 and height > 50  # the heatmap decoded and is laid out
    assert result["failVisible"]
    assert result["passHidden"] and result["failStillVisible"]  # the status filter works


@pytest.mark.skipif(_browser() is None, reason="no headless browser installed")
def test_the_browser_probe_sees_a_script_error(tmp_path):
    """The probe itself can fail: a page whose script throws is reported."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><head></head><body><script>undefinedFunction();</script>"
                    "<table><tbody class=case-block data-status=fail><tr><td>bad_weight_grad</td></tr></tbody>"
                    "<tbody class=case-block data-status=pass><tr><td>x</td></tr></tbody></table>"
                    "<div class=filters><input type=checkbox value=pass checked></div></body></html>")
    result, console, _ = _load_in_browser(_browser(), page, tmp_path)
    assert result["errors"] and "undefinedFunction" in result["errors"][0]
    assert any("undefinedFunction" in line for line in console)
    assert result["ready"] is None and result["heatmap"] is None


def test_margin_map_locates_the_one_wrong_entry_of_a_100x100_weight_gradient(tmp_path):
    """What the heatmap draws: error / allowed per entry, in the JSON report too."""
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["run", str(ROOT / "benchmarks/bug_corpus/cases.toml"), "-k",
                                       "bug_one_entry_off_in_100x100_weight_grad", "--dtype", "float32",
                                       "--device", "cpu", "--json", str(out)])
    assert result.exit_code == 1, result.output
    (case,) = json.loads(out.read_text())["cases"]
    check = next(c for c in case["checks"] if c["kind"] == "grad" and c["var"] == "w" and c["status"] == "fail")
    mm = check["details"]["margin_map"]
    assert mm["shape"] == [100, 100] and mm["block"] == [1, 1]
    failing = [(i, j) for i, row in enumerate(mm["values"]) for j, v in enumerate(row) if v is None or v > 1]
    assert failing == [tuple(check["worst"][0]["index"])]
