"""Which headers cross the gateway, in each direction."""

from __future__ import annotations

from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

# RFC 9110 §7.6.1 and the usual non-standard ones; plus whatever `Connection` names.
HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
})
# The caller's own credentials are for the gateway, never for a third-party plugin.
CALLER_CREDENTIALS: Final = frozenset({"authorization", "cookie", "x-api-key"})
# Set by the gateway alone; a caller sending them must not be able to speak for it.
GATEWAY_OWNED_PREFIX: Final = "x-gateway-"
NOT_FORWARDED: Final = HOP_BY_HOP | CALLER_CREDENTIALS | {"host", "x-forwarded-proto", "x-forwarded-host"}
# A plugin must not set cookies on the platform's origin.
NOT_RETURNED: Final = HOP_BY_HOP | {"set-cookie", "set-cookie2", "content-length"}


def _connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    tokens = set()
    for value in headers.getall("Connection", ()):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def upstream_request_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The caller's headers minus hop-by-hop, Host, credentials and gateway-owned names."""
    drop = NOT_FORWARDED | _connection_tokens(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower not in drop and not lower.startswith(GATEWAY_OWNED_PREFIX):
            out.add(name, value)
    return out


def downstream_response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The plugin's response headers minus hop-by-hop and Set-Cookie.

    Content-Length is left to aiohttp, which sets it from what is actually written (or chunks).
    """
    drop = NOT_RETURNED | _connection_tokens(upstream)
    return CIMultiDict((k, v) for k, v in upstream.items() if k.lower() not in drop)
