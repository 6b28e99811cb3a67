"""X-Gateway-Assertion: a short-lived ES256 JWT telling the plugin who is calling.

Like Grafana's ID token it names the caller, not the request, so one assertion is reused for the
same caller and installation until shortly before it expires: signing per request would cost
more than the rest of the pipeline. The public key is served at /.well-known/jwks.json.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from cachetools import LRUCache
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

LIFETIME_SECONDS = 300  # the contract's maximum
REUSE_MARGIN_SECONDS = 30  # re-sign this long before expiry so no plugin sees an expired one
# The JWS header's `typ`: a webhook signature (gateway/webhooks.py, `gateway-webhook+jwt`) is made
# with the same key, and a plugin that checks `typ` takes neither token for the other.
ASSERTION_TYPE = "gateway-assertion+jwt"


class AssertionKeyError(ValueError):
    """GATEWAY_ASSERTION_KEY is not an EC P-256 private key in PEM (message holds no key material)."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class AssertionSigner:
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    issuer: str
    kid: str = ""
    _cache: LRUCache[tuple[str, str], tuple[str, float]] = field(default_factory=lambda: LRUCache(50_000))

    @classmethod
    def from_pem(cls, pem: str, issuer: str) -> AssertionSigner:
        try:
            key = serialization.load_pem_private_key(pem.encode(), password=None)
        except (ValueError, TypeError):
            raise AssertionKeyError("GATEWAY_ASSERTION_KEY is not a PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise AssertionKeyError("GATEWAY_ASSERTION_KEY must be an EC P-256 key (ES256)")
        signer = cls(key, issuer)
        signer.kid = signer._thumbprint()
        return signer

    def public_jwk(self) -> dict[str, str]:
        numbers = self.private_key.public_key().public_numbers()
        return {"kty": "EC", "crv": "P-256", "x": _b64(numbers.x.to_bytes(32, "big")),
                "y": _b64(numbers.y.to_bytes(32, "big")), "use": "sig", "alg": "ES256", "kid": self.kid}

    def _thumbprint(self) -> str:
        # RFC 7638: every node with the same key publishes the same kid.
        numbers = self.private_key.public_key().public_numbers()
        canonical = {"crv": "P-256", "kty": "EC", "x": _b64(numbers.x.to_bytes(32, "big")),
                     "y": _b64(numbers.y.to_bytes(32, "big"))}
        return _b64(hashlib.sha256(json.dumps(canonical, separators=(",", ":"), sort_keys=True).encode()).digest())

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk()]}

    def assertion(self, *, subject: str, audience: str, space_id: str, installation_id: str,
                  role: str, instance_service_id: str | None = None, now: float | None = None) -> str:
        """`instance_service_id`: a management call's target (a claim of its own, and its own token)."""
        now = time.time() if now is None else now
        key = (f"{subject}|{space_id}|{role}|{instance_service_id or ''}", installation_id)
        cached = self._cache.get(key)
        if cached is not None and cached[1] - REUSE_MARGIN_SECONDS > now:
            return cached[0]
        issued = int(now)
        claims = {"iss": self.issuer, "aud": audience, "sub": subject, "space_id": space_id,
                  "installation_id": installation_id, "role": role, "iat": issued,
                  "exp": issued + LIFETIME_SECONDS}
        if instance_service_id is not None:
            claims["instance_service_id"] = instance_service_id
        token = jwt.encode(claims, self.private_key, algorithm="ES256", headers={"kid": self.kid, "typ": ASSERTION_TYPE})
        self._cache[key] = (token, float(issued + LIFETIME_SECONDS))
        return token
