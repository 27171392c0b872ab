"""CUDA: the torch engine on the GPU, with TF32 off. Skips with the reason where no GPU is visible."""

import pytest
import torch

from diffcheck.engines.autograd import cuda_status
from diffcheck.runner import Options, load, run_case

from .conftest import ROOT, mse_vars, tf32_recording_mse

OK, WHY = cuda_status()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)


@pytest.mark.parametrize("case", load([ROOT / "cases" / "seeds.toml", ROOT / "cases" / "ops" / "networks.toml"]),
                         ids=lambda c: c.name)
def test_shipped_cases_pass_on_cuda(case):
    result = run_case(case, Options(devices=("cuda",)))
    assert result.status == "pass", [(c.label, c.message) for c in result.checks if c.status == "fail"]
    assert any(c.device == "cuda" and c.status == "pass" for c in result.checks)


def test_tf32_is_off_during_checks_and_restored_after(tf32_on):
    """With TF32 on, a float32 64x100 @ 100x100 matmul on the GPU is off by ~1e-3 and would fail; the flags
    the user set are back after the check (tf32_on then restores the ones the session had)."""
    import diffcheck

    seen = []
    result = diffcheck.check("mean((x @ w + b - y)**2)", mse_vars(64, 100, 100), impl=tf32_recording_mse(seen),
                             dtypes=("float32",), devices=("cuda",))
    assert result.status == "pass", result.message
    on_gpu = {(m, c) for dtype, device, m, c in seen if (dtype, device) == ("torch.float32", "cuda")}
    assert on_gpu == {(False, False)}, set(seen)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    case = load([ROOT / "cases" / "ops" / "networks.toml"], "mse_large_64x100x100")[0]
    result = run_case(case, Options(devices=("cuda",), dtypes=("float32",)))
    assert result.status == "pass", result.message
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)


def test_training_runs_on_cuda():
    case = load([ROOT / "cases" / "train" / "seeds.toml"], "T2_stop_at_loss_below_1")[0]
    result = run_case(case, Options(devices=("cuda",)))
    assert result.status == "pass", result.message
