"""One exit-code convention for every kontur command.

0  success
1  the command ran and found problems, or an operation failed
2  invalid input or usage (bad inventory, bad arguments)
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2


class KonturError(Exception):
    """An error the user can act on; the CLI prints ``message`` (no traceback)."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class InvalidInput(KonturError):
    """The user's input (inventory, arguments, files) cannot be accepted."""

    exit_code = EXIT_INVALID


class OperationFailed(KonturError):
    """The command ran, but something it did failed (a host, a step, a check)."""

    exit_code = EXIT_FAILED
