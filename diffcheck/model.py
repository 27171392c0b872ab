"""The results model: what a run is asked (``Options``) and what it finds (``Check`` records with their worst
``Entry``s, one ``CaseResult`` per case), and the vocabularies of statuses, check kinds and engines.

Data only: imports nothing of the package (numpy lazily, for JSON). Every layer may import it; it imports none.
The enums are ``StrEnum``s, so ``Status.PASS == "pass"``, JSON writes ``"pass"``, f-strings print ``pass`` and
a repr reads ``'pass'``.
"""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class _Word(enum.StrEnum):
    """A StrEnum that also reads as its string in a repr (a list of statuses prints as ['pass'], as before)."""

    def __repr__(self) -> str:
        return repr(self.value)


class Status(_Word):
    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"  # checks only
    SKIP = "skip"
    ERROR = "error"  # cases only


class Kind(_Word):
    """What a check judges."""
    VALUE = "value"  # the forward value against the reference
    GRAD = "grad"  # a gradient (VJP) against the reference
    FD = "fd"  # the reference against finite differences
    SELF_FD = "self_fd"  # an impl's backward against finite differences of its own forward
    EXPECT_VALUE = "expect_value"  # against a known answer in ``expect``
    EXPECT_GRAD = "expect_grad"
    SEMANTIC = "semantic"  # dtype/device/shape of gradients, zero upstream, determinism
    JVP = "jvp"  # an impl's forward mode against its reverse mode
    PRECISION = "precision"  # the rounding noise of an impl's float64 forward (a float32 buffer inside)
    HVP = "hvp"  # Hessian-vector products by double backward (order = 2 or 3)
    HVP_FWD = "hvp_fwd"  # Hessian-vector products by forward-over-reverse
    D3 = "d3"  # third derivatives along two directions (order = 3)
    RNG = "rng"  # an impl's forward evaluated twice at one point must agree (else: rng = "replay")
    COMPILE = "compile"  # transforms: the function under torch.compile
    VMAP = "vmap"  # batched VJPs/JVPs under torch.func.vmap against unbatched ones
    FORWARD = "forward"  # forward-mode JVPs in every dtype and device against the reference
    LAYOUTS = "layouts"  # non-contiguous, expanded and channels-last inputs, non-contiguous upstream gradients
    ALIASING = "aliasing"  # two vars passed the very same tensor
    TIMEOUT = "timeout"
    STATE = "state"  # global settings (torch's grad mode, default dtype, ...; the cwd) as the user's code left them
    CONVERGE = "converge"  # training cases
    TRAJECTORY = "trajectory"
    REPRODUCIBLE = "reproducible"


TRAINING_KINDS = (Kind.CONVERGE, Kind.TRAJECTORY, Kind.REPRODUCIBLE)
HIGHER_KINDS = (Kind.HVP, Kind.HVP_FWD, Kind.D3)  # order = 2 or 3


class Engine(_Word):
    """What was judged."""
    AUTOGRAD = "autograd"
    IMPL = "impl"  # a user's implementation
    SYMBOLIC = "symbolic"
    REFERENCE = "reference"  # a case's Python reference function (``reference = "module:function"``)
    FINITE = "finite"
    DIFFCHECK = "diffcheck"  # diffcheck itself (a limit it could not enforce)




@dataclass
class Entry:
    index: list[int]
    got: float
    ref: float
    abs_err: float
    allowed: float
    fd: float | None = None
    lo: float | None = None  # one-sided derivatives at a kink, when the entry sits on one
    hi: float | None = None
    output: str | None = None  # a case with several outputs: the output ``index`` is in

    @property
    def where(self) -> str:
        """The entry for people: ``[2, 0]``, or ``dx[2]`` in output ``dx`` of a case with several outputs."""
        return f"{self.output}{self.index}" if self.output else str(self.index)

    @property
    def rel_err(self) -> float:
        return self.abs_err / abs(self.ref) if self.ref else (0.0 if self.abs_err == 0 else float("inf"))


@dataclass
class Check:
    kind: Kind | str  # a Kind; a string is converted (an unknown one raises)
    engine: Engine | str  # what was judged
    against: str  # what it was judged against
    var: str | None = None
    dtype: str | None = None
    device: str | None = None
    status: Status | str = "pass"  # pass, fail, warn, skip
    message: str = ""
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    margin: float = 0.0  # worst abs_err / allowed: below 1 passes
    atol: float | None = None
    rtol: float | None = None
    tolerance: str = ""
    entries: int = 0
    bad: int = 0
    ambiguous: int = 0
    diagnosis: str = ""
    worst: list[Entry] = field(default_factory=list)
    error_matrix: list | None = None  # got - ref for small failing results, shown by -v
    # structured facts for verdicts, blame and the JSON: impl_failure, nondeterministic, out_dtype,
    # lower_precision, probe, skipped ("not_requested", "unavailable", "missing_kernel"), training results
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        self.kind, self.engine, self.status = Kind(self.kind), Engine(self.engine), Status(self.status)

    @property
    def label(self) -> str:
        parts = [str(self.kind)]
        if self.var:
            parts.append(self.var)
        if self.details.get("probe"):  # a directional probe judges <g, v>, not the entries of g
            parts.append(f"({self.details['probe']})")
        if self.details.get("output"):  # several outputs: one alone, the others' gradients undefined
            parts.append(f"({self.details['output']} alone)")
        where = " ".join(p for p in (self.dtype, self.device) if p)
        return " ".join(parts) + (f" [{where}]" if where else "")

    def to_json(self) -> dict:
        """The check's fields, shallow (``report.write_json`` copies the nested values while it cleans them;
        ``asdict``'s deep copy cost seconds on a large run)."""
        data = dict(vars(self))
        data["worst"] = [dict(vars(e), rel_err=_finite_or_none(e.rel_err)) for e in self.worst]
        for key in ("max_abs_err", "max_rel_err", "margin"):
            data[key] = _finite_or_none(data[key])
        return data


def _finite_or_none(x):
    import numpy as np

    return float(x) if x is not None and np.isfinite(x) else None


class Findings(NamedTuple):
    """What running one case's checks returns, whatever its kind: the checks, the files written (training
    plots), and the derivative formulas (gradient cases under -v)."""
    checks: list[Check]
    artifacts: list[str]
    formula: list[str]


@dataclass
class Options:
    devices: tuple[str, ...] = ("cpu", "cuda")  # what the user asked for
    dtypes: tuple[str, ...] | None = None  # restricts each case's dtypes
    pattern: str | None = None
    seed: int = 0
    verbose: bool = False
    plot_dir: str | None = None  # training cases write a PNG each here
    # reference: fd/expect/self-consistency; autograd: per dtype; transforms: the requested transforms
    stages: tuple[str, ...] = ("reference", "autograd", "transforms")
    impl_path: tuple[str, ...] = ()  # further roots an impl module may be found under (beside the case file's)
    impl_sys_path: bool = False  # impl modules may also come from sys.path (installed packages)
    no_impl: bool = False  # untrusted input: impl cases are skipped, nothing is imported
    timeout: float = 300.0  # seconds per case; 0: none
    fd_method: Any = None  # engines.finite's method value; None: its defaults
    transforms: tuple[str, ...] = ()  # --transform: added to every case's own ``transforms``
    case_transforms: bool = True  # False: run only ``transforms`` (a pytest item checks one transform)


@dataclass
class CaseResult:
    name: str
    file: str
    status: str  # pass, fail, error, skip
    message: str = ""
    seed: int | None = None
    seconds: float = 0.0
    checks: list[Check] = field(default_factory=list)
    formula: list[str] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)  # files written for this case (training plots)
    report_text: str = field(default="", repr=False)  # the runner renders it for a result that did not pass

    @property
    def ok(self) -> bool:
        """Passed, warnings and skipped checks allowed."""
        return self.status == "pass"

    def assert_ok(self) -> CaseResult:
        """Raise AssertionError with the full localized report unless the case passed."""
        if not self.ok:
            raise AssertionError("\n" + (self.report_text or f"{self.name}: {self.status}: {self.message}"))
        return self

    def to_json(self) -> dict:
        return {"name": self.name, "file": self.file, "status": self.status, "message": self.message,
                "seed": self.seed, "seconds": round(self.seconds, 4), "formula": self.formula,
                "artifacts": self.artifacts, "checks": [c.to_json() for c in self.checks]}


def case_seed(case, run_seed: int) -> int:
    """The seed that samples a case: its own ``seed``, else one derived from the run seed and its name (both kinds
    of case have ``name`` and ``seed``)."""
    if case.seed is not None:
        return case.seed
    return (zlib.crc32(case.name.encode()) + 1_000_003 * run_seed) % 2**32
