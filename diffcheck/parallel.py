"""Run cases across worker processes, yielding results in input order.

Workers are spawned (not forked: torch's thread pools are not fork-safe) and each gets an equal share of the
cores for torch's intra-op threads, so two workers on two cores do not oversubscribe them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from .errors import CaseError
from .runner import CaseResult, Options, error_result, run_case


def run_all(items: list, options: Options, workers: int = 1, environment: dict | None = None) -> Iterator[CaseResult]:
    """Results of every item (CaseErrors become error results), in the order given. ``environment``, when given,
    is filled with ``report.environment()`` once the cases have run -- found by a worker, which has torch
    imported already, rather than by importing torch in this process after the run."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            try:
                yield _one(item, options)
            except Exception as exc:  # a bug, not the case's fault: report it on the case, run the rest
                yield _crashed(item, exc)
        if environment is not None:
            from .report import environment as find_environment

            environment.update(find_environment())
        return
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    # the long cases (training runs) go first so that no worker is left with them at the end
    from .training.schema import TrainCase

    order = sorted(range(len(items)), key=lambda i: not isinstance(items[i], TrainCase))
    results: dict[int, CaseResult] = {}
    shown = 0
    with tempfile.TemporaryDirectory(prefix="diffcheck-") as marks:
        for ready in _rounds(items, order, options, workers, threads, context, marks, environment):
            results.update(ready)
            while shown in results:
                yield results.pop(shown)
                shown += 1


def _rounds(items, order, options, workers, threads, context, marks, environment):
    """Run ``order`` in a pool, yielding {index: result} as results arrive in input order. A worker that dies (a
    crash in native code, ``os._exit``, the OOM killer) breaks the whole pool: the cases it was running when it
    died (each worker marks its case in ``marks``) are then run again alone, in a pool of their own, so the one
    that kills its worker is named and every other case still runs; the cases not yet started go to a new pool."""
    from concurrent.futures import ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from .report import environment as find_environment

    pending, first = list(order), True
    while pending:
        with ProcessPoolExecutor(min(workers, len(pending)), mp_context=context, initializer=_init,
                                 initargs=(threads, marks)) as pool:
            futures = {i: pool.submit(_marked, i, items[i], options) for i in pending}
            found = pool.submit(find_environment) if environment is not None and first else None
            broken: list[int] = []
            for i in sorted(pending):
                if broken:  # the pool is gone: what finished before it broke still counts
                    if isinstance(futures[i].exception(), BrokenProcessPool):
                        broken.append(i)
                    else:
                        yield {i: _outcome(futures[i], items[i])}
                    continue
                try:
                    yield {i: futures[i].result()}
                except BrokenProcessPool:
                    broken.append(i)
                    wait(futures.values())  # every future now has its result or the broken pool
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # what the worker raised: an error on this case only
                    yield {i: _crashed(items[i], exc)}
            if found is not None:
                with contextlib.suppress(Exception):  # a dead pool: the report finds it in this process instead
                    environment.update(found.result())
        first = False
        running = [i for i in broken if os.path.exists(os.path.join(marks, str(i)))] or broken[:workers]
        for i in running:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(marks, str(i)))
            yield {i: _alone(items[i], options, threads, context, marks, i)}
        left = set(broken) - set(running)
        pending = [i for i in order if i in left]


def _alone(item, options: Options, threads: int, context, marks: str, index: int) -> CaseResult:
    """The result of one case run in a worker of its own (a suspect of a broken pool)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=context, initializer=_init, initargs=(threads, marks)) as pool:
        return _outcome(pool.submit(_marked, index, item, options), item)


def _outcome(future, item) -> CaseResult:
    try:
        return future.result()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        return _crashed(item, exc)


_MARKS = ""  # a worker's folder of marks: a file named after the case it is running


def _marked(index: int, item, options: Options) -> CaseResult:
    mark = os.path.join(_MARKS, str(index))
    with open(mark, "w"):
        pass
    try:
        return _one(item, options)
    finally:
        os.remove(mark)


def _one(item, options: Options) -> CaseResult:
    return error_result(item) if isinstance(item, CaseError) else run_case(item, options)


def _crashed(item, exc: BaseException) -> CaseResult:
    """The error result of a case whose run raised instead of returning a result."""
    from concurrent.futures.process import BrokenProcessPool

    name, path = getattr(item, "name", "?"), getattr(item, "path", "")
    if isinstance(exc, BrokenProcessPool):
        why = ("the worker process running it died (a crash in native code, os._exit, or the system's memory limit); "
               "run alone, it died again, so no other case was affected by it")
    else:
        why = f"running it raised {type(exc).__name__}" + (f": {exc}" if str(exc) else "")
    return CaseResult(name, path, "error", f"{path}: case {name!r}: {why}")


def _init(threads: int, marks: str) -> None:
    """A worker's start: torch's threads, the folder it marks its running case in, and the modules every case uses
    imported before the garbage collector is told to leave them alone (``gc.freeze``): they live as long as the
    worker, and each full collection of a run -- and the one at the worker's exit, which took longer than many
    cases -- walked their million objects."""
    global _MARKS
    import atexit
    import gc

    import torch

    from .runner import KINDS

    torch.set_num_threads(threads)
    _MARKS = marks
    for _, imports in KINDS.values():
        imports()
    gc.freeze()
    atexit.register(gc.freeze)  # what the cases built (caches, torch's compiled kernels) too, once they are done
