"""The engine under test: the expression built from real torch ops, differentiated by torch.autograd.

Every VJP is taken with ``torch.autograd.grad`` on one graph. Beside the numbers it records what gradcheck
calls semantic checks: each gradient must have its input's dtype, device and shape. On CUDA, TF32 matmul is
switched off while a check runs (it would change float32 results by ~1e-3), and the report says so.

Why it is over 400 lines: the lowering of every op family to torch (torch's names, argument order and defaults)
lives beside the VJP, JVP and double-backward runners that call it; one module keeps "what torch computes" in
one place, which the symbolic engine is judged independent of.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..expr.ir import Call, Const, Node, Var
from ..expr.ops import OPS

TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
                "bfloat16": torch.bfloat16}


def build(ir: Node) -> Callable[..., torch.Tensor]:
    """A torch function of the case's variables (keyword arguments) computing ``ir``: the expression is walked
    once, into closures making the torch calls ``_eval`` makes node by node (a training loop calls it thousands of
    times)."""
    node_fn, _ = _closure(ir)

    def fn(**tensors):
        floats = [t for t in tensors.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
        env = dict(tensors, **{_DTYPE: floats[0].dtype if floats else torch.float64})
        return _as_float(node_fn(env), env)

    return fn


_DTYPE = "__dtype"  # the case's float dtype, beside the tensors (no var name can start with '_')


def _as_float(t, env):
    """A mask used as a number counts as 0/1 in the case's float dtype (torch would make bool + bool an or)."""
    if isinstance(t, torch.Tensor) and t.dtype == torch.bool:
        return t.to(env[_DTYPE] if _DTYPE in env else torch.get_default_dtype())
    return t


_PLAIN = {"add", "sub", "mul", "div", "pow", "neg"}  # ops _eval sends straight to OPS[op].torch
_REDUCE = {"sum", "mean", "logsumexp"}


def _closure(node: Node):
    """A closure computing ``_eval(node, env)``, and whether its value is never a bool tensor (so that
    ``_as_float`` of it is itself)."""
    if isinstance(node, Const):
        value = node.value
        return (lambda env: value), True
    if isinstance(node, Var):
        name = node.name
        return (lambda env: env[name]), False
    assert isinstance(node, Call)
    children = [_closure(a) for a in node.args]
    as_float, tensor = _as_float, torch.Tensor
    arg_fns = [c if plain else (lambda env, c=c: as_float(c(env), env)) for c, plain in children]
    p = dict(node.params)
    if node.op in _PLAIN:
        torch_op, numpy_op = OPS[node.op].torch, OPS[node.op].numpy

        def constant(args):  # a constant sub-expression stays a Python float, as in _eval
            with np.errstate(all="ignore"):  # 10**10**10 is inf as in Python's float64, without numpy's warning
                return float(numpy_op(*[np.float64(a) for a in args], **p))

        if len(arg_fns) == 2 and not p:
            f0, f1 = arg_fns

            def binary(env):
                a, b = f0(env), f1(env)
                if isinstance(a, tensor) or isinstance(b, tensor):
                    return torch_op(a, b)
                return constant((a, b))
            return binary, True

        def plain(env):
            args = [f(env) for f in arg_fns]
            if all(not isinstance(a, tensor) for a in args):
                return constant(args)
            return torch_op(*args, **p)
        return plain, True
    if node.op in _REDUCE:
        (f0,), reduce_op, keepdim = arg_fns, getattr(torch, node.op), p["keepdim"]

        def reduce(env):
            x = f0(env)
            if not isinstance(x, tensor) or x.ndim == 0:  # sum(0.5 * 0.5): a constant is its own sum or mean
                return x
            return reduce_op(x, dim=tuple(range(x.ndim)) if p["dim"] is None else p["dim"], keepdim=keepdim)
        return reduce, True
    if node.op == "matmul":
        f0, f1 = arg_fns
        matmul = torch.matmul
        return (lambda env: matmul(f0(env), f1(env))), True
    # any other op: _eval itself, on a copy of the node whose arguments are the values computed by the children
    names = [f"_arg{id(node)}_{k}" for k in range(len(children))]
    stand_in = Call(node.op, tuple(Var(n) for n in names), node.params)

    def other(env):
        for n, (c, _) in zip(names, children):
            env[n] = c(env)
        return _eval(stand_in, env)
    return other, False


_OF_A_TENSOR = {"sum", "mean", "logsumexp", "amax", "amin", "prod", "var", "std", "norm", "cumsum", "cumprod", "sort",
                "softmax", "log_softmax", "transpose"}


def _eval(node: Node, env: dict):
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Var):
        return env[node.name]
    assert isinstance(node, Call)
    args = [_eval(a, env) for a in node.args]
    p = dict(node.params)
    op = node.op
    if op in _MASK_OPS:
        return _mask_op(op, args, env)
    args = [_as_float(a, env) for a in args]
    if op in _OF_A_TENSOR and not isinstance(args[0], torch.Tensor):  # amin(0.5), cumsum(2.0, 0): torch takes tensors
        args[0] = torch.tensor(args[0], dtype=env.get(_DTYPE, torch.get_default_dtype()))
    if op == "detach":
        return args[0].detach() if isinstance(args[0], torch.Tensor) else args[0]
    if op == "matmul":
        return torch.matmul(args[0], args[1])
    if op == "transpose":
        x = args[0]
        return x.permute(*reversed(range(x.ndim))) if x.ndim > 1 else x
    if op in ("sum", "mean", "logsumexp"):
        x = args[0]
        dim = tuple(range(x.ndim)) if p["dim"] is None else p["dim"]
        if x.ndim == 0:
            return x
        return getattr(torch, op)(x, dim=dim, keepdim=p["keepdim"])
    if op in ("amax", "amin", "prod", "var", "std", "norm"):
        x = args[0]
        dim = tuple(range(x.ndim)) if p["dim"] is None else p["dim"]
        if op == "prod":
            return torch.prod(x) if p["dim"] is None else torch.prod(x, dim=dim, keepdim=p["keepdim"])
        if op == "norm":
            return torch.linalg.vector_norm(x, ord=p["p"], dim=dim, keepdim=p["keepdim"])
        if op in ("var", "std"):
            return getattr(torch, op)(x, dim=dim, correction=p["correction"], keepdim=p["keepdim"])
        return x if x.ndim == 0 else getattr(torch, op)(x, dim=dim, keepdim=p["keepdim"])
    if op in ("cumsum", "cumprod"):
        return getattr(torch, op)(args[0], dim=p["dim"])
    if op == "sort":
        return torch.sort(args[0], dim=p["dim"], descending=p["descending"]).values
    if op in ("softmax", "log_softmax"):
        return getattr(torch, op)(args[0], dim=p["dim"])
    if op == "clamp":
        return _clamp(args, env)
    if op in ("conv1d", "conv2d", "avg_pool2d", "max_pool2d"):
        from ..expr.shapes import nd

        d = 1 if op == "conv1d" else 2
        F = torch.nn.functional
        if op in ("avg_pool2d", "max_pool2d"):
            k = nd(p["kernel_size"], 2)
            return getattr(F, op)(args[0], k, nd(p["stride"], 2) if p["stride"] else k, nd(p["padding"], 2))
        bias = args[2] if isinstance(args[2], torch.Tensor) else None
        return getattr(F, op)(args[0], args[1], bias, nd(p["stride"], d), nd(p["padding"], d), nd(p["dilation"], d),
                              p["groups"])
    if op in ("linear", "layer_norm", "rms_norm", "scaled_dot_product_attention"):
        return _nn(op, args, p, env)
    if op == "embedding":
        return torch.nn.functional.embedding(args[0], args[1])
    if op == "index_var":
        return args[0][args[1]]
    if op in ("index_select", "gather"):
        return getattr(torch, op)(args[0], p["dim"], args[1])
    if op == "cross_entropy":
        return torch.nn.functional.cross_entropy(args[0], args[1], label_smoothing=p["label_smoothing"],
                                                 reduction=p["reduction"])
    if op == "nll_loss":
        return torch.nn.functional.nll_loss(args[0], args[1], reduction=p["reduction"])
    if op == "einsum":
        return torch.einsum(p["equation"], *[a if isinstance(a, torch.Tensor) else torch.tensor(a, dtype=env[_DTYPE])
                                              for a in args])
    if op in _SHAPE:
        return _SHAPE[op]([a if isinstance(a, torch.Tensor) else torch.tensor(a, dtype=env[_DTYPE]) for a in args], p)
    F = torch.nn.functional
    if op in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div"):
        a, b = torch.broadcast_tensors(*[t if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=env[_DTYPE])
                                         for t in args])
        return getattr(F, op)(a, b, **p)
    if op in ("binary_cross_entropy", "binary_cross_entropy_with_logits"):
        return getattr(F, op)(args[0], args[1], reduction=p["reduction"])
    if op == "cosine_similarity":
        return F.cosine_similarity(args[0], args[1], dim=p["dim"], eps=p["eps"])
    if op == "normalize":
        return F.normalize(args[0], p=p["p"], dim=p["dim"], eps=p["eps"])
    if all(not isinstance(a, torch.Tensor) for a in args):  # constant sub-expression: keep it a Python float
        return float(OPS[op].numpy(*[np.float64(a) for a in args], **p))
    if op in TENSOR_ONLY:  # torch.maximum(3.0, x) is a TypeError: give constants x's dtype and device
        like = next(a for a in args if isinstance(a, torch.Tensor))
        args = [a if isinstance(a, torch.Tensor) else torch.tensor(a, dtype=like.dtype, device=like.device)
                for a in args]
    return OPS[op].torch(*args, **p)


def _index(x, items):
    return x[tuple(slice(*i[1:]) if isinstance(i, tuple) else (Ellipsis if i == "..." else i) for i in items)]


_SHAPE = {  # torch's own shape ops, with torch's argument names
    "reshape": lambda a, p: torch.reshape(a[0], p["shape"]),
    "flatten": lambda a, p: torch.flatten(a[0], p["start_dim"], p["end_dim"]),
    "permute": lambda a, p: a[0].permute(tuple(p["dims"])),  # a tuple: permute(*()) of a 0-d tensor is a TypeError
    "swapdims": lambda a, p: torch.transpose(a[0], p["dim0"], p["dim1"]),
    "mT": lambda a, p: a[0].mT,
    "unsqueeze": lambda a, p: torch.unsqueeze(a[0], p["dim"]),
    "squeeze": lambda a, p: torch.squeeze(a[0]) if p["dim"] is None else torch.squeeze(a[0], p["dim"]),
    "expand": lambda a, p: a[0].expand(tuple(p["size"])),
    "flip": lambda a, p: torch.flip(a[0], p["dims"]),
    "tril": lambda a, p: torch.tril(a[0], p["diagonal"]),
    "triu": lambda a, p: torch.triu(a[0], p["diagonal"]),
    "cat": lambda a, p: torch.cat(a, dim=p["dim"]),
    "stack": lambda a, p: torch.stack(a, dim=p["dim"]),
    "index": lambda a, p: _index(a[0], p["index"]),
}
def _nn(op, args, p, env):
    """torch.nn.functional's layers; a weight or bias given as a number (1 and 0 when absent) becomes None or a
    full tensor."""
    F = torch.nn.functional

    def opt(t, absent, shape):
        if isinstance(t, torch.Tensor):
            return t
        return None if t == absent else torch.full(shape, float(t), dtype=args[0].dtype, device=args[0].device)

    if op == "linear":
        return F.linear(args[0], args[1], opt(args[2], 0.0, args[1].shape[:1]))
    norm = tuple(p.get("normalized_shape", ()))
    if op == "layer_norm":
        return F.layer_norm(args[0], norm, opt(args[1], 1.0, norm), opt(args[2], 0.0, norm), eps=p["eps"])
    if op == "rms_norm":
        return F.rms_norm(args[0], norm, opt(args[1], 1.0, norm), eps=p["eps"])
    return F.scaled_dot_product_attention(args[0], args[1], args[2], is_causal=p["is_causal"],
                                          scale=p["scale"] or None)


TENSOR_ONLY = {"maximum", "minimum", "atan2", "logaddexp", "hypot", "xlogy"}


def _clamp(args, env):
    """torch.clamp(x, min=, max=): an infinite bound is an absent one; numbers stay numbers unless the other
    bound is a tensor (torch takes two numbers or two tensors)."""
    x, lo, hi = args
    like = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if like is None:
        return float(np.clip(x, lo, hi))

    def tensor(v):
        return v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=like.dtype, device=like.device)

    bounds = [None if (not isinstance(b, torch.Tensor) and abs(b) == float("inf")) else b for b in (lo, hi)]
    if any(isinstance(b, torch.Tensor) for b in bounds):
        bounds = [None if b is None else tensor(b) for b in bounds]
    x = tensor(x)
    shape = torch.broadcast_shapes(x.shape, *(b.shape for b in bounds if isinstance(b, torch.Tensor)))
    return torch.clamp(x.expand(shape), min=bounds[0], max=bounds[1])  # torch keeps x's shape: broadcast first
_MASK_OPS = {"lt", "le", "gt", "ge", "eq", "ne", "logical_and", "logical_or", "logical_not", "where"}


def _mask_op(op: str, args: list, env: dict):
    """Comparisons give torch.bool masks, & | ~ combine them, where() selects: as torch does."""
    if op == "logical_not":
        return torch.logical_not(args[0]) if isinstance(args[0], torch.Tensor) else float(not args[0])
    if op in ("logical_and", "logical_or"):
        if not any(isinstance(a, torch.Tensor) for a in args):
            return float(OPS[op].numpy(*args))
        a, b = (a if isinstance(a, torch.Tensor) else torch.tensor(bool(a)) for a in args)
        return torch.logical_and(a, b) if op == "logical_and" else torch.logical_or(a, b)
    if op == "where":
        cond, a, b = args
        if not any(isinstance(t, torch.Tensor) for t in args):
            return a if cond else b
        dtype = env[_DTYPE]
        device = next(t for t in args if isinstance(t, torch.Tensor)).device
        cond = cond if isinstance(cond, torch.Tensor) else torch.tensor(bool(cond), device=device)
        a, b = (_as_float(t, env) if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=dtype, device=device)
                for t in (a, b))
        return torch.where(cond, a, b)
    a, b = (_as_float(t, env) for t in args)
    if not any(isinstance(t, torch.Tensor) for t in (a, b)):
        return float(OPS[op].numpy(a, b))
    return OPS[op].torch(a, b)


@dataclass
class AutogradResult:
    value: np.ndarray
    vjps: list[dict[str, np.ndarray]]  # one per cotangent: var -> gradient (float64 copy)
    problems: list[str] = field(default_factory=list)  # semantic-check failures
    semantic_ran: bool = False  # the zero-cotangent and determinism checks ran
    out_dtype: str = ""  # the output's dtype ("float32")
    nondeterministic: list[str] = field(default_factory=list)  # vars whose repeated VJP differed


@contextlib.contextmanager
def _no_tf32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def input_tensor(x, dtype: str, device: str, requires_grad: bool, var_dtype: str | None) -> torch.Tensor:
    """A case var as torch sees it: int64 and bool vars keep their dtype whatever the case's float dtype."""
    if var_dtype == "int64":
        return torch.as_tensor(np.asarray(x, dtype=np.int64), device=device)
    if var_dtype == "bool":
        return torch.as_tensor(np.asarray(x) != 0, device=device)
    return to_tensor(x, dtype, device, requires_grad)


def to_tensor(x, dtype: str, device: str, requires_grad: bool = False) -> torch.Tensor:
    if dtype == "float32":  # rounded by numpy's cast, bit for bit torch's (round_to), at a fraction of its cost
        with np.errstate(over="ignore"):  # beyond float32's range is inf, as in torch
            t = torch.from_numpy(np.asarray(x, dtype=np.float64).astype(np.float32)).to(device=device)
    else:
        t = torch.as_tensor(np.array(x, dtype=np.float64)).to(device=device, dtype=TORCH_DTYPES[dtype])
    return t.requires_grad_(requires_grad)


def to_numpy(t) -> np.ndarray:
    if not isinstance(t, torch.Tensor):
        return np.asarray(t, dtype=np.float64)
    # a copy, never a view: a backward may change the tensor it returned on a later call (a ctx-kept buffer)
    t = t.detach()
    if t.dtype == torch.float32 and t.device.type == "cpu" and type(t) is torch.Tensor and \
            t.layout == torch.strided and not t.is_neg():  # widened by numpy (exact, as torch's), one copy not two
        return np.array(t.numpy(), dtype=np.float64, order="C")
    return t.to(device="cpu", dtype=torch.float64).numpy().copy()


def _cotangent(c, out: torch.Tensor, dtype: str, device: str) -> torch.Tensor:
    """A cotangent as a tensor of the output's shape and dtype."""
    shape = tuple(out.shape)
    return to_tensor(c if np.shape(c) == shape else np.broadcast_to(c, shape), dtype, device).to(out.dtype)


def run(fn: Callable, inputs: dict, grad_vars, dtype: str, device: str, cotangents: list,
        semantic: bool = True, var_dtypes: dict | None = None) -> AutogradResult:
    """Forward once, then one VJP per cotangent on the same graph; with ``semantic``, also a zero cotangent and a
    repeated VJP (gradcheck's checks that backward uses its upstream gradient and is deterministic)."""
    with _no_tf32():
        tensors = {n: input_tensor(v, dtype, device, n in grad_vars, (var_dtypes or {}).get(n))
                   for n, v in inputs.items()}
        out = fn(**tensors)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the function returned {type(out).__name__}, not a tensor")
        problems = []
        if out.dtype != TORCH_DTYPES[dtype]:
            problems.append(f"output dtype is {out.dtype}, inputs are {TORCH_DTYPES[dtype]}")
        leaves = [tensors[n] for n in grad_vars]
        vjps = []
        for c in cotangents:
            g = _cotangent(c, out, dtype, device)
            if not out.requires_grad:
                grads = [None] * len(leaves)
            else:
                version = g._version
                grads = torch.autograd.grad(out, leaves, g, retain_graph=True, allow_unused=True)
                if g._version != version:  # where torch hands one gradient to two branches, the other sees it
                    problems.append("backward modified its upstream gradient (grad_output) in place: where that "
                                    "gradient is shared (f(x) + x, an expand), the other branches get the "
                                    "changed one; compute into a new tensor")
            vjp = {}
            for name, leaf, grad in zip(grad_vars, leaves, grads):
                if grad is None:
                    vjp[name] = np.zeros(tuple(leaf.shape))
                    continue
                if grad.shape != leaf.shape:
                    problems.append(f"gradient of {name} has shape {list(grad.shape)}, input {list(leaf.shape)}")
                if grad.dtype != leaf.dtype:
                    problems.append(f"gradient of {name} has dtype {grad.dtype}, input {leaf.dtype}")
                if grad.device != leaf.device:
                    problems.append(f"gradient of {name} is on {grad.device}, input on {leaf.device}")
                vjp[name] = to_numpy(grad).reshape(tuple(leaf.shape)) if grad.numel() == leaf.numel() \
                    else np.full(tuple(leaf.shape), np.nan)
            vjps.append(vjp)
        nondeterministic = []
        if out.requires_grad and semantic:
            problems += _semantic(out, leaves, grad_vars, vjps, cotangents, dtype, device, nondeterministic)
        return AutogradResult(to_numpy(out), vjps, sorted(set(problems)), out.requires_grad and semantic,
                              str(out.dtype).replace("torch.", ""), nondeterministic)


def _semantic(out, leaves, grad_vars, vjps, cotangents, dtype, device, nondeterministic) -> list[str]:
    """gradcheck's extra checks: a zero upstream gradient gives zero, and backward is deterministic (the vars
    whose repeated VJP differs are added to ``nondeterministic``)."""
    problems = []
    zero = torch.zeros_like(out)
    for name, grad in zip(grad_vars, torch.autograd.grad(out, leaves, zero, retain_graph=True, allow_unused=True)):
        # 0 * inf = nan is arithmetic, not an ignored grad_output: only entries whose gradient is finite count
        # (an all-zero gradient, the usual answer, needs no look at them)
        if grad is not None and bool(torch.any(grad != 0)) and \
                bool(torch.any((grad != 0) & torch.isfinite(_like(vjps[0][name], grad)))):
            problems.append(f"a zero upstream gradient gave a nonzero gradient of {name} "
                            f"(max {float(grad.abs().max()):.3g}): backward ignores grad_output")
    # repeat the first cotangent (ones, nonzero everywhere) after all the others: a backward that changes what it
    # returned earlier (a ctx-kept tensor scaled in place) gives another gradient now
    again = torch.autograd.grad(out, leaves, _cotangent(cotangents[0], out, dtype, device), retain_graph=True,
                                allow_unused=True)
    for name, grad in zip(grad_vars, again):
        first = vjps[0][name]
        second = to_numpy(grad).reshape(first.shape) if grad is not None else np.zeros(first.shape)
        with np.errstate(invalid="ignore"):
            if np.shape(first) == np.shape(second) and bool(np.all(first == second)):  # the usual answer
                diff = 0.0
            else:
                same = (first == second) | (np.isnan(first) & np.isnan(second))  # nan twice is deterministic
                diff = float(np.max(np.where(same, 0.0, np.abs(first - second)), initial=0.0))
        diff = np.inf if np.isnan(diff) else diff
        limit = 0.0 if device == "cpu" else np.sqrt(first.size) * 2.0**-24 * float(np.max(np.abs(first), initial=0))
        if diff > limit:
            nondeterministic.append(name)
            problems.append(f"backward is not deterministic: two runs of the gradient of {name} differ by {diff:.3g}")
    return problems


def _like(x: np.ndarray, t: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.broadcast_to(x, tuple(t.shape)).copy()).to(t.device)


def jvp(fn: Callable, inputs: dict, grad_vars, tangents: dict, dtype: str, device: str,
        var_dtypes: dict | None = None) -> np.ndarray:
    """Forward-mode derivative J v with ``torch.func.jvp`` (raises where the function does not support it)."""
    names = list(inputs)
    fixed = {n: input_tensor(v, dtype, device, False, (var_dtypes or {}).get(n)) for n, v in inputs.items()
             if n not in grad_vars}
    primals = tuple(to_tensor(inputs[n], dtype, device) for n in grad_vars)
    dirs = tuple(to_tensor(tangents[n], dtype, device) for n in grad_vars)

    def call(*xs):
        tensors = dict(fixed, **dict(zip(grad_vars, xs)))
        return fn(**{n: tensors[n] for n in names})

    _load_forward_ad()
    with _no_tf32():
        _, out = torch.func.jvp(call, primals, dirs)
    return to_numpy(out)


@functools.cache
def _load_forward_ad() -> None:
    """Load what forward mode needs once, without the warnings torch raises while doing it.

    On first use torch registers its forward-mode decompositions by scripting 18 functions with ``torch.jit.script``,
    which torch itself has deprecated: every user's test run would show 18 DeprecationWarnings (or, under ``-W
    error``, lose the jvp check). Only that warning, only during that load, is silenced. torch._dynamo is imported
    here too: forward mode's first use of many ops (``x * 2`` in a ``jvp``) imports it (about 2 s here), and the
    runner calls this before a case's ``--timeout`` starts, not inside the first case that uses forward mode.
    """
    import warnings

    import torch._dynamo  # noqa: F401
    from torch.autograd import forward_ad

    load = getattr(forward_ad, "_maybe_load_decompositions", None)
    if load is not None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`torch.jit.script` is", category=DeprecationWarning)
            load()


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` rounded to ``dtype`` and widened back to float64: the point a ``dtype`` computation sees."""
    if dtype == "float64":
        return np.asarray(x, dtype=np.float64)
    if dtype == "float32":  # numpy's cast rounds as torch's (to nearest even, subnormals kept), without torch's cost
        with np.errstate(over="ignore"):  # beyond float32's range is inf, as in torch
            return np.array(x, dtype=np.float64).astype(np.float32, order="C").astype(np.float64)
    return to_numpy(torch.as_tensor(np.array(x, dtype=np.float64)).to(TORCH_DTYPES[dtype]))


def device_skip_reason(device: str, requested) -> str | None:
    """Why checks on ``device`` cannot run in this run (excluded by --device, or no CUDA), or None."""
    if device not in requested:
        return f"{device} not requested (--device {', '.join(requested)})"
    if device == "cuda":
        ok, why = cuda_status()
        return None if ok else why
    return None


def cuda_status() -> tuple[bool, str]:
    """Whether CUDA can run checks here, and the reason when it cannot."""
    if not torch.cuda.is_available():
        why = "CUDA is not available (torch.cuda.is_available() is False"
        why += ", this torch build has no CUDA)" if torch.version.cuda is None else ", no GPU visible)"
        return False, why
    return True, torch.cuda.get_device_name(0)
