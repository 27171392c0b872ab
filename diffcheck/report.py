"""Text and JSON reports from case results; never calls an engine."""

from __future__ import annotations

import json
import platform
from collections import Counter

from .compare import margin_text, negligible
from .model import Check
from .text import safe

STATUS_WORD = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "skip": "SKIP"}


def summary(results, seconds: float) -> dict:
    counts = Counter(r.status for r in results)
    checks = Counter(c.status for r in results for c in r.checks)
    return {"cases": len(results), "passed": counts["pass"], "failed": counts["fail"], "skipped": counts["skip"],
            "errors": counts["error"], "checks": dict(sorted(checks.items())), "seconds": round(seconds, 3)}


def environment() -> dict:
    import numpy
    import sympy
    import torch

    from .devices import cuda_status

    cuda_ok, cuda_note = cuda_status()
    return {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "sympy": sympy.__version__, "numpy": numpy.__version__,
            "devices": {"cpu": True, "cuda": cuda_ok, "cuda_note": cuda_note},
            "tf32": "disabled during checks (torch.backends.cuda.matmul.allow_tf32 = False)"}


def to_json(results, seconds: float, env: dict | None = None) -> dict:
    return {"cases": [r.to_json() for r in results], "summary": summary(results, seconds),
            "environment": env or environment()}


def write_json(path, results, seconds: float, env: dict | None = None) -> None:
    """The report, one line per case: json's C encoder writes no indentation, and an indented report of a large
    run took seconds in the Python one. ``env``: ``environment()`` found already (by a worker)."""
    data = to_json(results, seconds, env)

    def line(value) -> str:
        try:
            return json.dumps(value, allow_nan=False, default=_jsonable)
        except ValueError:  # a nan or inf in it: copied with them as null (walking every case's values took longer
            return json.dumps(_finite(value), allow_nan=False, default=_jsonable)  # than the encoding itself)

    text = ('{"cases": [\n' + ",\n".join(map(line, data.pop("cases"))) + "\n]"
            + "".join(f",\n{line(key)}: {line(value)}" for key, value in data.items()) + "\n}\n")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def _finite(obj):
    """JSON has no inf or nan: such numbers become null (the report's messages say what they were)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _jsonable(x):
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(type(x).__name__)


def _message(text: str) -> str:
    """A multi-line message made safe: controls escaped, every line after the first indented (no forged lines)."""
    first, *rest = safe(text, newlines=True).split("\n")
    return "\n".join([first, *(line if line.startswith("    ") else "    " + line for line in rest)])


def case_id(result) -> str:
    return f"{safe(result.file)}::{safe(result.name)}"


def case_line(result) -> str:
    head = f"{STATUS_WORD[result.status]:5s} {case_id(result)}"
    if result.status == "error":
        return f"{STATUS_WORD['error']:5s} {_message(result.message)}"
    margins = [c.margin for c in result.checks if c.status in ("pass", "warn") and c.margin == c.margin]
    parts = [f"{len(result.checks)} checks"]
    if margins and result.status == "pass":
        parts.append(f"worst margin {max(margins):.2g}")
    if result.seed is not None:
        parts.append(f"seed {result.seed}")
    parts.append(f"{result.seconds:.2f} s")
    line = f"{head}  ({', '.join(parts)})"
    if result.message:
        line += f"  {_message(result.message)}"
    return line


def check_lines(check: Check, detail: bool) -> list[str]:
    status = check.status.upper()
    against = f" vs {check.against}"
    margin = f" ({margin_text(check, 2)})" if check.status != "skip" and check.kind != "semantic" else ""
    lines = [f"    {status:4s} {safe(check.label)}: {check.engine}{safe(against)}{margin}"
             + (f" -- {_message(check.message)}" if check.message else "")]
    if check.status == "skip":
        return lines
    if (detail or check.status == "fail") and check.tolerance:
        lines.append(f"         tolerance: {_message(check.tolerance)}")
    if check.status == "fail" and check.worst:
        if check.diagnosis:
            lines.append(f"         diagnosis: {_message(check.diagnosis)}")
        ref_name = _short(check.against)
        fd_column = ref_name != "finite diff"  # judged against finite differences: that column is the reference
        probe = bool(check.details.get("probe"))
        lines.append(f"         {'probe' if probe else 'index':12s} {check.engine:>14s} {ref_name:>14s}"
                     + (f" {'finite diff':>14s}" if fd_column else "")
                     + f" {'abs err':>10s} {'rel err':>10s} {'allowed':>10s}")
        for e in check.worst:
            if e.abs_err <= e.allowed and e is not check.worst[0]:
                continue
            fd = (f" {e.fd:14.7g}" if e.fd is not None else f" {'-':>14s}") if fd_column else ""
            where = safe(e.where)
            if probe and e.index:
                where = f"<c{e.index[0] + 1}, J v>" if check.kind == "jvp" else f"<g, v{e.index[0] + 1}>"
            allowed = "0" if negligible(e.allowed, e.abs_err, check.dtype) else f"{e.allowed:.3g}"
            lines.append(f"         {where:12s} {e.got:14.7g} {e.ref:14.7g}{fd} {e.abs_err:10.3g}"
                         f" {e.rel_err:10.3g} {allowed:>10s}")
        if detail and check.error_matrix is not None:
            import numpy as np

            lines.append(f"         error matrix ({check.engine} - {check.against}):")
            text = np.array2string(np.asarray(check.error_matrix, dtype=float), precision=3, max_line_width=100)
            lines.extend(f"           {row}" for row in text.splitlines())
    return lines


def _short(against: str) -> str:
    """A column header for what a check was judged against."""
    if against.startswith("finite differences"):
        return "finite diff"
    return against.split(" ")[0][:14]


def case_text(result, verbose: bool = False) -> str:
    """One case's report: its line, its plots, and the checks worth showing (failures; every check with -v)."""
    lines = [case_line(result)]
    lines.extend(f"    plot: {safe(a)}" for a in result.artifacts)
    if verbose:
        lines.extend(f"    {safe(f)}" for f in result.formula)
    for c in result.checks:
        if verbose or c.status == "fail":
            lines.extend(check_lines(c, verbose))
    return "\n".join(lines)


def summary_line(results, seconds: float) -> str:
    if not results:
        return "diffcheck: no cases selected"
    s = summary(results, seconds)
    return (f"diffcheck: {s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped, "
            f"{s['errors']} errors in {s['cases']} cases ({seconds:.1f} s)")


def render_text(results, seconds: float, verbose: bool = False) -> str:
    return "\n".join([case_text(r, verbose) for r in results] + [summary_line(results, seconds)])


def write_junit(path, results, seconds: float) -> None:
    """JUnit XML in pytest's xunit2 shape: one testcase per case, failures carrying the localized report.

    Every text goes through ``_xml`` first: ElementTree escapes markup but writes characters XML 1.0 forbids
    (most controls) as they are, which leaves a file no CI system can parse.
    """
    import xml.etree.ElementTree as ET

    s = summary(results, seconds)
    suites = ET.Element("testsuites")
    suite = ET.SubElement(suites, "testsuite", name="diffcheck", tests=str(s["cases"]), failures=str(s["failed"]),
                          errors=str(s["errors"]), skipped=str(s["skipped"]), time=f"{seconds:.3f}")
    for r in results:
        classname = str(r.file).replace("/", ".").removesuffix(".toml")
        case = ET.SubElement(suite, "testcase", classname=_xml(safe(classname)), name=_xml(safe(r.name)),
                             time=f"{r.seconds:.3f}")
        if r.status in ("fail", "error"):
            detail = case_text(r)
            tag = "failure" if r.status == "fail" else "error"
            ET.SubElement(case, tag, message=_xml(safe(r.message)[:500])).text = _xml(detail)
        elif r.status == "skip":
            ET.SubElement(case, "skipped", message=_xml(safe(r.message)[:500]))
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def _xml(text: str) -> str:
    """``text`` with what XML 1.0 cannot hold (controls, lone surrogates, U+FFFE/U+FFFF) written as escapes."""
    import re

    return re.sub("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]",
                  lambda m: f"\\u{ord(m.group()):04x}", text)


def short_summary(results) -> list[str]:
    """pytest's short test summary: one line per failed or errored case, with its headline."""
    lines = []
    for r in results:
        if r.status in ("fail", "error"):
            headline = safe(r.message.split("\n", 1)[0])
            for prefix in (f"{r.file}: case {r.name!r}: ", f"{r.file}: "):  # already in the id
                if headline.startswith(safe(prefix)):
                    headline = headline[len(safe(prefix)):]
                    break
            word = "FAILED" if r.status == "fail" else "ERROR"
            lines.append(f"{word} {case_id(r)} - {headline}")
    return lines


def summary_rows(results, seconds: float) -> list[tuple[str, str]]:
    s = summary(results, seconds)
    return [("passed", str(s["passed"])), ("failed", str(s["failed"])), ("skipped", str(s["skipped"])),
            ("errors", str(s["errors"])), ("checks", str(sum(s["checks"].values()))), ("time", f"{seconds:.1f} s")]


def plain_table(results, seconds: float) -> str:
    rows = summary_rows(results, seconds)
    return "\n".join(f"{k:8s} {v}" for k, v in rows)
