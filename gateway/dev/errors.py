"""The one error of the development services, importable without importing them (the CLI catches it)."""

from __future__ import annotations


class DevServiceError(Exception):
    """A development service (PostgreSQL, Redis) could not be started. The message is one
    sentence for the user, carrying the failing tool's own words; no traceback goes with it."""
