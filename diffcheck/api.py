"""The Python API for users' own tests: ``diffcheck.check(expr, vars=..., impl=...)``."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

import numpy as np

from .casefile import DTYPES, build_case
from .errors import CaseError
from .runner import CaseResult, Options, run_case

WHERE = "<diffcheck.check>"


def check(expr: str | None = None, vars: dict | None = None, impl=None, *, reference=None,
          inputs: dict | None = None, name: str = "check", dtypes=None, devices=("cpu",), seed: int = 0,
          order: int = 1, expect: dict | None = None, tolerance: dict | None = None, impl_args: dict | None = None,
          impl_path=(), impl_sys_path: bool = False, timeout: float = 300.0,
          surrogate: dict | None = None, outputs=None, rng: str | None = None,
          transforms=None) -> CaseResult:
    """Check the gradient of ``expr`` (and of ``impl``, when given) like a case file would, and return the result.

    Without ``expr``, ``impl`` is checked against ``reference`` (a plain torch function of the vars, run in float64,
    or a ``"module:function"`` string), or, with neither, against itself: its float64 backward against finite
    differences of its float64 forward, its lower dtypes against its float64 run.

    ``vars`` takes the case-file keys (``{"x": {"shape": [3, 4], "domain": [-3, 3]}}``); ``impl`` is a callable
    (function, ``torch.autograd.Function`` subclass, ``nn.Module`` class or instance) or a ``"module:attribute"``
    string. A var may also be given as a number, a numpy array or a torch tensor (its value and shape; a tensor with
    ``requires_grad=False`` is held constant), alone or as ``{"value": array, ...}``. ``dtypes`` and ``devices``
    take one name or a sequence (torch dtypes and devices too); None means the default. An impl string is looked
    up under the current directory and ``impl_path`` (from sys.path only with ``impl_sys_path``). ``timeout``
    bounds the case's seconds (0: none; enforced in the main thread only). The result's
    ``assert_ok()`` raises AssertionError with the localized report unless it passed.

    ``inputs`` takes real values, var name -> tensor or numpy array, in the order an ``autograd.Function`` takes
    them: a float tensor's dtype sets the dtypes checked (unless ``dtypes`` is given), an int64/bool one becomes an
    int64/bool var, and ``requires_grad=False`` holds it constant; an entry of ``vars`` with the same name overrides
    those keys (``{"x": {"requires_grad": True}}``). ``impl_args`` may also hold None, lists and tensors (a float
    tensor follows the dtype and device under check). ``surrogate``, ``outputs``, ``rng`` and ``transforms`` are
    the case file's keys of those names::

        diffcheck.check("sigmoid(x)", vars={"x": {"shape": [3, 4]}}, impl=MySigmoid).assert_ok()
    """
    case_name = name if isinstance(name, str) else None
    if inputs is not None:
        vars, from_inputs = _from_inputs(inputs, vars, case_name)
        dtypes = from_inputs if dtypes is None else dtypes
    elif vars is None:
        raise TypeError("diffcheck.check: vars must be a dict of var name to its case-file keys (vars={'x': "
                        "{'shape': [3]}}), or give the values as inputs={'x': tensor}; got None")
    dtypes = _names(dtypes, "dtypes", ("float64", "float32"))
    devices = _names(devices, "devices", ("cpu",))
    vars = _plain_vars(vars, case_name)
    if isinstance(expect, Mapping):
        expect = _plain_expect(expect, case_name)
    raw = {"name": name, "vars": vars, "dtypes": list(dtypes), "devices": list(devices), "seed": seed,
           "order": order}
    if expr is not None:
        raw["expr"] = expr
    if reference is not None:  # an object is put in after validation, like impl
        raw["reference"] = reference if isinstance(reference, str) else "<python object>"
    if expect is not None:
        raw["expect"] = expect
    if tolerance is not None:
        raw["tolerance"] = tolerance
    if impl is not None:  # an object is put in after validation; a placeholder lets impl_args through
        raw["impl"] = impl if isinstance(impl, str) else "<python object>"
    if impl_args:  # None, tensors and arrays are put in after validation; {} (None) holds their place
        raw["impl_args"] = {k: v if _plain_arg(v) else {} for k, v in dict(impl_args).items()}
    if surrogate is not None:
        raw["surrogate"] = surrogate
    for key, value in (("outputs", outputs), ("rng", rng), ("transforms", transforms)):
        if value is not None:
            raw[key] = list(value) if key != "rng" else value
    case = build_case(raw, "<diffcheck.check>")
    if impl_args and not all(_plain_arg(v) for v in dict(impl_args).values()):
        from dataclasses import replace

        case = replace(case, impl_args={k: _impl_arg(v) for k, v in dict(impl_args).items()})
    if impl is not None and not isinstance(impl, str):
        from dataclasses import replace

        case = replace(case, impl=impl)
    if reference is not None and not isinstance(reference, str):
        from dataclasses import replace

        case = replace(case, reference=reference)
    return run_case(case, Options(devices=tuple(devices), impl_path=tuple(map(str, impl_path)),
                                  impl_sys_path=impl_sys_path, timeout=timeout))


def _plain_arg(value) -> bool:
    """Whether an impl argument is one a case file can write (number, boolean, string, list of them)."""
    if isinstance(value, list):
        return all(_plain_arg(v) for v in value)
    return isinstance(value, (bool, int, float, str))


def _impl_arg(value):
    """An impl argument from the API as the impl gets it: a numpy array as a tensor, the rest as given."""
    if isinstance(value, (np.ndarray, np.generic)) and not isinstance(value, np.str_):
        import torch

        return torch.as_tensor(np.asarray(value))
    if isinstance(value, list):
        return [_impl_arg(v) for v in value]
    return value


def _from_inputs(inputs, vars, case_name: str | None) -> tuple[dict, list[str]]:
    """``inputs`` (name -> tensor or array) as ``vars`` entries, in their order, with ``vars``' own keys on top;
    and the float dtypes they hold (their order of first appearance; float64 where none is a float tensor)."""
    if not isinstance(inputs, Mapping):
        raise TypeError(f"diffcheck.check: inputs must be a dict of var name to a tensor or numpy array, got "
                        f"{type(inputs).__name__}")
    if vars is not None and not isinstance(vars, Mapping):
        raise TypeError(f"diffcheck.check: vars must be a dict, got {type(vars).__name__}")
    overrides = dict(vars or {})
    merged, dtypes = {}, []
    for vname, value in inputs.items():
        spec, dtype = _input_spec(value, f"inputs.{vname}", case_name)
        own = overrides.pop(vname, {})
        if not isinstance(own, Mapping):
            raise CaseError(f"vars.{vname} overrides inputs.{vname}: it must be a dict of case-file keys",
                            WHERE, case_name, f"vars.{vname}")
        merged[vname] = {**spec, **own}
        if dtype is not None and dtype not in dtypes:
            dtypes.append(dtype)
    merged.update(overrides)
    constant = [n for n, spec in merged.items() if spec.get("requires_grad") is False and "dtype" not in spec]
    if constant and not any(spec.get("requires_grad", "dtype" not in spec) for spec in merged.values()):
        raise CaseError(f"no var is differentiated: the tensors given for {', '.join(map(str, constant))} have "
                        "requires_grad=False (create them with requires_grad=True, or override with "
                        "vars={name: {'requires_grad': True}})", WHERE, case_name, "inputs")
    return merged, dtypes or ["float64"]


def _input_spec(value, key: str, case_name: str | None) -> tuple[dict, str | None]:
    """One input's case-file keys (value, shape, dtype of int64/bool ones, requires_grad of a tensor) and its
    float dtype name (None for int64/bool and non-float arrays)."""
    if _is_tensor(value):
        torch = sys.modules["torch"]
        kind = str(value.dtype).removeprefix("torch.")
        if value.dtype == torch.bool or not (value.is_floating_point() or value.is_complex()):
            values = value.detach().cpu().numpy()
            typed = {"dtype": "bool" if value.dtype == torch.bool else "int64", "shape": list(values.shape),
                     "value": values.tolist()}
            return typed, None
        array = _array(value, key, case_name)
        spec = {"shape": list(array[0].shape), "value": array[0].tolist(), "requires_grad": value.requires_grad}
        if kind not in DTYPES:
            raise CaseError(f"{key}: a tensor of {value.dtype}; diffcheck checks {', '.join(DTYPES)}",
                            WHERE, case_name, key)
        return spec, kind
    if isinstance(value, (np.ndarray, np.generic)):
        values = np.asarray(value)
        if values.dtype.kind in "biu":
            return {"dtype": "bool" if values.dtype.kind == "b" else "int64", "shape": list(values.shape),
                    "value": values.tolist()}, None
        array = _array(values, key, case_name)
        kind = str(values.dtype)
        return {"shape": list(array[0].shape), "value": array[0].tolist()}, kind if kind in DTYPES else None
    raise TypeError(f"diffcheck.check: inputs.{key.split('.', 1)[1]} must be a tensor or a numpy array, got "
                    f"{type(value).__name__} (numbers and case-file keys go in vars=)")


def _names(value, arg: str, default: tuple) -> list:
    """``dtypes``/``devices`` as a list of names: one name (not its characters) or a sequence; None is the default.
    Names are validated with the case-file rules when the case is built."""
    if value is None:
        return list(default)
    if isinstance(value, str) or _is_torch(value, ("dtype", "device")):
        value = [value]
    if isinstance(value, (bytes, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(f"diffcheck.check: {arg} must be a name or a sequence of names such as {default!r}, "
                        f"got {type(value).__name__}")
    return [str(v).removeprefix("torch.") if _is_torch(v, ("dtype", "device")) else v for v in value]


def _is_torch(value, types: tuple[str, ...]) -> bool:
    return type(value).__module__ == "torch" and type(value).__name__ in types


def _plain_vars(vars, case_name: str | None):
    """Case-file var keys for vars given as numbers, numpy arrays or tensors (alone or as ``{"value": ...}``)."""
    if not isinstance(vars, Mapping):
        raise TypeError("diffcheck.check: vars must be a dict of var name to its case-file keys, a number, a numpy "
                        f"array or a tensor (e.g. {{'x': {{'shape': [3]}}}}), got {type(vars).__name__}")
    plain, constant_tensors = {}, []
    for vname, spec in vars.items():
        if isinstance(spec, Mapping):
            spec = dict(spec)
            if "value" in spec:
                array = _array(spec["value"], f"vars.{vname}.value", case_name)
                if array is not None:
                    values, requires_grad = array
                    spec["value"] = values.tolist()
                    spec.setdefault("shape", list(values.shape))
                    if requires_grad is not None and "requires_grad" not in spec:
                        spec["requires_grad"] = requires_grad
                        constant_tensors += [str(vname)] * (not requires_grad)
        elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
            spec = {"value": float(spec)}
        else:
            array = _array(spec, f"vars.{vname}", case_name)
            if array is not None:
                values, requires_grad = array
                spec = {"shape": list(values.shape), "value": values.tolist()}
                if requires_grad is not None:
                    spec["requires_grad"] = requires_grad
                    constant_tensors += [str(vname)] * (not requires_grad)
        plain[vname] = spec
    if constant_tensors and all(isinstance(s, dict) and s.get("requires_grad") is False for s in plain.values()):
        raise CaseError(f"no var is differentiated: the tensors given for {', '.join(constant_tensors)} have "
                        "requires_grad=False (create them with requires_grad=True, or pass {'value': t, "
                        "'requires_grad': True})", WHERE, case_name, "vars")
    return plain


def _plain_expect(expect: Mapping, case_name: str | None) -> dict:
    """Known answers given as numpy arrays or tensors, as the case file's nested lists."""
    expect = dict(expect)
    array = _array(expect.get("value"), "expect.value", case_name)
    if array is not None:
        expect["value"] = array[0].tolist()
    if isinstance(expect.get("grad"), Mapping):
        grads = dict(expect["grad"])
        for vname, value in grads.items():
            array = _array(value, f"expect.grad.{vname}", case_name)
            if array is not None:
                grads[vname] = array[0].tolist()
        expect["grad"] = grads
    return expect


def _is_tensor(value) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only where torch is imported: never import it here
    return torch is not None and isinstance(value, torch.Tensor)


def _array(value, key: str, case_name: str | None):
    """(float64 values, requires_grad or None) of a numpy array, numpy scalar or tensor; None for anything else."""
    if _is_tensor(value):
        if value.is_complex() or value.dtype == sys.modules["torch"].bool:
            raise CaseError(f"{key} must hold real numbers, got a tensor of {value.dtype}", WHERE, case_name, key)
        try:
            values = value.detach().to("cpu", sys.modules["torch"].float64).numpy()
        except (RuntimeError, TypeError, NotImplementedError) as exc:
            raise CaseError(f"{key}: cannot read the tensor's values: {exc}", WHERE, case_name, key) from None
        return values, value.requires_grad
    if isinstance(value, (np.ndarray, np.generic)):
        values = np.asarray(value)
        if values.dtype.kind not in "fiu":
            raise CaseError(f"{key} must hold real numbers, got a numpy array of {values.dtype}", WHERE, case_name,
                            key)
        return values.astype(np.float64), None
    return None
