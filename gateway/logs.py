"""Structured logs: one JSON object per line, with secrets redacted in one place.

Every record becomes `{"ts", "level", "logger", "msg", ...extras}` (`ts` is RFC 3339 UTC); an
exception becomes `error: {"type", "message", "traceback"}`.

Redaction happens here, in `JsonFormatter.format`, so it covers every record that reaches a
handler using this formatter, whichever logger or library emitted it:

- Extras (at any depth, in dicts and lists): the value of any key named like a credential is
  replaced by "[redacted]". Names compare case-insensitively with `-` and `_` alike:
  Authorization, Proxy-Authorization, Cookie, Set-Cookie, X-API-Key, password, passwd, secret,
  token, api_key, apikey, client_secret, private_key, kubeconfig, credentials, key, and any name
  ending in `_token`, `_secret`, `_password`, `_credentials`, `_api_key` or `_private_key`.
- Text (the message, every string inside extras, the exception's message and traceback):
  PEM blocks; `Authorization:`/`Cookie:`/`X-API-Key:`-style header lines; `Bearer <token>`;
  JWT-looking strings; our API keys `pgw_<prefix>_<secret>` (the public prefix is kept);
  `key_id:<base64url 32 bytes>` key-ring entries (the key id is kept); the password of a URL's
  userinfo (`scheme://user:[redacted]@host`); `name=value` / `name: value` where the name is
  credential-like (password, secret, token, api_key, private_key, kubeconfig, credentials, ...).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import orjson

REDACTED: Final = "[redacted]"
ACCESS_LOGGER: Final = "gateway.access"

_SECRET_KEYS: Final = frozenset({
    "authorization", "proxy_authorization", "cookie", "set_cookie", "x_api_key",
    "password", "passwd", "secret", "token", "api_key", "apikey", "client_secret", "private_key",
    "kubeconfig", "credentials", "key",
})
_SECRET_SUFFIXES: Final = ("_token", "_secret", "_password", "_credentials", "_api_key", "_private_key")

# Credential-like names inside free text; a prefix such as `jwt_` or `GATEWAY_JWT_` is allowed.
_TEXT_NAMES: Final = r"[A-Za-z0-9_-]{0,40}?(?:password|passwd|secret|token|api[_-]?key|private[_-]?key|kubeconfig|credentials)"
# A value: a flat {...} or [...], else anything nested up to the end of the line, a quoted
# string, or a bare word.
_VALUE: Final = r"""(\{[^{}]*\}|\[[^\[\]]*\]|[{\[][^\r\n]*|'[^']*'|"[^"]*"|[^\s'",;&{}\[\]]+)"""

# Applied in order: the wider patterns (PEM, header lines) first, so a narrower one never
# leaves half of a secret behind.
_TEXT_PATTERNS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # A PEM block, or a truncated one running to the end of the text.
    (re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|\Z)", re.DOTALL), REDACTED),
    # A header written out as text, e.g. a dumped request: the whole value goes.
    (re.compile(r"""(?i)\b(authorization|proxy-authorization|cookie|set-cookie|x-api-key)(['"]?\s*[:=]\s*)"""
                r"""('[^']*'|"[^"]*"|[^\r\n]+)"""), rf"\1\2{REDACTED}"),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*"), rf"\1 {REDACTED}"),
    # JWTs: a JSON header always encodes to "ey..."; three long base64url parts are caught too.
    (re.compile(r"\bey[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), REDACTED),
    (re.compile(r"[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"), REDACTED),
    # Our API keys: `pgw_<8 hex>_<secret>`; the prefix is what listings show, so it stays.
    (re.compile(r"(pgw_[0-9a-f]{8})_[A-Za-z0-9_-]+"), rf"\1_{REDACTED}"),
    (re.compile(r"pgw_[A-Za-z0-9_-]{16,}"), f"pgw_{REDACTED}"),
    # GATEWAY_ENCRYPTION_KEYS entries: key_id:base64url(32 bytes) = 43 characters (+ padding).
    (re.compile(r"\b([A-Za-z0-9_.-]{1,64}):[A-Za-z0-9_-]{43}=?(?![A-Za-z0-9_-])"), rf"\1:{REDACTED}"),
    # A DSN's password: scheme://user:password@host.
    (re.compile(r"(://[^/\s:@]+):[^@\s/]+@"), rf"\1:{REDACTED}@"),
    (re.compile(rf"""(?i)\b({_TEXT_NAMES})(['"]?\s*[:=]\s*){_VALUE}"""), rf"\1\2{REDACTED}"),
)

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_ATTRIBUTES: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}


def is_secret_key(name: str) -> bool:
    normalized = name.lower().replace("-", "_")
    return normalized in _SECRET_KEYS or normalized.endswith(_SECRET_SUFFIXES)


# Short text of these characters cannot hold any secret the patterns look for (a JWT or a key-ring
# entry is longer, a header line or `name=value` needs a space, `:` or `=`), so the patterns are
# skipped for it: most fields of an access line are such text, and it is logged for every request.
_PLAIN: Final = re.compile(r"[A-Za-z0-9_.{}/\-]{0,40}")


def redact_text(text: str) -> str:
    if _PLAIN.fullmatch(text) and "pgw_" not in text and "-----" not in text:
        return text
    for pattern, replacement in _TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_value(value: Any) -> Any:
    """A JSON-ready copy of `value` with credential-named keys and secret-looking text redacted."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes | bytearray):
        return redact_text(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, dict):
        return {str(k): REDACTED if is_secret_key(str(k)) else redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v) for v in value]
    # Anything else (UUIDs, datetimes, objects) is logged by its text, which is redacted too.
    return redact_text(str(value))


def _error(exc_info: Any) -> dict[str, str]:
    kind, exc, tb = exc_info
    return {
        "type": f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__,
        "message": redact_text(str(exc)),
        "traceback": redact_text("".join(traceback.format_exception(kind, exc, tb))),
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per record, redacted (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        # The access line is the one record written for every request, and every field of it is
        # built by the gateway from values it has checked (ids, numbers, route patterns, a slug, a
        # validated traceparent; never a query, a header value or a body), so it skips the text
        # patterns, which would cost more than the rest of the request.
        trusted = record.name == ACCESS_LOGGER
        clean: Callable[[Any], Any] = (lambda v: v) if trusted else redact_value
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
                  .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage() if trusted else redact_text(record.getMessage()),
        }
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES and name not in line:
                line[name] = REDACTED if is_secret_key(name) else clean(value)
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = _error(record.exc_info)
        if record.stack_info:
            line["stack"] = redact_text(record.stack_info)
        try:
            return orjson.dumps(line, default=str).decode()
        except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits: keep the line, as text
            return orjson.dumps({k: v if isinstance(v, str) else str(v) for k, v in line.items()}).decode()


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever sys.stderr is at the time, like logging's last-resort handler, so a
    replaced stderr (test capture, a daemon's redirect) never leaves a closed stream behind."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


class AccessLog:
    """The access line of every request, at a fraction of a log record's cost: the fields are one
    dict serialized once, with the same keys JsonFormatter writes (`ts`, `level`, `logger`,
    `msg`, then the fields), and the lines of one event-loop turn reach stderr in one write.

    Only while setup_logging's own handler is the one listener. When anything else listens (a
    test's log capture, a host's handler, a filter or level set on the access logger), the line
    goes through the logging framework as a record instead, so every handler sees it as before.
    The fields must be values the gateway built itself (ids, numbers, route patterns): they skip
    redaction either way (see JsonFormatter)."""

    def __init__(self) -> None:
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self._pending: list[bytes] = []

    def _direct(self) -> bool:
        logger, root = self.logger, logging.root
        return (not logger.handlers and not logger.filters and logger.propagate
                and logger.level == logging.NOTSET and len(root.handlers) == 1
                and type(root.handlers[0]) is _StderrHandler and not root.filters
                and root.level <= logging.INFO and not logging.root.manager.disable >= logging.INFO)

    def write(self, message: str, fields: dict[str, Any]) -> None:
        if not self._direct():
            self.logger.info("%s", message, extra=fields)
            return
        line = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "level": "INFO", "logger": ACCESS_LOGGER, "msg": message, **fields}
        self._pending.append(orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE))
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (a command's one line): at once
                self.flush()

    def flush(self) -> None:
        data, self._pending = b"".join(self._pending), []
        if not data:
            return
        stream = sys.stderr
        stream.flush()  # whatever a record wrote before stays before
        binary = getattr(stream, "buffer", None)
        if binary is not None:
            binary.write(data)
            binary.flush()
        else:  # a text-only stderr (replaced by a host)
            stream.write(data.decode())
            stream.flush()


ACCESS_LOG: Final = AccessLog()


def setup_logging(level: int | str = "INFO") -> None:
    """JSON lines on stderr for the root logger.

    Like logging.basicConfig, it leaves alone a root logger that a host (pytest, an embedding
    program) has configured already; calling it twice installs one handler, not two.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
