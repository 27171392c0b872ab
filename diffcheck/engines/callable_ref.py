"""A Python function as the reference: ``reference = "module:function"``, or, in a case with neither ``expr`` nor
``reference``, the impl itself. ``CallableProgram`` has the small interface of ``engines.symbolic.Program`` that
the check stages read (``forward``, ``gradient``, ``vjp``, ``out``, ``out_shape``, ...), so every first-order
check runs unchanged: values and VJPs are the function's own, in float64 on CPU, VJPs by torch autograd (for the
impl alone that is its own backward, verified against finite differences by the ``reference`` stage like any
reference).

Without a symbolic error budget the budget of each entry (units of u, as ``tolerance.derived`` expects) is
measured. For a result T (the value, or the VJP with one cotangent c) at the point x, per entry e:

- ``own``: the reference run in each lower dtype d under test, against its float64 self at the same point, at x
  and at NEARBY - 1 points x (1 + 1e-3 xi) rounded to d: max_k |T_d(x_k) - T_64(x_k)| / u_d (a Python reference
  only: the impl alone is what is judged, so it never measures its own tolerance);
- ``perturbed``: the float64 result with every input and cotangent entry perturbed by one relative rounding of
  float32, PERTURBED times: max_k |T_64(x (1 + u xi_k), c (1 + u eta_k)) - T_64(x, c)| / u (u = u_float32,
  xi, eta uniform in [-1, 1]) -- the error a backward-stable computation makes;
- m(e) = max(own, perturbed); ``budget(e) = MULTIPLIER x max(m(e), rms(m), rel x |T(e)|) + |T(e)|``, where the
  per-tensor terms are rms(m) over T's entries and rel = the median of m / |T| over its nonzero entries (one lucky
  entry whose samples all came out small keeps the tensor's level), and + |T(e)| is the final rounding of the result.

``tolerance.derived`` then allows 4 x (u_dtype + u_float64) x budget: 4 x MULTIPLIER = 16 times the measured
rounding. A 0.1% error in one entry is ~1e4 x float32's rounding and fails; a kernel that rounds like a correct
one, by another formula, stays inside.
"""

from __future__ import annotations

import inspect
import zlib

import numpy as np

from .. import tolerance as tol
from ..errors import CaseError
from .symbolic import Forward, Gradient

MULTIPLIER = 4.0
NEARBY = 3  # points at which the reference's own rounding is measured (x and NEARBY - 1 neighbours)
PERTURBED = 3  # input perturbations of one float32 rounding
NEIGHBOUR = 1e-3  # how far (relative) the neighbours lie


class ReferenceFailure(Exception):
    """The reference (or the impl alone, running as its own reference) raised ``exception`` when first run."""

    def __init__(self, exception: BaseException, who: str):
        super().__init__(str(exception))
        self.exception, self.who = exception, who


class CallableProgram:
    """The reference function behind the Program interface. ``who``: "reference" or "impl" (the impl alone)."""

    out = 0
    slots = ()

    def __init__(self, fn, grad_vars, var_dtypes: dict, dtypes, who: str):
        self.fn, self.grad_vars, self.var_dtypes, self.who = fn, tuple(grad_vars), dict(var_dtypes), who
        lower = [d for d in dtypes if d != "float64"]
        self.measure_in = lower if who == "reference" else []
        self.out_shape: tuple[int, ...] | None = None

    # ---- running the function ----
    def run(self, inputs: dict, dtype: str = "float64", cotangents=(), grad: bool = True):
        """(value, [vjp per cotangent]) at ``inputs`` in ``dtype`` on CPU, as float64 arrays."""
        import torch

        from .autograd import _cotangent, input_tensor, to_numpy

        with torch.enable_grad() if grad else torch.no_grad():
            tensors = {n: input_tensor(v, dtype, "cpu", grad and n in self.grad_vars, self.var_dtypes.get(n))
                       for n, v in inputs.items()}
            out = self.fn(**tensors)
            if not isinstance(out, torch.Tensor):  # said like the guard's (for a reference as "the reference")
                from .impl import ImplFailure, clean

                raise ImplFailure(f"the impl returned {clean(type(out).__name__)}, not a tensor", "returned",
                                  "forward")
            vjps = []
            leaves = [tensors[n] for n in self.grad_vars]
            for c in cotangents:
                grads = torch.autograd.grad(out, leaves, _cotangent(c, out, dtype, "cpu"), retain_graph=True,
                                            allow_unused=True) if out.requires_grad else [None] * len(leaves)
                vjps.append({n: np.zeros(tuple(leaf.shape)) if g is None else to_numpy(g).reshape(leaf.shape)
                             for n, leaf, g in zip(self.grad_vars, leaves, grads)})
        return to_numpy(out), vjps

    # ---- the Program interface ----
    def forward(self, inputs: dict, kink_u=None, with_err: bool = True, derivs: bool = True,
                detached_from=None) -> Forward:
        """The float64 value (``detached_from`` does not apply: a Python function's detach() is its own)."""
        if with_err:
            value, _ = self.run(inputs, grad=False)
        else:  # finite differences' steps: a failure there is a step outside the function's domain
            try:
                value, _ = self.run(inputs, grad=False)
            except Exception:
                value = np.full(self.out_shape or (), np.nan)
        fwd = Forward([value], [np.zeros(np.shape(value))], aux={"inputs": inputs})
        if with_err:
            with np.errstate(all="ignore"):
                finite = np.abs(value)[np.isfinite(value)]
            fwd.peak = float(finite.max()) if finite.size else 0.0
            fwd.errs[0] = self.budget(inputs, None, value, lambda r: r[0])
        return fwd

    def gradient(self, fwd: Forward, cotangent) -> dict[str, Gradient]:
        inputs = fwd.aux["inputs"]
        _, (vjp,) = self.run(inputs, cotangents=[cotangent])
        out = {}
        for name in self.grad_vars:
            err = self.budget(inputs, cotangent, vjp[name], lambda r, n=name: r[1][0][n])
            out[name] = Gradient(vjp[name], err, vjp[name], vjp[name])
        return out

    def vjp(self, fwd: Forward, cotangent, with_err: bool = True, sides=None) -> dict[str, tuple]:
        _, (vjp,) = self.run(fwd.aux["inputs"], cotangents=[cotangent])
        return {n: (vjp[n], np.zeros(np.shape(vjp[n]))) for n in self.grad_vars}

    def kink_signature(self, fwd: Forward) -> list:
        return []  # a Python function's kinks are unknown: finite differences see them as non-smoothness

    def outside_domain(self, fwd: Forward) -> None:
        return None

    def near_jump(self, fwd: Forward, u: float) -> None:
        return None

    # ---- the measured rounding budget ----
    def budget(self, inputs: dict, cotangent, value, pick) -> np.ndarray:
        """The error budget (units of u) of ``value`` = pick(run(...)) at ``inputs``: the module docstring's model."""
        value = np.asarray(value, dtype=float)
        cots = [] if cotangent is None else [cotangent]
        grad = cotangent is not None
        rng = np.random.default_rng(zlib.crc32(b"".join(np.ascontiguousarray(v).tobytes() for v in inputs.values())))
        m = np.zeros(value.shape)
        with np.errstate(all="ignore"):
            u = tol.UNIT_ROUNDOFF["float32"]
            for _ in range(PERTURBED):
                moved = {n: v * (1 + u * rng.uniform(-1, 1, np.shape(v))) if self._float(n) else v
                         for n, v in inputs.items()}
                c = [np.asarray(c) * (1 + u * rng.uniform(-1, 1, np.shape(c))) for c in cots]
                m = _fmax(m, np.abs(pick(self.run(moved, cotangents=c, grad=grad)) - value) / u)
            for dtype in self.measure_in:
                from .autograd import round_to

                ud = tol.UNIT_ROUNDOFF[dtype]
                for k in range(NEARBY):
                    near = {n: round_to(v * (1 + NEIGHBOUR * rng.uniform(-1, 1, np.shape(v))) if k else v, dtype)
                            if self._float(n) else v for n, v in inputs.items()}
                    c = [round_to(np.asarray(c), dtype) for c in cots]
                    low = pick(self.run(near, dtype, c, grad))
                    high = value if k == 0 and all(np.array_equal(near[n], inputs[n]) for n in inputs) else \
                        pick(self.run(near, "float64", c, grad))
                    m = _fmax(m, np.abs(low - high) / ud)
            magnitude = np.abs(value)
            rms = float(np.sqrt(np.mean(np.square(m)))) if m.size else 0.0
            nonzero = magnitude > 0
            rel = float(np.median(m[nonzero] / magnitude[nonzero])) if nonzero.any() else 0.0
            level = np.maximum(np.maximum(m, rms), rel * magnitude)
        return MULTIPLIER * level + magnitude

    def _float(self, name: str) -> bool:
        return self.var_dtypes.get(name) is None


def _fmax(a, b):
    """Elementwise max that ignores what could not be measured (a non-finite run, e.g. float16 overflow)."""
    b = np.where(np.isfinite(b), b, 0.0)
    return np.maximum(a, b)


# ---- building the reference of a case ----

def reference_function(case, options):
    """The case's ``reference`` as ``fn(**tensors)``: a plain function is called with the vars (and impl_args) its
    signature takes; a var it does not take must be constant (``requires_grad = false``), else a CaseError."""
    from . import impl

    obj = case.reference
    if isinstance(obj, str):
        obj = impl.load_object(obj, case.base_dir, case.path, case.name, options.impl_path, options.impl_sys_path,
                               key="reference")
    import torch

    if (isinstance(obj, type) and issubclass(obj, (torch.autograd.Function, torch.nn.Module))) or \
            isinstance(obj, torch.nn.Module):
        return impl.resolve(obj, list(case.vars), case.impl_args, case.path, case.name)
    if not callable(obj):
        raise CaseError("the reference is not callable", case.path, case.name, "reference")
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: give it everything
        params = None
    names = None if params is None or any(p.kind is p.VAR_KEYWORD for p in params) else \
        {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    missing = [n for n in case.grad_vars if names is not None and n not in names]
    if missing:
        raise CaseError(f"the reference does not take var(s) {', '.join(missing)}, which require grad: a var the "
                        "reference does not use must be declared requires_grad = false", case.path, case.name,
                        "reference")
    args = {k: v for k, v in case.impl_args.items() if names is None or k in names}
    taken = [n for n in case.vars if names is None or n in names]
    return lambda **t: obj(**{n: t[n] for n in taken}, **args)


def program_for(case, options, base: dict, impl_fn, dtypes):
    """(program, case with its output shape, the guarded impl) for a case without ``expr``. Raises
    ReferenceFailure where the reference (or the impl alone) fails on its first run, CaseError where the case's
    ``expect.value`` does not fit the output it gives."""
    from dataclasses import replace

    from . import impl

    who = "reference" if case.reference is not None else "impl"
    fn = reference_function(case, options) if who == "reference" else impl_fn
    program = CallableProgram(fn, case.grad_vars, {n: v.dtype for n, v in case.vars.items() if v.dtype}, dtypes,
                              who)
    try:
        with impl.phase(f"the {who}'s forward"):
            value, _ = program.run(base, grad=False)
    except (KeyboardInterrupt, impl.Timeout):
        raise
    except BaseException as exc:  # user code: a finding about the case
        raise ReferenceFailure(exc, who) from None
    program.out_shape = tuple(np.shape(value))
    program.fn = impl.guard(fn, program.out_shape)  # from now on a failure is an ImplFailure
    expect = case.expect
    if expect is not None and expect.value is not None:
        want = np.asarray(expect.value, dtype=float)
        if want.ndim and want.shape != program.out_shape:
            raise CaseError(f"expect.value has shape {list(want.shape)} but the {who} returns shape "
                            f"{list(program.out_shape)}", case.path, case.name, "expect.value")
        expect = replace(expect, value=np.broadcast_to(want, program.out_shape).copy())
    case = replace(case, out_shape=program.out_shape, expect=expect)
    return program, case, impl.guard(impl_fn, program.out_shape)
