"""User code that leaves global settings changed (torch's grad mode off, another default dtype, anomaly
detection, deterministic algorithms, the float32 matmul precision; the working directory) fails its own case with
what it changed, and never reaches the cases run after it in the same process; code that changes them only for a
while (a with-block) passes."""

import pytest
from click.testing import CliRunner

from diffcheck.cli import main

LEAKS = {
    "grad_off": ("def f(x):\n    torch.set_grad_enabled(False)\n    return x * 2\n", "grad mode: off"),
    "default_dtype": ("def f(x):\n    torch.set_default_dtype(torch.float16)\n    return x * 2\n",
                      "the default dtype: float16"),
    "anomaly": ("def f(x):\n    torch.autograd.set_detect_anomaly(True)\n    return x * 2\n",
                "anomaly detection: on"),
    "deterministic": ("def f(x):\n    torch.use_deterministic_algorithms(True)\n    return x * 2\n",
                      "deterministic algorithms: on"),
    "matmul_precision": ("def f(x):\n    torch.set_float32_matmul_precision('medium')\n    return x * 2\n",
                         "the float32 matmul precision: 'medium'"),
    "in_backward": ("class F(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, x):\n"
                    "        return x * 2\n    @staticmethod\n    def backward(ctx, g):\n"
                    "        torch.set_default_dtype(torch.float64)\n        return g * 2\nf = F\n",
                    "the default dtype: float64"),
    "chdir": ("import os\ndef f(x):\n    os.chdir('/')\n    return x * 2\n", "the working directory: '/'"),
    "at_import": ("torch.set_default_dtype(torch.float64)\ndef f(x):\n    return x * 2\n",
                  "while the case ran: importing"),
}
TWINS = {
    "no_grad_block": "def f(x):\n    with torch.no_grad():\n        scale = x.detach().abs().sum() * 0 + 2\n"
                     "    return x * scale\n",
    "dtype_restored": "def f(x):\n    old = torch.get_default_dtype()\n    torch.set_default_dtype(torch.float64)\n"
                      "    try:\n        two = torch.tensor(2.0).to(x.dtype)\n    finally:\n"
                      "        torch.set_default_dtype(old)\n    return x * two\n",
    "enable_grad_in_backward": "class F(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, x):\n"
                               "        return x * 2\n    @staticmethod\n    def backward(ctx, g):\n"
                               "        with torch.enable_grad():\n            return g * 2\nf = F\n",
}
FOLLOWERS = ('[[case]]\nname = "good_impl_after"\nexpr = "x * 2"\nimpl = "good:f"\nvars.x = { shape = [3] }\n'
             '[[case]]\nname = "expression_after"\nexpr = "sum(sin(x) * x)"\nvars.x = { shape = [3] }\n')


def run(tmp_path, source: str):
    (tmp_path / "mine.py").write_text("import torch\n" + source)
    (tmp_path / "good.py").write_text("def f(x):\n    return x * 2\n")
    (tmp_path / "cases.toml").write_text('[[case]]\nname = "mine"\nexpr = "x * 2"\nimpl = "mine:f"\n'
                                         'vars.x = { shape = [3] }\n' + FOLLOWERS)
    return CliRunner().invoke(main, ["run", str(tmp_path / "cases.toml"), "--device", "cpu", "-j", "1"])


@pytest.mark.parametrize("name", LEAKS)
def test_a_leaked_setting_fails_its_case_and_no_later_case(tmp_path, name):
    import os

    import torch

    source, said = LEAKS[name]
    before = torch.is_grad_enabled(), torch.get_default_dtype(), torch.is_anomaly_enabled(), os.getcwd()
    result = run(tmp_path, source)
    assert result.exit_code == 1, result.output
    mine = next(line for line in result.output.splitlines() if line.startswith("FAIL  ") and "::mine" in line)
    assert "left global state changed" in mine and said in mine, mine
    for follower in ("good_impl_after", "expression_after"):
        line = next(x for x in result.output.splitlines() if f"::{follower}" in x)
        assert line.startswith("PASS  "), result.output
    assert (torch.is_grad_enabled(), torch.get_default_dtype(), torch.is_anomaly_enabled(), os.getcwd()) == before
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.get_float32_matmul_precision() == "highest"


@pytest.mark.parametrize("name", TWINS)
def test_a_setting_changed_only_for_a_while_passes(tmp_path, name):
    result = run(tmp_path, TWINS[name])
    assert result.exit_code == 0, result.output
    assert "global state" not in result.output
