"""Case files: TOML (``tomllib``) -> validated, frozen ``Case`` objects.

A file holds one case as top-level keys, or several as ``[[case]]`` tables; in a multi-case file the other
top-level keys are defaults for every case. Validation happens here, once, with errors that name the file,
the case and the dotted key; a bad case never stops the good cases beside it from loading.

Kept whole although over 400 lines: every key's validation and its error text sit together, one table per
section, so that the error a user sees and the rule behind it are read in one place.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ValidationError

from . import outputs
from .errors import CaseError, ExpressionError
from .expr.ir import Node, variables
from .expr.parse import parse, parse_outputs
from .expr.shapes import VarShapes, infer
from .text import clip, safe
from .validate import Strict, check_choices, check_name, check_seed, numbers

DTYPES = ("float64", "float32", "float16", "bfloat16")
DEVICES = ("cpu", "cuda")
# what a case can also be checked under (``transforms = [...]``, ``--transform``); checks.transforms runs them
TRANSFORMS = ("compile", "vmap", "forward", "layouts", "aliasing")
MAX_ELEMENTS = 4_000_000  # per variable: keeps a hostile shape from exhausting memory
MAX_NDIM = 8

DtypeName = Literal["float64", "float32", "float16", "bfloat16"]


class VarModel(Strict):
    shape: list[int] = []
    value: Any = None
    domain: list[float] | None = None
    requires_grad: bool | None = None  # default: true for float vars, false for int64/bool ones
    dtype: Literal["int64", "bool"] | None = None  # None: the case's float dtypes


class ExpectModel(Strict):
    value: Any = None
    grad: dict[str, Any] = {}
    atol: float | None = None
    rtol: float | None = None


class DtypeToleranceModel(Strict):
    atol: float | None = None
    rtol: float | None = None


class ToleranceModel(Strict):
    reason: str
    atol: float | None = None
    rtol: float | None = None
    float64: DtypeToleranceModel | None = None
    float32: DtypeToleranceModel | None = None
    float16: DtypeToleranceModel | None = None
    bfloat16: DtypeToleranceModel | None = None


class CaseModel(Strict):
    kind: Literal["grad"] = "grad"
    name: str
    expr: str | None = None  # None: a Python ``reference``, or the impl alone
    reference: str | None = None
    description: str = ""
    vars: dict[str, VarModel] = {}
    dtypes: list[DtypeName] = ["float64", "float32"]
    devices: list[Literal["cpu", "cuda"]] = ["cpu", "cuda"]
    seed: int | None = None
    expect: ExpectModel | None = None
    tolerance: ToleranceModel | None = None
    impl: str | None = None
    impl_args: dict[str, Any] = {}  # numbers, booleans, strings, lists of them; {} is None (see _impl_args)
    order: int = 1
    transforms: list[str] = []
    outputs: list[str] | None = None  # names of the outputs of a tuple expr (default out0, out1, ...)
    surrogate: dict[str, str] = {}  # var -> the backward rule an impl follows instead of the true derivative
    rng: Literal["fixed", "replay"] = "fixed"


@dataclass(frozen=True)
class VarSpec:
    name: str
    shape: tuple[int, ...]
    value: np.ndarray | None  # float64, already of ``shape``; None means sample from ``domain``
    domain: tuple[float, float]
    requires_grad: bool
    dtype: str | None = None  # "int64" or "bool": kept whatever the case's float dtypes, never differentiated

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Tolerance:
    """A per-case override of the derived tolerance; always carries the case author's reason."""

    reason: str
    atol: float | None = None
    rtol: float | None = None
    per_dtype: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    def for_dtype(self, dtype: str) -> tuple[float, float]:
        atol, rtol = self.per_dtype.get(dtype, (None, None))
        atol = self.atol if atol is None else atol
        rtol = self.rtol if rtol is None else rtol
        return (0.0 if atol is None else atol, 0.0 if rtol is None else rtol)


@dataclass(frozen=True)
class Expect:
    value: np.ndarray | None
    grad: dict[str, np.ndarray]
    atol: float
    rtol: float


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    expr: str | None  # None: checked against ``reference``, or the impl alone
    ir: Node | None
    vars: dict[str, VarSpec]
    out_shape: tuple[int, ...] | None  # None until the reference (or impl) has run once
    dtypes: tuple[str, ...]
    devices: tuple[str, ...]
    seed: int | None
    description: str = ""
    expect: Expect | None = None
    tolerance: Tolerance | None = None
    impl: str | None = None  # "module:attribute" of the user's implementation under test
    impl_args: dict = field(default_factory=dict)
    order: int = 1  # 2 also checks Hessian-vector products, 3 third derivatives too
    transforms: tuple[str, ...] = ()  # TRANSFORMS this case is also checked under
    outputs: tuple = ()  # outputs.Output per output of a tuple expr (ir, out_shape: the flat concatenation)
    reference: object = None  # "module:function" (or a callable from the API): the float64 reference of the impl
    surrogate: dict = field(default_factory=dict)  # var -> (text, IR) of its declared backward rule, of vars and g
    rng: str = "fixed"  # "replay": every call of the impl forks torch's RNG seeded from the case seed

    @property
    def callable_reference(self) -> bool:
        """Whether the reference is Python code (``reference``, or the impl itself) rather than ``expr``."""
        return self.expr is None

    @property
    def base_dir(self) -> Path:
        """Where ``impl`` modules are looked for first: the case file's directory."""
        return Path(self.path).resolve().parent

    @property
    def grad_vars(self) -> list[str]:
        return [n for n, v in self.vars.items() if v.requires_grad]


# Known answers are usually written to a few significant digits or exactly; these defaults accept exact
# answers computed from inputs rounded to float32, and are printed in the report.
EXPECT_RTOL = 1e-6
EXPECT_ATOL = 1e-9


MAX_FILE_BYTES = 16 * 2**20  # a case file is text; anything larger (or /dev/zero behind a link) is refused
# Top-level keys that make a TOML file a case file (directory walks and the pytest plugin skip other TOML files).
CASE_KEYS = ("case", "expr", "kind", "impl", "reference", "vars", "model", "train")


def read_toml(path: str | Path) -> dict:
    """Parse one case file, or raise CaseError saying why not: only regular UTF-8 text files of bounded size."""
    import os
    import stat

    where = str(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) \
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "a special file"
            raise CaseError(f"not a regular file ({kind}): case files must be regular files", where)
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CaseError(f"cannot read the file: {exc.strerror or exc}", where) from None
    if len(raw) > MAX_FILE_BYTES:
        raise CaseError(f"the file is larger than {MAX_FILE_BYTES // 2**20} MiB, the limit for a case file", where)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark (some Windows editors write one): accepted and ignored
    if b"\x00" in raw:
        raise CaseError("a binary file (it contains NUL bytes), not a TOML case file", where)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CaseError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): TOML files must be "
                        f"UTF-8", where) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CaseError(f"invalid TOML: {exc}", where) from None
    except RecursionError:
        raise CaseError("invalid TOML: nested too deeply", where) from None


def is_case_data(data: dict) -> bool:
    """Whether parsed TOML is meant as a case file: a case key (or a near miss of one) at the top level."""
    return any(k in CASE_KEYS or difflib.get_close_matches(k, CASE_KEYS, n=1, cutoff=0.75) for k in data)


def is_case_file(path) -> bool:
    """Whether a ``*.toml`` found in a directory is a case file. A file that cannot be read or parsed counts, so
    its problem is reported, except a broken ``pyproject.toml``, which is some other tool's."""
    try:
        return is_case_data(read_toml(path))
    except CaseError:
        return Path(path).name != "pyproject.toml"


def load_file(path: str | Path) -> list[Case | CaseError]:
    """Load every case of one file; problems come back as CaseError entries, never raised."""
    where = str(path)
    try:
        data = read_toml(path)
    except CaseError as exc:
        return [exc]
    if not is_case_data(data):
        found = ", ".join(clip(k, 40) for k in list(data)[:8]) or "none"
        return [CaseError(f"not a case file: none of its top-level keys ({found}) is a case key "
                          f"({', '.join(CASE_KEYS)})", where)]
    return load_data(data, where)


def load_data(data: dict, where: str = "<data>") -> list[Case | CaseError]:
    """Validate already-parsed TOML data (one case, or ``case = [...]`` with shared defaults)."""
    if "case" in data:
        tables = data["case"]
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            return [CaseError("'case' must be an array of tables ([[case]])", where, key="case")]
        defaults = {k: v for k, v in data.items() if k != "case"}
        merged = [_with_defaults(defaults, table) for table in tables]
        if not merged:
            return [CaseError("the file holds no cases ('case' is empty)", where, key="case")]
    else:
        merged = [(data, set())]
    results: list[Case | CaseError] = []
    for index, (raw, inherited) in enumerate(merged):
        label = raw.get("name") if isinstance(raw.get("name"), str) else f"#{index + 1}"
        try:
            results.append(build_case(raw, where))
        except CaseError as exc:
            if exc.case is None:
                exc = CaseError(exc.message, where, label, exc.key)
            var = (exc.key or "").split(".")[1] if (exc.key or "").startswith("vars.") else None
            if var in inherited:
                exc = CaseError(f"{exc.message} (var '{var}' comes from the file's default vars; drop it from "
                                f"this case with vars.{var} = false)", exc.path, exc.case, exc.key)
            results.append(exc)
    return results


def _with_defaults(defaults: dict, table: dict) -> tuple[dict, set[str]]:
    """One ``[[case]]`` table over the file's defaults, and the names of the vars it inherited.

    Vars merge one by one: the case's ``vars.x`` replaces the default ``vars.x`` whole, default vars it does not
    name are inherited, and ``vars.x = false`` drops an inherited one.
    """
    raw = {**defaults, **table}
    base, own = defaults.get("vars"), table.get("vars", {})
    if not (isinstance(base, dict) and isinstance(own, dict)):
        return raw, set()
    inherited = set(base) - set(own)
    dropped = {k for k, v in own.items() if v is False and k in base}
    raw["vars"] = {k: v for k, v in {**base, **own}.items() if k not in dropped}
    return raw, inherited


def validator(where: str, name: str | None):
    """model_validate that turns pydantic's errors into a CaseError naming file, case and dotted key."""

    def validate(model_cls, raw):
        try:
            return model_cls.model_validate(raw)
        except ValidationError as exc:
            loc = exc.errors()[0]["loc"]
            raise CaseError(_describe_validation(exc, model_cls), where, name,
                            _dotted(loc[:-1] if _union_kinds(exc) else _plain(loc))) from None

    return validate


def build_case(raw: dict, where: str = "<data>"):
    """Validate one case's raw mapping into a Case (or a TrainCase for ``kind = "train"``), or raise CaseError."""
    name = raw.get("name") if isinstance(raw.get("name"), str) else None
    kind = raw.get("kind", "grad")
    if isinstance(kind, str) and kind not in ("grad", "train"):
        raise CaseError(f"unknown kind {clip(repr(kind), 40)}: 'grad' (the default) or 'train'"
                        f"{suggest(kind, ('grad', 'train'))}", where, name, "kind")
    if raw.get("kind") == "train":
        from .training.schema import build_train_case

        return build_train_case(raw, where, validator(where, name))
    model = validator(where, name)(CaseModel, raw)

    def fail(message: str, key: str):
        raise CaseError(message, where, model.name, key)

    if not model.name.strip():
        fail("'name' must not be empty", "name")
    check_name(model.name, fail)
    if model.expr is not None:
        ir, elements, names = _expression(model, fail)
    else:
        ir, elements, names = _no_expression(model, fail), [], []

    specs = {vname: _var_spec(vname, vm, fail) for vname, vm in model.vars.items()}
    for unused in sorted(set(model.vars) - (variables(ir) if ir is not None else set(model.vars))):
        if not unused.isidentifier():
            fail(f"var '{clip(unused)}' is not an identifier (letters, digits and _), so expr cannot name it",
                 f"vars.{unused}")
        if model.impl is None or specs[unused].requires_grad:  # an impl may take a constant input expr does not
            fail(f"var '{clip(unused)}' is declared but not used in expr"
                 + (" (an impl may take one that is declared requires_grad = false)" if model.impl else ""),
                 f"vars.{unused}")
    if not any(s.requires_grad for s in specs.values()):
        fail("no var has requires_grad = true: there is nothing to differentiate", "vars")
    out_shape, outs = None, ()  # a Python reference (or the impl alone) gives the shape when it first runs
    if ir is not None:
        try:
            shapes = [infer(e, VarShapes(specs)) for e in elements] if names else []
            out_shape = infer(ir, VarShapes(specs))
        except ExpressionError as exc:
            fail(f"shapes do not fit: {exc}", "expr")
        outs = outputs.layout(names, elements, shapes, {n for n, s in specs.items() if s.requires_grad})
        if outs and all(o.value_only for o in outs):
            fail("no output is differentiable (every one is a mask, an integer or detached): there is nothing to "
                 "differentiate", "expr")

    check_seed(model.seed, fail)
    check_choices("dtypes", model.dtypes, fail)
    check_choices("devices", model.devices, fail)

    if model.order not in (1, 2, 3):
        fail(f"order must be 1, 2 or 3, got {model.order}", "order")
    if model.impl is not None and not model.impl.strip():
        fail("impl must name 'module:attribute'", "impl")
    if model.impl_args and model.impl is None:
        fail("impl_args needs impl", "impl_args")
    impl_args = _impl_args(model.impl_args, fail)
    clash = set(model.impl_args) & set(model.vars)
    if clash:
        fail(f"impl_args names a var: {', '.join(sorted(clash))}", "impl_args")
    for i, name in enumerate(model.transforms):
        if name not in TRANSFORMS:
            fail(f"unknown transform {clip(repr(name), 40)}: one of {', '.join(TRANSFORMS)}"
                 f"{suggest(name, TRANSFORMS)}", f"transforms.{i}")
    surrogate = _surrogates(model, specs, out_shape, outs, fail)
    expect = _expect(model.expect, specs, out_shape, fail, outs) if model.expect is not None else None
    tolerance = _tolerance(model.tolerance, fail) if model.tolerance is not None else None
    return Case(name=model.name, path=where, expr=model.expr, ir=ir, vars=specs, out_shape=out_shape,
                dtypes=tuple(model.dtypes), devices=tuple(model.devices), seed=model.seed,
                description=model.description, expect=expect, tolerance=tolerance, impl=model.impl,
                impl_args=impl_args, order=model.order, transforms=tuple(dict.fromkeys(model.transforms)),
                reference=model.reference, outputs=outs, surrogate=surrogate, rng=model.rng)


def _expression(model: CaseModel, fail) -> tuple[Node, list, list[str]]:
    """The parsed ``expr`` (the flat concatenation of a tuple's elements), its elements and the outputs' names:
    every declared var used, every constant finite."""
    if model.reference is not None:
        fail("give expr or reference, not both: each is the reference the impl is checked against", "reference")
    try:
        elements = parse_outputs(model.expr, set(model.vars))
    except ExpressionError as exc:
        fail(f"bad expr: {_point_at(model.expr, exc)}", "expr")
    ir = elements[0] if len(elements) == 1 and model.outputs is None else outputs.flat_ir(elements)
    names = _output_names(model.outputs, len(elements), fail)
    used = variables(ir)
    if not used:
        fail("expr uses no variables: there is nothing to differentiate", "expr")
    overflow = non_finite_constant(ir)
    if overflow:
        fail(f"bad expr: the constant {overflow} is not finite in float64, so no dtype can evaluate the "
             "expression; write it as a finite number", "expr")
    return ir, elements, names


def _no_expression(model: CaseModel, fail) -> None:
    """Without ``expr``: a Python ``reference = "module:function"`` beside the impl, or the impl alone."""
    if model.reference is not None and not model.reference.strip():
        fail("reference must name 'module:function'", "reference")
    if model.impl is None:
        what = "a reference needs an impl to check against it" if model.reference is not None else \
            "missing required key 'expr' (the function); or give impl, checked against reference = " \
            "'module:function' or alone"
        fail(what, "impl" if model.reference is not None else "expr")
    if not model.vars:
        fail("a case without expr must declare its vars (the impl's tensor arguments)", "vars")
    if model.outputs is not None:
        fail("outputs names the elements of a tuple expr; a case without expr has one output", "outputs")


def _output_names(names, count: int, fail) -> list[str]:
    """The outputs' names: ``outputs = [...]`` (one distinct identifier per element of the expr's tuple), or
    out0, out1, ... for a tuple expr without it; [] for a case with one plain output."""
    if names is None:
        return outputs.default_names(count) if count > 1 else []
    import re

    if len(names) != count:
        fail(f"outputs names {len(names)} output(s) but expr has {count}", "outputs")
    for i, name in enumerate(names):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
            fail(f"outputs.{i} = {clip(repr(name), 40)} must be a plain identifier (letters, digits, _)",
                 f"outputs.{i}")
    if len(set(names)) < len(names):
        fail(f"outputs names {', '.join(sorted({n for n in names if names.count(n) > 1}))} twice", "outputs")
    return list(names)


def _impl_args(args: dict, fail) -> dict:
    """``impl_args`` as the impl receives them: numbers, booleans, strings and lists of them, as written; TOML has
    no null, so an empty table (``bias = {}``) is Python's None. Anything else is an error naming the key."""

    def value(v, key: str):
        if isinstance(v, dict):
            if v:
                fail(f"{key}: a table is not an impl argument; write {{}} (an empty table) for None", key)
            return None
        if isinstance(v, list):
            return [value(item, f"{key}.{i}") for i, item in enumerate(v)]
        if isinstance(v, (bool, int, float, str)):
            return v
        fail(f"{key}: impl arguments are numbers, booleans, strings, lists or {{}} for None, got "
             f"{clip(type(v).__name__)}", key)

    return {name: value(v, f"impl_args.{clip(name)}") for name, v in args.items()}


SURROGATE_G = "g"  # the upstream gradient's name in a surrogate rule


def _surrogates(model: CaseModel, specs: dict[str, VarSpec], out_shape, outs, fail) -> dict:
    """``surrogate.<var>``: the rule, of the vars and the upstream gradient ``g`` (the output's shape), that the
    impl's backward follows for that var instead of the true derivative; it must give the var's shape."""
    rules = {}
    for vname, text in model.surrogate.items():
        key = f"surrogate.{clip(vname)}"

        def bad(message: str, key: str = key):
            fail(f"{key}: {message}", key)

        if model.impl is None:
            bad("surrogate needs impl: it declares the gradient an impl's own backward computes")
        if out_shape is None:
            bad("surrogate needs expr: the impl's forward is still checked against it")
        if outs:
            bad("surrogate rules are supported for one output only (g would be the flat concatenation)")
        if vname not in specs:
            bad(f"'{clip(vname)}' is not a declared var")
        if not specs[vname].requires_grad:
            bad(f"var '{clip(vname)}' has requires_grad = false, so it has no gradient to declare")
        if SURROGATE_G in specs:
            bad(f"a var is named '{SURROGATE_G}', the upstream gradient's name in a surrogate: rename the var")
        if model.order != 1:
            bad("surrogate gradients are checked to first order only (order = 1)")
        try:
            ir = parse(text, set(specs) | {SURROGATE_G})
            shape = infer(ir, VarShapes({**specs, SURROGATE_G: VarSpec(SURROGATE_G, tuple(out_shape), None,
                                                                       (-1.0, 1.0), False)}))
        except ExpressionError as exc:
            bad(f"bad surrogate: {_point_at(text, exc)}")
        want = specs[vname].shape
        try:
            fits = np.broadcast_shapes(tuple(shape), want) == want
        except ValueError:
            fits = False
        if not fits:
            bad(f"the surrogate gives shape {list(shape)}, which does not broadcast to var '{clip(vname)}''s shape "
                f"{list(want)} (g has the output's shape {list(out_shape)})")
        rules[vname] = (text, ir)
    return rules


def non_finite_constant(ir: Node) -> str | None:
    """The first constant sub-expression (one with no variable under it, as large as it goes) whose float64 value
    is inf or nan (``9**9**9**9``, ``1/0``), printed with its value; None when every constant is finite."""
    from .expr.ir import Call, Const, to_text
    from .expr.ops import OPS

    bad: list[str] = []

    def fold(node):  # -> (float64 value, or None where unknown; whether no variable is under node)
        if isinstance(node, Const):
            return float(node.value), True
        if not isinstance(node, Call):
            return None, False
        folded = [fold(a) for a in node.args]
        if all(const for _, const in folded):
            if OPS[node.op].kind != "elementwise" or any(v is None for v, _ in folded):
                return None, True
            try:
                with np.errstate(all="ignore"):
                    args = (np.float64(v) for v, _ in folded)
                    return float(OPS[node.op].numpy(*args, **dict(node.params))), True
            except (ArithmeticError, ValueError, TypeError):
                return None, True
        for i, (arg, (value, const)) in enumerate(zip(node.args, folded)):
            if node.op == "clamp" and i > 0 and value in (math.inf, -math.inf):
                continue  # an infinite clamp bound is an absent one, as in torch.clamp
            if const and value is not None and not math.isfinite(value) and not bad:
                bad.append(f"{to_text(arg)} (= {value})")
        return None, False

    fold(ir)
    return bad[0] if bad else None


def _var_spec(vname: str, vm: VarModel, fail) -> VarSpec:
    key = f"vars.{vname}"
    if len(vm.shape) > MAX_NDIM:
        fail(f"{key}.shape has {len(vm.shape)} dimensions; at most {MAX_NDIM} are supported", f"{key}.shape")
    if any(d < 1 for d in vm.shape):
        fail(f"{key}.shape {vm.shape} has a dimension below 1", f"{key}.shape")
    size = math.prod(vm.shape)
    if size > MAX_ELEMENTS:
        fail(f"{key}.shape {vm.shape} has {size} entries; the limit is {MAX_ELEMENTS}", f"{key}.shape")
    shape = tuple(vm.shape)
    value = None
    if vm.value is not None:
        raw = _bools_as_numbers(vm.value) if vm.dtype == "bool" else vm.value
        value = _array(raw, shape, f"{key}.value", fail)
    domain = (-1.0, 1.0)
    if vm.domain is not None:
        if len(vm.domain) != 2 or not all(math.isfinite(d) for d in vm.domain) or not vm.domain[0] < vm.domain[1]:
            fail(f"{key}.domain must be [lo, hi] with finite lo < hi, got {vm.domain}", f"{key}.domain")
        domain = (float(vm.domain[0]), float(vm.domain[1]))
    if vm.dtype is not None:
        return _typed_var_spec(vname, vm, shape, value, fail)
    return VarSpec(vname, shape, value, domain, True if vm.requires_grad is None else vm.requires_grad)


def _typed_var_spec(vname: str, vm: VarModel, shape, value, fail) -> VarSpec:
    """An int64 var samples integers lo <= t < hi (as torch.randint); a bool var samples masks. Neither is ever
    differentiated."""
    key = f"vars.{vname}"
    if vm.requires_grad:
        fail(f"{key} has dtype {vm.dtype}: integer and boolean vars are never differentiated", f"{key}.requires_grad")
    if vm.dtype == "bool":
        if vm.domain is not None:
            fail(f"{key}.domain does not apply to a bool var", f"{key}.domain")
        if value is not None and not np.all((value == 0) | (value == 1)):
            fail(f"{key}.value of a bool var must hold 0/1 (or true/false)", f"{key}.value")
        return VarSpec(vname, shape, value, (0.0, 2.0), False, "bool")
    if vm.domain is None and value is None:
        fail(f"{key} has dtype int64 and needs domain = [lo, hi] (sampled lo <= t < hi) or value", f"{key}.domain")
    if value is not None and not np.all(value == np.round(value)):
        fail(f"{key}.value of an int64 var must hold integers", f"{key}.value")
    if vm.domain is None and not np.all(np.abs(value) < 2**31):  # the range below is the value's own
        fail(f"{key}.value of an int64 var must hold integers of magnitude below 2**31", f"{key}.value")
    lo, hi = vm.domain if vm.domain is not None else (float(value.min(initial=0)), float(value.max(initial=0)) + 1)
    if not (float(lo).is_integer() and float(hi).is_integer() and lo < hi and abs(lo) < 2**31 and abs(hi) < 2**31):
        fail(f"{key}.domain of an int64 var must be integers lo < hi, got {vm.domain}", f"{key}.domain")
    return VarSpec(vname, shape, value, (float(lo), float(hi)), False, "int64")


def _bools_as_numbers(value):
    if isinstance(value, list):
        return [_bools_as_numbers(v) for v in value]
    return float(value) if isinstance(value, bool) else value


def _array(value, shape: tuple[int, ...], key: str, fail) -> np.ndarray:
    """A number broadcast to ``shape``, or a nested list of exactly that shape, as finite float64."""
    arr = numbers(value, key, fail)
    if arr.ndim == 0:  # a number
        return np.full(shape, float(arr))
    if arr.shape != shape:
        fail(f"{key} has shape {clip(list(arr.shape), 60)} but the shape is {list(shape)}", key)
    return arr


def _expect(em: ExpectModel, specs: dict[str, VarSpec], out_shape, fail, outs=()) -> Expect:
    value = None
    if em.value is not None:
        if outs:
            value = outputs.flat_expect(em.value, outs, fail)
        elif out_shape is not None:
            value = _array(em.value, out_shape, "expect.value", fail)
        else:  # without expr the output's shape is known only once the reference runs (checked then)
            value = numbers(em.value, "expect.value", fail)
    grads = {}
    for vname, raw in em.grad.items():
        if vname not in specs:
            fail(f"expect.grad names '{vname}', which is not a declared var", f"expect.grad.{vname}")
        if not specs[vname].requires_grad:
            fail(f"var '{vname}' has requires_grad = false, so it has no gradient", f"expect.grad.{vname}")
        grads[vname] = _array(raw, specs[vname].shape, f"expect.grad.{vname}", fail)
    for key, tol in (("atol", em.atol), ("rtol", em.rtol)):
        if tol is not None and not (tol >= 0 and math.isfinite(tol)):
            fail(f"expect.{key} must be a finite number >= 0, got {tol}", f"expect.{key}")
    atol = EXPECT_ATOL if em.atol is None else em.atol
    rtol = EXPECT_RTOL if em.rtol is None else em.rtol
    return Expect(value, grads, atol, rtol)


def _tolerance(tm: ToleranceModel, fail) -> Tolerance:
    if not tm.reason.strip():
        fail("a tolerance override must say why in 'reason'", "tolerance.reason")
    per_dtype = {}
    for dtype in DTYPES:
        sub = getattr(tm, dtype)
        if sub is not None:
            per_dtype[dtype] = (sub.atol, sub.rtol)
    for key, tol in [("atol", tm.atol), ("rtol", tm.rtol)] + [
            (f"{d}.{k}", t) for d, (a, r) in per_dtype.items() for k, t in (("atol", a), ("rtol", r))]:
        if tol is not None and not (tol >= 0 and math.isfinite(tol)):
            fail(f"tolerance.{key} must be a finite number >= 0, got {tol}", f"tolerance.{key}")
    if tm.atol is None and tm.rtol is None and not per_dtype:
        fail("a tolerance override needs atol or rtol", "tolerance")
    return Tolerance(tm.reason, tm.atol, tm.rtol, per_dtype)


def _point_at(expr: str, exc: ExpressionError) -> str:
    if exc.col is None or "\n" in expr or safe(expr) != expr:
        return f"{exc.message} in '{clip(expr, 500)}'"
    return f"{exc.message}\n    {expr}\n    {' ' * exc.col}^"


def _model_at(root: type[BaseModel], parent: tuple) -> type[BaseModel] | None:
    """The model that validates the table at ``parent`` below ``root`` (for suggesting known keys)."""
    import typing

    model = root
    for part in parent:
        if model is None or not isinstance(part, str):
            return None
        if part in model.model_fields:
            annotation = model.model_fields[part].annotation
        elif getattr(model, "_dict_value", None) is not None:
            annotation = model._dict_value
        else:
            return None
        model = _model_in(annotation, typing)
    return model


def _model_in(annotation, typing):
    """The pydantic model inside an annotation (Model, Model | None, dict[str, Model])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg, typing)
        if found is not None:
            if typing.get_origin(annotation) is dict:
                return _DictOf(found)
            return found
    return None


class _DictOf:
    """Marks a dict of models: the next path part is a free key, the one after it a field of the model."""

    def __init__(self, model):
        self.model_fields = {}
        self._dict_value = model


def _dotted(loc) -> str:
    return ".".join(str(p) for p in loc)


def _describe_validation(exc: ValidationError, root: type[BaseModel] = CaseModel) -> str:
    """Say the first problem in words: unknown keys with a suggestion, missing keys, wrong types."""
    err = exc.errors()[0]
    loc = _plain(err["loc"])
    where = _dotted(loc[:-1])
    last = loc[-1] if loc else ""
    where = clip(where)
    if err["type"] == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        known = list(model.model_fields) if model is not None and not isinstance(model, _DictOf) else []
        close = _nearest(str(last), known, 0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else (f" (known: {', '.join(known)})" if known else "")
        inside = f" in {where}" if where else ""
        return f"unknown key '{clip(last)}'{inside}{hint}"
    if err["type"] == "missing":
        inside = f" in {where}" if where else ""
        extras = [str(e["loc"][-1]) for e in exc.errors()
                  if e["type"] == "extra_forbidden" and tuple(e["loc"][:-1]) == loc[:-1]]
        close = difflib.get_close_matches(str(last), extras, n=1, cutoff=0.6)
        hint = f" (did you mean '{last}' for '{clip(close[0])}'?)" if close else ""
        return f"missing required key '{last}'{inside}{hint}"
    value = err.get("input")
    shown = clip(repr(value), 60)
    if _union_kinds(exc):  # pydantic names each member of a union (data.x.DrawModel, data.x.str)
        return f"{clip(_dotted(err['loc'][:-1]))}: must be {_union_kinds(exc)} (got {shown})"
    if err["type"] in ("model_type", "dict_type"):  # not "or instance of VarModel": a class the user never sees
        return f"{clip(_dotted(loc))}: Input should be a valid dictionary (a TOML table) (got {shown})"
    if err["type"] == "literal_error" and isinstance(value, str):
        import re

        close = suggest(value, re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", "")))
        return f"{clip(_dotted(loc))}: {err['msg']} (got {shown}){close}"
    return f"{clip(_dotted(loc))}: {err['msg']} (got {shown})"


def _plain(loc) -> tuple:
    """An error's key path without the union member pydantic puts in it (data.x.DrawModel.rand -> data.x.rand)."""
    return tuple(p for p in loc if not (isinstance(p, str) and p.endswith("Model") and p[:1].isupper()))


def _union_kinds(exc: ValidationError) -> str:
    """'a table or a string' when the first error is a value that fits no member of a union, else ''."""
    loc = tuple(exc.errors()[0]["loc"])
    tags = [e["loc"][-1] for e in exc.errors() if tuple(e["loc"][:-1]) == loc[:-1]]
    words = {"str": "a string", "float": "a number", "int": "an integer", "bool": "a boolean", "list": "a list"}
    if len(tags) < 2 or not all(isinstance(t, str) and (t[:1].isupper() or t in words) for t in tags):
        return ""
    return " or ".join(dict.fromkeys("a table" if t[:1].isupper() else words[t] for t in tags))


def suggest(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the nearest of ``choices``, or ``""``."""
    close = _nearest(word, list(choices), 0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _nearest(word: str, choices: list, cutoff: float) -> list:
    """difflib's close matches, the fewest edits first: difflib alone ranks 'expect' above 'expr' for 'expt'."""
    close = difflib.get_close_matches(word, choices, n=3, cutoff=cutoff)
    return sorted(close, key=lambda c: _edits(word, c))[:1]


def _edits(a: str, b: str) -> int:
    """Levenshtein distance (short key names only)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]
