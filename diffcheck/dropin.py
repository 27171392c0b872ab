"""``diffcheck.gradcheck`` / ``diffcheck.gradgradcheck``: drop-ins for torch's, for users' existing test suites.

Same calling convention as ``torch.autograd.gradcheck(func, inputs)``: a tuple of inputs (one tensor alone is
accepted), the floating tensors with ``requires_grad`` are differentiated, everything else is passed through as
given; ``func`` may return a tensor or a tuple of tensors (judged as one: the floating outputs flattened and
concatenated). What differs is what stands behind the verdict: without
``reference`` the function is checked against itself (its float64 backward against Richardson finite differences
of its float64 forward, its lower-dtype backwards against that verified float64 backward with a derived budget),
with ``reference`` (a torch function of the same inputs) against that; every requested dtype and device is checked,
and a failure raises with diffcheck's localized report instead of a Jacobian dump.

``gradgradcheck`` is gradcheck of the first-order VJP function, as torch defines it: the outputs' cotangents
(``grad_outputs``, random when not given) become further differentiated inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class GradcheckError(RuntimeError):
    """A gradient diffcheck.gradcheck found wrong (a RuntimeError, as torch's GradcheckError is). ``result`` is the
    case's CaseResult; the message is its localized report."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


def gradcheck(func: Callable, inputs, *, reference: Callable | None = None, dtypes=None, devices=None,
              surrogate: dict | None = None, raise_exception: bool = True, name: str | None = None,
              seed: int = 0, **torch_options) -> bool:
    """True when every gradient of ``func`` at ``inputs`` is right in every dtype and device; else raise
    GradcheckError with the report (or return False with ``raise_exception=False``).

    ``dtypes``: default the differentiated inputs' own dtype; ``devices``: default the inputs' device.
    ``surrogate``: a declared rule per input position or name (``{0: "g"}``), as the case key ``surrogate``.
    torch's tuning keywords (``eps``, ``atol``, ``rtol``, ``fast_mode``, ``nondet_tol``, ...) are accepted and
    ignored: diffcheck derives its own tolerances; ``check_undefined_grad``, ``check_batched_grad`` and
    ``check_forward_ad`` are what diffcheck checks anyway or through its transforms.
    """
    return _check(func, inputs, reference, dtypes, devices, surrogate, raise_exception, name, seed, order=1)


def gradgradcheck(func: Callable, inputs, grad_outputs=None, *, reference: Callable | None = None, dtypes=None,
                  devices=None, raise_exception: bool = True, name: str | None = None, seed: int = 0,
                  **torch_options) -> bool:
    """Second order, torch's way: gradcheck of ``(inputs, grad_outputs) -> VJP(inputs; grad_outputs)``."""
    import torch

    inputs = _as_tuple(inputs)
    outs = _as_tuple(func(*inputs))
    if grad_outputs is None:
        generator = torch.Generator().manual_seed(seed)
        grad_outputs = tuple(torch.randn(o.shape, generator=generator, dtype=o.dtype).to(o.device)
                             .requires_grad_(True) for o in outs if _differentiable(o))
    grad_outputs = _as_tuple(grad_outputs)
    n = len(inputs)
    diff = [i for i, x in enumerate(inputs) if _differentiable(x)]

    def vjp(fn):
        def first_order(*args):  # one flat output: the VJPs of every differentiated input, concatenated
            xs, cots = list(args[:n]), args[n:]
            with torch.enable_grad():  # also under diffcheck's no_grad forward: the VJP is this function's value
                for i in diff:
                    if not xs[i].requires_grad:
                        xs[i] = xs[i].detach().requires_grad_(True)
                ys = [y for y in _as_tuple(fn(*xs)) if _differentiable(y)]
                grads = torch.autograd.grad(ys, [xs[i] for i in diff], cots, create_graph=True, allow_unused=True)
            return torch.cat([(torch.zeros_like(xs[i]) if g is None else g).reshape(-1)
                              for i, g in zip(diff, grads)])

        first_order.__name__ = f"vjp_of_{getattr(fn, '__name__', 'func')}"
        return first_order

    first_order = vjp(func)
    ref = None if reference is None else vjp(reference)

    return _check(first_order, (*inputs, *grad_outputs), ref, dtypes, devices, None, raise_exception,
                  name or f"gradgradcheck({getattr(func, '__name__', 'func')})", seed, order=1)


def _check(func, inputs, reference, dtypes, devices, surrogate, raise_exception, name, seed, order) -> bool:
    from .api import check

    inputs = _as_tuple(inputs)
    diff = {f"x{i}": x for i, x in enumerate(inputs) if _differentiable(x)}
    if not diff:
        raise ValueError("gradcheck expects at least one input tensor to require gradient, but none of them have "
                         "requires_grad=True")
    if dtypes is None:
        dtypes = sorted({str(x.dtype).removeprefix("torch.") for x in diff.values()})
    if devices is None:
        devices = sorted({x.device.type for x in diff.values()})
    vars = {k: {"value": x} for k, x in diff.items()}
    case_name = name or f"gradcheck({getattr(func, '__name__', type(func).__name__)})"
    result = check(None, vars, impl=_positional(func, inputs, diff), reference=(
        None if reference is None else _positional(reference, inputs, diff)), name=case_name,
        dtypes=dtypes, devices=devices, seed=seed, order=order,
        surrogate=_surrogate_names(surrogate, inputs) if surrogate else None)
    if result.ok:
        return True
    if raise_exception:
        raise GradcheckError(result.report_text or f"{case_name}: {result.status}: {result.message}", result)
    return False


def _positional(func, inputs: Sequence, diff: dict) -> Callable:
    """``func`` called the torch way, positionally: the differentiated tensors from diffcheck's keywords (in the
    dtype and device under check), the rest as given -- but floating tensors follow the dtype and device under
    check, and other tensors the device, so a float32 run does not mix in float64 constants."""

    def call(**kw):
        like = next(iter(kw.values()))
        args = []
        for i, x in enumerate(inputs):
            if f"x{i}" in diff:
                args.append(kw[f"x{i}"])
            elif _is_tensor(x):
                args.append(x.detach().to(like.device, like.dtype if x.is_floating_point() else x.dtype))
            else:
                args.append(x)
        return _flat(func(*args))

    call.__name__ = getattr(func, "__name__", "func")
    call.__wrapped__ = func
    return call


def _flat(result):
    """A tuple of outputs as one flat tensor (the floating outputs, flattened and concatenated in order): the
    no-reference path judges one output; integer outputs (indices) have no gradient and nothing to be checked
    against, so they are left out."""
    import torch

    if not isinstance(result, (tuple, list)):
        return result
    parts = [r.reshape(-1) for r in result if _is_tensor(r) and r.is_floating_point()]
    if not parts:
        return result  # diffcheck reports what it got
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _surrogate_names(surrogate: dict, inputs) -> dict:
    return {(f"x{k}" if isinstance(k, int) else k): v for k, v in surrogate.items()}


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _is_tensor(x) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def _differentiable(x) -> bool:
    return _is_tensor(x) and x.requires_grad and (x.is_floating_point() or x.is_complex())
