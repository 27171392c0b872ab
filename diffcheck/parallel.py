"""Run cases across worker processes, yielding results in input order.

Workers are spawned (not forked: torch's thread pools are not fork-safe) and each gets an equal share of the
cores for torch's intra-op threads, so two workers on two cores do not oversubscribe them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from .errors import CaseError
from .runner import CaseResult, Options, error_result, run_case


def run_all(items: list, options: Options, workers: int = 1, environment: dict | None = None) -> Iterator[CaseResult]:
    """Results of every item (CaseErrors become error results), in the order given. ``environment``, when given,
    is filled with ``report.environment()`` once the cases have run -- found by a worker, which has torch
    imported already, rather than by importing torch in this process after the run."""
    from .report import environment as find_environment

    if workers <= 1 or len(items) <= 1:
        for item in items:
            try:
                yield _one(item, options)
            except Exception as exc:  # a bug, not the case's fault: report it on the case, run the rest
                yield _crashed(item, exc)
        if environment is not None:
            environment.update(find_environment())
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    # the long cases (training runs) go first so that no worker is left with them at the end
    from .training.schema import TrainCase

    order = sorted(range(len(items)), key=lambda i: not isinstance(items[i], TrainCase))
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init, initargs=(threads,)) as pool:
        futures = {i: pool.submit(_one, items[i], options) for i in order}
        found = pool.submit(find_environment) if environment is not None else None
        for i in range(len(items)):
            try:
                yield futures[i].result()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # what the worker raised, or its death: an error on this case only
                yield _crashed(items[i], exc)
        if found is not None:
            with contextlib.suppress(Exception):  # a dead pool: the report finds it in this process instead
                environment.update(found.result())


def _one(item, options: Options) -> CaseResult:
    return error_result(item) if isinstance(item, CaseError) else run_case(item, options)


def _crashed(item, exc: BaseException) -> CaseResult:
    """The error result of a case whose run raised instead of returning a result."""
    from concurrent.futures.process import BrokenProcessPool

    name, path = getattr(item, "name", "?"), getattr(item, "path", "")
    if isinstance(exc, BrokenProcessPool):
        why = "the worker process running it died (rerun with -j 1 to see which case kills it)"
    else:
        why = f"running it raised {type(exc).__name__}" + (f": {exc}" if str(exc) else "")
    return CaseResult(name, path, "error", f"{path}: case {name!r}: {why}")


def _init(threads: int) -> None:
    """A worker's start: torch's threads, and the modules every case uses imported before the garbage collector is
    told to leave them alone (``gc.freeze``): they live as long as the worker, and each full collection of a run
    -- and the one at the worker's exit, which took longer than many cases -- walked their million objects."""
    import atexit
    import gc

    import torch

    from .runner import KINDS

    torch.set_num_threads(threads)
    for _, imports in KINDS.values():
        imports()
    gc.freeze()
    atexit.register(gc.freeze)  # what the cases built (caches, torch's compiled kernels) too, once they are done
