"""Every error type responder raises on purpose; HTTP maps them to status codes in one middleware."""

from __future__ import annotations

from .core.errors import ResponderError, ValidationError

__all__ = ["ResponderError", "ValidationError"]  # defined in core, raised everywhere


class ConfigError(ResponderError):
    """A setting has a value responder cannot use."""

    code = "bad_config"


class NotFound(ResponderError):
    code = "not_found"
    status = 404


class InvalidToken(ResponderError):
    """A signed token is forged, altered, expired or names something that no longer exists."""

    code = "invalid_token"
    status = 404


class TemplateError(ResponderError):
    """A template does not compile or does not render."""

    code = "template_error"
    status = 422


class RenderTimedOut(TemplateError):
    """A render ran past its time limit: a runaway template, or a machine too busy to give it
    the time. An upload is refused; a mail being sent is tried again later, not failed."""


class DeliveryError(ResponderError):
    """Sending one message failed; subclasses say whether a retry can help."""

    def __init__(self, message: str, *, smtp_code: int | None = None) -> None:
        super().__init__(message)
        self.smtp_code = smtp_code


class TemporaryDeliveryError(DeliveryError):
    """4xx reply, timeout or dropped connection: retry later."""


class PermanentDeliveryError(DeliveryError):
    """5xx reply for the recipient: the address bounces."""


class RelayCannotCarry(PermanentDeliveryError):
    """The relay lacks an extension this message needs (SMTPUTF8 for a non-ASCII address), so
    nothing was sent: no retry through it can help, and the address itself is not refused."""


class Forbidden(ResponderError):
    """The caller is known but may not do this (read-scope token, cross-origin or CSRF failure)."""

    code = "forbidden"
    status = 403


class Conflict(ResponderError):
    """The request is valid but clashes with the current state (a name taken, a wrong status)."""

    code = "conflict"
    status = 409


class Unauthorized(ResponderError):
    code = "unauthorized"
    status = 401


class TooLarge(ResponderError):
    """A request body or an uploaded file is over its limit."""

    code = "too_large"
    status = 413


class SlowBody(ResponderError):
    code = "timeout"
    status = 408


class RateLimited(ResponderError):
    code = "rate_limited"
    status = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Busy(ResponderError):
    """The database did not answer in time; the caller may retry."""

    code = "busy"
    status = 503
    retry_after_s = 5


class MailUnavailable(ResponderError):
    """The mail server refused or could not be reached for a mail sent at once (a test send)."""

    code = "mail_unavailable"
    status = 503


class TokenRejected(InvalidToken):
    """A confirmation token that failed; ``expired`` when only its age is wrong."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired
