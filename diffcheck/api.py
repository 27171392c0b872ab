"""The Python API for users' own tests: ``diffcheck.check(expr, vars=..., impl=...)``."""

from __future__ import annotations

from .casefile import build_case
from .runner import CaseResult, Options, run_case


def check(expr: str, vars: dict, impl=None, *, name: str = "check", dtypes=("float64", "float32"),
          devices=("cpu",), seed: int = 0, order: int = 1, expect: dict | None = None,
          tolerance: dict | None = None, impl_args: dict | None = None, impl_path=(), impl_sys_path: bool = False,
          timeout: float = 300.0) -> CaseResult:
    """Check the gradient of ``expr`` (and of ``impl``, when given) like a case file would, and return the result.

    ``vars`` takes the case-file keys (``{"x": {"shape": [3, 4], "domain": [-3, 3]}}``); ``impl`` is a callable
    (function, ``torch.autograd.Function`` subclass, ``nn.Module`` class or instance) or a ``"module:attribute"``
    string (looked up under the current directory and ``impl_path``; from sys.path only with ``impl_sys_path``).
    ``timeout`` bounds the case's seconds (0: none; enforced in the main thread only). The result's
    ``assert_ok()`` raises AssertionError with the localized report unless it passed::

        diffcheck.check("sigmoid(x)", vars={"x": {"shape": [3, 4]}}, impl=MySigmoid).assert_ok()
    """
    raw = {"name": name, "expr": expr, "vars": vars, "dtypes": list(dtypes), "devices": list(devices),
           "seed": seed, "order": order}
    if expect is not None:
        raw["expect"] = expect
    if tolerance is not None:
        raw["tolerance"] = tolerance
    if impl is not None:  # an object is put in after validation; a placeholder lets impl_args through
        raw["impl"] = impl if isinstance(impl, str) else "<python object>"
    if impl_args:
        raw["impl_args"] = impl_args
    case = build_case(raw, "<diffcheck.check>")
    if impl is not None and not isinstance(impl, str):
        from dataclasses import replace

        case = replace(case, impl=impl, impl_args=dict(impl_args or {}))
    return run_case(case, Options(devices=tuple(devices), impl_path=tuple(map(str, impl_path)),
                                  impl_sys_path=impl_sys_path, timeout=timeout))
