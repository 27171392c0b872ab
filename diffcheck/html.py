"""``diffcheck run --html FILE``: one self-contained page per run, for CI artifacts.

Nothing is fetched: the styles and the one small script (the status filter) are inline, pictures are inline
base64 PNGs (matplotlib) or inline SVG. Read from the results model only: a case's status, message, checks and
artifacts; a check's status, kind, engine, var, dtype, device, margin, message, diagnosis, worst entries and
``details["margin_map"]`` (error / allowed over the entries of a failing result, from ``compare``). Every text
from a case file or a user's code is HTML-escaped.
"""

from __future__ import annotations

import base64
import io
from html import escape

import numpy as np

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.5em}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;
vertical-align:top}th{background:#f3f3f3}
.pass{color:#17702c}.fail,.error{color:#b00020;font-weight:bold}.skip,.warn{color:#8a6d00}
tr.case>td:first-child{font-weight:bold}
details{margin:.3em 0 .8em 1em}summary{cursor:pointer}
.filters label{margin-right:1em}.num{font-family:monospace;text-align:right}
.diagnosis{background:#fff3f3;border-left:4px solid #b00020;padding:3px 8px}
img{max-width:100%}
"""

SCRIPT = """
function applyFilter() {
  var shown = {};
  document.querySelectorAll('.filters input').forEach(function (box) { shown[box.value] = box.checked; });
  document.querySelectorAll('[data-status]').forEach(function (row) {
    row.style.display = shown[row.getAttribute('data-status')] ? '' : 'none';
  });
}
document.querySelectorAll('.filters input').forEach(function (box) { box.addEventListener('change', applyFilter); });
applyFilter();
document.body.setAttribute('data-ready', '1');
"""

STATUSES = ("fail", "error", "warn", "skip", "pass")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def heatmap(check) -> str | None:
    """An <img> of log10(error / allowed) over the entries, with the tolerance contour at 1; None without a map."""
    mm = check.details.get("margin_map") if isinstance(check.details, dict) else None
    if not mm or not mm.get("values"):
        return None
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    values = np.array([[np.inf if v is None else v for v in row] for row in mm["values"]], dtype=float)
    with np.errstate(divide="ignore"):
        logm = np.log10(np.where(values > 0, values, 1e-6))
    finite = logm[np.isfinite(logm)]
    top = max(1.0, float(finite.max()) if finite.size else 1.0)
    logm = np.where(np.isfinite(logm), logm, top)  # not finite: drawn as the worst
    rows, cols = logm.shape
    width = max(6.0, min(8.0, 2.5 + cols * 0.35)) if cols <= 16 else 7.5
    height = 2.6 if rows == 1 else (max(3.0, min(6.0, 1.6 + rows * 0.35)) if rows <= 16 else 5.5)
    fig = Figure(figsize=(width, height))
    ax = fig.add_subplot()
    image = ax.imshow(logm, cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=0.0, vmin=min(-6.0, float(logm.min())),
                                                                 vmax=top), aspect="auto", interpolation="nearest")
    if rows > 1 and cols > 1 and np.any(logm > 0) and np.any(logm <= 0):
        ax.contour(logm, levels=[0.0], colors="black", linewidths=1.0)
    failing = np.argwhere(logm > 0)
    if 0 < len(failing) <= 20:  # a few failing entries among many: ring them, or they are a pixel each
        ax.scatter(failing[:, 1], failing[:, 0], s=120, facecolors="none", edgecolors="black", linewidths=1.2)
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("log10(error / allowed)\n> 0 fails", fontsize=8)
    shape = mm["shape"]
    block = mm.get("block", [1, 1])
    note = f", max over {block[0]}x{block[1]} blocks" if block != [1, 1] else ""
    ax.set_title(f"{check.label}: which entries fail, by how much\n({check.bad} of {check.entries} outside{note})",
                 fontsize=9)
    ax.set_xlabel("column (last index)" if len(shape) > 1 else "entry")
    ax.set_ylabel("row" + (" (leading indices folded)" if len(shape) > 2 else "") if rows > 1 else "")
    if rows == 1:
        ax.set_yticks([])
    fig.tight_layout()
    return f'<img class="heatmap" alt="heatmap of error/allowed for {escape(check.label)}" src="{_png(fig)}">'


def _worst_table(check) -> str:
    head = "<tr><th>index</th><th>got</th><th>reference</th><th>finite diff</th><th>abs err</th><th>allowed</th>" \
           "<th>error / allowed</th></tr>"
    rows = []
    for e in check.worst:
        ratio = e.abs_err / e.allowed if e.allowed else float("inf")
        fd = "-" if e.fd is None else f"{e.fd:.7g}"
        rows.append(f"<tr><td>{escape(e.where)}</td><td class=num>{e.got:.7g}</td><td class=num>{e.ref:.7g}"
                    f"</td><td class=num>{fd}</td><td class=num>{e.abs_err:.3g}</td><td class=num>{e.allowed:.3g}"
                    f"</td><td class=num>{ratio:.3g}</td></tr>")
    return f"<table class=worst>{head}{''.join(rows)}</table>"


def _check_row(check) -> str:
    margin = "" if check.margin != check.margin or check.status == "skip" else f"{check.margin:.3g}"
    return (f'<tr data-status="{escape(check.status)}"><td class="{escape(check.status)}">{check.status.upper()}'
            f"</td><td>{escape(check.label)}</td><td>{escape(check.engine)} vs {escape(check.against)}</td>"
            f"<td class=num>{margin}</td><td>{escape(check.message)}</td></tr>")


def _failure(check) -> str:
    parts = [f"<h4>{escape(check.label)}: {escape(check.engine)} vs {escape(check.against)}</h4>"]
    if check.diagnosis:
        parts.append(f'<p class="diagnosis">diagnosis: {escape(check.diagnosis)}</p>')
    if check.tolerance:
        parts.append(f"<p>tolerance: {escape(check.tolerance)}</p>")
    img = heatmap(check)
    if img:
        parts.append(img)
    elif check.details.get("probe"):
        parts.append("<p>a directional probe: one number per direction, no entries to map</p>")
    if check.worst:
        parts.append(_worst_table(check))
    return "".join(parts)


def _artifact(path: str) -> str:
    """A training plot, inlined (the page must stand alone)."""
    try:
        with open(path, "rb") as fh:
            data = base64.b64encode(fh.read()).decode("ascii")
    except OSError as exc:
        return f"<p>plot {escape(path)} cannot be read: {escape(str(exc))}</p>"
    return f'<img class="plot" alt="training plot {escape(path)}" src="data:image/png;base64,{data}">'


def _case(result, graph_svg: str | None) -> str:
    status = result.status
    checks = "".join(_check_row(c) for c in result.checks)
    failed = [c for c in result.checks if c.status == "fail"]  # entry-by-entry results (heatmaps) first
    failures = "".join(_failure(c) for c in sorted(failed, key=lambda c: "margin_map" not in c.details))
    plots = "".join(_artifact(a) for a in result.artifacts if str(a).endswith(".png"))
    graph = f"<details><summary>computation graph (diffcheck explain)</summary>{graph_svg}</details>" \
        if graph_svg else ""
    open_ = " open" if status == "error" else ""
    body = (f"{failures}<details{open_}><summary>{len(result.checks)} checks</summary><table><tr><th>status</th>"
            f"<th>check</th><th>judged</th><th>margin</th><th>message</th></tr>{checks}</table></details>{plots}"
            f"{graph}")
    return (f'<tbody class="case-block" data-status="{escape(status)}"><tr class="case"><td class="{escape(status)}">'
            f"{status.upper()}</td><td>{escape(result.file)}::{escape(result.name)}</td><td>{escape(result.message)}"
            f"</td></tr><tr><td></td><td colspan=2>{body}</td></tr></tbody>")


def render(results, seconds: float, graphs: dict | None = None, environment: dict | None = None) -> str:
    """The page. ``graphs``: case name -> inline SVG of its explain graph (small cases)."""
    from .report import summary

    graphs = graphs or {}
    s = summary(results, seconds)
    counts = {"pass": s["passed"], "fail": s["failed"], "error": s["errors"], "skip": s["skipped"]}
    filters = "".join(f'<label><input type="checkbox" value="{st}" checked> {st} ({counts.get(st, "")})</label>'
                      .replace(" ()", "") for st in STATUSES)
    env_rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>"
                       for k, v in (environment or {}).items())
    cases = "".join(_case(r, graphs.get(r.name)) for r in results)
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>diffcheck report</title>"
            f"<style>{STYLE}</style></head><body><h1>diffcheck report</h1>"
            f"<p id=summary>{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped, {s['errors']} errors "
            f"in {s['cases']} cases ({seconds:.1f} s); checks: {escape(str(s['checks']))}</p>"
            f"<div class=filters>show: {filters}</div>"
            f"<table id=cases><tr><th>status</th><th>case</th><th>verdict</th></tr>{cases}</table>"
            f"<h2>environment</h2><table>{env_rows}</table><script>{SCRIPT}</script></body></html>")


def explain_svgs(items, results, options=None, limit_nodes: int = 16, limit_graphs: int = 20) -> dict:
    """Inline SVGs of the explain graphs of small gradient cases (the first ``limit_graphs``). An impl case is
    drawn against its impl (its departures marked), imported behind the run's own boundary and ``--timeout``;
    under ``--no-impl`` (or without the run's options) it is not drawn."""
    from .engines.impl import time_limit
    from .explain import build, impl_fn
    from .explain_render import save

    out = {}
    status = {r.name: r.status for r in results}
    for case in items:
        if len(out) >= limit_graphs:
            break
        if (getattr(case, "model", None) is not None or getattr(case, "ir", None) is None
                or status.get(case.name) == "error"):
            continue
        if (case.impl and (options is None or options.no_impl)) or \
                any(int(np.prod(v.shape)) > 16 for v in case.vars.values()):
            continue
        try:
            with time_limit(getattr(options, "timeout", 0)):
                fn = impl_fn(case, options.impl_path, options.impl_sys_path) if case.impl else None
                graph = build(case, seed=getattr(options, "seed", 0), fn=fn)
        except KeyboardInterrupt:
            raise
        except BaseException:
            continue
        if len(graph.nodes) > limit_nodes:
            continue
        buf = io.StringIO()
        save(graph, buf, "svg")
        svg = buf.getvalue()
        out[case.name] = svg[svg.index("<svg"):]
    return out


def write(path, results, seconds: float, items=(), options=None) -> None:
    from .report import environment

    try:
        env = environment()
    except Exception as exc:
        env = {"environment": f"unavailable: {exc}"}
    html = render(results, seconds, explain_svgs(items, results, options), env)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(html)
