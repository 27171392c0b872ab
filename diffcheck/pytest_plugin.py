"""pytest plugin (entry point ``pytest11``): case files become test items.

``pytest cases/`` collects every TOML case file (files with a ``[[case]]`` array, or ``expr`` or ``kind`` at the
top; other TOML such as pyproject.toml is left alone) into items named ``file.toml::case[float32-cpu]``: one item
per dtype and device, and ``[reference]`` for the checks that do not depend on them (finite differences against
the symbolic engine, known answers, an impl's self-consistency). ``-k``, ``-x``, ``--lf``, markers (``diffcheck``,
``cuda``), xdist and ``--junitxml`` work as usual. A failing item shows the same localized report as the CLI; an
invalid file is a collection error naming the file and the key.
"""

from __future__ import annotations

import tomllib

import pytest

from .errors import DiffcheckError


def pytest_addoption(parser):
    parser.addini("diffcheck_collect", "collect TOML case files as tests (default true)", type="bool",
                  default=True)
    parser.addini("diffcheck_impl_path", "further directories impl modules may be found under", type="paths",
                  default=[])
    parser.addini("diffcheck_impl_sys_path", "also import impl modules from sys.path (installed packages)",
                  type="bool", default=False)
    parser.addini("diffcheck_no_impl", "skip every impl case, importing nothing (untrusted case files)",
                  type="bool", default=False)
    parser.addini("diffcheck_timeout", "seconds per case (0: none)", default="300")


def pytest_configure(config):
    config.addinivalue_line("markers", "diffcheck: a diffcheck case file item")
    config.addinivalue_line("markers", "cuda: a diffcheck item that runs on CUDA")
    _timeout(config)  # a bad value is a usage error before anything runs


def pytest_collect_file(file_path, parent):
    if file_path.suffix != ".toml" or not parent.config.getini("diffcheck_collect"):
        return None
    if not _is_case_file(file_path):
        return None
    return CaseFile.from_parent(parent, path=file_path)


def _is_case_file(path) -> bool:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return False
    except tomllib.TOMLDecodeError:
        return path.name != "pyproject.toml"  # a broken case file must surface as a collection error
    return isinstance(data.get("case"), list) or "expr" in data or data.get("kind") in ("grad", "train")


class CaseFile(pytest.File):
    def collect(self):
        from .casefile import load_file

        for item in load_file(self.path):
            if isinstance(item, DiffcheckError):
                raise item
            yield from _items(self, item)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, DiffcheckError):
            return f"diffcheck: invalid case file: {excinfo.value}"
        return super().repr_failure(excinfo, style)


def _items(parent, case):
    training = getattr(case, "model", None) is not None
    if not training:
        yield CaseItem.from_parent(parent, name=f"{case.name}[reference]", case=case, dtype=None, device=None)
    for device in case.devices:
        for dtype in case.dtypes:
            item = CaseItem.from_parent(parent, name=f"{case.name}[{dtype}-{device}]", case=case, dtype=dtype,
                                        device=device)
            if device == "cuda":
                item.add_marker(pytest.mark.cuda)
            yield item


class CaseItem(pytest.Item):
    def __init__(self, *, case, dtype, device, **kwargs):
        super().__init__(**kwargs)
        self.case, self.dtype, self.device = case, dtype, device
        self.add_marker(pytest.mark.diffcheck)

    def runtest(self):
        from .engines.autograd import cuda_status
        from .runner import Options, run_case

        if self.device == "cuda":
            ok, why = cuda_status()
            if not ok:
                pytest.skip(why)
        config = self.config
        impl = {"impl_path": tuple(map(str, config.getini("diffcheck_impl_path"))),
                "impl_sys_path": config.getini("diffcheck_impl_sys_path"),
                "no_impl": config.getini("diffcheck_no_impl"), "timeout": _timeout(config)}
        if self.dtype is None:
            options = Options(devices=(), stages=("reference",), **impl)
        else:
            options = Options(devices=(self.device,), dtypes=(self.dtype,), stages=("autograd",), **impl)
        self.result = run_case(self.case, options)
        if self.result.status in ("fail", "error"):
            raise CaseFailure(self.result)
        if self.result.status == "skip":
            pytest.skip(self.result.message)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CaseFailure):
            from .report import case_text

            return case_text(excinfo.value.result)
        return super().repr_failure(excinfo, style)


def _timeout(config) -> float:
    text = config.getini("diffcheck_timeout")
    try:
        seconds = float(text)
    except ValueError:
        raise pytest.UsageError(f"diffcheck_timeout takes seconds, got {text!r}") from None
    if not seconds >= 0:
        raise pytest.UsageError(f"diffcheck_timeout takes seconds >= 0, got {text!r}")
    return seconds


class CaseFailure(Exception):
    def __init__(self, result):
        super().__init__(result.message)
        self.result = result
