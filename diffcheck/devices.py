"""Which devices and dtypes of a case run in this run, and why the others do not: the one rule for gradient
cases, training cases and the pytest plugin. Imports torch only inside ``engines.autograd``, when CUDA is asked."""

from __future__ import annotations

from typing import NamedTuple


class Skip(NamedTuple):
    code: str  # "not_requested" (left out by --device) or "unavailable" (no CUDA here)
    message: str


def chosen_dtypes(case_dtypes, requested) -> list[str]:
    """The case's dtypes that ``--dtype`` asked for (all of them when it asked for none)."""
    return [d for d in case_dtypes if requested is None or d in requested]


def device_skip(device: str, requested) -> Skip | None:
    """Why checks on ``device`` cannot run in this run (excluded by --device, or no CUDA), or None."""
    if device not in requested:
        return Skip("not_requested", f"{device} not requested (--device {', '.join(requested)})")
    if device == "cuda":
        from .engines import autograd

        ok, why = autograd.cuda_status()
        return None if ok else Skip("unavailable", why)
    return None


def device_skips(devices, requested) -> dict[str, Skip | None]:
    """Each of a case's devices -> why it is skipped in this run, or None where it runs."""
    return {device: device_skip(device, requested) for device in devices}


def not_requested(check) -> bool:
    """A check skipped only because ``--device`` left its device out (the CLI says so once, not per case)."""
    return check.status == "skip" and check.details.get("skipped") == "not_requested"


def cuda_status() -> tuple[bool, str]:
    """Whether CUDA can run checks here, and the reason when it cannot (torch is imported on the call)."""
    from .engines import autograd

    return autograd.cuda_status()
