"""The sampled point of one gradient case, built once and frozen before any stage runs: the dtypes to check, the
least precise dtype (inputs are sampled in it, so every dtype computes at the same point), the sampled values,
the lowered program, the cotangents, the float64 reference (cached per distinct point) and the entrywise finite
differences of small variables. ``stage_rng`` gives each stage its own random stream.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import tolerance as tol
from ..casefile import Case
from ..errors import CaseError, ExpressionError

SMALL = 16  # variables with at most this many entries get a full entrywise finite-difference gradient
SMALL_OUTPUT = 8  # outputs with at most this many entries get their full Jacobian (one VJP per entry)
RANDOM_COTANGENTS = 2


def stage_rng(seed: int, name: str) -> np.random.Generator:
    """The random stream of one stage: from the case seed and the stage's name, so adding a stage (or a draw in
    one) moves no other stage's draws."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


@dataclass(frozen=True)
class Point:
    case: Case
    seed: int
    dtypes: list[str]  # the case's dtypes the run asked for
    devices: tuple[str, ...]  # the devices the run asked for (--device)
    fn: Any  # what is judged: the impl (guarded) or the expression built in torch
    engine: str  # "impl" or "autograd"
    low: str  # the case's least precise dtype
    base: dict[str, np.ndarray]  # the sampled inputs, rounded to ``low``
    program: Any  # engines.symbolic.Program
    cotangents: list[np.ndarray]
    fd_method: Any = None  # Options.fd_method, carried for engines.finite
    fd_full: dict[str, tuple] = field(default_factory=dict)  # var -> (values, errors, notes) of small vars
    refs: dict[tuple, tuple] = field(default_factory=dict, repr=False)  # the reference cache
    rounded: dict[tuple, tuple] = field(default_factory=dict, repr=False)  # dtype -> (inputs, reference key)
    surrogates: dict[str, Any] = field(default_factory=dict)  # var -> Program of its declared surrogate rule

    @property
    def fd(self):
        """The finite-difference method of the run (``Options.fd_method``), or engines.finite's default."""
        from ..engines import finite

        return self.fd_method or finite.DEFAULT

    @property
    def var_dtypes(self) -> dict[str, str]:
        """The int64/bool vars: they keep their dtype whatever the dtype under check."""
        return {n: v.dtype for n, v in self.case.vars.items() if v.dtype}

    def at(self, dtype: str) -> dict[str, np.ndarray]:
        """The inputs rounded to ``dtype`` (widened back to float64)."""
        return dict(self._rounded(dtype)[0])

    def _rounded(self, dtype: str) -> tuple:
        """The inputs at ``dtype`` and the reference cache's key (the first dtype whose inputs are the same bits),
        rounded once per dtype: every stage asks for them, several times."""
        from ..engines.autograd import round_to

        key = (dtype, id(self.base))  # a replace() with other inputs does not see these
        if key not in self.rounded:
            point = {n: v if self.case.vars[n].dtype else round_to(v, dtype) for n, v in self.base.items()}
            same = next((ref for (_, base), (p, ref) in self.rounded.items() if base == id(self.base) and
                         all(_same_bits(p[n], point[n]) for n in point)), None)
            self.rounded[key] = (point, same or key)  # the reference cache's key: the first dtype at this point
        return self.rounded[key]

    def reference(self, dtype: str):
        """Forward pass and one gradient per cotangent at ``dtype``'s point (cached per distinct point)."""
        point, key = self._rounded(dtype)
        point = dict(point)
        if key not in self.refs:
            fwd = self.program.forward(point, kink_u=tol.UNIT_ROUNDOFF[self.low])
            grads = []
            if self.finite(fwd):
                grads.append(self.program.gradient(fwd, self.cotangents[0]))
                for c in self.cotangents[1:]:
                    grads.append(scaled(grads[0], float(c)) if np.ndim(c) == 0 else self.program.gradient(fwd, c))
            self.refs[key] = (fwd, grads)
        return self.refs[key]

    def expected(self, dtype: str):
        """What the judged backward must give: ``reference(dtype)`` with each surrogate var's gradient replaced by
        its declared rule evaluated at every cotangent (g), with that evaluation's own rounding budget. The one
        place where a surrogate stands in for the true derivative."""
        fwd, grads = self.reference(dtype)
        if not self.surrogates or not grads:
            return fwd, grads
        key = b"surrogate" + b"".join(np.ascontiguousarray(v).tobytes() for v in self.at(dtype).values())
        if key not in self.refs:
            self.refs[key] = (fwd, [{**g, **{n: self.surrogate_gradient(n, dtype, c) for n in self.surrogates}}
                                    for g, c in zip(grads, self.cotangents)])
        return self.refs[key]

    def surrogate_gradient(self, name: str, dtype: str, cotangent):
        """The surrogate rule of ``name`` at ``dtype``'s point with g = ``cotangent``: a Gradient without a kink
        hull (the rule is the answer as declared)."""
        from ..casefile import SURROGATE_G
        from ..engines.symbolic import Gradient

        program, shape = self.surrogates[name], self.case.vars[name].shape
        inputs = {**self.at(dtype), SURROGATE_G: np.broadcast_to(cotangent, self.program.out_shape)}
        fwd = program.forward(inputs, kink_u=tol.UNIT_ROUNDOFF[self.low])
        value = np.array(np.broadcast_to(fwd.values[program.out], shape))
        return Gradient(value, np.array(np.broadcast_to(fwd.errs[program.out], shape)), value, value)

    def surrogate_jump(self, dtype: str) -> str | None:
        """Why ``dtype`` may evaluate a surrogate's mask on the other side (an entry within rounding distance of
        its jump), or None."""
        from ..casefile import SURROGATE_G

        for name, program in self.surrogates.items():
            for c in self.cotangents:
                inputs = {**self.at(dtype), SURROGATE_G: np.broadcast_to(c, self.program.out_shape)}
                why = program.near_jump(program.forward(inputs, kink_u=tol.UNIT_ROUNDOFF[self.low]),
                                        tol.UNIT_ROUNDOFF[dtype])
                if why:
                    return f"surrogate.{name}: {why}"
        return None

    def finite(self, fwd) -> bool:
        return bool(np.all(np.isfinite(fwd.values[self.program.out])))

    def fd_values(self, name: str):
        """The entrywise finite differences of ``name`` (ones cotangent), or None."""
        return self.fd_full[name][0] if name in self.fd_full else None

    def evaluator(self, ci: int, forward=None):
        """phi(x) = <cotangent, f(x)> for finite differences, with the kink signature of the reference, and the
        float64 rounding noise of one evaluation. ``forward`` (inputs -> output array) defaults to the
        reference program; an impl's own forward can stand in."""
        program, out = self.program, self.program.out
        cot = self.cotangents[ci]
        fwd, grads = self.reference("float64")
        with np.errstate(over="ignore", invalid="ignore"):  # near float64's range the noise is inf: no FD judged
            noise = 2.0**-53 * float(np.sum(np.abs(cot) * (fwd.errs[out] + np.abs(fwd.values[out])))) + 1e-300
        # the perturbed inputs x + t*v are rounded too: under cancellation (x - y with x ~ y) that dominates
        if grads:
            point = self.at("float64")
            with np.errstate(invalid="ignore", over="ignore"):  # a var whose gradient is nan is not differenced
                noise += 2.0**-53 * sum(float(np.sum(np.abs(g.value) * np.abs(point[n]),
                                                     where=np.isfinite(g.value))) for n, g in grads[ci].items())

        def evaluate(inputs):
            f = program.forward(inputs, None, with_err=False, derivs=False, detached_from=fwd)
            value = f.values[out] if forward is None else forward(inputs)
            with np.errstate(invalid="ignore", over="ignore"):  # inf or nan: a step the differences reject
                phi = float(np.add.reduce(cot * value, axis=None))  # np.sum's reduction, without its wrapper
            return phi, program.kink_signature(f)

        from ..engines.symbolic import Program

        if forward is None and isinstance(program, Program):  # a Python reference is called one point at a time
            evaluate.kinkless = not program._kinked()  # its kink signature is [] at every point
            from ..engines import batched

            def many(inputs, var, stack):
                """phi and the kink signature at ``inputs`` with ``var`` taking each row of ``stack``, in one pass;
                None where the program has a step the batched pass does not know."""
                if not batched.supported(program, var):
                    return None
                values, sig = batched.evaluate(program, inputs, var, stack, detached_from=fwd)
                with np.errstate(invalid="ignore", over="ignore"):
                    return [float(np.add.reduce(cot * v, axis=None)) for v in values], sig

            evaluate.many = many
        return evaluate, noise


def _same_bits(a, b) -> bool:
    """Bit-for-bit equal arrays (0.0 and -0.0 differ), one variable at a time."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def build_point(case: Case, options, seed: int, fn, dtypes: list[str]) -> Point:
    """Sample the inputs and cotangents (from the case seed's stream; the stages draw from ``stage_rng``) and
    lower the expression (a CaseError where it cannot be). ``fd_full`` is filled by ``run_gradient_case`` once
    the reference is known to be finite."""
    rng = np.random.default_rng(seed)  # the case seed's own stream: every sampled point is what it always was
    low = tol.lowest(case.dtypes)  # the case's, not the run's: --dtype must not move the point
    shared = None if case.callable_reference else _shared(case, seed)
    if shared is not None:  # the same case and seed again (another dtype's pytest item): the same point
        return Point(case, seed, dtypes, tuple(options.devices), fn, "impl" if case.impl else "autograd", low,
                     fd_method=getattr(options, "fd_method", None), surrogates=surrogate_programs(case), **shared)
    base = sample(case, rng, low)
    if case.callable_reference:  # a Python reference (or the impl alone): run once for the output's shape
        from ..engines.callable_ref import program_for

        program, case, fn = program_for(case, options, base, fn, dtypes)
    else:
        try:
            program = _program(case)
        except ExpressionError as exc:  # an op undefined for every input (softplus(beta=0)), a size limit
            raise CaseError(str(exc), case.path, case.name, "expr") from None
    cots = cotangents(program.out_shape, rng, low)
    if case.outputs:  # several outputs: value-only ones get a zero cotangent
        from ..outputs import mask_cotangents

        cots = mask_cotangents(cots, case.outputs)
    point = Point(case, seed, dtypes, tuple(options.devices), fn, "impl" if case.impl else "autograd", low, base,
                  program, cots, getattr(options, "fd_method", None), surrogates=surrogate_programs(case))
    if not case.callable_reference:
        _remember(point)
    return point


_LATEST: list = []  # [case, seed, the fields a Point at that seed shares]: the latest case only, so a large
# case's reference is not kept alive past the next case


def _shared(case: Case, seed: int) -> dict | None:
    """The sampled inputs, program and cotangents of ``case`` at ``seed`` if this process has built them, with
    their reference and rounding caches: what another dtype's pytest item would otherwise compute again. Keyed
    by identity (a case is never changed once built); none of these depends on the run's dtypes, devices or
    impl."""
    return _LATEST[2] if _LATEST and _LATEST[0] is case and _LATEST[1] == seed else None


def _remember(point: Point) -> None:
    _LATEST[:] = [point.case, point.seed, {"base": point.base, "program": point.program,
                                           "cotangents": point.cotangents, "refs": point.refs,
                                           "rounded": point.rounded}]


def surrogate_programs(case: Case) -> dict:
    """The lowered ``surrogate`` rules, one program per var, over the vars and g (the output's shape)."""
    from ..casefile import SURROGATE_G
    from ..engines.symbolic import Program

    shapes = {**{n: v.shape for n, v in case.vars.items()}, SURROGATE_G: case.out_shape}
    programs = {}
    for name, (_, ir) in case.surrogate.items():
        try:
            programs[name] = Program(ir, shapes, ())
        except ExpressionError as exc:
            raise CaseError(str(exc), case.path, case.name, f"surrogate.{name}") from None
    return programs
_PROGRAMS: dict = {}  # id(case.ir) -> (ir, shapes, grad vars, Program): the same case run again (another dtype's
_PROGRAMS_KEPT = 256  # pytest item, a benchmark) reuses its lowered program


def _program(case: Case):
    """The lowered program of ``case``, built once per expression object, var shapes and differentiated vars (a
    Program is never changed after it is built). Keyed by identity, never by value: Const(0.0) == Const(-0.0)."""
    from ..engines.symbolic import Program

    shapes = {n: tuple(v.shape) for n, v in case.vars.items()}
    hit = _PROGRAMS.get(id(case.ir))
    if hit is not None and hit[0] is case.ir and hit[1] == shapes and hit[2] == case.grad_vars:
        return hit[3]
    program = Program(case.ir, shapes, case.grad_vars)
    if len(_PROGRAMS) >= _PROGRAMS_KEPT:
        _PROGRAMS.pop(next(iter(_PROGRAMS)))
    _PROGRAMS[id(case.ir)] = (case.ir, shapes, case.grad_vars, program)
    return program


def sample(case: Case, rng, low: str) -> dict[str, np.ndarray]:
    from ..engines.autograd import round_to

    base = {}
    for name, spec in case.vars.items():
        if spec.value is not None:
            base[name] = spec.value
        elif spec.dtype is not None:  # int64: lo <= t < hi as torch.randint; bool: a fair coin per entry
            lo, hi = spec.domain
            base[name] = rng.integers(int(lo), int(hi), spec.shape).astype(np.float64)
        else:
            lo, hi = spec.domain
            wide = not np.isfinite(hi - lo)  # [-1.7e308, 1.7e308]: hi - lo overflows numpy's uniform
            x = 2 * rng.uniform(lo / 2, hi / 2, spec.shape) if wide else rng.uniform(lo, hi, spec.shape)
            base[name] = round_to(x, low)
    return base


def cotangents(shape, rng, low: str) -> list[np.ndarray]:
    """Ones (what ``expect.grad`` means), random signed ones, and every basis vector of a small output."""
    from ..engines.autograd import round_to

    cots = [np.ones(shape)]
    size = int(np.prod(shape)) if shape else 1
    if not shape:  # a scalar output: one random scale catches a backward that ignores its upstream gradient
        return [*cots, round_to(np.asarray(rng.uniform(0.5, 2.0)), low)]
    for _ in range(RANDOM_COTANGENTS):
        cots.append(round_to(rng.standard_normal(shape), low))
    if 1 < size <= SMALL_OUTPUT:
        for flat in range(size):
            basis = np.zeros(size)
            basis[flat] = 1.0
            cots.append(basis.reshape(shape))
    return cots


def entrywise_fd(point: Point) -> dict[str, tuple]:
    """Every entry of each small variable's reference gradient (ones cotangent) by finite differences:
    var -> (values, errors, notes). Variables whose reference gradient is not finite are left out."""
    _, grads = point.reference("float64")
    small = [name for name in point.case.grad_vars
             if grads[0][name].value.size <= SMALL and np.all(np.isfinite(grads[0][name].value))]
    if not small:  # no evaluator (its noise sums over every gradient) for a case without a small var
        return {}
    evaluate, noise = point.evaluator(0)
    x = point.at("float64")
    return {name: difference_entries(evaluate, x, name, grads[0][name].value.shape, noise, point.fd)
            for name in small}


def difference_entries(evaluate, x, name: str, shape, noise: float, method=None) -> tuple:
    """(values, error estimates, notes) of every entry of d phi / d name by Richardson differences."""
    from ..engines import finite

    ests = finite.entrywise(evaluate, x, name, range(int(np.prod(shape)) if shape else 1), noise, method=method)
    return (np.array([e.value for e in ests]).reshape(shape), np.array([e.error for e in ests]).reshape(shape),
            {e.note for e in ests if e.note})


def scaled(grads: dict, r: float) -> dict:
    """The reference VJP of a scalar output with cotangent r, from the one with cotangent 1: exactly r times its
    value; its rounding budget scales by |r|, plus one rounding of the scaling itself."""
    from ..engines.symbolic import Gradient

    out = {}
    for name, g in grads.items():
        value = g.value * r
        if g.lo is g.value and g.hi is g.value:  # no kink: the hull is the value, scaled alike
            out[name] = Gradient(value, np.abs(r) * g.err + np.abs(value), value, value)
            continue
        lo, hi = g.lo * r, g.hi * r
        out[name] = Gradient(value, np.abs(r) * g.err + np.abs(value), np.minimum(lo, hi), np.maximum(lo, hi))
    return out


def cotangent_name(index: int, total: int, outputs=()) -> str:
    if index == 0:
        return "ones"
    if index <= RANDOM_COTANGENTS:
        return f"random #{index}"
    if outputs:  # several outputs: the basis vector's entry by its output's name
        from ..outputs import locate

        output, local = locate(outputs, index - RANDOM_COTANGENTS - 1)
        return f"basis {output.name}{local}"
    return f"basis #{index - RANDOM_COTANGENTS - 1}"


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
