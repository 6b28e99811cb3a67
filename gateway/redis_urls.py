"""The one place a Redis URL is read (contract revision 3, "Scale-out").

- `redis://` and `rediss://` (and `unix://`): one server, as redis-py's `from_url` reads them;
- `redis+sentinel://[[user]:password@]host:port[,host:port...]/<master name>[/<db>]`, with
  `?sentinel_password=` when the sentinels have a password of their own (without it the
  sentinels are asked without one); `rediss+sentinel://` speaks TLS to sentinels and primary;
- `redis+cluster://[[user]:password@]host:port[,host:port...]` (a few of the cluster's nodes:
  the rest are discovered); `rediss+cluster://` for TLS.

A port left out is the default one (26379 for a sentinel, 6379 otherwise). User and password
are percent-decoded, so a password holding `@`, `,` or `/` must be percent-encoded. `ssl_*`
query options (`ssl_cert_reqs`, `ssl_ca_certs`, ...) are passed to the connections as redis-py's
`from_url` passes them.

`parse_redis_url` raises ValueError with a sentence that never holds the password, for
gateway/settings.py to put after the variable's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.asyncio.connection import parse_url as redis_parse_url

__all__ = ["RedisTarget", "parse_redis_url", "redacted"]

SENTINEL_PORT = 26379
REDIS_PORT = 6379
PLAIN_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SCHEMES = PLAIN_SCHEMES + SENTINEL_SCHEMES + CLUSTER_SCHEMES
# Query options a Sentinel or Cluster URL may carry: TLS only (the gateway sets its own timeouts
# and pool bounds), and the sentinels' own password.
SSL_OPTIONS = frozenset({"ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_data", "ssl_certfile", "ssl_keyfile",
                         "ssl_check_hostname", "ssl_min_version", "ssl_ciphers"})
FORMS = ("redis://host:port/db, rediss://..., "
         "redis+sentinel://[[user]:password@]host:port[,host:port...]/<master name>[/<db>], "
         "redis+cluster://[[user]:password@]host:port[,host:port...] (or rediss+...)")


@dataclass(frozen=True, slots=True)
class RedisTarget:
    kind: Literal["single", "sentinel", "cluster"]
    url: str = field(repr=False)  # as given (single: what redis-py's from_url reads)
    tls: bool = False
    hosts: tuple[tuple[str, int], ...] = ()  # sentinels, or cluster startup nodes
    master: str = ""  # sentinel: the monitored primary's name
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    options: dict[str, Any] = field(default_factory=dict)  # ssl_* for every connection

    def describe(self) -> str:
        """The URL without its credentials, for logs and messages."""
        return redacted(self.url)


def redacted(url: str) -> str:
    """`url` with any password (userinfo and `sentinel_password=`) replaced by `***`."""
    scheme, sep, rest = url.partition("://")
    head, question, query = rest.partition("?")
    userinfo, at, after = head.rpartition("@")  # the last `@`: a password may hold a raw `/`
    if at:
        user, colon, _ = userinfo.partition(":")
        head = f"{user}:***@{after}" if colon else f"***@{after}"
    if question:
        query = "&".join("sentinel_password=***" if part.startswith("sentinel_password=") else part
                         for part in query.split("&"))
    return f"{scheme}{sep}{head}{question}{query}"


def parse_redis_url(url: str) -> RedisTarget:
    """Read a REDIS_URL-style URL; ValueError (a sentence without the password) if malformed."""
    url = url.strip()
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise ValueError(f"must be a URL of one of the forms {FORMS}")
    if scheme in PLAIN_SCHEMES:
        return _single(url, scheme)
    # By hand, not urlsplit: several hosts, and the last `@` ends the credentials even when a
    # password holds a raw `/` (the sentence then says what is wrong without quoting it).
    rest, _, query = url.partition("://")[2].partition("?")
    userinfo, at, after = rest.rpartition("@")
    hostlist, slash, path_text = after.partition("/")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if not colon:  # redis-py's reading of `secret@host`: the password alone
            username, password = None, unquote(user) or None
    sentinel = scheme in SENTINEL_SCHEMES
    hosts = _hosts(hostlist, SENTINEL_PORT if sentinel else REDIS_PORT, "sentinel" if sentinel else "cluster node")
    options, sentinel_password = _options(query, sentinel)
    tls = scheme.startswith("rediss+")
    path = [unquote(piece) for piece in path_text.split("/")] if slash else []
    if path and path[-1] == "":
        path.pop()  # a trailing slash
    if sentinel:
        if not path or not path[0]:
            raise ValueError("names no master: redis+sentinel://host:port[,host:port...]/<master name>[/<db>]")
        if len(path) > 2:
            raise ValueError("has a path longer than /<master name>/<db>")
        db = _db(path[1]) if len(path) == 2 else 0
        return RedisTarget("sentinel", url, tls, hosts, path[0], db, username, password, sentinel_password, options)
    if path and not (len(path) == 1 and path[0] == "0"):
        raise ValueError("has a path, but a Redis Cluster has no master name and only database 0: "
                         "redis+cluster://host:port[,host:port...]")
    return RedisTarget("cluster", url, tls, hosts, "", 0, username, password, None, options)


def _single(url: str, scheme: str) -> RedisTarget:
    try:
        parsed = urlsplit(url)
    except ValueError:
        raise ValueError(f"is not a valid {scheme}:// URL") from None
    if "," in parsed.netloc.rpartition("@")[2]:
        raise ValueError(f"names several hosts: use redis+sentinel:// or redis+cluster:// for those, not {scheme}://")
    try:
        parsed.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise ValueError(f"has a port that is not a number from 1 to 65535: {scheme}://host:port/db") from None
    if scheme != "unix" and not parsed.hostname:
        raise ValueError(f"names no host: {scheme}://host:port/db")
    if scheme != "unix" and parsed.path.strip("/") and not parsed.path.strip("/").isdigit():
        raise ValueError(f"has a path that is not a database number: {scheme}://host:port/db")
    try:
        kwargs = redis_parse_url(url)  # the query's options, as the client will read them
    except ValueError as exc:  # "Invalid value for 'db' in connection URL.": no value quoted
        raise ValueError(f"is not a valid {scheme}:// URL: {exc}") from None
    return RedisTarget("single", url, scheme == "rediss", db=int(kwargs.get("db", 0) or 0))


def _hosts(hostlist: str, default_port: int, what: str) -> tuple[tuple[str, int], ...]:
    hosts = []
    for number, item in enumerate(hostlist.split(","), start=1):
        item = item.strip()
        if not item:
            raise ValueError(f"names no {what}, or an empty one between commas: host:port[,host:port...]")
        if item.startswith("["):  # [IPv6]:port
            host, bracket, rest = item[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"has a malformed IPv6 address for {what} {number}: [address]:port")
            port_text = rest[1:] if rest else ""
        else:
            host, _, port_text = item.partition(":")
            if ":" in port_text:
                raise ValueError(f"has too many colons in {what} {number}: write an IPv6 address in brackets, [::1]:port")
        if not host:
            raise ValueError(f"has no host for {what} {number}")
        if port_text == "":
            port = default_port
        elif port_text.isdigit() and 0 < int(port_text) < 65536:
            port = int(port_text)
        else:
            raise ValueError(f"has a port for {what} {number} that is not a number from 1 to 65535")
        hosts.append((host, port))
    return tuple(hosts)


def _options(query: str, sentinel: bool) -> tuple[dict[str, Any], str | None]:
    options: dict[str, Any] = {}
    sentinel_password = None
    try:
        pairs = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError("has a malformed query string") from None
    for name, values in pairs.items():
        value = values[-1]
        if name == "sentinel_password" and sentinel:
            sentinel_password = value or None
        elif name in SSL_OPTIONS:
            parser = URL_QUERY_ARGUMENT_PARSERS.get(name)
            try:
                options[name] = parser(value) if parser else value
            except (TypeError, ValueError):
                raise ValueError(f"has an invalid value for {name}") from None
        else:
            allowed = ", ".join(sorted(SSL_OPTIONS | ({"sentinel_password"} if sentinel else set())))
            raise ValueError(f"has a query option that is not one of {allowed}")
    return options, sentinel_password


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError("has a database that is not a number: .../<master name>/<db>")
    return int(text)
