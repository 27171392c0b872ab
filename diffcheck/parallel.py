"""Run cases across worker processes, yielding results in input order.

Workers are spawned (not forked: torch's thread pools are not fork-safe) and each gets an equal share of the
cores for torch's intra-op threads, so two workers on two cores do not oversubscribe them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from .errors import CaseError
from .runner import CaseResult, Options, error_result, run_case


def run_all(items: list, options: Options, workers: int = 1) -> Iterator[CaseResult]:
    """Results of every item (CaseErrors become error results), in the order given."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            try:
                yield _one(item, options)
            except Exception as exc:  # a bug, not the case's fault: report it on the case, run the rest
                yield _crashed(item, exc)
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
        for i in range(len(items)):
            try:
                yield futures[i].result()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # what the worker raised, or its death: an error on this case only
                yield _crashed(items[i], exc)


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
    import torch

    torch.set_num_threads(threads)
