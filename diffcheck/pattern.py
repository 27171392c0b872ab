"""``-k`` expressions as pytest writes them: ``a and not (b or c)``, evaluated over a case name without eval.

A word matches a name that contains it (case-insensitive), or, when it has ``* ? [``, a name that matches it as a
glob. Grammar: ``expr := and ('or' and)*``, ``and := not ('and' not)*``, ``not := 'not' not | '(' expr ')' | word``.
"""

from __future__ import annotations

import fnmatch
import re

from .errors import UsageError

_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")


def _tokens(pattern: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(pattern):
        match = _TOKEN.match(pattern, pos)
        if match is None:  # only trailing whitespace is left
            break
        tokens.append(match.group(1))
        pos = match.end()
    return tokens


def _word(name: str, word: str) -> bool:
    if any(ch in word for ch in "*?["):
        return fnmatch.fnmatchcase(name, word)
    return word.lower() in name.lower()


def matches(name: str, pattern: str) -> bool:
    """Whether case ``name`` is selected by ``-k pattern``; UsageError for a malformed expression."""
    tokens = _tokens(pattern)
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take(expected=None):
        nonlocal pos
        token = peek()
        if token is None or (expected is not None and token != expected):
            want = f"'{expected}'" if expected else "a name"
            raise UsageError(f"-k {pattern!r}: expected {want} at the end" if token is None
                             else f"-k {pattern!r}: expected {want}, got {token!r}")
        pos += 1
        return token

    def or_():
        value = and_()
        while peek() == "or":
            take()
            value = and_() or value  # evaluate both sides: a syntax error on the right is never hidden
        return value

    def and_():
        value = not_()
        while peek() == "and":
            take()
            value = not_() and value
        return value

    def not_():
        if peek() == "not":
            take()
            return not not_()
        if peek() == "(":
            take()
            value = or_()
            take(")")
            return value
        token = take()
        if token in ("and", "or", ")"):
            raise UsageError(f"-k {pattern!r}: expected a name, got {token!r}")
        return _word(name, token)

    if not tokens:
        return True
    value = or_()
    if peek() is not None:
        raise UsageError(f"-k {pattern!r}: unexpected {peek()!r} (join words with 'and' / 'or')")
    return value
