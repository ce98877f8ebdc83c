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


def missed_budgets(budgets: list[dict], verified: bool) -> str:
    """Returns the one line that says what failed: the budgets missed (with value and limit) and the verification."""
    parts = [f"{b['name']} {b['value'] if b['value'] is not None else 'unproven'} (limit {b['limit']:g}"
             + (f", slice {b['slice']!r}" if b.get("slice") is not None else "") + ")"
             for b in budgets if not b["met"]]
    if not verified:
        parts.append("the artifact is not verified")
    return "missed: " + "; ".join(parts) if parts else "passed"
