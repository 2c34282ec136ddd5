"""Errors a user can act on.

Anything raised as an `AmpRayError` is printed by the CLI as one message (plus a hint), with
no traceback unless `--debug` is given. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AmpRayError(Exception):
    """A problem with the user's input or environment, stated so that they can fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class SpecError(AmpRayError):
    """The job spec is malformed: nothing was started."""

    exit_code = 2


class StorageError(AmpRayError):
    """The run directory or a data path cannot be read or written."""


class DataError(AmpRayError):
    """Input data cannot be used at all (bad rows alone go to quarantine instead)."""
