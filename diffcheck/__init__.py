"""diffcheck: prove gradients right.

The public API is small and loads lazily (``import diffcheck`` does not import torch or sympy):

- ``check(expr, vars, impl=None, ...)`` -- check a gradient from Python; ``.assert_ok()`` on the result.
- ``gradcheck(func, inputs, ...)`` / ``gradgradcheck`` -- drop-ins for torch's, with diffcheck's verdicts.
- ``load(paths)`` / ``run_case(case, Options(...))`` -- what ``diffcheck run`` does, one case at a time.
- ``DiffcheckError``, ``CaseError``, ``ExpressionError`` -- the errors diffcheck raises on purpose.
- ``strategies`` -- hypothesis strategies for property tests of gradients.
"""

__all__ = [
    "CaseError",
    "CaseResult",
    "DiffcheckError",
    "ExpressionError",
    "GradcheckError",
    "Options",
    "check",
    "gradcheck",
    "gradgradcheck",
    "load",
    "run_case",
    "strategies",
]

_WHERE = {"check": "api", "load": "runner", "run_case": "runner", "Options": "model", "CaseResult": "model",
          "DiffcheckError": "errors", "CaseError": "errors", "ExpressionError": "errors",
          "gradcheck": "dropin", "gradgradcheck": "dropin", "GradcheckError": "dropin"}


def __getattr__(name):
    import importlib

    if name == "strategies":
        return importlib.import_module(".strategies", __name__)
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'diffcheck' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
