"""Which headers cross the gateway, in each direction: the one request filter and the one
response filter (a cached answer is replayed through the same response filter)."""

from __future__ import annotations

import re
import secrets
from typing import Final

from multidict import CIMultiDict, MultiMapping

# RFC 9110 §7.6.1 and the usual non-standard ones; plus whatever `Connection` names.
HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
})
# The caller's own credentials are for the gateway, never for a third-party plugin.
CALLER_CREDENTIALS: Final = frozenset({"authorization", "cookie", "x-api-key"})
# Set by the gateway alone; a caller sending them must not be able to speak for it.
GATEWAY_OWNED_PREFIX: Final = "x-gateway-"
# Every X-Forwarded-* of the caller is dropped; the gateway sends its own X-Forwarded-For, -Proto
# and -Host (gateway.proxy.forward: from a trusted proxy, built on what that proxy sent).
FORWARDED_PREFIX: Final = "x-forwarded-"
# Never forwarded from the caller (contract revision 3): other ways of naming the client or the URL.
CALLER_FORWARDING: Final = frozenset({"forwarded", "x-real-ip", "x-original-url", "x-rewrite-url"})
# Set once by the gateway for every request (the caller's value when it is sane, see forward).
SET_BY_GATEWAY: Final = frozenset({"x-request-id", "traceparent"})
NOT_FORWARDED: Final = HOP_BY_HOP | CALLER_CREDENTIALS | CALLER_FORWARDING | SET_BY_GATEWAY | {"host"}
# An RFC 9110 token without "_": a name with "_" is dropped, as nginx does (servers that map "-"
# and "_" to one variable would read X_Gateway_User_Id as X-Gateway-User-Id); a name that is not a
# token at all (whitespace, non-ASCII look-alikes) cannot be judged, so it is dropped too.
_FORWARDABLE_NAME: Final = re.compile(r"[!#$%&'*+.^`|~0-9A-Za-z-]+")

# A plugin must not set cookies on the platform's origin, challenge the caller for a password it
# cannot give (the gateway holds the credentials; a Basic prompt would ask for them on the
# platform's origin), clear its storage, pin HSTS or alternative services for it, or open it to
# other origins (CORS is the platform's decision).
NOT_RETURNED: Final = HOP_BY_HOP | {
    "set-cookie", "set-cookie2", "content-length", "www-authenticate", "clear-site-data",
    "strict-transport-security", "alt-svc",
}
NOT_RETURNED_PREFIXES: Final = ("access-control-",)

Headers = MultiMapping[str]


def _connection_tokens(headers: Headers) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def forwardable(name: str, dropped: frozenset[str] | set[str] = NOT_FORWARDED) -> bool:
    """Whether a caller's header of this name may reach the plugin (`dropped`: lowercase names)."""
    if not _FORWARDABLE_NAME.fullmatch(name):
        return False
    lower = name.lower()
    return (lower not in dropped and not lower.startswith(GATEWAY_OWNED_PREFIX)
            and not lower.startswith(FORWARDED_PREFIX))


def upstream_request_headers(incoming: Headers) -> CIMultiDict[str]:
    """The caller's headers minus hop-by-hop, Host, credentials, gateway-owned and forwarding
    names, and any name with "_" (or that is not a token)."""
    drop = NOT_FORWARDED | _connection_tokens(incoming)
    return CIMultiDict((name, value) for name, value in incoming.items() if forwardable(name, drop))


def returnable(name: str, dropped: frozenset[str] | set[str] = NOT_RETURNED) -> bool:
    """Whether a plugin's response header of this name may reach the caller."""
    lower = name.lower()
    return lower not in dropped and not lower.startswith(NOT_RETURNED_PREFIXES)


def downstream_response_headers(upstream: Headers) -> CIMultiDict[str]:
    """The plugin's response headers minus hop-by-hop, Set-Cookie, WWW-Authenticate,
    Clear-Site-Data, Strict-Transport-Security, Alt-Svc and Access-Control-*. The one response
    filter: a fresh answer and a cached one (stored or replayed) both go through it.

    Content-Length is left to aiohttp, which sets it from what is actually written (or chunks).
    """
    drop = NOT_RETURNED | _connection_tokens(upstream)
    return CIMultiDict((k, v) for k, v in upstream.items() if returnable(k, drop))


# W3C Trace Context, version 00: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>, lowercase.
TRACEPARENT: Final = "traceparent"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


def valid_traceparent(value: str | None) -> bool:
    """Only a well-formed version-00 traceparent with non-zero ids is passed on as sent."""
    match = _TRACEPARENT.fullmatch(value or "")
    return match is not None and match[1] != "0" * 32 and match[2] != "0" * 16


def new_traceparent() -> str:
    """A fresh trace: random trace and span ids, sampled (flags 01)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def traceparent_for(incoming: MultiMapping[str]) -> str:
    """The caller's traceparent when it is valid (and sent once), else a new one."""
    sent = incoming.getall(TRACEPARENT, ())
    return sent[0] if len(sent) == 1 and valid_traceparent(sent[0]) else new_traceparent()
