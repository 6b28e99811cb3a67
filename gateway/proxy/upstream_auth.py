"""The credentials the proxy injects upstream: api_key, bearer, basic, or an OAuth2 token.

The auth type and config are the route's when it has an auth_type, else the service's; the
values come from the installation's sealed credentials, opened once per installation version.
Neither credentials nor token responses ever reach a log line or an error message.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus
from uuid import UUID

import aiohttp
import orjson
from cachetools import LRUCache
from yarl import URL

from db.encryption import DecryptionError, KeyRing, associated_data
from gateway.upstream_safety import address_is_public, literal_address
from routing.loader import Installation
from routing.table import Route

REFRESH_MARGIN = 30.0  # seconds before expiry a token stops being handed out
DEFAULT_EXPIRES_IN = 3600.0
MAX_TOKEN_RESPONSE = 64 * 1024  # a token response is small; a huge one is not worth buffering
REQUIRED_KEYS: Mapping[str, tuple[str, ...]] = {
    "none": (), "api_key": ("api_key",), "bearer": ("token",),
    "basic": ("username", "password"), "oauth2": ("client_id", "client_secret"),
}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field name
_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")  # no CR/LF: no header injection
# A vendor's header_name must not reframe the request or pose as the gateway's own headers.
_RESERVED = frozenset({"host", "content-length", "transfer-encoding", "connection", "te", "upgrade",
                       "trailer", "keep-alive", "proxy-connection", "x-request-id"})

TokenKey = tuple[UUID, str, str, str]  # installation id, version, token_url, scope


class UpstreamAuthError(Exception):
    """Upstream credentials cannot be produced (→ 502). The message is safe to show and log.

    `kind` is a bounded label for metrics: "credentials", "config" or "token".
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    refresh_at: float  # clock time after which a new token is fetched


class UpstreamAuth:
    def __init__(self, keyring: KeyRing, session: aiohttp.ClientSession, *, allow_private: bool,
                 token_timeout: float = 10.0, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._keyring = keyring
        self._session = session
        self._allow_private = allow_private
        self._timeout = aiohttp.ClientTimeout(total=token_timeout)
        self._clock = clock
        self._credentials: LRUCache[tuple[UUID, str], dict[str, Any]] = LRUCache(max_entries)
        self._tokens: LRUCache[TokenKey, _Token] = LRUCache(max_entries)
        # One token request in flight per key; concurrent callers await the same task.
        self._inflight: dict[TokenKey, asyncio.Task[_Token]] = {}
        self._generation = 0  # bumped by invalidate(): a fetch started before it is not cached

    async def headers(self, route: Route, installation: Installation) -> dict[str, str]:
        auth_type, config = _effective(route, installation)
        if auth_type not in REQUIRED_KEYS:
            raise UpstreamAuthError("the route's upstream auth type is not supported", "config")
        if auth_type == "none":
            return {}
        creds = self._open(installation)
        for key in REQUIRED_KEYS[auth_type]:
            if not isinstance(creds.get(key), str) or not creds[key]:
                raise UpstreamAuthError(f"the installation's credentials lack {key!r} for {auth_type}",
                                        "credentials")
        if auth_type == "api_key":
            return {_header_name(config): _value(creds["api_key"])}
        if auth_type == "bearer":
            return {"Authorization": "Bearer " + _value(creds["token"])}
        if auth_type == "basic":
            return {"Authorization": "Basic " + _basic(creds["username"], creds["password"])}
        token = await self._token(installation, config, creds)
        return {"Authorization": "Bearer " + token}

    def is_oauth2(self, route: Route, installation: Installation) -> bool:
        return _effective(route, installation)[0] == "oauth2"

    def drop_token(self, route: Route, installation: Installation, *,
                   sent: Mapping[str, str] | None = None) -> None:
        """Forget the token the upstream refused (401). With `sent` (the headers that went
        upstream), only that token is dropped: a burst of 401s then refetches once, not per 401."""
        auth_type, config = _effective(route, installation)
        if auth_type != "oauth2" or not config.get("token_url"):
            return  # nothing was cached: headers() refused this config
        key = _token_key(installation, config)
        cached = self._tokens.get(key)
        if cached is not None and (sent is None or sent.get("Authorization") == "Bearer " + cached.value):
            del self._tokens[key]

    def invalidate(self, installation_id: UUID | None = None) -> None:
        self._generation += 1
        if installation_id is None:
            self._credentials.clear()
            self._tokens.clear()
            return
        for key in [k for k in self._credentials if k[0] == installation_id]:
            del self._credentials[key]
        for token_key in [k for k in self._tokens if k[0] == installation_id]:
            del self._tokens[token_key]

    def _open(self, installation: Installation) -> dict[str, Any]:
        table, row_id = installation.credentials_owner
        key = (row_id, installation.version)
        creds = self._credentials.get(key)
        if creds is None:
            aad = associated_data(table, row_id, "credentials")
            try:
                creds = self._keyring.open(dict(installation.credentials or {}), aad)
            except DecryptionError:
                raise UpstreamAuthError("the installation's credentials cannot be decrypted",
                                        "credentials") from None
            self._credentials[key] = creds
        return creds

    async def _token(self, installation: Installation, config: Mapping[str, Any],
                     creds: Mapping[str, Any]) -> str:
        key = _token_key(installation, config)
        cached = self._tokens.get(key)
        if cached is not None and self._clock() < cached.refresh_at:
            return cached.value
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._fetch(key, creds, self._generation))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._fetched(key, done))
        # Shielded: a caller that goes away must not cancel the fetch the others wait for.
        return (await asyncio.shield(task)).value

    def _fetched(self, key: TokenKey, task: asyncio.Task[_Token]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so a failure nobody awaited is not reported twice

    async def _fetch(self, key: TokenKey, creds: Mapping[str, Any], generation: int) -> _Token:
        url = self._token_url(key[2])
        form = {"grant_type": "client_credentials"}
        if key[3]:
            form["scope"] = key[3]
        # RFC 6749 §2.3.1: client id and secret are form-encoded before the Basic encoding.
        client = _basic(quote_plus(creds["client_id"]), quote_plus(creds["client_secret"]))
        # Content-Type explicitly: the proxy's session adds no headers of its own.
        headers = {"Authorization": "Basic " + client, "Accept": "application/json",
                   "Content-Type": "application/x-www-form-urlencoded"}
        started = self._clock()
        try:
            async with self._session.post(url, data=form, headers=headers, timeout=self._timeout,
                                          allow_redirects=False) as response:
                if not 200 <= response.status < 300:
                    raise UpstreamAuthError(
                        f"the OAuth2 token endpoint answered HTTP {response.status}", "token")
                body = await _read_limited(response)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise UpstreamAuthError(
                f"the OAuth2 token endpoint is unreachable ({type(exc).__name__})", "token") from None
        value, expires_in = _parse_token(body)
        token = _Token(value, started + expires_in - REFRESH_MARGIN)
        if generation == self._generation:
            self._tokens[key] = token
        return token

    def _token_url(self, token_url: str) -> URL:
        try:
            url = URL(token_url)
        except (TypeError, ValueError):
            url = URL()
        if url.scheme not in ("http", "https") or not url.host:
            raise UpstreamAuthError("the OAuth2 token_url is not an absolute http(s) URL", "config")
        if not self._allow_private and _private_literal(url.host):
            raise UpstreamAuthError("the OAuth2 token_url points at a non-public address", "config")
        return url


# -- helpers ----------------------------------------------------------------------------------

def _effective(route: Route, installation: Installation) -> tuple[str, Mapping[str, Any]]:
    if not route.auth_type:
        return installation.api_auth_type or "none", installation.api_auth_config or {}
    config = route.auth_config or {}
    if route.installation_id is not None:
        # A space admin writes an installation's route, not the vendor: its OAuth2 token requests
        # (the space's client secret) go only to the token_url the vendor registered. The API and
        # the route table refuse such a route with its own token_url; this keeps the rule even so.
        config = {k: v for k, v in config.items() if k != "token_url"}
        vendor_url = (installation.api_auth_config or {}).get("token_url")
        if vendor_url:
            config["token_url"] = vendor_url
    return route.auth_type, config


def _token_key(installation: Installation, config: Mapping[str, Any]) -> TokenKey:
    token_url = config.get("token_url")
    if not isinstance(token_url, str) or not token_url:
        raise UpstreamAuthError("the OAuth2 auth config lacks token_url", "config")
    scope = config.get("scope") or ""
    if isinstance(scope, list | tuple):  # frozen JSON lists arrive as tuples
        scope = " ".join(str(s) for s in scope)
    return installation.credentials_owner[1], installation.version, token_url, str(scope)


def _header_name(config: Mapping[str, Any]) -> str:
    name = config.get("header_name") or "X-API-Key"
    lowered = str(name).lower()
    if (not isinstance(name, str) or not _TOKEN.fullmatch(name) or lowered in _RESERVED
            or lowered.startswith(("x-gateway-", "x-forwarded-"))):
        raise UpstreamAuthError("the api_key header_name is not usable", "config")
    return name


def _value(value: str) -> str:
    if not _VALUE.fullmatch(value):
        raise UpstreamAuthError("the installation's credentials are not valid header values",
                                "credentials")
    return value


def _basic(username: str, password: str) -> str:
    if ":" in username:  # RFC 7617: the first colon separates the user-id from the password
        raise UpstreamAuthError("the basic auth username contains ':'", "credentials")
    return base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _private_literal(host: str) -> bool:
    """aiohttp never asks the resolver about IP literals, so they are judged here; names go
    through the session's connector, whose resolver returns public addresses only."""
    literal = literal_address(host)
    return literal is not None and not address_is_public(literal)


async def _read_limited(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(8192):
        body += chunk
        if len(body) > MAX_TOKEN_RESPONSE:
            raise UpstreamAuthError("the OAuth2 token response is too large", "token")
    return bytes(body)


def _parse_token(body: bytes) -> tuple[str, float]:
    """access_token and expires_in from a token response; never quotes the body back."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamAuthError("the OAuth2 token response is not JSON", "token") from None
    if not isinstance(data, dict):
        raise UpstreamAuthError("the OAuth2 token response is not a JSON object", "token")
    token, token_type = data.get("access_token"), data.get("token_type")
    if not isinstance(token, str) or not _VALUE.fullmatch(token) or " " in token:
        raise UpstreamAuthError("the OAuth2 token response has no usable access_token", "token")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise UpstreamAuthError("the OAuth2 token response is not a bearer token", "token")
    expires_in = data.get("expires_in", DEFAULT_EXPIRES_IN)
    try:
        # Some servers send the number as a string; bool is an int subclass but not a lifetime.
        seconds = float(expires_in) if not isinstance(expires_in, bool) else -1.0
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise UpstreamAuthError("the OAuth2 token response has an invalid expires_in", "token")
    return token, seconds
