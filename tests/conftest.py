"""Shared fixtures. Hypothesis: the built-in 'ci' profile loads itself when CI is set; 'dev' is the default."""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
if not os.environ.get("CI"):
    settings.load_profile(os.environ.get("DIFFCHECK_HYPOTHESIS_PROFILE", "dev"))

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def write_case(tmp_path):
    """Write TOML text to a file in a temporary directory and return its path."""

    def write(text: str, name: str = "case.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write

# tests/data holds case files that must fail or are invalid on purpose: the CLI tests run them, pytest must not
# collect them as tests of their own.
collect_ignore_glob = ["data/*"]


@pytest.fixture
def tf32_on():
    """TF32 turned on, as a user's script may do, for the test; afterwards exactly the flags found are back."""
    import torch

    found = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = found


def tf32_recording_mse(seen: list):
    """An impl of mean((x @ w + b - y)**2) that appends (dtype, device, matmul TF32 flag, cudnn TF32 flag)
    whenever diffcheck calls its forward or backward."""
    import torch

    def flags(t):
        seen.append((str(t.dtype), t.device.type, torch.backends.cuda.matmul.allow_tf32,
                     torch.backends.cudnn.allow_tf32))

    class Mse(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b, y):
            flags(w)
            ctx.save_for_backward(x, w, b, y)
            return torch.mean((x @ w + b - y) ** 2)

        @staticmethod
        def backward(ctx, g):
            flags(g)
            x, w, b, y = ctx.saved_tensors
            r = x @ w + b - y
            r = 2 * g * r / r.numel()
            return None, x.T @ r, r.sum(0), None

    return Mse


def mse_vars(n: int, k: int, m: int) -> dict:
    return {"x": {"shape": [n, k], "requires_grad": False}, "w": {"shape": [k, m]}, "b": {"shape": [m]},
            "y": {"shape": [n, m], "requires_grad": False}}


def corpus(path: Path) -> tuple[list, list]:
    """The bugs (``bug_*``) and their correct twins (``ok_*``) of a wrong-on-purpose corpus file."""
    from diffcheck.casefile import Case
    from diffcheck.runner import load

    cases = [c for c in load([path]) if isinstance(c, Case)]
    return [c for c in cases if c.name.startswith("bug_")], [c for c in cases if c.name.startswith("ok_")]
