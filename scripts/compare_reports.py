"""Compare two `diffcheck run --json` reports in every field except seconds and timings (exit 1 on a difference).

    python scripts/compare_reports.py before.json after.json

What a change that must not move a verdict is checked by (issue 17): every case, check, status, message, margin,
worst entry and detail equal; only the seconds (and torch.compile's compile/check times) may differ.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

IGNORED = {"seconds", "time", "timings", "wall", "elapsed", "check_s", "compile_s"}
TIMED = re.compile(r"(compiled in|checked in) [0-9.]+ s")  # torch.compile's messages carry their seconds


def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if k not in IGNORED}
    if isinstance(x, list):
        return [strip(v) for v in x]
    if isinstance(x, str):
        return TIMED.sub(r"\1 <t> s", x)
    return x


def diff(a, b, path: str, out: list) -> None:
    if type(a) is not type(b):
        out.append(f"{path}: type {type(a).__name__} != {type(b).__name__}")
    elif isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'after' if k not in a else 'before'}")
            else:
                diff(a[k], b[k], f"{path}.{k}", out)
    elif isinstance(a, list):
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}[{i}]", out)
    elif a != b and not (a != a and b != b):  # nan equals nan
        out.append(f"{path}: {a!r} != {b!r}")


def main() -> int:
    before, after = (json.loads(Path(p).read_text()) for p in sys.argv[1:3])
    for report in (before, after):
        report.pop("environment", None)
    out: list = []
    diff(strip(before), strip(after), "", out)
    checks = sum(len(c["checks"]) for c in before["cases"])
    print(f"{len(before['cases'])} cases, {checks} checks compared: {len(out)} differences")
    for line in out[:40]:
        print(line)
    return 1 if out else 0


if __name__ == "__main__":
    sys.exit(main())
