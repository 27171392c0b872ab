"""Command line: ``diffcheck run PATH...``. Exit 0 all passed, 1 any check failed, 2 bad input or usage.

Only click is imported at start-up; torch, sympy and numpy load inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import contextlib
import gc
import sys

import click

DTYPE_NAMES = ("float64", "float32", "float16", "bfloat16")
TRANSFORMS = ("compile", "vmap", "forward", "layouts", "aliasing")  # casefile.TRANSFORMS (not imported: --help)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diffcheck")
def main():
    """diffcheck proves gradients right: symbolic (sympy), finite differences and torch autograd, compared
    entry by entry with tolerances derived from each dtype's rounding."""


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--device", "device", type=click.Choice(["cpu", "cuda", "all"]), default="all", show_default=True,
              help="Devices to run autograd on. 'all' runs CUDA where available and reports CUDA checks as "
                   "skipped otherwise; an explicit 'cuda' without CUDA is a usage error (exit 2).")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(DTYPE_NAMES),
              help="Restrict the dtypes each case asks for (repeatable).")
@click.option("-k", "pattern", metavar="PATTERN",
              help="Run only cases whose name contains PATTERN (or matches it, if it has * ? [); words combine "
                   "with and, or, not and parentheses, as in pytest.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write the full report as JSON to this file.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False),
              help="Write a JUnit XML report (pytest's xunit2 shape) to this file, for CI systems.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Run seed; each case's sampling seed derives from it and the case name unless the case "
                   "sets 'seed'. The report prints the seed each case used.")
@click.option("-v", "--verbose", is_flag=True,
              help="Show every check with its tolerance, and the symbolic gradient formula of small cases.")
@click.option("-q", "--quiet", is_flag=True, help="Show only failed and errored cases, and the summary.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False),
              help="Write a PNG per training case (loss curves, fitted line over the data) into this directory.")
@click.option("-j", "--jobs", default="auto", show_default=True, metavar="N|auto",
              help="Worker processes. 'auto': one per CPU core (at most 4) when 40 or more cases are selected, "
                   "else 1. Results are reported in file order either way.")
@click.option("--impl-path", "impl_path", multiple=True, type=click.Path(file_okay=False),
              help="A further directory that impl modules may be found under, beside each case file's own "
                   "(repeatable).")
@click.option("--allow-sys-path-impl", "impl_sys_path", is_flag=True,
              help="Also import impl modules from sys.path (installed packages; never the standard library). "
                   "Off by default: a case file alone cannot then name library code.")
@click.option("--no-impl", "no_impl", is_flag=True,
              help="For untrusted case files: report every impl case as skipped, importing nothing.")
@click.option("--timeout", type=click.FloatRange(min=0), default=300.0, show_default=True, metavar="SECONDS",
              help="Wall time per case; a case past it fails with 'timed out' and the run goes on. 0: none.")
@click.option("--transform", "transform", multiple=True, type=click.Choice(TRANSFORMS),
              help="Also check every selected case under this transform (repeatable), besides the transforms "
                   "each case asks for itself.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Write a self-contained HTML report (heatmaps of failing gradients, training plots, graphs).")
def run(paths, device, dtypes, pattern, json_path, junit_path, seed, verbose, plot_dir, jobs, quiet, impl_path,
        impl_sys_path, no_impl, timeout, transform, html_path):
    """Check every case in PATHS (files, or directories searched for *.toml)."""
    import time

    from .errors import UsageError
    from .report import case_text, summary_line
    from .runner import Options, load, matches

    start = time.perf_counter()
    try:
        devices = _devices(device)
        if pattern is not None:
            matches("", pattern)  # a malformed -k expression is a usage error before anything runs
        for option, path in (("--json", json_path), ("--junit", junit_path), ("--html", html_path)):
            _report_path(option, path)
    except UsageError as exc:
        click.echo(f"diffcheck: usage error: {exc}", err=True)
        sys.exit(2)
    if timeout != timeout:  # nan
        click.echo("diffcheck: usage error: --timeout takes seconds >= 0 (0: none), got nan", err=True)
        sys.exit(2)
    if html_path and not plot_dir:  # the page shows the training plots: beside it, named after it
        import os

        plot_dir = os.path.splitext(html_path)[0] + "_plots"
    options = Options(devices=devices, dtypes=tuple(dtypes) or None, pattern=pattern, seed=seed, verbose=verbose,
                      plot_dir=plot_dir, impl_path=tuple(impl_path), impl_sys_path=impl_sys_path, no_impl=no_impl,
                      timeout=timeout, transforms=tuple(transform))
    items = load(paths, pattern)
    results = []
    try:
        workers = _workers(jobs, len(items))
    except ValueError:
        click.echo(f"diffcheck: usage error: --jobs takes a positive number or 'auto', got {jobs!r}", err=True)
        sys.exit(2)
    from .parallel import run_all

    environment: dict | None = {} if json_path else None  # the JSON report's, found by the run

    with _Progress(len(items)) as progress:
        for result in run_all(items, options, workers, environment):
            results.append(result)
            shown = not quiet or result.status in ("fail", "error")
            progress.echo(_coloured(case_text(result, verbose), progress.fancy) if shown else None)
    seconds = time.perf_counter() - start
    if not results:
        from .text import safe

        where = ", ".join(safe(p) for p in paths)
        click.echo(f"diffcheck: no cases selected in {where}" + (f" by -k {safe(pattern)!r}" if pattern else ""))
        _write_reports(json_path, junit_path, results, seconds, environment)
        sys.exit(exit_code(results))
    _end(results, quiet, options.devices)
    if not quiet:
        _summary(results, seconds)
    click.echo(summary_line(results, seconds))
    code = _write_reports(json_path, junit_path, results, seconds, environment)
    if html_path:
        from .explain_cli import write_html

        code = write_html(html_path, results, seconds, items, options) or code
    sys.exit(code or exit_code(results))


def _report_path(option: str, path) -> None:
    """Refuse a report path before the run rather than after it; create its folder when missing."""
    import os

    from .errors import UsageError

    if path is None:
        return
    if not path.strip():  # an empty value (--json "$UNSET") would silently write no report
        raise UsageError(f"{option} needs a file name, got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot create the folder {folder}: {exc.strerror or exc}") from None
    if os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a directory; give a file name")
    if not os.access(path if os.path.exists(path) else folder, os.W_OK):
        raise UsageError(f"{option} {path}: not writable")


def _write_reports(json_path, junit_path, results, seconds: float, environment: dict | None = None) -> int:
    """Write the reports asked for; a write that fails (a full disk, /dev/full) is a clean error, exit 2."""
    from functools import partial

    from .report import write_json, write_junit

    code = 0
    for option, path, write in (("--json", json_path, partial(write_json, env=environment)),
                                ("--junit", junit_path, write_junit)):
        if not path:
            continue
        try:
            with _collector_paused():
                write(path, results, seconds)
        except OSError as exc:
            click.echo(f"diffcheck: error: {option} {path}: cannot write the report: {exc.strerror or exc}",
                       err=True)
            code = 2
    return code


@contextlib.contextmanager
def _collector_paused():
    """The garbage collector off while a report is built: its dicts and lists hold no cycles, and the collector's
    full passes over the run's objects were a third of the 1.2 s the corpus's JSON report took."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_COLOURS = {"PASS": "green", "FAIL": "red", "ERROR": "red", "SKIP": "yellow", "FAILED": "red"}


def _coloured(text: str, fancy: bool) -> str:
    """The status word at the start of ``text`` in its colour, on a terminal only (NO_COLOR and pipes: plain)."""
    word = text.split(" ", 1)[0]
    if not fancy or word not in _COLOURS:
        return text
    return click.style(word, fg=_COLOURS[word], bold=True) + text[len(word):]


def _end(results, quiet: bool, devices) -> None:
    """The close of a run: the failed and errored cases again, one line each; CUDA left out by --device, once."""
    from .devices import not_requested
    from .report import short_summary

    lines = short_summary(results)
    if lines:
        click.echo("short summary:")
        for line in lines:
            click.echo(_coloured(line, _fancy()))
    excluded = sum(not_requested(c) for r in results for c in r.checks)
    if excluded:
        left_out = ", ".join(d for d in ("cpu", "cuda") if d not in devices)
        click.echo(f"{left_out.upper()} checks not requested (--device {', '.join(devices)}): {excluded} skipped")


def _workers(jobs: str, count: int) -> int:
    import os

    if jobs == "auto":
        return min(os.cpu_count() or 1, 4) if count >= 40 else 1
    n = int(jobs)
    if n < 1:
        raise ValueError(jobs)
    return n


def _fancy() -> bool:
    """rich output only on a terminal, without NO_COLOR, and not for a dumb terminal."""
    import os

    return sys.stdout.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


class _Progress:
    """A rich progress bar that appears once a run has taken more than a second (terminals only)."""

    def __init__(self, total: int):
        import time

        self.total, self.start, self.bar, self.task, self.done = total, time.perf_counter(), None, None, 0
        self.fancy = _fancy()

    def __enter__(self):
        return self

    def echo(self, line: str | None) -> None:
        """Print one case's report (None: nothing, for -q) and advance the bar."""
        import time

        self.done += 1
        if self.bar is not None:
            if line is not None:
                from rich.text import Text

                self.bar.console.print(Text.from_ansi(line), soft_wrap=True)
            self.bar.update(self.task, completed=self.done)
            return
        if line is not None:
            click.echo(line)
        if self.fancy and self.done < self.total and time.perf_counter() - self.start > 1.0:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self.bar = Progress("checking", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("cases", total=self.total, completed=self.done)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


def _summary(results, seconds: float) -> None:
    from .report import plain_table, summary_rows

    if not results:
        return
    if not _fancy():
        click.echo(plain_table(results, seconds))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="diffcheck summary")
    table.add_column("result")
    table.add_column("count", justify="right")
    styles = {"passed": "green", "failed": "red", "errors": "red", "skipped": "yellow"}
    for key, value in summary_rows(results, seconds):
        table.add_row(key, value, style=styles.get(key) if value != "0" else None)
    Console().print(table)



def _devices(device: str) -> tuple[str, ...]:
    from .devices import cuda_status
    from .errors import UsageError

    if device == "all":
        return ("cpu", "cuda")
    if device == "cuda":
        ok, why = cuda_status()
        if not ok:
            raise UsageError(f"--device cuda was asked for, but {why}")
    return (device,)


def exit_code(results) -> int:
    statuses = {r.status for r in results}
    if "error" in statuses or not results:
        return 2
    if "fail" in statuses:
        return 1
    return 0


@main.command()
@click.argument("path", type=click.Path())
@click.option("-k", "pattern", metavar="NAME", help="The case to explain (a name, glob or -k expression).")
@click.option("--at", "at", multiple=True, metavar="VAR=VALUE",
              help="Explain at this value of a var (a number, or a JSON list of the var's shape); repeatable.")
@click.option("--svg", "svg_path", type=click.Path(dir_okay=False), help="Draw the graph as SVG into this file.")
@click.option("--png", "png_path", type=click.Path(dir_okay=False), help="Draw the graph as PNG into this file.")
@click.option("--seed", type=int, default=0, show_default=True, help="Run seed, as for 'run' (the same point).")
@click.option("--impl-path", "impl_path", multiple=True, type=click.Path(file_okay=False),
              help="A further directory impl modules may be found under (as for 'run').")
@click.option("--allow-sys-path-impl", "impl_sys_path", is_flag=True, help="As for 'run'.")
@click.option("--no-impl", "no_impl", is_flag=True, help="Import no impl: explain the reference against autograd.")
def explain(path, pattern, at, svg_path, png_path, seed, impl_path, impl_sys_path, no_impl):
    """Draw a gradient case's computation graph with the chain rule on every edge (exit 1: a gradient departs)."""
    from .errors import CaseError
    from .explain_cli import explain_command

    try:
        code = explain_command(path, pattern, at, svg_path, png_path, seed, impl_path, impl_sys_path, no_impl)
    except CaseError as exc:
        click.echo(f"diffcheck: error: {exc}", err=True)
        sys.exit(2)
    sys.exit(code)
