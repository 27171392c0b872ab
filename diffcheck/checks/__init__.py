"""The checks of one gradient case, as stages over a frozen sampled point:
point (sample, lower, reference) -> reference (finite differences, expect) -> impl (self-consistency, jvp) ->
higher (hvp) -> outputs (each of several outputs alone) -> autograd (per dtype and device, expect) -> transforms
(``transforms/``). ``runner`` calls ``run_gradient_case``.

Each stage is a function ``(point) -> list[Check]`` with its own random stream (``stage_rng(seed, name)``), so
adding a stage moves no other stage's draws; none mutates a shared result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from ..casefile import Case
from ..devices import chosen_dtypes
from ..errors import CaseError
from ..model import Check, Findings, Options
from .autograd import autograd
from .higher import higher_autograd, higher_reference
from .impl import self_consistency
from .outputs import undefined_grads
from .point import Point, build_point, entrywise_fd, first_bad_op, stage_rng
from .pyref import precision
from .reference import reference

__all__ = ["STAGES", "Point", "Stage", "run_gradient_case", "stage_rng"]


class Stage(NamedTuple):
    name: str
    option: str  # the --stage that runs it
    applies: Callable[[Case], bool]
    run: Callable[[Point], list[Check]]


STAGES = (
    Stage("reference", "reference", lambda case: True, reference),
    Stage("impl", "reference", lambda case: bool(case.impl), self_consistency),
    Stage("precision", "reference", lambda case: bool(case.impl), precision),
    Stage("higher", "reference", lambda case: case.order >= 2, higher_reference),
    Stage("outputs", "autograd", lambda case: len(case.outputs) > 1, undefined_grads),
    Stage("autograd", "autograd", lambda case: True, autograd),
    Stage("higher_autograd", "autograd", lambda case: case.order >= 2, higher_autograd),
)


def run_gradient_case(case: Case, options: Options, seed: int) -> Findings:
    """Every check of one gradient case, and its formulas under -v. Raises CaseError for a case that cannot be
    run as written (the expression undefined at the sample point)."""
    from ..engines import sympy_eval
    from ..engines.impl import Timeout

    sympy_eval.REPAIRS.reset()
    checks: list[Check] = []
    formulas: list[str] = []
    try:
        formulas = _run(case, options, seed, checks)
    except sympy_eval.RepairLimit as exc:  # bounded work: skipped with the reason, never judged unrepaired
        checks.append(Check("grad", "symbolic", "high-precision repair", status="skip", message=str(exc)))
    except Timeout as exc:  # the checks of the stages that finished are still reported beside the timeout
        exc.checks = checks
        raise
    return Findings(checks, [], formulas)


def _run(case: Case, options: Options, seed: int, checks: list[Check]) -> list[str]:
    engine = "impl" if case.impl else "autograd"
    dtypes = chosen_dtypes(case.dtypes, options.dtypes)
    if not dtypes:
        checks.append(Check("grad", engine, "symbolic", status="skip",
                            message=f"none of the case's dtypes {list(case.dtypes)} was requested"))
        return []
    if case.impl and options.no_impl:  # untrusted input: nothing is imported
        checks.append(Check("grad", "impl", "symbolic", status="skip",
                            message="impl cases are not run under --no-impl (nothing was imported)"))
        return []
    if case.callable_reference:
        from .pyref import prepare

        point = prepare(case, options, seed, _function(case, options, seed), dtypes, checks)
        if point is None:  # the reference (or the impl alone) failed: reported in ``checks``
            return []
    else:
        point = build_point(case, options, seed, _function(case, options, seed), dtypes)
    fwd, _ = point.reference("float64")
    skip = _reference_skip(point, fwd)
    if skip is not None:
        checks.append(skip)
        return []
    formulas = []
    if options.verbose and case.ir is not None:
        from .formula import formula

        formulas = formula(case) + [f"surrogate d/d{n} := {text} (declared; g is the upstream gradient)"
                                    for n, (text, _) in case.surrogate.items()]
    if case.impl:  # a forward that changes between evaluations: one clear finding, not a flood of mismatches
        from .rng import repeatable

        check = repeatable(point)
        if check is not None:
            checks.append(check)
            if check.status == "fail":
                return formulas
    if "reference" in options.stages:
        point = replace(point, fd_full=entrywise_fd(point))
    for stage in STAGES:
        if stage.option in options.stages and stage.applies(case):
            checks += stage.run(point)
    if "transforms" in options.stages:
        from .transforms import requested, transforms

        checks += transforms(point, requested(case, options))
    if case.callable_reference:
        from .pyref import localize, relabel, self_reference

        relabel(point, checks)
        if self_reference(point):
            localize(point, checks)
    return formulas


def _function(case: Case, options: Options, seed: int):
    """What is judged: the user's impl (imported and guarded; with ``rng = "replay"`` every call replays the
    same torch RNG state) or the expression built from torch ops."""
    if case.impl:
        from ..engines import impl

        fn = impl.load(case.impl, case.base_dir, list(case.vars), case.impl_args, case.path, case.name,
                       options.impl_path, options.impl_sys_path)
        if case.rng == "replay":
            fn = impl.replay(fn, seed)
        if case.out_shape is None:  # guarded once the reference (or the impl alone) has run
            return fn
        return impl.guard(fn, case.out_shape, case.outputs)
    from ..engines.autograd import build

    fn = build(case.ir)
    if case.outputs:  # each output on its own too, for the checks with the others' gradients undefined
        parts = [build(o.ir) for o in case.outputs]
        fn.parts = lambda **tensors: [p(**tensors) for p in parts]
    return fn


def _reference_skip(point: Point, fwd) -> Check | None:
    """A CaseError where the expression is undefined at the sample point; a skip where it overflows float64."""
    program, case = point.program, point.case
    out = fwd.values[program.out]
    undefined = program.outside_domain(fwd) or (first_bad_op(program, fwd) if np.any(np.isnan(out)) else None)
    if undefined and case.callable_reference:
        raise CaseError(f"the {point.program.who} is not finite at the sample point (choose vars.*.domain or value "
                        "where it is defined)", case.path, case.name, "vars")
    if undefined:
        raise CaseError(f"the expression is undefined at the sample point: {undefined} (choose vars.*.domain "
                        "or value inside the ops' domains)", case.path, case.name, "vars")
    if not np.all(np.isfinite(out)):
        return Check("value", "symbolic", "float64", status="skip",
                     message=f"the value overflows float64 at the sample point ({first_bad_op(program, fwd)})")
    return None
