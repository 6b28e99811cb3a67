"""The host platform's signing keys, fetched from its JWKS URL and cached by `kid`.

A token naming an unknown `kid` triggers a refetch (key rotation), but at most one fetch per
`min_refetch_interval` seconds, and concurrent refetches are coalesced into one request: a flood
of tokens with made-up kids cannot turn the gateway into an amplifier against the JWKS endpoint.
Keys older than `max_age` are refreshed in the background while the old set keeps serving, so a
key the platform withdraws stops verifying within about `max_age` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

log = logging.getLogger(__name__)

SIGNING_ALGORITHMS = ("RS256", "ES256")
MIN_RSA_BITS = 2048
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def key_fits(key: object, alg: str) -> bool:
    """Whether `key` is the right kind of public key for `alg` (RSA for RS256, P-256 for ES256)."""
    if alg == "RS256":
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS
    if alg == "ES256":
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    return False


@dataclass(frozen=True, slots=True)
class Jwk:
    key: PublicKey
    alg: str  # the one algorithm this key verifies (from the JWK's `alg`, else its kty/crv)


def parse_jwk(obj: Any) -> tuple[str, Jwk] | None:
    """One JWKS entry as (kid, key), or None for an entry we never use (wrong use, kty, curve...)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("kid"), str):
        return None
    if obj.get("use", "sig") != "sig":
        return None
    public = {k: v for k, v in obj.items() if k not in ("d", "p", "q", "dp", "dq", "qi", "oth")}
    try:
        if public.get("kty") == "RSA":
            key: Any = RSAAlgorithm.from_jwk(public)
            alg = "RS256"
        elif public.get("kty") == "EC" and public.get("crv") == "P-256":
            key = ECAlgorithm.from_jwk(public)
            alg = "ES256"
        else:
            return None
    except (InvalidKeyError, ValueError, TypeError, KeyError):
        return None
    if public.get("alg", alg) != alg or not key_fits(key, alg):
        return None
    return obj["kid"], Jwk(key, alg)


class JwksCache:
    """Signing keys by kid, from one JWKS URL; `get(kid, alg)` is the only call on the hot path."""

    def __init__(self, url: str, *, session: aiohttp.ClientSession | None = None, timeout: float = 3.0,
                 min_refetch_interval: float = 5.0, max_age: float = 600.0, max_bytes: int = 256 * 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._min_refetch_interval = min_refetch_interval
        self._max_age = max_age
        self._max_bytes = max_bytes
        self._clock = clock
        self._keys: dict[str, Jwk] = {}
        self._loaded_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch attempt, successful or not
        self._generation = 0  # counts attempts, so coalesced waiters see that one just happened
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self.fetches = 0  # HTTP requests made, for metrics and tests

    async def get(self, kid: str, alg: str) -> PublicKey | None:
        """The key `kid` if it verifies `alg`; an unknown kid refetches (rate-limited) first."""
        jwk = self._keys.get(kid)
        if jwk is None:
            await self.refresh()
            jwk = self._keys.get(kid)
        elif self._stale():
            self._refresh_in_background()
        # A known kid with the wrong key type is refused without a refetch.
        return jwk.key if jwk is not None and jwk.alg == alg else None

    async def refresh(self) -> None:
        """Fetch the key set unless a fetch happened within `min_refetch_interval`."""
        generation = self._generation
        async with self._lock:
            if self._generation != generation:
                return  # another task fetched while this one waited: use its result
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self._min_refetch_interval:
                return
            self._attempted_at = now
            try:
                self._keys = await self._fetch()
                self._loaded_at = self._clock()
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                # Keep the keys we have: an outage of the JWKS endpoint must not log everyone out.
                log.warning("JWKS fetch from %s failed: %s", self.url, exc or type(exc).__name__)
            finally:
                self._generation += 1

    async def close(self) -> None:
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
            self._background = None
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _stale(self) -> bool:
        return self._loaded_at is None or self._clock() - self._loaded_at >= self._max_age

    def _refresh_in_background(self) -> None:
        if self._background is None or self._background.done():
            self._background = asyncio.get_running_loop().create_task(self.refresh())

    async def _fetch(self) -> dict[str, Jwk]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self.fetches += 1
        async with self._session.get(self.url, timeout=self._timeout, allow_redirects=False,
                                     headers={"Accept": "application/json"}) as response:
            if response.status != 200:
                raise ValueError(f"status {response.status}")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > self._max_bytes:
                    raise ValueError(f"key set larger than {self._max_bytes} bytes")
        document = json.loads(body)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWK set (no 'keys' list)")
        keys = dict(filter(None, map(parse_jwk, document["keys"])))
        log.info("JWKS from %s: %d usable signing key(s)", self.url, len(keys))
        return keys
