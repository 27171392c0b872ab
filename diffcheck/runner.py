"""Runs cases: collects case files, gives each case its seed, runs its checks (dispatched by the case's type:
``checks.run_gradient_case`` for a ``Case``, ``training.run_train_case`` for a ``TrainCase``) and turns the Check
records into a verdict that names the engine at fault, from their structured fields only. The report text of a
result that did not pass is rendered here (``report``), for ``CaseResult.assert_ok``.

``Options`` and ``CaseResult`` live in ``model``; they are re-exported here, where they always were.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from .casefile import TRANSFORMS, Case, is_case_file, load_file
from .devices import not_requested
from .errors import CaseError, DiffcheckError
from .model import HIGHER_KINDS, TRAINING_KINDS, CaseResult, Check, Findings, Options, case_seed
from .training.schema import TrainCase
from .validate import MAX_NAME

__all__ = ["CaseResult", "Options", "blame", "case_seed", "collect", "error_result", "load", "matches",
           "not_requested", "run_case"]


def collect(paths) -> list[Path | CaseError]:
    """Case files named by ``paths`` (one path, or a list): files as given, directories searched for ``*.toml``.

    A walk skips TOML files that are not case files (pyproject.toml) and reports what it cannot read (an
    unreadable folder, a broken or looping link) as CaseErrors; a file reached twice is listed once.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path | CaseError] = []
    seen: set[str] = set()

    def add(f: Path) -> None:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            found.append(f)

    for p in map(Path, paths):
        try:
            is_dir = p.is_dir()
        except OSError as exc:
            found.append(CaseError(f"cannot read: {exc.strerror or exc}", str(p)))
            continue
        if not is_dir:
            add(p)
            continue
        problems: list[CaseError] = []
        walked: list[Path] = []
        for root, dirs, names in os.walk(p, onerror=lambda e, problems=problems, p=p: problems.append(
                CaseError(f"cannot read the directory: {e.strerror or e}", e.filename or str(p)))):
            dirs.sort()
            for name in names:
                if name.endswith(".toml"):
                    walked.append(Path(root, name))
        for f in sorted(walked):
            if not f.exists():  # a link to nowhere, or a loop of links
                problems.append(CaseError(f"cannot read: {_link_problem(f)}", str(f)))
            elif f.is_file() and not is_case_file(f):
                continue
            else:
                add(f)
        found.extend(problems)
    return found


def _link_problem(f: Path) -> str:
    try:
        f.stat()
    except OSError as exc:
        if exc.errno == 40:  # ELOOP
            return "a symbolic link that loops"
        return f"a broken symbolic link (to {os.readlink(f)!r})" if f.is_symlink() else (exc.strerror or str(exc))
    return "vanished during the walk"


def load(paths, pattern: str | None = None) -> list[Case | CaseError]:
    """Load every case under ``paths`` (one path or a list); duplicate names and unreadable paths are CaseErrors."""
    loaded: list[Case | CaseError] = []
    seen: dict[str, str] = {}
    for f in collect(paths):
        if isinstance(f, CaseError):
            loaded.append(f)
            continue
        if not f.exists() and not f.is_symlink():
            loaded.append(CaseError("no such file or directory", str(f)))
            continue
        for item in load_file(f):
            if not isinstance(item, CaseError):
                if pattern and not matches(item.name, pattern):
                    continue
                if item.name in seen:
                    item = CaseError(f"name is already used by a case in {seen[item.name]}", item.path, item.name,
                                     "name")
                else:
                    seen[item.name] = item.path
            elif pattern and item.case and not matches(item.case, pattern):
                continue
            loaded.append(item)
    return loaded


def matches(name: str, pattern: str) -> bool:
    """``-k``: a name, a glob (``* ? [``) or an expression of them with ``and``, ``or``, ``not`` and parentheses."""
    from .pattern import matches as keyword_matches

    return keyword_matches(name, pattern)


def error_result(err: CaseError) -> CaseResult:
    name = err.case or Path(err.path).stem
    name = name if len(name) <= MAX_NAME else f"{name[:80]}..."  # a name refused for its length is not printed whole
    return _with_report(CaseResult(name, err.path, "error", str(err)))


def _with_report(result: CaseResult) -> CaseResult:
    """Render the full report of a result that did not pass, for ``assert_ok`` (the model never imports report)."""
    if not result.ok:
        from .report import case_text

        result.report_text = case_text(result, verbose=True)
    return result


def _gradient(case: Case, options: Options, seed: int) -> Findings:
    from .checks import run_gradient_case

    return run_gradient_case(case, options, seed)


def _training(case: TrainCase, options: Options, seed: int) -> Findings:
    from .training import run_train_case

    return run_train_case(case, options, seed)


def _import_gradient(case: Case | None = None, options: Options | None = None) -> None:
    from . import checks  # noqa: F401
    from .engines import autograd, symbolic  # noqa: F401

    if case is not None and (case.impl or case.order > 1 or case.transforms or (options and options.transforms)):
        autograd._load_forward_ad()  # jvp checks (impl, hvp_fwd, transforms): forward mode is slow to start


def _import_training(case: TrainCase | None = None, options: Options | None = None) -> None:
    from . import training  # noqa: F401


# a case's type -> (its checks, what to import before the watchdog starts: importing torch and sympy is not the
# case's time)
KINDS = {Case: (_gradient, _import_gradient), TrainCase: (_training, _import_training)}


def run_case(case: Case | TrainCase, options: Options | None = None) -> CaseResult:
    options = Options() if options is None else options
    start = time.perf_counter()
    seed = case_seed(case, options.seed)
    result = CaseResult(case.name, case.path, "pass", seed=seed)
    from .engines.impl import Timeout, time_limit

    run, imports = next(kind for t, kind in KINDS.items() if isinstance(case, t))
    imports(case, options)
    from .engines.impl import global_state, restore_state

    state = global_state()
    try:
        with time_limit(options.timeout) as enforced, _os_exit_raises():
            result.checks, result.artifacts, result.formula = run(case, options, seed)
        if not enforced:
            result.checks.append(Check("timeout", "diffcheck", "--timeout", status="skip",
                                       message=f"--timeout {options.timeout:g} s is not enforced off the main "
                                               "thread (or without SIGALRM)"))
    except DiffcheckError as exc:
        result.status, result.message = "error", str(exc)
    except SystemExit as exc:  # user code's exit that no check caught: a finding, never the end of the run
        result.checks.append(Check("state", "impl", "the case's own code", status="fail",
                                   message=f"the case's code exited (SystemExit: {exc})"))
    except Timeout as exc:
        during = f"in {exc.during}" if exc.during else "while diffcheck computed the checks"
        impl = isinstance(case, Case) and case.impl
        result.checks = list(getattr(exc, "checks", []))  # what the finished stages found (gradient cases)
        result.checks.append(Check("timeout", "impl" if impl else "diffcheck", "--timeout",
                                   status="fail", message=f"timed out after {exc.seconds:g} s ({during}); "
                                   "raise --timeout, or 0 for none",
                                   details={"impl_failure": {"what": "timeout", "phase": exc.during}}))
    changed = restore_state(state)  # whatever the case left changed never reaches the next case
    if changed and isinstance(case, Case) and (case.impl or case.reference) and result.status == "pass":
        result.checks.append(_state_check(changed))
    result.seconds = time.perf_counter() - start
    if result.status == "pass":
        _verdict(result)
    return _with_report(result)


@contextlib.contextmanager
def _os_exit_raises():
    """While a case runs, ``os._exit`` called by its user code (an impl module at import, a forward, a Python
    reference) raises SystemExit in this process instead: with one process it ended the whole run, silently and
    with the user's exit status (``os._exit(0)``: a run that "passed" with no report). A child process the user's
    code started still exits for real."""
    real, pid = os._exit, os.getpid()

    def raising(code: int = 0):
        if os.getpid() != pid:
            real(code)
        raise SystemExit(f"os._exit({code}) was called")

    os._exit = raising
    try:
        yield
    finally:
        os._exit = real


def _state_check(changed: str) -> Check:
    """A failing check for the settings the user's code changed outside its forward calls (importing its
    module, constructing it, its backward), which the guard of each forward call cannot see."""
    from .engines.impl import state_failure

    failure = state_failure(changed, "while the case ran: importing, constructing or in backward")
    return Check("state", "impl", "the global state before the case", status="fail", message=failure.message,
                 details={"impl_failure": failure.details})


def _verdict(result: CaseResult) -> None:
    statuses = [c.status for c in result.checks]
    unjudged = next((c for c in result.checks if c.kind.startswith("expect") and c.status == "skip"), None)
    if not statuses:  # nothing was checked: not a pass
        result.status, result.message = "skip", "no checks ran"
    elif "fail" in statuses:
        result.status = "fail"
        result.message = blame(result.checks)
    elif all(s == "skip" for s in statuses):
        result.status = "skip"
        result.message = result.checks[0].message
    elif all(c.kind == "semantic" for c in result.checks if c.status in ("pass", "warn")):
        # only metadata was checked (gradients' dtype, shape, a zero upstream): no value or gradient was judged
        # against anything, so it is not a pass
        why = next((c for c in result.checks if c.status == "skip" and not not_requested(c)), result.checks[0])
        result.status = "skip"
        result.message = f"no value or gradient could be judged ({why.label}: {why.message})"
    elif unjudged is not None:  # the known answer the case asked about was never judged: not a pass
        result.status = "skip"
        result.message = f"the known answer in 'expect' cannot be judged ({unjudged.label}: {unjudged.message})"
    else:
        warns = statuses.count("warn")
        skips = sum(c.status == "skip" and not not_requested(c) for c in result.checks)  # --device: said once
        notes = [f"{warns} warning(s)"] * bool(warns) + [f"{skips} check(s) skipped"] * bool(skips)
        result.message = ", ".join(notes)


def blame(checks: list[Check]) -> str:
    """Say which engine is the odd one out when two agree and one does not."""
    failed = [c for c in checks if c.status == "fail"]
    timeout = next((c for c in failed if c.kind == "timeout"), None)
    if timeout is not None:
        return timeout.message
    rng = next((c for c in failed if c.kind == "rng"), None)
    if rng is not None:  # a forward that draws random numbers: nothing else was judged
        return rng.message
    if any(c.kind in TRAINING_KINDS for c in failed):
        first = next(c for c in failed if c.kind in TRAINING_KINDS)
        return f"training: {first.label}: {first.message}"
    under = [c for c in failed if c.kind in TRANSFORMS]
    if under:  # the eager verdict first; a transform's failure said after it, or alone
        eager = [c for c in checks if all(c is not u for u in under)]
        kinds = ", ".join(dict.fromkeys(str(c.kind) for c in under))
        if len(under) < len(failed):
            return f"{blame(eager)}; it fails under {kinds} too"
        first = under[0]
        how = first.message if "impl_failure" in first.details else f"{first.label}: {first.message}"
        who = "the impl" if first.engine == "impl" else "autograd"
        return f"{who} passes the eager checks but is wrong under the {kinds} transform ({how})"
    if any(c.engine in ("impl", "reference") for c in checks):  # a Python reference is only ever an impl's
        return blame_impl(checks, failed)
    if failed and all(c.kind in HIGHER_KINDS for c in failed):
        return f"a higher derivative disagrees with the exact symbolic one ({failed[0].label}: {failed[0].message})"
    kinds = {(c.kind, c.engine) for c in failed}
    fd_failed = any(k == "fd" for k, _ in kinds)
    ad_failed = any(e == "autograd" and k in ("grad", "value", "semantic") for k, e in kinds)
    expect_only = all(k.startswith("expect") for k, _ in kinds)
    if expect_only:
        engines = {c.engine for c in failed}
        if "symbolic" in engines and not ad_failed:
            return "the known answer in 'expect' disagrees with the engines, which agree with each other"
        return "the result disagrees with the known answer in 'expect'"
    if ad_failed and not fd_failed:
        first = next(c for c in failed if c.engine == "autograd")
        if not any(c.kind == "fd" and c.status in ("pass", "warn") for c in checks):  # claim no agreement unseen
            why = next((c.message for c in checks if c.kind == "fd" and c.message), "no finite-difference check ran")
            return (f"autograd disagrees with the symbolic reference ({first.label}); finite differences could not "
                    f"confirm the reference here ({why})")
        return f"autograd is off ({first.label}): the symbolic reference and finite differences agree"
    if fd_failed and not ad_failed:
        return ("finite differences disagree with the symbolic reference, which autograd matches: "
                "the function may be non-smooth or ill-conditioned here")
    return "the symbolic reference disagrees with both autograd and finite differences"


def blame_impl(checks: list[Check], failed: list[Check]) -> str:
    """For a user's implementation: is the forward wrong, the backward, or only the double backward? Decided from
    the checks' kinds and structured ``details`` (impl_failure, nondeterministic, out_dtype, lower_precision)."""
    first_order = [c for c in failed if c.kind not in HIGHER_KINDS]
    second = sorted((c for c in failed if c.kind in HIGHER_KINDS), key=lambda c: c.engine != "impl")
    if not first_order and second:
        c = second[0]
        how = c.message if "impl_failure" in c.details else f"{c.label}: {c.message}"
        ran = any(c.engine == "impl" and c.kind == "grad" and c.status in ("pass", "warn") for c in checks)
        right = "the impl's first-order gradient is right" if ran else "the impl's first-order checks do not fail"
        return f"{right}; its {'double' if c.kind != 'd3' else 'third-order'} backward is wrong ({how})"
    verdict = _first_order_verdict(checks, first_order)
    return verdict + ("; its double backward fails too" if second and verdict else "")


def _first_order_verdict(checks: list[Check], failed: list[Check]) -> str:
    broken = next((c for c in failed if c.engine == "reference" and c.kind in ("fd", "value")), None)
    if broken is not None:  # a Python reference that raised, or whose gradient finite differences contradict
        if "reference_failure" in broken.details:
            return f"the reference is wrong: {broken.message}; the impl is not judged by it"
        return (f"the reference is wrong: its own float64 gradient disagrees with finite differences of its float64 "
                f"forward ({broken.label}: {broken.message}); the impl's checks against it say nothing")
    crashed = next((c for c in failed if "impl_failure" in c.details), None)
    if crashed is not None:  # raised, returned a non-tensor or a wrong shape, timed out
        return crashed.message
    nondet = next((c for c in failed if c.details.get("nondeterministic")), None)
    if nondet is not None:
        return ("the impl's backward is not reentrant / not deterministic: a second backward on the same graph "
                f"gives another gradient of {', '.join(nondet.details['nondeterministic'])} (e.g. a tensor kept on "
                f"ctx changed in place) [{nondet.dtype} {nondet.device}]")
    lower = _lower_precision(failed)
    if lower:
        return lower
    internal = next((c for c in failed if "internal_precision" in c.details), None)
    if internal is not None:  # measured rounding noise of its float64 forward, before "both wrong"
        return internal.message
    kinds = {c.kind for c in failed if c.engine == "impl"}
    forward_wrong = "value" in kinds
    self_inconsistent = "self_fd" in kinds
    wrong = next((c.details["wrong_outputs"] for c in failed if c.details.get("wrong_outputs")), [])
    where = f" in output{'s' * (len(wrong) > 1)} {', '.join(wrong)}" if wrong else ""  # several outputs
    if forward_wrong and not self_inconsistent:
        return f"the impl's forward is wrong (its value disagrees with the reference{where}); its backward is " \
               "consistent with its own forward"
    if forward_wrong:
        return f"the impl's forward{where} and backward are both wrong"
    if self_inconsistent or "grad" in kinds:
        first = next((c for c in failed if c.kind == "grad"), failed[0])
        return f"the impl's backward is wrong ({first.label}{': ' + first.diagnosis if first.diagnosis else ''})"
    if kinds & {"semantic", "jvp"}:
        first = next(c for c in failed if c.kind in ("semantic", "jvp"))
        return f"the impl fails the {first.kind} check: {first.message}"
    return blame([c for c in checks if c.engine != "impl"]) if failed else ""


def _lower_precision(failed: list[Check]) -> str:
    """'computes in lower precision' when the float64 output has a lower dtype, or when its forward and every
    failing float64 gradient are off by no more than float32's rounding budget (checks in other dtypes pass)."""
    low = next((c for c in failed if c.details.get("out_dtype")), None)
    if low is not None and low.dtype == "float64":
        return (f"the impl computes in lower precision than its inputs: its output is {low.details['out_dtype']} "
                f"in a {low.dtype} run")
    numeric = [c for c in failed if c.kind in ("value", "grad")]
    value = next((c for c in numeric if c.kind == "value"), None)
    if value is None or any(c.dtype != "float64" or "lower_precision" not in c.details for c in numeric):
        return ""
    m = max(c.details["lower_precision"]["margin"] for c in numeric)
    return (f"the impl computes in lower precision than its inputs: in float64 its value is off by up to "
            f"{value.max_abs_err:.3g} ({value.max_rel_err:.2g} relative), within float32's rounding budget (worst "
            f"margin {m:.2g} on float32's scale), consistent with float32 arithmetic inside")
