"""A user's own implementation, named in a case as ``impl = "module:attribute"``, made callable like the
expression engine: ``fn(**tensors) -> tensor``.

Importing that module is the one place diffcheck runs user code, by the case author's explicit choice. The
module is looked up first as ``<module>.py`` (or a package) beside the case file, then on ``sys.path``.

What the attribute may be:
- a function: called with the case's vars as keyword arguments (and ``impl_args`` as further keywords);
- a ``torch.autograd.Function`` subclass: ``.apply`` is called with the vars positionally, in the order the
  case declares them, then the values of ``impl_args`` in the order written (``MyElu.apply(x, alpha)``);
- an ``nn.Module`` subclass (instantiated with ``impl_args`` as keyword arguments) or instance: vars named
  like one of its parameters or buffers (with ``.`` written as ``__``: ``linear__weight``) replace them via
  ``torch.func.functional_call``; the other vars are passed to ``forward`` as keyword arguments.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import CaseError


def load(spec, base_dir: Path, var_names: list[str], args: dict, where: str, case: str) -> Callable:
    """Resolve ``module:attribute`` (or a Python object given through the API) into ``fn(**tensors) -> tensor``,
    or raise CaseError naming 'impl'."""
    if not isinstance(spec, str):
        return resolve(spec, var_names, args, where, case)

    def fail(message: str):
        raise CaseError(message, where, case, "impl")

    if spec.count(":") != 1:
        fail(f"impl must be 'module:attribute', got {spec!r}")
    module_name, attr_path = spec.split(":")
    module = _import(module_name, base_dir, fail)
    obj = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            fail(f"module '{module_name}' has no attribute '{attr_path}'")
        obj = getattr(obj, part)
    return resolve(obj, var_names, args, where, case, spec)


def resolve(obj, var_names: list[str], args: dict, where: str = "", case: str = "", spec: str = "") -> Callable:
    """Turn a function, autograd.Function subclass, nn.Module class or instance into ``fn(**tensors)``."""
    import torch

    def fail(message: str):
        raise CaseError(message, where, case, "impl")

    spec = spec or getattr(obj, "__name__", type(obj).__name__)
    attr_path = spec.split(":")[-1]
    if isinstance(obj, type) and issubclass(obj, torch.autograd.Function):
        function, extra = obj, list(args.values())
        return lambda **t: function.apply(*[t[n] for n in var_names], *extra)
    if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
        try:
            obj = obj(**args)
        except Exception as exc:  # user code: report whatever it raised
            fail(f"could not construct {attr_path}(**impl_args): {type(exc).__name__}: {exc}")
    if isinstance(obj, torch.nn.Module):
        return _module_call(obj, var_names)
    if not callable(obj):
        fail(f"'{spec}' is not callable")
    if args:
        return lambda **t: obj(**t, **args)
    return obj


def _import(module_name: str, base_dir: Path, fail):
    local = base_dir / (module_name.replace(".", "/") + ".py")
    package = base_dir / module_name.replace(".", "/") / "__init__.py"
    path = local if local.is_file() else package if package.is_file() else None
    try:
        if path is not None:
            unique = f"diffcheck_impl_{abs(hash(str(path.resolve())))}_{module_name.replace('.', '_')}"
            if unique in sys.modules:
                return sys.modules[unique]
            spec = importlib.util.spec_from_file_location(unique, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[unique] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[unique]
                raise
            return module
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        fail(f"cannot import '{module_name}' (looked beside the case file in {base_dir} and on sys.path): {exc}")
    except Exception as exc:  # user code: report whatever its import raised
        fail(f"importing '{module_name}' raised {type(exc).__name__}: {exc}")


def _module_call(module, var_names: list[str]) -> Callable:
    import torch

    own = dict(module.named_parameters())
    own.update(dict(module.named_buffers()))
    names = {n.replace(".", "__"): n for n in own}

    def call(**tensors):
        """The module never changes: every parameter and buffer is passed in, as the case's tensor or as a
        copy converted to the check's dtype and device."""
        first = next(iter(tensors.values()))
        state = {}
        for name, value in own.items():
            key = name.replace(".", "__")
            if key in tensors:
                state[name] = tensors[key]
            elif value.is_floating_point():
                state[name] = value.detach().to(device=first.device, dtype=first.dtype)
            else:
                state[name] = value.detach().to(device=first.device)
        inputs = {k: v for k, v in tensors.items() if k not in names}
        return torch.func.functional_call(module, state, args=(), kwargs=inputs)

    return call
