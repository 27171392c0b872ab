"""A user's own implementation, named in a case as ``impl = "module:attribute"``, made callable like the
expression engine: ``fn(**tensors) -> tensor``.

Importing that module is the one place diffcheck runs user code, so the lookup is a narrow boundary (see the
README's "Security" section): the module is a dotted name of plain identifiers, looked up as a file under the
*roots* -- the case file's directory, then each ``--impl-path`` directory -- and the resolved file (symlinks
followed) must stay under that root. Modules from ``sys.path`` are imported only when the run opts in
(``--allow-sys-path-impl``), and never from the standard library. The attribute path cannot hop through modules
or private names, and (without the opt-in) must end at code defined under a root. Through the API a Python object
is used as given: that is the user's own code.

What the attribute may be:
- a function: called with the case's vars as keyword arguments (and ``impl_args`` as further keywords; a float
  tensor among them follows the dtype and device under check, see ``bind``);
- a ``torch.autograd.Function`` subclass: ``.apply`` is called with the vars positionally, in the order the
  case declares them, then the values of ``impl_args`` in the order written (``MyElu.apply(x, alpha)``);
- an ``nn.Module`` subclass (instantiated with ``impl_args`` as keyword arguments) or instance: vars named
  like one of its parameters or buffers (with ``.`` written as ``__``: ``linear__weight``) replace them via
  ``torch.func.functional_call``; the other vars are passed to ``forward`` as keyword arguments.

Calls of the user's code go through ``guard``: whatever it raises (but KeyboardInterrupt) or a result that is not
a tensor of the expected shape becomes an ``ImplFailure`` with structured details, which the checks record as a
failing check. ``time_limit`` bounds a case's wall time with SIGALRM (main thread only).

Why it is over 400 lines: it is the one module through which user code is imported and called -- the lookup
boundary, the call guards (one output and several), RNG replay and the time limit -- and keeping that boundary in
one file is what makes it reviewable.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import CaseError
from ..text import clip

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def clean(text, limit: int = 300) -> str:
    """Text from a case file or user code, safe to print: control characters escaped, length bounded."""
    return clip(text, limit)


def load(spec, base_dir: Path, var_names: list[str], args: dict, where: str, case: str, roots=(),
         sys_path: bool = False, key: str = "impl") -> Callable:
    """Resolve ``module:attribute`` (or a Python object given through the API) into ``fn(**tensors) -> tensor``,
    or raise CaseError naming ``key``."""
    if not isinstance(spec, str):
        return resolve(spec, var_names, args, where, case)
    obj = load_object(spec, base_dir, where, case, roots, sys_path, key)
    return resolve(obj, var_names, args, where, case, spec)


def load_object(spec: str, base_dir: Path, where: str, case: str, roots=(), sys_path: bool = False,
                key: str = "impl"):
    """The object ``module:attribute`` names, inside the boundary (generic: serves ``impl`` and ``reference``)."""
    shown = clean(repr(spec))

    def fail(message: str):
        raise CaseError(f"{key} {shown}: {message}", where, case, key)

    if spec.count(":") != 1:
        fail("must be 'module:attribute'")
    module_name, attr_path = spec.split(":")
    parts, attrs = module_name.split("."), attr_path.split(".")
    if not all(IDENTIFIER.fullmatch(p) for p in parts):
        fail("the module must be a dotted name of plain identifiers (no leading dots, '..', path separators "
             "or absolute paths): it is looked up beside the case file")
    if not all(IDENTIFIER.fullmatch(p) and not p.startswith("_") for p in attrs):
        fail("the attribute must be a dotted name of plain identifiers, none starting with '_'")
    all_roots = [Path(base_dir).resolve(), *(Path(r).resolve() for r in roots)]
    module = _import(parts, all_roots, sys_path, fail)
    import types

    obj = module
    for i, part in enumerate(attrs):
        if isinstance(obj, types.ModuleType) and i:
            fail(f"'{'.'.join(attrs[:i])}' is a module: name the module itself before the ':'")
        if not hasattr(obj, part):
            fail(f"module {clean(repr(module_name))} has no attribute {clean(repr(attr_path))}")
        obj = getattr(obj, part)
    if isinstance(obj, types.ModuleType):
        fail("names a module, not a function, class or instance")
    if not callable(obj):  # a plain value (n = 5) would read as "defined in the standard library (builtins)"
        fail(f"names a value of type {clean(type(obj).__name__)}, not a function, class or nn.Module: nothing to call")
    owner = _defining_module(obj)
    if owner is not None and owner.split(".")[0] in sys.stdlib_module_names | {"builtins"}:
        fail(f"is defined in the standard library ({clean(owner)}): an impl must be your own code")
    if not sys_path and not _defined_under(owner, all_roots):
        fail("is defined outside the case file's directory and the --impl-path roots (e.g. a standard-library "
             "or installed function imported into the module); wrap it in a function of your own, or opt in "
             "with --allow-sys-path-impl")
    return obj


def _defining_module(obj) -> str | None:
    """The name of the module whose code ``obj`` runs; None for nn.Module instances, which count as safe:
    diffcheck only calls their forward with tensors."""
    import torch

    if isinstance(obj, torch.nn.Module):
        return None
    if inspect.ismethod(obj) and isinstance(obj.__self__, type):  # ``f = MyFunction.apply``: the class's code
        obj = obj.__self__
    name = getattr(obj, "__module__", None) if isinstance(obj, type) or callable(obj) else None
    return name if isinstance(name, str) else type(obj).__module__  # e.g. a functools.partial instance


def _defined_under(owner: str | None, roots: list[Path]) -> bool:
    """Whether module ``owner`` was loaded from a file under one of ``roots``."""
    if owner is None:
        return True
    path = getattr(sys.modules.get(owner), "__file__", None)
    return path is not None and _under(Path(path).resolve(), roots)


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(r) for r in roots)


def _find(parts: list[str], roots: list[Path]) -> Path | None:
    """``a/b.py`` or ``a/b/__init__.py`` under the first root that has it, symlinks resolved, inside the root."""
    for root in roots:
        for candidate in (root.joinpath(*parts[:-1], parts[-1] + ".py"), root.joinpath(*parts, "__init__.py")):
            if candidate.is_file():
                resolved = candidate.resolve()
                if not resolved.is_relative_to(root):
                    return _Escaped(candidate, root)
                return resolved
    return None


class _Escaped:
    """A candidate that exists but resolves (through a symlink) outside its root."""

    def __init__(self, path: Path, root: Path):
        self.path, self.root = path, root


def _import(parts: list[str], roots: list[Path], sys_path: bool, fail):
    module_name = ".".join(parts)
    path = _find(parts, roots)
    if isinstance(path, _Escaped):
        fail(f"{clean(str(path.path))} resolves outside {clean(str(path.root))} (a symlink): refused")
    if path is None:
        where = ", ".join(clean(str(r)) for r in roots)
        if parts[0] in sys.stdlib_module_names or parts[0] in sys.builtin_module_names:
            fail(f"no module {clean(repr(module_name))} under {where}, and a standard-library module is never "
                 "an impl: it must be your own code")
        if not sys_path:
            fail(f"no module {clean(repr(module_name))} under {where}; modules from sys.path (installed "
                 "packages) are imported only with --allow-sys-path-impl (pytest: diffcheck_impl_sys_path = true)")
        return _exec(lambda: importlib.import_module(module_name), module_name, None, roots, fail)
    stat = path.stat()  # a file changed since (a long-lived process, an edited impl) is imported afresh
    unique = f"diffcheck_impl_{abs(hash((str(path), stat.st_mtime_ns, stat.st_size)))}_{module_name.replace('.', '_')}"
    if unique in sys.modules:
        return sys.modules[unique]

    def run():
        spec = importlib.util.spec_from_file_location(unique, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[unique]
            raise
        return module

    return _exec(run, module_name, path, roots, fail)


def _exec(run, module_name: str, path: Path | None, roots: list[Path], fail):
    """Import with the case file's directory (and the other roots) first on sys.path, so the module's own
    imports of sibling files work; sys.path is restored afterwards. What the import raises is shown as is."""
    added = [str(r) for r in roots]
    sys.path[:0] = added
    try:
        with phase("importing the impl"):
            return run()
    except (KeyboardInterrupt, Timeout):
        raise
    except BaseException as exc:  # user code: report whatever its import raised
        shown = clean(repr(module_name))
        if path is None and isinstance(exc, ModuleNotFoundError) and exc.name == module_name:
            fail(f"cannot import {shown} from sys.path: {clean(exc)}")
        at = f" ({clean(str(path))})" if path is not None else ""
        fail(f"importing {shown}{at} raised {type(exc).__name__}: {clean(exc)}{_location(exc)}")
    finally:
        for entry in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


def resolve(obj, var_names: list[str], args: dict, where: str = "", case: str = "", spec: str = "") -> Callable:
    """Turn a function, autograd.Function subclass, nn.Module class or instance into ``fn(**tensors)``."""
    import torch

    def fail(message: str):
        raise CaseError(message, where, case, "impl")

    spec = spec or getattr(obj, "__name__", type(obj).__name__)
    attr_path = clean(spec.split(":")[-1])
    if isinstance(obj, type) and issubclass(obj, torch.autograd.Function):
        function = obj
        return lambda **t: function.apply(*[t[n] for n in var_names], *bind(args, t).values())
    if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
        try:
            obj = obj(**args)
        except (KeyboardInterrupt, Timeout):
            raise
        except BaseException as exc:  # user code: report whatever it raised
            fail(f"could not construct {attr_path}(**impl_args): {type(exc).__name__}: {clean(exc)}"
                 f"{_location(exc)}")
    if isinstance(obj, torch.nn.Module):
        return _module_call(obj, var_names)
    if not callable(obj):
        fail(f"impl {clean(repr(spec))} is not callable")
    if args:
        return lambda **t: obj(**t, **bind(args, t))
    return obj


def bind(args: dict, tensors: dict) -> dict:
    """``impl_args`` for one call: a float tensor (inside a list too) follows the dtype and device under check
    (those of the call's first float input), any other tensor only the device; it is never differentiated.
    Numbers, strings, None and the rest pass as given."""
    import torch

    first = next((t for t in tensors.values() if isinstance(t, torch.Tensor) and t.is_floating_point()), None)
    if first is None:
        return args

    def convert(v):
        if isinstance(v, torch.Tensor):
            v = v.detach()
            return v.to(device=first.device, dtype=first.dtype) if v.is_floating_point() else v.to(first.device)
        if isinstance(v, (list, tuple)):
            return type(v)(convert(item) for item in v)
        return v

    return {k: convert(v) for k, v in args.items()}


class ImplFailure(Exception):
    """The impl raised, or returned something that is not a tensor of the expected shape. ``details`` is the
    structured record the checks keep (``Check.details["impl_failure"]``) and blame reads."""

    def __init__(self, message: str, what: str, phase: str, exception: BaseException | None = None):
        super().__init__(message)
        self.message = message
        self.details = {"what": what, "phase": phase,
                        "exception": type(exception).__name__ if exception is not None else None}
        self.exception = exception

    @classmethod
    def of(cls, exc: BaseException, phase_name: str) -> ImplFailure:
        """An exception escaping a call of the impl (its forward, or the backward torch ran for it)."""
        if isinstance(exc, ImplFailure):
            return exc
        return cls(f"the impl raised {type(exc).__name__}: {clean(exc, 200)} (in {phase_name}{_location(exc)})",
                   "raised", phase_name, exc)


@functools.cache
def _settings():
    """The process-wide settings that user code can change and every later computation depends on -- torch's, and
    the working directory (relative case, impl and report paths) -- as (what it is, how to read it, how to set
    it, how to say its value). Restored in this order (the matmul precision sets the TF32 flags too, so it goes
    before them). Built once: every forward call of user code reads it twice."""
    import os

    import torch

    def anomaly(on_and_nan):
        torch.autograd.set_detect_anomaly(*on_and_nan)

    def deterministic(on_and_warn):
        torch.use_deterministic_algorithms(on_and_warn[0], warn_only=on_and_warn[1])

    def tf32(flag):
        return lambda value: setattr(flag[0], flag[1], value)

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    return (
        ("grad mode", torch.is_grad_enabled, torch.set_grad_enabled,
         lambda on: "on" if on else "off (torch.set_grad_enabled(False) never undone; use `with torch.no_grad():`)"),
        ("the default dtype", torch.get_default_dtype, torch.set_default_dtype,
         lambda d: f"{str(d).removeprefix('torch.')} (torch.set_default_dtype)"),
        ("the default device", torch.get_default_device, torch.set_default_device,
         lambda d: f"{d} (torch.set_default_device)"),
        ("anomaly detection", lambda: (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()), anomaly,
         lambda v: "on (torch.autograd.set_detect_anomaly)" if v[0] else "off"),
        ("deterministic algorithms", lambda: (torch.are_deterministic_algorithms_enabled(),
                                              torch.is_deterministic_algorithms_warn_only_enabled()), deterministic,
         lambda v: "on (torch.use_deterministic_algorithms)" if v[0] else "off"),
        ("the float32 matmul precision", torch.get_float32_matmul_precision, torch.set_float32_matmul_precision,
         lambda v: f"{v!r} (torch.set_float32_matmul_precision)"),
        ("TF32 matmuls", lambda: matmul.allow_tf32, tf32((matmul, "allow_tf32")),
         lambda on: "allowed (torch.backends.cuda.matmul.allow_tf32)" if on else "not allowed"),
        ("TF32 convolutions", lambda: cudnn.allow_tf32, tf32((cudnn, "allow_tf32")),
         lambda on: "allowed (torch.backends.cudnn.allow_tf32)" if on else "not allowed"),
        ("the working directory", _cwd, os.chdir, lambda d: f"{clean(repr(d))} (os.chdir)"),
    )


def _cwd() -> str | None:
    import os

    try:
        return os.getcwd()
    except OSError:  # removed under the process: nothing to go back from
        return None


def global_state() -> tuple:
    """The values of the process-wide settings (``_settings``), to compare and restore around user code."""
    return tuple(get() for _, get, _, _ in _settings())


def restore_state(before: tuple) -> str:
    """Put back the settings ``before`` holds; say what user code had changed ("" when nothing): a setting left
    changed would change every later case in the process (a grad mode left off fails every gradient after it)."""
    changed = []
    for (what, get, put, say), old in zip(_settings(), before, strict=True):
        new = get()
        if new != old and old is not None:
            changed.append(f"{what}: {say(new)}, was {say(old).split(' (')[0]}")
            put(old)
    return "; ".join(changed)


def state_failure(changed: str, phase_name: str) -> ImplFailure:
    return ImplFailure(f"the impl left global state changed ({phase_name}): {changed} -- diffcheck put it "
                       "back, so that later cases are unaffected", "state", phase_name)


def _forward(fn: Callable, tensors: dict):
    """One call of the user's forward: whatever it raises (but KeyboardInterrupt and the timeout) and any global
    setting it leaves changed is an ImplFailure; the settings are put back either way."""
    before = global_state()
    versions = _versions(tensors)
    try:
        with phase("the impl's forward"):
            out = fn(**tensors)
    except (KeyboardInterrupt, Timeout):
        raise
    except BaseException as exc:  # user code: every exception is a finding, SystemExit included
        restore_state(before)
        raise ImplFailure.of(exc, "forward") from None
    changed = restore_state(before)
    if changed:
        raise state_failure(changed, "in forward")
    mutated = [n for n, v in _versions(tensors).items() if v != versions.get(n) and tensors[n] is not out]
    if mutated:
        raise ImplFailure(f"the impl modified its input{'s' * (len(mutated) > 1)} {', '.join(mutated)} in place "
                          "(in forward): the caller's tensor changes; work on a copy (x = x.clone()), or return the "
                          "modified input itself after ctx.mark_dirty(x) if the op is in place by design",
                          "mutated", "forward")
    return out


def _versions(tensors: dict) -> dict:
    """Each input tensor's version counter, which every in-place write (x.clamp_, x[0] = 0, x.detach().mul_)
    bumps: a forward that changes it wrote into the caller's tensor. Tensors without one are left out."""
    import contextlib

    import torch

    found = {}
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor):
            with contextlib.suppress(RuntimeError):  # inference tensors track no version
                found[name] = t._version
    return found


def guard(fn: Callable, out_shape, outputs=()) -> Callable:
    """``fn`` whose every failure is an ImplFailure: anything it raises, a non-tensor, a wrong shape. With several
    ``outputs`` (outputs.Output) the result is a tuple or dict, checked and flattened into the one flat output;
    ``call.parts`` gives the outputs themselves."""
    import torch

    out_shape = tuple(out_shape)
    if outputs:
        return _guard_outputs(fn, outputs)

    def call(**tensors):
        out = _forward(fn, tensors)
        if not isinstance(out, torch.Tensor):
            hint = " (several outputs: write expr as a tuple, '(a, b)')" if isinstance(out, tuple | list | dict) else ""
            raise ImplFailure(f"the impl returned {clean(type(out).__name__)}, not a tensor{hint}", "returned",
                              "forward")
        if tuple(out.shape) != out_shape:
            raise ImplFailure(f"the impl returned shape {list(out.shape)} where {list(out_shape)} is expected",
                              "shape", "forward")
        return out

    call.__wrapped__ = fn  # what the compile transform compiles (diffcheck's guard stays outside the graph)
    return call


def _guard_outputs(fn: Callable, outputs) -> Callable:
    from ..outputs import Mismatch, concatenate, flatten_result

    def parts(**tensors):
        out = _forward(fn, tensors)
        try:
            return flatten_result(out, outputs, clean)
        except Mismatch as exc:
            raise ImplFailure(exc.message, exc.what, "forward") from None

    def call(**tensors):
        return concatenate(parts(**tensors))

    call.parts = parts
    return call


def replay(fn: Callable, seed: int) -> Callable:
    """``fn`` whose every call (``rng = "replay"``) draws the same random numbers: torch's RNG state is forked
    (CPU, and every CUDA device once CUDA is in use) and seeded with ``seed``, and restored afterwards, so each
    evaluation -- finite differences, autograd in each dtype and device, each transform -- sees the same
    draws, and the caller's own RNG stream is left as it was."""
    import torch

    def call(**tensors):
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            return fn(**tensors)

    return call


def _location(exc: BaseException) -> str:
    """', file.py:12' for the innermost frame of the traceback outside torch and diffcheck, if any."""
    import torch

    skip = (str(Path(torch.__file__).parent), str(Path(__file__).parent.parent))
    tb, found = exc.__traceback__, None
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not name.startswith(skip) and not name.startswith("<frozen"):
            found = f"{Path(name).name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return f", {clean(found)}" if found else ""


# ---- what runs now, for the timeout message ----
_PHASE: list[str] = []


@contextlib.contextmanager
def phase(name: str):
    _PHASE.append(name)
    try:
        yield
    finally:
        _PHASE.pop()


def current_phase() -> str:
    return _PHASE[-1] if _PHASE else ""


class Timeout(BaseException):
    """Raised by the watchdog in the main thread; a BaseException so that ``except Exception`` in user code or
    in diffcheck does not swallow it (and it fires again every second until the case stops)."""

    def __init__(self, seconds: float, during: str):
        super().__init__(f"timed out after {seconds:g} s")
        self.seconds, self.during = seconds, during


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise Timeout in the main thread once ``seconds`` have passed (0: no limit). Yields whether the limit is
    enforced: only the main thread of a platform with SIGALRM can be interrupted; elsewhere there is none.
    A timer someone else had set (pytest-timeout's signal mode) is restored afterwards with its remaining time."""
    import signal

    if not seconds or seconds <= 0 or seconds >= 1e9:  # 1e9 s (31 years) or inf: none (setitimer overflows)
        yield True
        return
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield False
        return

    def handler(signum, frame):
        raise Timeout(seconds, current_phase())

    start = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, handler)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - start), 1e-3), old_interval)


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
