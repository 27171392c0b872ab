"""Command line: ``diffcheck run PATH...``. Exit 0 all passed, 1 any check failed, 2 bad input or usage.

Only click is imported at start-up; torch, sympy and numpy load inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import sys

import click

DTYPE_NAMES = ("float64", "float32", "float16", "bfloat16")


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
              help="Run only cases whose name contains PATTERN (or matches it, if it has * ? [).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the full report as JSON to this file.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Run seed; each case's sampling seed derives from it and the case name unless the case "
                   "sets 'seed'. The report prints the seed each case used.")
@click.option("-v", "--verbose", is_flag=True,
              help="Show every check with its tolerance, and the symbolic gradient formula of small cases.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False),
              help="Write a PNG per training case (loss curves, fitted line over the data) into this directory.")
def run(paths, device, dtypes, pattern, json_path, seed, verbose, plot_dir):
    """Check every case in PATHS (files, or directories searched for *.toml)."""
    import time

    from .errors import UsageError
    from .report import render_text, write_json
    from .runner import Options, error_result, load, run_case

    start = time.perf_counter()
    try:
        devices = _devices(device)
    except UsageError as exc:
        click.echo(f"diffcheck: usage error: {exc}", err=True)
        sys.exit(2)
    options = Options(devices=devices, dtypes=tuple(dtypes) or None, pattern=pattern, seed=seed, verbose=verbose,
                      plot_dir=plot_dir)
    results = []
    for item in load(paths, pattern):
        if isinstance(item, Exception):
            results.append(error_result(item))
        else:
            results.append(run_case(item, options))
        click.echo(_line(results[-1], verbose))
    seconds = time.perf_counter() - start
    text = render_text(results, seconds, verbose)
    click.echo(text.splitlines()[-1] if results else text)
    if json_path:
        write_json(json_path, results, seconds)
    sys.exit(exit_code(results))


def _line(result, verbose: bool) -> str:
    from .report import render_text

    return "\n".join(render_text([result], 0.0, verbose).splitlines()[:-1])


def _devices(device: str) -> tuple[str, ...]:
    from .engines.autograd import cuda_status
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
