"""Regression training as integration cases (``kind = "train"``): data, model, loss and loop described as data.

For each dtype and device the loop runs twice with autograd (the run under test, and again from the same seed:
``reproducible``), and once in float64 with the symbolic engine's gradient in place of autograd. ``trajectory``
compares the two step by step with a bound that grows with the steps (each step may add the rounding of its update
and of its gradient, from the symbolic error budget); ``converge`` compares the final parameters and loss with
``expect``: known values, or the closed-form least-squares fit of the same noisy data.

Data are drawn in the order the ``[data]`` table lists them, from torch's CPU generator seeded with ``seed`` and in
float32, as the seed tutorials do (``torch.manual_seed(10); x = torch.rand(20, 1) * 10; ...``), then converted to the
dtype under test. A model of ``type = "linear"`` is a real ``nn.Linear`` (initialised by torch after the data
draws); any other model is an expression of the params and inputs.

Modules, each importing only those before it: ``schema`` (TOML tables -> TrainCase; no torch, no matplotlib),
``data`` (draws, batches), ``fastpath`` (the loops' per-step work, planned once), ``loops`` (the autograd loop and
the symbolic-gradient loop), ``verdicts`` (the checks), ``plot`` (matplotlib). This module ties them together; it
loads torch only when a case runs.
"""

from __future__ import annotations

from ..devices import chosen_dtypes, device_skips
from ..model import Check, Findings
from .schema import TrainCase, build_train_case

__all__ = ["TrainCase", "build_train_case", "check_train_case", "run_train_case"]


AGAINST = {"converge": "expect", "trajectory": "symbolic-gradient loop (float64)",
           "reproducible": "a second run from the same seed"}


# The latest case's float64 reference loop, for its other pytest items (one per dtype): it depends only on the case
# (its data, initial parameters and batches are drawn from the case's own seed, the same every time).
_REFERENCE: list = []


def run_train_case(case: TrainCase, options, seed: int) -> Findings:
    """``runner``'s entry point: the checks of one training case under ``options`` (the case's own seed samples
    its data; ``seed`` is the runner's, the same number for a training case)."""
    checks, artifacts = check_train_case(case, options.dtypes, options.devices, options.plot_dir)
    return Findings(checks, artifacts, [])


def check_train_case(case: TrainCase, dtypes, devices, plot_dir=None) -> tuple[list[Check], list[str]]:
    """Every check of one training case (converge, trajectory and reproducible, per dtype and device), and the
    paths of the plots written. ``dtypes`` and ``devices`` are what the run asked for (``--dtype``, ``--device``):
    as for gradient cases, a device that is excluded or unavailable reports each of its checks as skipped with the
    reason, and a case none of whose dtypes was asked for is one skipped check."""
    from .data import batches, draw
    from .loops import run_reference, run_torch
    from .verdicts import check_affine, converge, reproducible, trajectory

    chosen = chosen_dtypes(case.dtypes, dtypes)
    if not chosen:
        return [Check("converge", "autograd", "expect", status="skip",
                      message=f"none of the case's dtypes {list(case.dtypes)} was requested")], []
    if plot_dir is not None:
        from .plot import plot, prepare_dir

        prepare_dir(case, plot_dir)
    skipped = {device: skip for device, skip in device_skips(case.devices, devices).items() if skip}
    data, init = draw(case)
    if case.model.expect.least_squares:
        check_affine(case, data)
    runs, checks = {}, []
    if len(skipped) < len(case.devices) or plot_dir is not None:
        steps = batches(case, len(data[case.model.train.target]))
        reference = _REFERENCE[1] if _REFERENCE and _REFERENCE[0] is case else run_reference(case, data, init, steps)
        _REFERENCE[:] = [case, reference]
        runs["symbolic-gradient loop (float64)"] = reference
    for device in case.devices:
        if device in skipped:  # reported, never dropped silently: the checks a run there would make
            checks += [Check(kind, "autograd", AGAINST[kind], dtype=d, device=device, status="skip",
                             message=skipped[device].message, details={"skipped": skipped[device].code})
                       for d in chosen for kind in AGAINST]
            continue
        for dtype in chosen:
            why = _unrunnable(case, dtype)
            if why:
                checks += [Check(kind, "autograd", AGAINST[kind], dtype=dtype, device=device, status="skip",
                                 message=why) for kind in AGAINST]
                continue
            try:
                run = run_torch(case, data, init, dtype, device, steps)
                again = run_torch(case, data, init, dtype, device, steps)
            except (RuntimeError, NotImplementedError, TypeError, ValueError, OverflowError) as exc:
                checks += _raised(exc, dtype, device)  # torch refusing the loop is a finding, not a crash
                continue
            runs[f"autograd {dtype} {device}"] = run
            checks.append(converge(case, data, run, dtype, device))
            checks.append(trajectory(case, run, reference, dtype, device))
            checks.append(reproducible(run, again, dtype, device))
    if plot_dir is None:
        return checks, []
    return checks, [plot(case, data, dict(reversed(list(runs.items()))), plot_dir)]


def _unrunnable(case: TrainCase, dtype: str) -> str | None:
    """Why the loop cannot run in ``dtype`` as written (a learning rate beyond its range: torch.optim refuses it,
    and ``lr * grad`` is inf), or None."""
    from .. import tolerance as tol

    lr = case.model.train.lr
    if abs(lr) > tol.MAX[dtype]:
        return f"train.lr = {lr:g} is not representable in {dtype} (its largest is {tol.MAX[dtype]:.3g})"
    return None


def _raised(exc: BaseException, dtype: str, device: str) -> list[Check]:
    """The dtype's three checks when torch raised in the loop under test: a skip where torch has no kernel for
    the dtype or device, else a failure with torch's message."""
    from ..checks.probes import missing_kernel  # the one place torch's text is read

    missing = missing_kernel(exc)
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    message = f"the training loop raised {type(exc).__name__}: {first}"
    return [Check(kind, "autograd", AGAINST[kind], dtype=dtype, device=device,
                  status="skip" if missing else "fail", message=message,
                  details={"skipped": "missing_kernel"} if missing else {"raised": type(exc).__name__})
            for kind in AGAINST]
