"""The errors core decisions raise: the root of responder's error types and bad input.

The rest of the hierarchy lives in ``responder.errors``, which re-exports these two so that
the HTTP layer maps them like any other.
"""

from __future__ import annotations


class ResponderError(Exception):
    """Base class: carries a machine-readable code and, for input errors, the field at fault."""

    code = "error"
    status = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ValidationError(ResponderError):
    """Input from a form, the API or a file is malformed."""

    code = "invalid"
    status = 400
