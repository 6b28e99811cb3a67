"""Verify the platform's JWTs: only the configured algorithms, `exp` and `sub` required."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import jwt

from auth.errors import Unauthenticated


@dataclass(frozen=True, slots=True)
class JwtVerifier:
    secret: str = field(default="", repr=False)
    issuer: str = ""
    audience: str = ""

    def verify(self, token: str) -> dict[str, Any]:
        if not self.secret:
            raise Unauthenticated("JWT authentication is not configured")
        try:
            # algorithms is pinned: a token's own `alg` header never chooses (no `none`,
            # no public key used as an HMAC secret).
            claims: dict[str, Any] = jwt.decode(
                token, self.secret, algorithms=["HS256"],
                issuer=self.issuer or None, audience=self.audience or None,
                options={"require": ["exp", "sub"], "verify_aud": bool(self.audience)},
            )
        except jwt.PyJWTError:
            raise Unauthenticated("Invalid or expired token") from None
        try:
            UUID(str(claims["sub"]))
        except ValueError:
            raise Unauthenticated("Invalid token subject") from None
        return claims


def issue_token(secret: str, user_id: UUID | str, *, roles: list[str] | None = None,
                lifetime_seconds: int = 3600, issuer: str = "", audience: str = "") -> str:
    """Development and test tokens, signed the way the host platform signs them."""
    import time

    now = int(time.time())
    claims: dict[str, Any] = {"sub": str(user_id), "iat": now, "exp": now + lifetime_seconds}
    if roles:
        claims["roles"] = roles
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")
