"""The errors edgeprune raises on purpose, each mapped to a CLI exit code."""

from __future__ import annotations


class EdgepruneError(Exception):
    """Something unexpected inside edgeprune (exit code 1)."""

    exit_code = 1


class InputError(EdgepruneError):
    """Bad input or usage: a missing file, an invalid number, a malformed profile (exit code 2).

    The message is one line a user can act on; the CLI prints it without a traceback.
    """

    exit_code = 2


class UnsupportedError(InputError):
    """A request a stage cannot serve: an operator a backend cannot lower, a precision a
    format does not store, a feature that has not landed yet (exit code 2)."""


class BudgetMissed(EdgepruneError):
    """The build finished but a budget was missed or could not be proven (exit code 3).

    ``report`` is the build's report (written like any other), when a build raised it.
    """

    exit_code = 3

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


def first_line(exc: BaseException, limit: int = 300, named: bool = False) -> str:
    """Returns what a one-line message quotes of an exception: its message's first line (after the
    exception's type name when ``named``), the type name where the message is empty, cut to ``limit``."""
    lines = str(exc).strip().splitlines()
    line = lines[0] if lines else ""
    if named:
        line = f"{type(exc).__name__}: {line}"
    return (line or type(exc).__name__)[:limit]
