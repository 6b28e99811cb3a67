"""Errors the data layer raises; gateway/errors.py maps them to HTTP problems."""


class NotFound(LookupError):
    """The row does not exist, is soft-deleted, or is outside the caller's scope."""


class Conflict(Exception):
    """A unique constraint or a state rule refuses the write."""


class Invalid(ValueError):
    """The write breaks a rule only the database can check; `field` names the input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached right now."""
