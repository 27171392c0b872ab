"""The project's own errors: every message names where the bad input came from."""

from __future__ import annotations


class DiffcheckError(Exception):
    """Base class for every error diffcheck raises on purpose."""


class ExpressionError(DiffcheckError):
    """An expression that the whitelisting parser or the shape checker rejects.

    ``col`` is the 0-based column of the offending construct in ``expr`` when known.
    """

    def __init__(self, message: str, expr: str = "", col: int | None = None):
        self.message = message
        self.expr = expr
        self.col = col
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = f" at column {self.col + 1}" if self.col is not None else ""
        return f"{self.message}{where}"


class CaseError(DiffcheckError):
    """A case file or a case in it that cannot be run as written.

    ``path`` is the file, ``case`` the case name (None for file-level problems), ``key`` the dotted key.
    """

    def __init__(self, message: str, path: str = "", case: str | None = None, key: str | None = None):
        self.message = message
        self.path = path
        self.case = case
        self.key = key
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts = []
        if self.path:
            parts.append(str(self.path))
        if self.case is not None:  # an over-long name is cut, as all echoed input is
            cut = str(self.case) if len(str(self.case)) <= 80 else f"{str(self.case)[:80]}..."
            parts.append(f"case {cut!r}")
        prefix = ": ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message


class UsageError(DiffcheckError):
    """A command-line request that cannot be honoured (e.g. ``--device cuda`` without CUDA)."""
