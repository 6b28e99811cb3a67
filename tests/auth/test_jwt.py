"""JWT verification: configured algorithms only, claim checks, PEM keys, a real JWKS server, the cache."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from auth.errors import Unauthenticated
from auth.jwks import JwksCache
from auth.jwt import JwtVerifier, issue_token

SECRET = "unit-test-secret-" + "x" * 32
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_KEY_2 = ec.generate_private_key(ec.SECP256R1())


def pem(private_key: Any) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {"sub": str(uuid.uuid4()), "iat": now, "exp": now + 600}
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def sign(payload: dict[str, Any], key: Any, alg: str, kid: str | None = None) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token PyJWT refuses to make (alg none, a PEM key as HMAC secret)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest() if hmac_key else b""
    return f"{signing_input}.{b64(signature)}"


# --- HS256 and the claims ---------------------------------------------------------------------

async def test_hs256_token_verifies() -> None:
    user = uuid.uuid4()
    verifier = JwtVerifier(SECRET)
    token = issue_token(SECRET, user, roles=["platform_admin"])
    assert (await verifier.verify_async(token))["sub"] == str(user)
    assert (await verifier.verify_async(token))["roles"] == ["platform_admin"]


async def test_nothing_configured_refuses() -> None:
    with pytest.raises(Unauthenticated):
        await JwtVerifier().verify_async(issue_token(SECRET, uuid.uuid4()))


@pytest.mark.parametrize("payload", [
    claims(exp=int(time.time()) - 120),  # expired beyond the leeway
    claims(exp=None),
    claims(sub=None),
    claims(sub="not-a-uuid"),
    claims(nbf=int(time.time()) + 3600),
], ids=["expired", "no-exp", "no-sub", "sub-not-uuid", "not-yet-valid"])
async def test_bad_claims_are_refused(payload: dict[str, Any]) -> None:
    with pytest.raises(Unauthenticated):
        await JwtVerifier(SECRET).verify_async(sign(payload, SECRET, "HS256"))


async def test_wrong_secret_and_garbage_are_refused() -> None:
    verifier = JwtVerifier(SECRET)
    for token in (sign(claims(), "another-secret-" + "y" * 32, "HS256"), "garbage", "a.b.c", ""):
        with pytest.raises(Unauthenticated):
            await verifier.verify_async(token)


async def test_alg_none_is_refused() -> None:
    token = hand_made({"alg": "none", "typ": "JWT"}, claims(), None)
    for verifier in (JwtVerifier(SECRET), JwtVerifier(public_key=pem(RSA_KEY))):
        with pytest.raises(Unauthenticated):
            await verifier.verify_async(token)
        with pytest.raises(Unauthenticated):
            await verifier.verify_async(token.rstrip("."))


async def test_public_key_is_never_an_hmac_secret() -> None:
    """The alg-confusion attack: HS256 'signed' with the public key PEM text the attacker knows."""
    public_pem = pem(RSA_KEY)
    token = hand_made({"alg": "HS256", "typ": "JWT"}, claims(), public_pem.encode())
    for verifier in (JwtVerifier(public_key=public_pem), JwtVerifier(SECRET, public_key=public_pem)):
        with pytest.raises(Unauthenticated):
            await verifier.verify_async(token)
    # Refused too when the PEM arrived with escaped newlines (as environment variables carry it).
    escaped = JwtVerifier(public_key=public_pem.replace("\n", "\\n"))
    with pytest.raises(Unauthenticated):
        await escaped.verify_async(token)


async def test_hs256_is_refused_when_only_a_public_key_is_configured() -> None:
    with pytest.raises(Unauthenticated):
        await JwtVerifier(public_key=pem(RSA_KEY)).verify_async(issue_token(SECRET, uuid.uuid4()))


async def test_issuer_and_audience_are_enforced_when_configured() -> None:
    verifier = JwtVerifier(SECRET, issuer="https://platform.example", audience="plugin-gateway")
    good = issue_token(SECRET, uuid.uuid4(), issuer="https://platform.example", audience="plugin-gateway")
    assert (await verifier.verify_async(good))["aud"] == "plugin-gateway"
    for bad in (
        issue_token(SECRET, uuid.uuid4()),
        issue_token(SECRET, uuid.uuid4(), issuer="https://evil.example", audience="plugin-gateway"),
        issue_token(SECRET, uuid.uuid4(), issuer="https://platform.example", audience="other-service"),
        issue_token(SECRET, uuid.uuid4(), issuer="https://platform.example"),
    ):
        with pytest.raises(Unauthenticated):
            await verifier.verify_async(bad)
    # Unconfigured, neither is checked.
    assert await JwtVerifier(SECRET).verify_async(issue_token(SECRET, uuid.uuid4(), issuer="x", audience="y"))


# --- PEM public keys --------------------------------------------------------------------------

@pytest.mark.parametrize(("private_key", "alg"), [(RSA_KEY, "RS256"), (EC_KEY, "ES256")])
async def test_pem_public_key_verifies(private_key: Any, alg: str) -> None:
    verifier = JwtVerifier(public_key=pem(private_key))
    payload = claims(roles=["platform_admin"])
    assert await verifier.verify_async(sign(payload, private_key, alg)) == payload
    assert verifier.algorithms == {alg}


async def test_wrong_key_type_for_alg_is_refused() -> None:
    rsa_verifier, ec_verifier = JwtVerifier(public_key=pem(RSA_KEY)), JwtVerifier(public_key=pem(EC_KEY))
    for verifier, token in (
        (rsa_verifier, sign(claims(), EC_KEY, "ES256")),
        (ec_verifier, sign(claims(), RSA_KEY, "RS256")),
        (rsa_verifier, sign(claims(), RSA_KEY_2, "RS256")),  # right type, another key
        (ec_verifier, sign(claims(), EC_KEY_2, "ES256")),
        (rsa_verifier, sign(claims(), RSA_KEY, "RS384")),  # an algorithm never configured
    ):
        with pytest.raises(Unauthenticated):
            await verifier.verify_async(token)


def test_unfit_public_keys_are_refused_at_startup() -> None:
    small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    for bad in (pem(ec.generate_private_key(ec.SECP384R1())), pem(small_rsa), "not a pem", SECRET):
        with pytest.raises(ValueError, match="GATEWAY_JWT_PUBLIC_KEY"):
            JwtVerifier(public_key=bad)


# --- JWKS from a real HTTP server -------------------------------------------------------------

def jwk(private_key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    public = private_key.public_key()
    algorithm = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm
    return {**algorithm.to_jwk(public, as_dict=True), "kid": kid, "use": "sig", **extra}


@dataclass
class JwksServer:
    url: str
    keys: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    status: int = 200
    delay: float = 0.0


@pytest.fixture
async def jwks_server(aiohttp_server: Any) -> JwksServer:
    state = JwksServer("")

    async def jwks(request: web.Request) -> web.Response:
        state.requests += 1
        await asyncio.sleep(state.delay)
        if state.status != 200:
            return web.Response(status=state.status)
        return web.json_response({"keys": state.keys})

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", jwks)
    server = await aiohttp_server(app)
    state.url = str(server.make_url("/.well-known/jwks.json"))
    return state


MakeVerifier = Callable[..., JwtVerifier]


@pytest.fixture
async def make_verifier(jwks_server: JwksServer) -> AsyncIterator[MakeVerifier]:
    made: list[JwtVerifier] = []

    def make(**options: Any) -> JwtVerifier:
        verifier = JwtVerifier(jwks=JwksCache(jwks_server.url, **options), leeway=0)
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.close()


async def test_jwks_token_verifies_by_kid(jwks_server: JwksServer, make_verifier: MakeVerifier) -> None:
    jwks_server.keys = [jwk(RSA_KEY, "rsa-1"), jwk(EC_KEY, "ec-1", alg="ES256")]
    verifier = make_verifier()
    rs, es = sign(claims(), RSA_KEY, "RS256", "rsa-1"), sign(claims(), EC_KEY, "ES256", "ec-1")
    assert await verifier.verify_async(rs) and await verifier.verify_async(es)
    assert jwks_server.requests == 1
    # A key is used only for its own type and only under its own kid; a token needs a kid.
    for token in (sign(claims(), EC_KEY, "ES256", "rsa-1"), sign(claims(), RSA_KEY, "RS256", "ec-1"),
                  sign(claims(), RSA_KEY_2, "RS256", "rsa-1"), sign(claims(), RSA_KEY, "RS256")):
        with pytest.raises(Unauthenticated):
            await verifier.verify_async(token)
    # No HS256 without a secret, even signed with the JWK's own text.
    confused = hand_made({"alg": "HS256", "kid": "rsa-1"}, claims(), json.dumps(jwk(RSA_KEY, "rsa-1")).encode())
    with pytest.raises(Unauthenticated):
        await verifier.verify_async(confused)


async def test_jwks_entries_that_do_not_fit_are_ignored(jwks_server: JwksServer,
                                                       make_verifier: MakeVerifier) -> None:
    jwks_server.keys = [jwk(EC_KEY, "claims-rs", alg="RS256"), jwk(RSA_KEY, "enc", use="enc"),
                        {"kty": "oct", "kid": "hmac", "k": b64(SECRET.encode())}, {"kid": 3}, "junk"]
    verifier = make_verifier()
    for token in (sign(claims(), EC_KEY, "ES256", "claims-rs"), sign(claims(), RSA_KEY, "RS256", "enc"),
                  hand_made({"alg": "HS256", "kid": "hmac"}, claims(), SECRET.encode())):
        with pytest.raises(Unauthenticated):
            await verifier.verify_async(token)


async def test_key_rotation_refetches_once(jwks_server: JwksServer, make_verifier: MakeVerifier) -> None:
    jwks_server.keys = [jwk(RSA_KEY, "2024")]
    verifier = make_verifier(min_refetch_interval=0.2)
    assert await verifier.verify_async(sign(claims(), RSA_KEY, "RS256", "2024"))
    assert jwks_server.requests == 1

    jwks_server.keys = [jwk(RSA_KEY_2, "2025")]
    await asyncio.sleep(0.25)
    assert await verifier.verify_async(sign(claims(), RSA_KEY_2, "RS256", "2025"))
    assert await verifier.verify_async(sign(claims(), RSA_KEY_2, "RS256", "2025"))
    assert jwks_server.requests == 2
    # The withdrawn key no longer verifies new tokens.
    with pytest.raises(Unauthenticated):
        await verifier.verify_async(sign(claims(), RSA_KEY, "RS256", "2024"))
    assert jwks_server.requests == 2


async def test_unknown_kid_flood_fetches_at_most_once(jwks_server: JwksServer,
                                                     make_verifier: MakeVerifier) -> None:
    jwks_server.keys = [jwk(EC_KEY, "current")]
    jwks_server.delay = 0.05
    verifier = make_verifier(min_refetch_interval=0.3)

    async def attempt(kid: str) -> bool:
        try:
            return bool(await verifier.verify_async(sign(claims(), EC_KEY, "ES256", kid)))
        except Unauthenticated:
            return False

    # Concurrent first requests share one fetch.
    assert all(await asyncio.gather(*(attempt("current") for _ in range(20))))
    assert jwks_server.requests == 1
    # Within the cooldown, unknown kids cause no fetch at all.
    assert not any(await asyncio.gather(*(attempt(uuid.uuid4().hex) for _ in range(50))))
    assert jwks_server.requests == 1
    # After it, a burst of unknown kids causes exactly one.
    await asyncio.sleep(0.35)
    assert not any(await asyncio.gather(*(attempt(uuid.uuid4().hex) for _ in range(50))))
    assert jwks_server.requests == 2
    assert not any([await attempt(uuid.uuid4().hex) for _ in range(20)])
    assert jwks_server.requests == 2
    assert await attempt("current")


async def test_default_cooldown_via_from_config(jwks_server: JwksServer) -> None:
    jwks_server.keys = [jwk(RSA_KEY, "k")]
    verifier = JwtVerifier.from_config(jwks_url=jwks_server.url, secret=SECRET)
    try:
        assert verifier.algorithms == {"HS256", "RS256", "ES256"}
        assert await verifier.verify_async(sign(claims(), RSA_KEY, "RS256", "k"))
        assert await verifier.verify_async(issue_token(SECRET, uuid.uuid4()))
        for _ in range(30):
            with pytest.raises(Unauthenticated):
                await verifier.verify_async(sign(claims(), RSA_KEY, "RS256", uuid.uuid4().hex))
        assert jwks_server.requests == 1
        # The synchronous path uses cached keys only.
        assert await verifier.verify_async(sign(claims(), RSA_KEY, "RS256", "k"))
    finally:
        await verifier.close()


async def test_jwks_outage_keeps_known_keys(jwks_server: JwksServer, make_verifier: MakeVerifier) -> None:
    jwks_server.status = 503
    verifier = make_verifier(min_refetch_interval=0.05)
    token = sign(claims(), RSA_KEY, "RS256", "k")
    with pytest.raises(Unauthenticated):
        await verifier.verify_async(token)

    jwks_server.status, jwks_server.keys = 200, [jwk(RSA_KEY, "k")]
    await asyncio.sleep(0.1)
    assert await verifier.verify_async(token)
    jwks_server.status = 500
    await asyncio.sleep(0.1)
    with pytest.raises(Unauthenticated):
        await verifier.verify_async(sign(claims(), RSA_KEY, "RS256", "unknown"))
    assert await verifier.verify_async(sign(claims(), RSA_KEY, "RS256", "k"))
    assert jwks_server.requests == 3


async def test_stale_keys_are_refreshed_in_the_background(jwks_server: JwksServer,
                                                          make_verifier: MakeVerifier) -> None:
    jwks_server.keys = [jwk(RSA_KEY, "k")]
    verifier = make_verifier(min_refetch_interval=0, max_age=0.1)
    assert await verifier.verify_async(sign(claims(), RSA_KEY, "RS256", "k"))
    jwks_server.keys = []  # the platform withdraws the key
    await asyncio.sleep(0.15)
    # The stale set still answers at once, and one background fetch replaces it.
    assert await verifier.verify_async(sign(claims(), RSA_KEY, "RS256", "k"))
    refused = False
    for _ in range(100):
        await asyncio.sleep(0.01)
        try:
            await verifier.verify_async(sign(claims(), RSA_KEY, "RS256", "k"))
        except Unauthenticated:
            refused = True
            break
    assert refused and jwks_server.requests >= 2


# --- the verified-token cache -----------------------------------------------------------------

async def test_cached_verification_needs_no_fetch(jwks_server: JwksServer, make_verifier: MakeVerifier) -> None:
    jwks_server.keys = [jwk(EC_KEY, "k")]
    verifier = make_verifier()
    token = sign(claims(roles=["platform_admin"]), EC_KEY, "ES256", "k")
    first = await verifier.verify_async(token)
    second = await verifier.verify_async(token)
    assert first == second and verifier.cache_hits == 1 and jwks_server.requests == 1
    second["roles"] = "tampered"  # callers get copies
    assert (await verifier.verify_async(token))["roles"] == ["platform_admin"]
    assert await verifier.verify_async(token) == first and verifier.cache_hits == 3


async def test_cache_never_returns_a_token_past_its_exp(jwks_server: JwksServer,
                                                        make_verifier: MakeVerifier) -> None:
    jwks_server.keys = [jwk(RSA_KEY, "k")]
    verifier = make_verifier()
    exp = math.ceil(time.time()) + 1
    token = sign(claims(exp=exp), RSA_KEY, "RS256", "k")
    assert await verifier.verify_async(token)
    assert await verifier.verify_async(token) and verifier.cache_hits == 1
    await asyncio.sleep(exp - time.time() + 0.05)
    with pytest.raises(Unauthenticated):
        await verifier.verify_async(token)
    with pytest.raises(Unauthenticated):
        await verifier.verify_async(token)
    assert verifier.cache_hits == 1


async def test_cache_respects_a_clock_past_exp() -> None:
    """Even if the cache's own expiry lagged, an entry is checked against exp when read."""
    now = [time.time()]
    verifier = JwtVerifier(SECRET, clock=lambda: now[0])
    token = sign(claims(exp=int(now[0]) + 60), SECRET, "HS256")
    await verifier.verify_async(token)
    await verifier.verify_async(token)
    assert verifier.cache_hits == 1
    now[0] += 61  # the token is past exp by the cache's clock: no hit (PyJWT re-checks by its own)
    await verifier.verify_async(token)
    assert verifier.cache_hits == 1


async def test_cache_is_bounded() -> None:
    verifier = JwtVerifier(SECRET, cache_size=5)
    tokens = [issue_token(SECRET, uuid.uuid4()) for _ in range(10)]
    for token in tokens:
        await verifier.verify_async(token)
    for token in tokens[-5:]:
        await verifier.verify_async(token)
    assert verifier.cache_hits == 5
    await verifier.verify_async(tokens[0])
    assert verifier.cache_hits == 5
