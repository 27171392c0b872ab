"""What ``diffcheck explain`` and ``run --html`` do beyond parsing their options (kept out of cli.py)."""

from __future__ import annotations

import click

from .errors import CaseError


def explain_command(path, pattern, at, svg_path, png_path, seed, impl_path, impl_sys_path, no_impl) -> int:
    from . import explain
    from .runner import load
    from .text import safe

    items = load([path], pattern)
    errors = [i for i in items if isinstance(i, CaseError)]
    for err in errors:
        click.echo(f"diffcheck: error: {err}", err=True)
    cases = [c for c in items if not isinstance(c, CaseError) and getattr(c, "model", None) is None]
    if not cases:
        if not errors:
            raise CaseError("no gradient case selected" + (f" by -k {pattern!r}" if pattern else "") +
                            " (training cases have no graph to draw)", str(path))
        return 2
    if (svg_path or png_path) and len(cases) > 1:
        names = ", ".join(c.name for c in cases[:5])
        raise CaseError(f"--svg/--png draw one case; {len(cases)} are selected ({names}...): choose one with -k",
                        str(path))
    code = 0
    for case in cases:
        fn = explain.impl_fn(case, impl_path, impl_sys_path, no_impl)
        graph = explain.build(case, explain.parse_at(at, case), seed, fn)
        click.echo(explain.text(graph))
        if no_impl and case.impl:
            click.echo("  note: --no-impl: the impl was not imported; the reference is compared with autograd")
        code = max(code, 1 if graph.departures else 0)
        for fmt, out in (("svg", svg_path), ("png", png_path)):
            if out:
                from .explain_render import save

                try:
                    save(graph, out, fmt)
                except OSError as exc:
                    raise CaseError(f"--{fmt} {out}: cannot write: {exc.strerror or exc}", case.path,
                                    case.name) from None
                click.echo(f"  {fmt}: {safe(out)}")
    return max(code, 2 if errors else 0)


def write_html(path, results, seconds: float, items, options) -> int:
    """``run --html``: the page, or a clean error (exit 2) when it cannot be written."""
    from . import html

    try:
        html.write(path, results, seconds, [i for i in items if not isinstance(i, CaseError)], options)
    except OSError as exc:
        click.echo(f"diffcheck: error: --html {path}: cannot write the report: {exc.strerror or exc}", err=True)
        return 2
    return 0
