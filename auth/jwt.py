"""Verify the platform's JWTs: only the configured algorithms, `exp` and `sub` required.

Algorithms and keys:
- HS256 with the shared secret (GATEWAY_JWT_SECRET), and only when one is configured;
- RS256 / ES256 with the PEM public key (GATEWAY_JWT_PUBLIC_KEY) when its type fits the alg
  (RSA >= 2048 bits for RS256, EC P-256 for ES256), else with the key of the header's `kid`
  from the JWKS URL (GATEWAY_JWKS_URL), whose kty/crv/alg must fit too.
The token's `alg` header only picks among those; the key for an alg is fixed by its family, so
`none` is never accepted and an RS/ES public key is never used as an HMAC secret.

`exp` and `sub` (a UUID) are required; `iss` and `aud` are checked when configured. Time claims
(`exp`, `nbf`, `iat`) allow LEEWAY_SECONDS of clock skew between the platform and the gateway.

Verified tokens are cached (by sha256 of the token) with their claims until `exp` — never past it,
and without the leeway, so a token within its grace period is simply verified again. A cached
token stays valid until its `exp` even if its key is withdrawn from the JWKS meanwhile.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import aiohttp
import jwt
from cachetools import TLRUCache
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from auth.errors import Unauthenticated
from auth.jwks import SIGNING_ALGORITHMS, JwksCache, PublicKey, key_fits

LEEWAY_SECONDS = 30
CACHE_SIZE = 10_000
MAX_TOKEN_BYTES = 16 * 1024


def load_public_key(pem: str) -> tuple[PublicKey, str]:
    """A PEM public key and the one algorithm it verifies; ValueError names the variable."""
    try:
        key: Any = load_pem_public_key(pem.replace("\\n", "\n").strip().encode())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"Config 'GATEWAY_JWT_PUBLIC_KEY' is not a PEM public key: {exc}") from None
    for alg in SIGNING_ALGORITHMS:
        if key_fits(key, alg):
            return key, alg
    raise ValueError("Config 'GATEWAY_JWT_PUBLIC_KEY' must be an RSA (>= 2048 bits) or EC P-256 public key")


class JwtVerifier:
    """`await verify_async(token)` → claims, or Unauthenticated. `verify(token)` never does I/O."""

    def __init__(self, secret: str = "", issuer: str = "", audience: str = "", *,
                 public_key: str = "", jwks: JwksCache | None = None, leeway: float = LEEWAY_SECONDS,
                 cache_size: int = CACHE_SIZE, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self.issuer = issuer
        self.audience = audience
        self._public_key: PublicKey | None
        self._public_key, self._public_key_alg = load_public_key(public_key) if public_key else (None, "")
        self.jwks = jwks
        self._leeway = leeway
        self._clock = clock
        self.algorithms = frozenset(
            (["HS256"] if secret else [])
            + ([self._public_key_alg] if self._public_key is not None else [])
            + (list(SIGNING_ALGORITHMS) if jwks is not None else []))
        # Entries expire at the token's own exp (the value's first item).
        self._verified: TLRUCache[bytes, tuple[float, dict[str, Any]]] = TLRUCache(
            cache_size, ttu=lambda _key, value, _now: value[0], timer=clock)
        self.cache_hits = 0

    @classmethod
    def from_config(cls, *, secret: str = "", public_key: str = "", jwks_url: str = "", issuer: str = "",
                    audience: str = "", session: aiohttp.ClientSession | None = None) -> JwtVerifier:
        """The verifier for the GATEWAY_JWT_* settings (plain values: auth/ does not know gateway/)."""
        jwks = JwksCache(jwks_url, session=session) if jwks_url else None
        return cls(secret, issuer, audience, public_key=public_key, jwks=jwks)

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()

    async def verify_async(self, token: str) -> dict[str, Any]:
        """The token's claims, fetching the JWKS when the token names a key not yet known."""
        digest, cached = self._lookup(token)
        if cached is not None:
            return cached
        alg, kid = self._header(token)
        key = self._configured_key(alg)
        if key is None and self.jwks is not None and kid is not None:
            key = await self.jwks.get(kid, alg)
        return self._decode(token, digest, alg, key)

    def _lookup(self, token: str) -> tuple[bytes, dict[str, Any] | None]:
        if not self.algorithms:
            raise Unauthenticated("JWT authentication is not configured")
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("Invalid or expired token")
        digest = hashlib.sha256(token.encode()).digest()
        entry = self._verified.get(digest)
        # The cache expires entries by itself; checking exp here as well keeps that a guarantee.
        if entry is None or self._clock() >= entry[0]:
            return digest, None
        self.cache_hits += 1
        return digest, dict(entry[1])

    def _header(self, token: str) -> tuple[str, str | None]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("Invalid or expired token") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise Unauthenticated("Token algorithm not accepted")
        return alg, kid if isinstance(kid, str) else None

    def _configured_key(self, alg: str) -> str | PublicKey | None:
        # The key is chosen by the algorithm's family: the secret only ever for HS256.
        if alg == "HS256":
            return self._secret
        if alg == self._public_key_alg:
            return self._public_key
        return None

    def _decode(self, token: str, digest: bytes, alg: str, key: str | PublicKey | None) -> dict[str, Any]:
        if key is None:
            raise Unauthenticated("Unknown token signing key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[alg], leeway=self._leeway,
                issuer=self.issuer or None, audience=self.audience or None,
                options={"require": ["exp", "sub"], "verify_aud": bool(self.audience)},
            )
        except jwt.PyJWTError:
            raise Unauthenticated("Invalid or expired token") from None
        try:
            UUID(str(claims["sub"]))
        except ValueError:
            raise Unauthenticated("Invalid token subject") from None
        exp = float(claims["exp"])
        if self._clock() < exp:
            self._verified[digest] = (exp, claims)
        return dict(claims)


def issue_token(secret: str, user_id: UUID | str, *, roles: list[str] | None = None,
                lifetime_seconds: int = 3600, issuer: str = "", audience: str = "") -> str:
    """Development and test tokens, signed the way the host platform signs them."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": str(user_id), "iat": now, "exp": now + lifetime_seconds}
    if roles:
        claims["roles"] = roles
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")
