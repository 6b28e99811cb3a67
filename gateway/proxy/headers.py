"""Which headers cross the gateway, in each direction."""

from __future__ import annotations

import re
import secrets
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
    tokens: set[str] = set()
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


def traceparent_for(incoming: CIMultiDictProxy[str]) -> str:
    """The caller's traceparent when it is valid (and sent once), else a new one."""
    sent = incoming.getall(TRACEPARENT, ())
    return sent[0] if len(sent) == 1 and valid_traceparent(sent[0]) else new_traceparent()
