"""Caller authentication and authorization failures."""


class Unauthenticated(Exception):
    """No credentials, or credentials that do not verify (→ 401)."""


class Forbidden(Exception):
    """Authenticated, but not allowed to do this (→ 403)."""
