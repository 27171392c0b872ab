"""The checks of one gradient case, stage by stage: sample -> reference -> finite differences -> known answers ->
an impl's self-consistency -> autograd per dtype and device. ``runner`` calls ``CaseChecks(...).run()``.

Inputs are sampled in the least precise dtype of the case, so every dtype computes at the same point; the
reference (symbolic engine, float64 with error budgets) is computed once per distinct point and cotangent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import tolerance as tol
from .casefile import Case
from .compare import Check, compare
from .errors import CaseError, ExpressionError
from .expr.ir import Call, Const, Var, walk
from .expr.ops import OPS

if TYPE_CHECKING:  # annotations only: runner imports this module
    from .runner import CaseResult, Options

SMALL = 16  # variables with at most this many entries get a full entrywise finite-difference gradient
SMALL_OUTPUT = 8  # outputs with at most this many entries get their full Jacobian (one VJP per entry)
RANDOM_COTANGENTS = 2
FD_DIRECTIONS = 1


class CaseChecks:
    """One case's checks; a class only to share the sampled point and references between the stages."""

    def __init__(self, case: Case, options: Options, seed: int, result: CaseResult):
        self.case, self.options, self.result = case, options, result
        self.rng = np.random.default_rng(seed)
        self.dtypes = [d for d in case.dtypes if options.dtypes is None or d in options.dtypes]
        self.refs: dict[bytes, tuple] = {}
        self.engine = "impl" if case.impl else "autograd"

    def add(self, check: Check) -> Check:
        self.result.checks.append(check)
        return check

    def run(self) -> None:
        from .engines import sympy_eval

        sympy_eval.REPAIRS.reset()
        try:
            self.stages()
        except sympy_eval.RepairLimit as exc:  # bounded work: skipped with the reason, never judged unrepaired
            self.add(Check("grad", "symbolic", "high-precision repair", status="skip", message=str(exc)))

    def stages(self) -> None:
        from .engines.autograd import build, device_skip_reason
        from .engines.symbolic import Program

        case = self.case
        if not self.dtypes:
            self.add(Check("grad", self.engine, "symbolic", status="skip",
                           message=f"none of the case's dtypes {list(case.dtypes)} was requested"))
            return
        if case.impl:
            from .engines import impl

            if getattr(self.options, "no_impl", False):  # untrusted input: nothing is imported
                self.add(Check("grad", "impl", "symbolic", status="skip",
                               message="impl cases are not run under --no-impl (nothing was imported)"))
                return
            fn = impl.load(case.impl, case.base_dir, list(case.vars), case.impl_args, case.path, case.name,
                           getattr(self.options, "impl_path", ()), getattr(self.options, "impl_sys_path", False))
            fn = impl.guard(fn, case.out_shape)
        else:
            fn = build(case.ir)
        self.low = tol.lowest(case.dtypes)  # the case's, not the run's: --dtype must not move the point
        self.base = self.sample()
        try:
            self.program = Program(case.ir, {n: v.shape for n, v in case.vars.items()}, case.grad_vars)
        except ExpressionError as exc:  # an op undefined for every input (softplus(beta=0)), a size limit
            raise CaseError(str(exc), case.path, case.name, "expr") from None
        self.cotangents = self.make_cotangents()
        fwd, grads = self.reference("float64")
        if not self.reference_ok(fwd):
            return
        if self.options.verbose:
            self.result.formula = formula(case)
        reference_stage = "reference" in self.options.stages
        self.fd_full = self.check_finite_differences(fwd, grads) if reference_stage else {}
        if reference_stage:
            self.check_expect_reference(fwd, grads)
            if case.impl:
                self.check_impl_self_consistency(fn, fwd, grads)
            if case.order == 2:
                self.check_hvp(fn)
        if "autograd" not in self.options.stages:
            return
        for device in case.devices:
            why = device_skip_reason(device, self.options.devices)
            if why:  # reported, never dropped silently
                for dtype in self.dtypes:
                    self.add(Check("grad", self.engine, "symbolic", dtype=dtype, device=device, status="skip",
                                   message=why))
                continue
            for dtype in self.dtypes:
                self.check_autograd(fn, dtype, device)

    # ---- inputs ----
    def sample(self) -> dict[str, np.ndarray]:
        from .engines.autograd import round_to

        base = {}
        for name, spec in self.case.vars.items():
            if spec.value is not None:
                base[name] = spec.value
            elif spec.dtype is not None:  # int64: lo <= t < hi as torch.randint; bool: a fair coin per entry
                lo, hi = spec.domain
                base[name] = self.rng.integers(int(lo), int(hi), spec.shape).astype(np.float64)
            else:
                lo, hi = spec.domain
                if np.isfinite(hi - lo):
                    x = self.rng.uniform(lo, hi, spec.shape)
                else:  # [-1.7e308, 1.7e308]: hi - lo overflows numpy's uniform
                    x = 2 * self.rng.uniform(lo / 2, hi / 2, spec.shape)
                base[name] = round_to(x, self.low)
        return base

    def make_cotangents(self) -> list[np.ndarray]:
        """Ones (what ``expect.grad`` means), random signed ones, and every basis vector of a small output."""
        from .engines.autograd import round_to

        shape = self.program.out_shape
        cots = [np.ones(shape)]
        size = int(np.prod(shape)) if shape else 1
        if not shape:  # a scalar output: one random scale catches a backward that ignores its upstream gradient
            return [*cots, round_to(np.asarray(self.rng.uniform(0.5, 2.0)), self.low)]
        for _ in range(RANDOM_COTANGENTS):
            cots.append(round_to(self.rng.standard_normal(shape), self.low))
        if 1 < size <= SMALL_OUTPUT:
            for flat in range(size):
                basis = np.zeros(size)
                basis[flat] = 1.0
                cots.append(basis.reshape(shape))
        return cots

    def point(self, dtype: str) -> dict[str, np.ndarray]:
        from .engines.autograd import round_to

        return {n: v if self.case.vars[n].dtype else round_to(v, dtype) for n, v in self.base.items()}

    def reference(self, dtype: str):
        """Forward pass and one gradient per cotangent at ``dtype``'s point (cached per distinct point)."""
        point = self.point(dtype)
        key = b"".join(np.ascontiguousarray(v).tobytes() for v in point.values())
        if key not in self.refs:
            fwd = self.program.forward(point, kink_u=tol.UNIT_ROUNDOFF[self.low])
            grads = []
            if self.finite(fwd):
                grads.append(self.program.gradient(fwd, self.cotangents[0]))
                for c in self.cotangents[1:]:
                    grads.append(scaled(grads[0], float(c)) if np.ndim(c) == 0 else self.program.gradient(fwd, c))
            self.refs[key] = (fwd, grads)
        return self.refs[key]

    def finite(self, fwd) -> bool:
        return bool(np.all(np.isfinite(fwd.values[self.program.out])))

    def reference_ok(self, fwd) -> bool:
        out = fwd.values[self.program.out]
        undefined = self.program.outside_domain(fwd) or (first_bad_op(self.program, fwd)
                                                          if np.any(np.isnan(out)) else None)
        if undefined:
            raise CaseError(f"the expression is undefined at the sample point: {undefined} (choose vars.*.domain "
                            "or value inside the ops' domains)", self.case.path, self.case.name, "vars")
        if not np.all(np.isfinite(out)):
            where = first_bad_op(self.program, fwd)
            self.add(Check("value", "symbolic", "float64", status="skip",
                           message=f"the value overflows float64 at the sample point ({where})"))
            return False
        return True

    # ---- finite differences vs the symbolic reference ----
    def check_finite_differences(self, fwd, grads) -> dict:
        """The reference against float64 finite differences; returns entrywise differences of small vars."""
        point = self.point("float64")
        full = {}
        for ci in sorted({0, len(self.cotangents) - 1}):
            evaluate, noise = self.evaluator(ci, fwd)
            for name in self.case.grad_vars:
                g = grads[ci][name]
                if not np.all(np.isfinite(g.value)):
                    self.add(Check("fd", "symbolic", "finite differences", var=name, device="cpu", dtype="float64",
                                   status="skip", message="the reference gradient is not finite at this point"))
                    continue
                # small vars: every entry with the ones cotangent; every var: a random direction with a random
                # cotangent (the reference VJP is linear in both, so one signed random probe catches a wrong rule)
                if g.value.size <= SMALL and ci == 0:
                    full[name], _ = self.fd_entrywise(evaluate, point, name, g.value, g, noise)
                elif ci != 0:
                    self.fd_directional(evaluate, point, name, g.value, g, noise)
        return full

    def evaluator(self, ci: int, fwd, forward=None):
        """phi(x) = <cotangent, f(x)> for finite differences, with the kink signature of the reference, and the
        float64 rounding noise of one evaluation. ``forward`` (inputs -> output array) defaults to the
        reference program; an impl's own forward can stand in."""
        program, out = self.program, self.program.out
        cot = self.cotangents[ci]
        noise = 2.0**-53 * float(np.sum(np.abs(cot) * (fwd.errs[out] + np.abs(fwd.values[out])))) + 1e-300
        # the perturbed inputs x + t*v are rounded too: under cancellation (x - y with x ~ y) that dominates
        _, grads = self.reference("float64")
        if grads:
            point = self.point("float64")
            with np.errstate(invalid="ignore", over="ignore"):  # a var whose gradient is nan is not differenced
                noise += 2.0**-53 * sum(float(np.sum(np.abs(g.value) * np.abs(point[n]),
                                                     where=np.isfinite(g.value))) for n, g in grads[ci].items())

        def evaluate(inputs):
            f = program.forward(inputs, None, with_err=False, derivs=False, detached_from=fwd)
            value = f.values[out] if forward is None else forward(inputs)
            return float(np.sum(cot * value)), program.kink_signature(f)

        return evaluate, noise

    def fd_entrywise(self, evaluate, point, name, got, g, noise, kind="fd", engine="symbolic"):
        """Every entry of ``got`` (a gradient of ``name``) against finite differences; ``g`` gives the budget.
        Returns the differences (for the report's column and known answers) and the check."""
        from .engines import finite

        ests = finite.entrywise(evaluate, point, name, range(g.value.size), noise)
        values = np.array([e.value for e in ests]).reshape(g.value.shape)
        errors = np.array([e.error for e in ests]).reshape(g.value.shape)
        usable = np.isfinite(values) & ~g.ambiguous
        check = Check(kind, engine, "finite differences", var=name, dtype="float64", device="cpu")
        if not usable.any():
            notes = {e.note for e in ests if e.note} or {"every entry sits on a kink"}
            check.status, check.message = "skip", "; ".join(sorted(notes))
            self.add(check)
            return values, check
        allowed = tol.FD_SAFETY * errors + tol.derived(g.err, g.value, "float64").allowed
        tolerance = tol.Tolerance(allowed, None, None,
                                  f"{tol.FD_SAFETY:g} x Richardson error estimate + float64 budget")
        compare(check, got, values, tolerance, fd=values, judge=usable, upstream=self.cotangents[0])
        skipped = int((~usable).sum())
        if skipped and check.status == "pass":
            check.status = "warn"
            check.message = f"{skipped} entries not differenced (kink or domain edge within every step)"
        self.add(check)
        return values, check

    def fd_directional(self, evaluate, point, name, grad, g, noise, kind="fd", engine="symbolic"):
        """<grad, v> against finite differences along random directions v; ``g`` gives the budget."""
        from .engines import finite

        got, ref, allowed, notes = [], [], [], []
        for _ in range(FD_DIRECTIONS):
            v = finite.random_direction(point[name], self.rng)
            est = finite.directional(evaluate, point, {name: v}, noise)
            if not np.isfinite(est.value):
                notes.append(est.note)
                continue
            got.append(float(np.sum(grad * v)))
            ref.append(est.value)
            budget = float(np.sum(np.abs(v) * g.err))
            allowed.append(tol.FD_SAFETY * est.error + tol.SAFETY * tol.UNIT_ROUNDOFF["float64"] * budget)
        check = Check(kind, engine, "finite differences", var=name, dtype="float64", device="cpu",
                      details={"probe": "random direction"})
        if not got:
            check.status, check.message = "skip", "; ".join(sorted(set(notes)))
        else:
            tolerance = tol.Tolerance(np.array(allowed), None, None,
                                      f"{tol.FD_SAFETY:g} x Richardson error estimate + float64 budget")
            compare(check, np.array(got), np.array(ref), tolerance)
            if check.status == "fail":  # one number <g, v> per direction: no entry of g can be named from it
                check.error_matrix = None
                check.message = "<gradient, v> along a random direction v is off"
                check.diagnosis = (f"a directional probe: <g, v> disagrees with the finite difference along v; "
                                   f"it does not say which entries of the gradient of {name} are off")
            if notes and check.status == "pass":
                check.status, check.message = "warn", "; ".join(sorted(set(notes)))
        self.add(check)
        return check

    # ---- a user's implementation: its backward against its own forward, forward mode against reverse ----
    def check_impl_self_consistency(self, fn, fwd, grads) -> None:
        from .engines.autograd import input_tensor, to_numpy

        point = self.point("float64")
        names = list(self.case.vars)

        def impl_forward(inputs):
            import torch

            with torch.no_grad():
                return to_numpy(fn(**{n: input_tensor(inputs[n], "float64", "cpu", False, self.case.vars[n].dtype)
                                      for n in names}))

        try:
            self.self_fd(fn, fwd, grads, impl_forward, point)
        except BaseException as exc:  # user code: a crash is a finding, not a diffcheck error
            check = Check("self_fd", "impl", "finite differences of the impl", dtype="float64", device="cpu")
            if not self.user_failure(exc, check, "backward"):
                raise

    def self_fd(self, fn, fwd, grads, impl_forward, point) -> None:
        from .engines.autograd import run
        from .engines.impl import phase

        with phase("the impl's backward"):
            res = run(fn, point, self.case.grad_vars, "float64", "cpu", self.cotangents,
                      var_dtypes={n: v.dtype for n, v in self.case.vars.items() if v.dtype})
        for ci in sorted({0, len(self.cotangents) - 1}):
            evaluate, noise = self.evaluator(ci, fwd, impl_forward)
            for name in self.case.grad_vars:
                got, g = res.vjps[ci][name], grads[ci][name]
                if not np.all(np.isfinite(g.value)):
                    continue
                if g.value.size <= SMALL and ci == 0:
                    _, check = self.fd_entrywise(evaluate, point, name, got, g, noise, "self_fd", "impl")
                else:
                    check = self.fd_directional(evaluate, point, name, got, g, noise, "self_fd", "impl")
                check.against = "finite differences of the impl's own forward"
        self.check_jvp(fn, res, grads)

    def check_jvp(self, fn, res, grads) -> None:
        """Forward mode (torch.func.jvp) and reverse mode of the impl against the reference, float64."""
        from .engines import finite
        from .engines.autograd import jvp

        point = self.point("float64")
        names = self.case.grad_vars
        v = {n: finite.random_direction(point[n], self.rng) for n in names}
        check = Check("jvp", "impl", "symbolic (forward mode vs reverse mode)", dtype="float64", device="cpu",
                      details={"probe": "random direction"})
        try:
            jv = jvp(fn, point, names, v, "float64", "cpu", {n: s.dtype for n, s in self.case.vars.items() if s.dtype})
        except Exception as exc:  # forward mode is optional for a custom Function
            exc = getattr(exc, "exception", None) or exc  # what the impl itself raised, under the guard's wrapper
            check.status = "skip"
            reason = " ".join(str(exc).split())  # whole, on one line
            check.message = f"forward mode not supported by the impl: {type(exc).__name__}: {reason}"
            self.add(check)
            return
        got, ref, allowed = [], [], []
        for ci in sorted({0, len(self.cotangents) - 1}):
            c = self.cotangents[ci]
            if np.shape(jv) != np.shape(np.broadcast_to(c, np.shape(jv))):
                break
            got.append(float(np.sum(c * jv)))
            ref.append(sum(float(np.sum(grads[ci][n].value * v[n])) for n in names))
            budget = sum(float(np.sum(np.abs(v[n]) * grads[ci][n].err)) for n in names)
            allowed.append(2 * tol.SAFETY * tol.UNIT_ROUNDOFF["float64"] * budget + 1e-300)
        tolerance = tol.Tolerance(np.array(allowed), None, None, "derived: float64 budget of <J^T c, v>")
        self.add(compare(check, np.array(got), np.array(ref), tolerance))
        if check.status == "fail":  # one number <c, J v> per cotangent: no entry can be named from it
            check.error_matrix = None
            check.message = f"{check.bad} of {check.entries} probes <c, J v> (one per cotangent c) are off"
            check.diagnosis = ("a directional probe: forward mode's <c, J v> along a random v disagrees with the "
                               "reference; it does not say which entries are off")

    def check_hvp(self, fn) -> None:
        """Hessian-vector products by double backward against Richardson differences of the exact symbolic
        gradient (second derivatives have no error budget yet: the allowance is 64 u per entry, stated)."""
        from .engines import finite
        from .engines.autograd import hvp
        from .engines.impl import phase

        point = self.point("float64")
        names = self.case.grad_vars
        cot = self.cotangents[-1]
        v = {n: finite.random_direction(point[n], self.rng) for n in names}

        base, _ = self.reference("float64")

        def gradient(inputs):  # detach() values stay those of the base point, as in double backward
            f = self.program.forward(inputs, None, with_err=True, detached_from=base)
            grads = self.program.vjp(f, cot, with_err=False)
            return {n: grads[n][0] for n in names}

        ref, err = finite.directional_vector(gradient, point, v)
        for dtype in self.dtypes:
            try:
                with phase("the impl's double backward"):
                    got = hvp(fn, self.point(dtype), names, cot, v, dtype, "cpu",
                              {n: s.dtype for n, s in self.case.vars.items() if s.dtype})
            except BaseException as exc:  # user code or an op without double backward
                check = Check("hvp", self.engine, "symbolic", dtype=dtype, device="cpu")
                if self.case.impl and self.user_failure(exc, check, "double backward"):
                    continue
                if not isinstance(exc, Exception):
                    raise
                self.add(Check("hvp", self.engine, "symbolic", dtype=dtype, device="cpu", status="fail",
                               message=f"double backward raised {type(exc).__name__}: {str(exc)[:160]}"))
                continue
            u = tol.UNIT_ROUNDOFF[dtype] + tol.UNIT_ROUNDOFF["float64"]
            for n in names:
                scale = np.abs(ref[n]) + float(np.sqrt(np.mean(np.square(ref[n])))) if ref[n].size else 0.0
                allowed = tol.FD_SAFETY * err[n] + 64 * u * scale + tol.FLOOR * tol.TINY[dtype]
                tolerance = tol.Tolerance(allowed, None, None, "4 x Richardson error + 64 u x |Hv| (second order)")
                self.add(compare(Check("hvp", self.engine, "symbolic", var=n, dtype=dtype, device="cpu"),
                                 got[n], ref[n], tolerance))

    def user_failure(self, exc: BaseException, check: Check, phase_name: str) -> bool:
        """Record ``exc``, escaping a call of the impl, as the failing ``check`` with the structured
        ``details["impl_failure"]`` (a skip where torch has no kernel for the dtype). False when it must
        propagate: KeyboardInterrupt and the case's timeout."""
        from .engines.impl import ImplFailure, Timeout

        if isinstance(exc, KeyboardInterrupt | Timeout):
            return False
        failure = ImplFailure.of(exc, phase_name)
        cause = failure.exception
        if cause is not None and "not implemented for" in str(cause):
            check.status = "skip"
            check.message = f"torch raised {type(cause).__name__}: {str(cause).strip().splitlines()[0][:200]}"
        else:
            check.status, check.message = "fail", failure.message
            check.details["impl_failure"] = dict(failure.details, message=failure.message)
        self.add(check)
        return True

    # ---- known answers ----
    def check_expect_reference(self, fwd, grads) -> None:
        expect = self.case.expect
        if expect is None:
            return
        if expect.value is not None:
            t = tol.expected(expect.value, expect.atol, expect.rtol, fwd.errs[self.program.out], "float64")
            self.add(compare(Check("expect_value", "symbolic", "expect", dtype="float64"),
                             fwd.values[self.program.out], expect.value, t))
        for name, want in expect.grad.items():
            g = grads[0][name]
            t = tol.expected(want, expect.atol, expect.rtol, g.err, "float64")
            self.add(compare(Check("expect_grad", "symbolic", "expect", var=name, dtype="float64"),
                             g.value, want, t, lo=g.lo, hi=g.hi))
            if name in self.fd_full and np.all(np.isfinite(self.fd_full[name])):
                t_fd = tol.Tolerance(t.allowed + 1e-6 * np.abs(want), t.atol, t.rtol,
                                     t.source + " + 1e-6 relative for differencing")
                self.add(compare(Check("expect_grad", "finite", "expect", var=name, dtype="float64"),
                                 self.fd_full[name], want, t_fd, lo=g.lo, hi=g.hi))

    # ---- autograd vs the reference ----
    def check_autograd(self, fn, dtype: str, device: str) -> None:
        from .engines.autograd import run
        from .engines.impl import phase

        case = self.case
        fwd, grads = self.reference(dtype)
        out = self.program.out
        if not grads:  # the inputs rounded to this dtype leave the function's domain (1e-30 is 0 in float16)
            self.add(Check("grad", self.engine, "symbolic", dtype=dtype, device=device, status="skip",
                           message=f"at the inputs rounded to {dtype} the value is not finite "
                                   f"({first_bad_op(self.program, fwd)})"))
            return
        literal = unrepresentable_literal(case.ir, dtype)
        if literal:
            self.add(Check("grad", self.engine, "symbolic", dtype=dtype, device=device, status="skip",
                           message=literal))
            return
        jump = self.program.near_jump(fwd, tol.UNIT_ROUNDOFF[dtype])
        if jump:  # a mask or floor may flip in this dtype: reported, never a false failure
            self.add(Check("grad", self.engine, "symbolic", dtype=dtype, device=device, status="skip", message=jump))
            return
        peak = max([fwd.peak] + [float(np.max(np.abs(g.value), initial=0.0))
                                 for gs in grads for g in gs.values() if np.all(np.isfinite(g.value))])
        if peak > tol.MAX[dtype]:
            self.add(Check("grad", self.engine, "symbolic", dtype=dtype, device=device, status="skip",
                           message=f"values reach {peak:.3g}, beyond {dtype}'s largest {tol.MAX[dtype]:.3g}"))
            return
        try:
            # torch's own ops on CPU: once per device is enough for the zero-cotangent and determinism checks;
            # a user's implementation, and CUDA (atomics), get them in every dtype
            semantic = bool(case.impl) or device != "cpu" or dtype == self.dtypes[0]
            with phase("the impl's backward"):
                res = run(fn, self.point(dtype), case.grad_vars, dtype, device, self.cotangents, semantic,
                          {n: v.dtype for n, v in case.vars.items() if v.dtype})
        except BaseException as exc:  # a user's impl: whatever it raises is a finding about it
            if case.impl and self.user_failure(exc, Check("grad", self.engine, "symbolic", dtype=dtype,
                                                          device=device), "backward"):
                return
            if not isinstance(exc, (RuntimeError, NotImplementedError, TypeError)):
                raise
            message = str(exc).strip().splitlines()[0][:200]
            status = "skip" if "not implemented for" in message else "fail"
            self.add(Check("grad", self.engine, "symbolic", dtype=dtype, device=device, status=status,
                           message=f"torch raised {type(exc).__name__}: {message}"))
            return
        if res.problems:
            details = {"nondeterministic": res.nondeterministic} if res.nondeterministic else {}
            if res.out_dtype and res.out_dtype != dtype:
                details["out_dtype"] = res.out_dtype
            self.add(Check("semantic", self.engine, "input metadata", dtype=dtype, device=device, status="fail",
                           message="; ".join(res.problems), details=details))
        elif res.semantic_ran:  # recorded when it passes too, so -v and the JSON show what ran
            self.add(Check("semantic", self.engine, "input metadata", dtype=dtype, device=device,
                           message="gradients have their inputs' dtype, device and shape; a zero upstream gradient "
                                   "gives zero; backward run twice gives the same gradient"))
        value = self.add(compare(Check("value", self.engine, "symbolic", dtype=dtype, device=device), res.value,
                                 fwd.values[out], tol.derived(fwd.errs[out], fwd.values[out], dtype, case.tolerance)))
        if case.impl and value.status == "fail" and dtype == "float64":
            self.mark_lower_precision(value, [(res.value, fwd.values[out], fwd.errs[out])])
        for name in case.grad_vars:
            check = self.add(self.worst_over_cotangents(res, grads, name, dtype, device))
            if case.impl and check.status == "fail" and dtype == "float64":
                self.mark_lower_precision(check, [(v[name], g[name].value, g[name].err)
                                                  for v, g in zip(res.vjps, grads)])
        if case.expect is not None:
            self.check_expect_autograd(res, fwd, grads, dtype, device)

    def mark_lower_precision(self, check: Check, results) -> None:
        """A float64 result of a user's impl that fails, measured on float32's scale: when its error fits
        float32's rounding budget (``results``: (got, reference, budget) per cotangent), the impl likely computes
        in float32 inside; ``details["lower_precision"]`` records the margin for blame to decide from."""
        margins = []
        for got, ref, budget in results:
            got, ref = np.asarray(got, dtype=float), np.asarray(ref, dtype=float)
            if got.shape != ref.shape:
                return
            allowed = tol.derived(budget, ref, "float32").allowed
            with np.errstate(divide="ignore", invalid="ignore"):
                margin = np.where(got == ref, 0.0, np.abs(got - ref) / allowed)
            margins.append(float(np.max(np.where(np.isnan(margin), np.inf, margin), initial=0.0)))
        worst = max(margins, default=np.inf)
        if worst <= 1.0:
            check.details["lower_precision"] = {"dtype": "float32", "margin": worst}
            check.message += f"; the error fits float32's rounding budget (margin {worst:.2g} on float32's scale)"

    def worst_over_cotangents(self, res, grads, name, dtype, device) -> Check:
        """Judge every cotangent's VJP; report the one with the worst margin in full."""
        margins, tolerances = [], []
        for vjp, ref in zip(res.vjps, grads):
            g = ref[name]
            if not np.all(np.isfinite(g.value)):
                return Check("grad", self.engine, "symbolic", var=name, dtype=dtype, device=device, status="skip",
                             message="the reference gradient is not finite at this point (a singularity)")
            tolerances.append(tol.derived(g.err, g.value, dtype, self.case.tolerance))
            margins.append(quick_margin(vjp[name], g, tolerances[-1].allowed))
        worst_ci = int(np.argmax(margins))
        g = grads[worst_ci][name]
        worst = compare(Check("grad", self.engine, "symbolic", var=name, dtype=dtype, device=device),
                        res.vjps[worst_ci][name], g.value, tolerances[worst_ci],
                        lo=g.lo, hi=g.hi, fd=self.fd_full.get(name) if worst_ci == 0 else None,
                        upstream=self.cotangents[worst_ci])
        if worst.status == "fail" and worst.worst:
            self.add_fd_column(worst, grads, worst_ci, name)
        what = cotangent_name(worst_ci, len(self.cotangents))
        worst.message = (worst.message + "; " if worst.message else "") + \
            f"{len(res.vjps)} cotangents, worst: {what}"
        return worst

    def add_fd_column(self, check: Check, grads, ci: int, name: str) -> None:
        """Finite differences of the failing entries, so the report shows all three values for each."""
        from .engines import finite

        fwd, _ = self.reference("float64")
        evaluate, noise = self.evaluator(ci, fwd)
        shape = grads[ci][name].value.shape
        flats = [int(np.ravel_multi_index(e.index, shape)) if shape else 0 for e in check.worst]
        for entry, est in zip(check.worst, finite.entrywise(evaluate, self.point("float64"), name, flats, noise)):
            entry.fd = est.value if np.isfinite(est.value) else None

    def check_expect_autograd(self, res, fwd, grads, dtype, device) -> None:
        expect = self.case.expect
        if expect.value is not None:
            t = tol.expected(expect.value, expect.atol, expect.rtol, fwd.errs[self.program.out], dtype)
            self.add(compare(Check("expect_value", self.engine, "expect", dtype=dtype, device=device),
                             res.value, expect.value, t))
        for name, want in expect.grad.items():
            g = grads[0][name]
            t = tol.expected(want, expect.atol, expect.rtol, g.err, dtype)
            self.add(compare(Check("expect_grad", self.engine, "expect", var=name, dtype=dtype, device=device),
                             res.vjps[0][name], want, t, lo=g.lo, hi=g.hi))


def scaled(grads: dict, r: float) -> dict:
    """The reference VJP of a scalar output with cotangent r, from the one with cotangent 1: exactly r times its
    value; its rounding budget scales by |r|, plus one rounding of the scaling itself."""
    from .engines.symbolic import Gradient

    out = {}
    for name, g in grads.items():
        value, lo, hi = g.value * r, g.lo * r, g.hi * r
        out[name] = Gradient(value, np.abs(r) * g.err + np.abs(value), np.minimum(lo, hi), np.maximum(lo, hi))
    return out


def quick_margin(got, g, allowed) -> float:
    """The largest error / allowed over the entries (nan counts as infinite), without the report's detail."""
    got = np.asarray(got, dtype=float)
    if got.shape != g.value.shape:
        return float("inf")
    err = np.abs(got - g.value)
    if g.ambiguous.any():
        err = np.where(g.ambiguous, np.maximum(np.maximum(g.lo - got, got - g.hi), 0.0), err)
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = np.where(err == 0, 0.0, err / allowed)
    margin = np.where(np.isnan(margin), np.inf, margin)
    # an entry that cannot be judged (allowed or reference not finite) ranks above any pass, below any fail
    unjudged = np.isfinite(got) & ~(np.isfinite(allowed) & np.isfinite(g.value))
    return float(np.max(np.where(unjudged, 1.0, margin), initial=0.0))


def cotangent_name(index: int, total: int) -> str:
    if index == 0:
        return "ones"
    if index <= RANDOM_COTANGENTS:
        return f"random #{index}"
    return f"basis #{index - RANDOM_COTANGENTS - 1}"


def unrepresentable_literal(ir, dtype: str) -> str | None:
    """Why ``dtype`` cannot run the expression as written: a number literal or parameter beyond its range
    (x**1e300 in float32 is x**inf), or None."""
    for n in walk(ir):
        values = [("literal", n.value)] if isinstance(n, Const) else \
            [(f"{n.op}() parameter {k} =", v) for k, v in n.params] if isinstance(n, Call) else []
        for what, v in values:
            if isinstance(v, float) and abs(v) > tol.MAX[dtype]:
                return f"the {what} {v:g} is not representable in {dtype} (its largest is {tol.MAX[dtype]:.3g})"
    return None


def first_bad_op(program, fwd) -> str:
    """Name the first step whose value is not finite though its inputs are."""
    for i, slot in enumerate(program.slots):
        if slot.kind != "instr":
            continue
        v = np.asarray(fwd.values[i])
        ins = [np.asarray(fwd.values[a]) for a in slot.instr.args]
        if not np.all(np.isfinite(v)) and all(np.all(np.isfinite(a)) for a in ins):
            kind = "nan" if np.any(np.isnan(v)) else "inf"
            bad = ins[0][np.broadcast_to(~np.isfinite(v), v.shape)] if ins[0].shape == v.shape else ins[0]
            sample = float(np.asarray(bad).reshape(-1)[0]) if np.size(bad) else float("nan")
            return f"{slot.instr.op} gives {kind} (first input there: {sample:.6g})"
    return "an intermediate value is not finite"


FORMULA_NODES = 60  # -v prints no formula for larger expressions
FORMULA_OPS = 40  # derivatives with more operations are printed without sympy.simplify
FORMULA_SECONDS = 2.0  # and simplify gets this long (where a timer signal is available), else unsimplified


def _within(seconds: float, fn, arg):
    """fn(arg), or arg unchanged when fn takes longer than ``seconds`` (SIGALRM; main thread only, elsewhere
    the size limits above are the only bound)."""
    import signal
    import threading

    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        return arg

    class _Late(Exception):
        pass

    def late(*_):
        raise _Late

    old = signal.signal(signal.SIGALRM, late)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(arg)
    except _Late:
        return arg
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def formula(case: Case, limit: int = 400) -> list[str]:
    """``d/dw expr = ...`` for expressions made of elementwise ops under at most one outer sum or mean."""
    import sympy as sp

    from .engines.symbolic import local_rules

    node, scale = case.ir, None
    if isinstance(node, Call) and node.op in ("sum", "mean") and node.param("dim") is None:
        scale = node.op
        node = node.args[0]
    if any(isinstance(n, Call) and (OPS[n.op].kind != "elementwise" or OPS[n.op].zero_grad and not OPS[n.op].mask)
           for n in walk(node)):  # floor, detach: sympy would differentiate them wrongly (or forever)
        return []
    symbols = {name: sp.Symbol(name, real=True) for name in case.vars}
    count = sp.Symbol(next(n for n in ("N", "N_entries", "N__") if n not in case.vars))  # a var may be named N

    if sum(1 for _ in walk(node)) > FORMULA_NODES:
        return []

    def build(n):
        if isinstance(n, Const):  # a huge integer stays a Float: 10**10**10 must not be computed exactly
            small = float(n.value).is_integer() and abs(n.value) <= 1e6
            return sp.Integer(int(n.value)) if small else sp.Float(n.value)
        if isinstance(n, Var):
            return symbols[n.name]
        rules = local_rules(n.op, tuple(sorted(n.params)))
        return rules.value.subs(dict(zip(rules.symbols, [build(a) for a in n.args])), simultaneous=True)

    try:
        expr = build(node)
    except (TypeError, ValueError):
        return []
    lines = []
    for name in case.grad_vars:
        spec = case.vars[name]
        if spec.shape != case.out_shape and scale is None:
            continue
        if any(other.shape != spec.shape for other in case.vars.values() if other.shape and scale) and \
                spec.shape != tuple(np.broadcast_shapes(*(v.shape for v in case.vars.values()))):
            continue
        d = sp.diff(expr, symbols[name])
        if sp.count_ops(d) <= FORMULA_OPS:  # simplify is exponential in the worst case: past this, as derived
            d = _within(FORMULA_SECONDS, sp.simplify, d)
        if scale == "mean":
            d = d / count
        text = f"d/d{name} {case.expr} = {sp.sstr(d, full_prec=False)}" + (" (per entry)" if spec.shape else "")
        if scale == "mean":
            text += f", {count} = number of entries"
        if len(text) <= limit:
            lines.append(text)
    return lines
