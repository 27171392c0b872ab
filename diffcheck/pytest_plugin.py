"""pytest plugin (entry point ``pytest11``): case files become test items.

``pytest cases/`` collects every TOML case file (files with a ``[[case]]`` array, or ``expr`` or ``kind`` at the
top; other TOML such as pyproject.toml is left alone) into items named ``file.toml::case[float32-cpu]``: one item
per dtype and device, and ``[reference]`` for the checks that do not depend on them (finite differences against
the symbolic engine, known answers, an impl's self-consistency). ``-k``, ``-x``, ``--lf``, markers (``diffcheck``,
``cuda``), xdist and ``--junitxml`` work as usual. A failing item shows the same localized report as the CLI, headed
by its id. A file or case that cannot be loaded (invalid, unreadable, not UTF-8, a repeated name) is an item that
errors with a message naming the file, the case and the key, while the other items still run.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest

from .errors import CaseError, DiffcheckError


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
    from .casefile import is_case_file  # one rule for the plugin and the CLI's directory walks

    return is_case_file(path)


class CaseFile(pytest.File):
    def collect(self):
        """The file's items. A case that cannot be loaded becomes one item that errors with the reason, so the good
        cases beside it and in other files still run, as with the CLI; a repeated item id is such an error too."""
        from .casefile import load_file

        taken: set[str] = set()

        def invalid(name: str, error: Exception):
            from .text import safe

            name = safe(name)
            base, n = name, 1
            while name in taken:
                n += 1
                name = f"{base}#{n}"
            taken.add(name)
            return InvalidCase.from_parent(self, name=name, error=error)

        try:
            loaded = load_file(self.path)
        except Exception as exc:  # a bug in diffcheck must not stop the other files' items
            yield invalid(self.path.name, _unexpected(self.path, exc))
            return
        names: set[str] = set()
        for case in loaded:
            if isinstance(case, DiffcheckError):
                label = getattr(case, "case", None)
                yield invalid(self.path.name if label is None else label, case)
                continue
            params = _params(case)
            ids = [name for name, *_ in params]
            if case.name in names:
                yield invalid(case.name, CaseError("name is already used by a case in this file", str(self.path),
                                                   case.name, "name"))
            elif len(set(ids)) < len(ids) or taken & set(ids):
                twice = next(i for i in ids if ids.count(i) > 1 or i in taken)
                repeats = ids.count(twice) > 1
                why = ": 'dtypes' or 'devices' lists an entry twice" if repeats else " in this file"
                yield invalid(case.name, CaseError(f"the item id {twice!r} would be used twice{why}", str(self.path),
                                                   case.name, "dtypes" if repeats else "name"))
            else:
                taken.update(ids)
                yield from _items(self, case, params)
            names.add(case.name)

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, DiffcheckError):
            return f"diffcheck: invalid case file: {excinfo.value}"
        return super().repr_failure(excinfo)


def _unexpected(path, exc: Exception) -> CaseError:
    """An exception diffcheck did not expect while loading ``path``, with where it was raised (a diffcheck bug)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return CaseError(f"diffcheck could not load this file ({type(exc).__name__}{where}): {exc}", str(path))


def _params(case) -> list[tuple[str, str | None, str | None, str | None]]:
    """(item name, dtype, device, transform) of each item of a case."""
    from .text import safe
    from .training.schema import TrainCase

    shown = safe(case.name)  # pytest prints item ids raw: a name's escape sequences must not reach the terminal
    if isinstance(case, TrainCase):
        return [(f"{shown}[{dtype}-{device}]", dtype, device, None)
                for device in case.devices for dtype in case.dtypes]
    from .casefile import TRANSFORMS

    return ([(f"{shown}[reference]", None, None, None)]
            + [(f"{shown}[{dtype}-{device}]", dtype, device, None)
               for device in case.devices for dtype in case.dtypes]
            + [(f"{shown}[{name}-{dtype}-{device}]", dtype, device, name)
               for name in TRANSFORMS if name in case.transforms
               for device in case.devices for dtype in case.dtypes])


def _items(parent, case, params):
    for name, dtype, device, transform in params:
        item = CaseItem.from_parent(parent, name=name, case=case, dtype=dtype, device=device, transform=transform)
        if device == "cuda":
            item.add_marker(pytest.mark.cuda)
        yield item


class _Located(pytest.Item):
    def reportinfo(self):
        # pytest heads a failure with this name. Not the bare item name: in -v lines pytest would rewrite the dots
        # of a name that ends the node id ("a.b[...]" -> "a::b[...]").
        return self.path, None, f"[diffcheck] {self.nodeid}"


class InvalidCase(_Located):
    """A case (or file) that cannot be run as written: an error at setup with diffcheck's message."""

    def __init__(self, *, error, **kwargs):
        super().__init__(**kwargs)
        self.error = error
        self.add_marker(pytest.mark.diffcheck)

    def setup(self):
        kind = "case" if getattr(self.error, "case", None) is not None else "case file"
        pytest.fail(f"diffcheck: invalid {kind}: {self.error}", pytrace=False)

    def runtest(self):
        pass


class CaseItem(_Located):
    def __init__(self, *, case, dtype, device, transform=None, **kwargs):
        super().__init__(**kwargs)
        self.case, self.dtype, self.device, self.transform = case, dtype, device, transform
        self.add_marker(pytest.mark.diffcheck)

    def setup(self):
        """An item for a device that is not there (CUDA without CUDA) is skipped here, at setup: pytest then has no
        call phase to run and report for it (a third of such an item's cost, and 1717 items of cases/)."""
        from .devices import device_skip

        skip = device_skip(self.device, (self.device,)) if self.device else None
        if skip:  # the rule the runner applies; the item was asked for, so only "unavailable" can reach here
            pytest.skip(skip.message)

    def runtest(self):
        from .runner import Options, run_case

        config = self.config
        impl = {"impl_path": tuple(map(str, config.getini("diffcheck_impl_path"))),
                "impl_sys_path": config.getini("diffcheck_impl_sys_path"),
                "no_impl": config.getini("diffcheck_no_impl"), "timeout": _timeout(config)}
        if self.dtype is None:
            options = Options(devices=(), stages=("reference",), **impl)
        elif self.transform is None:
            options = Options(devices=(self.device,), dtypes=(self.dtype,), stages=("autograd",), **impl)
        else:  # one transform, one dtype, one device
            options = Options(devices=(self.device,), dtypes=(self.dtype,), stages=("transforms",),
                              transforms=(self.transform,), case_transforms=False, **impl)
        self.result = run_case(self.case, options)
        if self.result.status in ("fail", "error"):
            raise CaseFailure(self.result)
        if self.result.status == "skip":
            pytest.skip(self.result.message)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CaseFailure):
            from .report import case_text

            return case_text(excinfo.value.result)  # not result.report_text: that one is verbose
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
