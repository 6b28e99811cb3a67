"""Configuration, read once from the environment, validated, then frozen."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


def _read_dotenv(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return values


def _number(env: Mapping[str, str], key: str, default: float, *, minimum: float = 0) -> float:
    raw = env.get(key)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"Config '{key}' must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"Config '{key}' must be at least {minimum}, got {raw!r}")
    return value


def _integer(env: Mapping[str, str], key: str, default: int, *, minimum: int = 0) -> int:
    value = _number(env, key, default, minimum=minimum)
    if value != int(value):
        raise ConfigError(f"Config '{key}' must be a whole number")
    return int(value)


def _networks(env: Mapping[str, str], key: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """Comma-separated CIDRs (a bare address is a /32 or /128)."""
    networks = []
    for item in (part.strip() for part in env.get(key, "").split(",")):
        if not item:
            continue
        try:
            networks.append(ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"Config '{key}' must be comma-separated CIDRs, got {item!r}") from None
    return tuple(networks)


def _flag(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"Config '{key}' must be true or false, got {raw!r}")


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity mask, bounded by a cgroup v2 CPU quota (a
    container limited to 2 CPUs on a 64-core host must not start 64 workers)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, -(-int(quota) // int(period))))  # a 1.5 CPU quota → 2
    except (OSError, ValueError):
        pass  # no cgroup v2 CPU controller here: the affinity mask is the bound
    return max(1, count)


DEFAULT_WEBHOOK_RETRY_SCHEDULE = (60.0, 300.0, 1800.0, 7200.0, 21600.0, 86400.0)
MAX_WEBHOOK_RETRIES = 30


def _schedule(env: Mapping[str, str], key: str, default: tuple[float, ...]) -> tuple[float, ...]:
    """Comma-separated delays in seconds, each above 0, at most MAX_WEBHOOK_RETRIES of them."""
    raw = env.get(key, "").strip()
    if not raw:
        return default
    delays = []
    for item in (part.strip() for part in raw.split(",")):
        try:
            delay = float(item)
        except ValueError:
            raise ConfigError(f"Config '{key}' must be comma-separated seconds, got {item!r}") from None
        if not 0 < delay < float("inf"):
            raise ConfigError(f"Config '{key}' delays must be above 0 seconds, got {item!r}")
        delays.append(delay)
    if len(delays) > MAX_WEBHOOK_RETRIES:
        raise ConfigError(f"Config '{key}' may hold at most {MAX_WEBHOOK_RETRIES} delays, got {len(delays)}")
    return tuple(delays)


def _redis_url(env: Mapping[str, str], key: str, default: str = "") -> str:
    """A Redis URL in one of the forms gateway/redis_urls.py reads (plain, Sentinel, Cluster);
    the sentence of a malformed one names the variable and never repeats the URL (a password)."""
    from gateway.redis_urls import parse_redis_url  # redis-py: imported only where a URL is read

    value = (env.get(key) or "").strip() or default
    if value:
        try:
            parse_redis_url(value)
        except ValueError as exc:
            raise ConfigError(f"Config '{key}' {exc}") from None
    return value


_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _role_name(env: Mapping[str, str], name: str, default: str) -> str:
    """A PostgreSQL role name the gateway may put in statements unquoted: lower-case, no `pg_`."""
    value = env.get(name) or default
    if not _ROLE_NAME.fullmatch(value) or value.startswith("pg_"):
        raise ConfigError(f"Config '{name}' must be a lower-case role name (letters, digits, '_'; "
                          f"not starting with 'pg_'), got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = ""
    # The tables' owner, for `gateway migrate` (and the audit verifier); DATABASE_URL when unset.
    migrate_database_url: str = ""
    # The NOLOGIN role every query of `gateway serve` runs as (row-level security applies to it).
    db_role: str = "gateway_app"
    redis_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9180
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwks_url: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    encryption_keys: str = field(default="", repr=False)
    assertion_key: str = field(default="", repr=False)
    assertion_issuer: str = "plugin-gateway"
    allow_private_upstreams: bool = False
    upstream_connect_timeout: float = 5.0
    upstream_timeout: float = 30.0
    max_body_bytes: int = 1024 * 1024
    proxy_max_body_bytes: int = 1024 * 1024 * 1024
    workers: int = 1
    redis_timeout: float = 0.05
    rate_limit_failure: str = "local"
    cache_max_body_bytes: int = 1024 * 1024
    cache_memory_bytes: int = 64 * 1024 * 1024
    upstream_pool_per_host: int = 64
    drain_seconds: float = 30.0
    # Hostile callers (contract revision 3); every count is per gateway process.
    client_header_timeout: float = 10.0
    client_body_timeout: float = 30.0
    client_body_min_rate: int = 1024
    upstream_pool_timeout: float = 5.0
    breaker_failures: int = 5
    snapshot_path: str = ""  # GATEWAY_SNAPSHOT_PATH: the last-known-good state (gateway/snapshot.py)
    breaker_open_seconds: float = 30.0
    upstream_space_share: float = 0.5
    max_connections: int = 10000
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    auth_failures_per_minute: int = 60
    caller_cache_ttl: float = 60.0
    cache_max_ttl: int = 86400
    cache_redis_url: str = ""  # the response cache's Redis; from_env defaults it to REDIS_URL
    # Webhooks (gateway/webhooks.py): the delays before each retry, then `failed`; the answer's deadline.
    webhook_retry_schedule: tuple[float, ...] = DEFAULT_WEBHOOK_RETRY_SCHEDULE
    webhook_timeout: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, dotenv: Path | None = None) -> Settings:
        """Build settings from the environment; a `.env` file fills in what the environment lacks."""
        env: dict[str, str] = _read_dotenv(dotenv or Path(".env"))
        env.update(os.environ if environ is None else environ)
        host = env.get("GATEWAY_HOST") or "127.0.0.1"
        redis_url = _redis_url(env, "REDIS_URL")
        failure = env.get("GATEWAY_RATE_LIMIT_FAILURE") or "local"
        if failure not in ("local", "open", "closed"):
            raise ConfigError("Config 'GATEWAY_RATE_LIMIT_FAILURE' must be local, open or closed")
        default_workers = usable_cpus() if redis_url else 1
        share = _number(env, "GATEWAY_UPSTREAM_SPACE_SHARE", 0.5)
        if not 0 < share <= 1:
            raise ConfigError(f"Config 'GATEWAY_UPSTREAM_SPACE_SHARE' must be greater than 0 and at most 1, got {share:g}")
        return cls(
            database_url=env.get("DATABASE_URL", ""),
            migrate_database_url=env.get("GATEWAY_MIGRATE_DATABASE_URL") or env.get("DATABASE_URL", ""),
            db_role=_role_name(env, "GATEWAY_DB_ROLE", "gateway_app"),
            redis_url=redis_url,
            host=host,
            port=_integer(env, "GATEWAY_PORT", 8080),
            metrics_host=env.get("GATEWAY_METRICS_HOST") or host,
            metrics_port=_integer(env, "GATEWAY_METRICS_PORT", 9180),
            jwt_secret=env.get("GATEWAY_JWT_SECRET", ""),
            jwt_public_key=env.get("GATEWAY_JWT_PUBLIC_KEY", ""),
            jwks_url=env.get("GATEWAY_JWKS_URL", ""),
            jwt_issuer=env.get("GATEWAY_JWT_ISSUER", ""),
            jwt_audience=env.get("GATEWAY_JWT_AUDIENCE", ""),
            encryption_keys=env.get("GATEWAY_ENCRYPTION_KEYS", ""),
            assertion_key=env.get("GATEWAY_ASSERTION_KEY", "").replace("\\n", "\n"),
            assertion_issuer=env.get("GATEWAY_ASSERTION_ISSUER") or "plugin-gateway",
            allow_private_upstreams=_flag(env, "GATEWAY_ALLOW_PRIVATE_UPSTREAMS", False),
            upstream_connect_timeout=_number(env, "GATEWAY_UPSTREAM_CONNECT_TIMEOUT", 5.0),
            upstream_timeout=_number(env, "GATEWAY_UPSTREAM_TIMEOUT", 30.0),
            max_body_bytes=_integer(env, "GATEWAY_MAX_BODY_BYTES", 1024 * 1024, minimum=1),
            proxy_max_body_bytes=_integer(env, "GATEWAY_PROXY_MAX_BODY_BYTES", 1024**3),
            workers=_integer(env, "GATEWAY_WORKERS", default_workers, minimum=1),
            redis_timeout=_number(env, "GATEWAY_REDIS_TIMEOUT", 0.05),
            rate_limit_failure=failure,
            cache_max_body_bytes=_integer(env, "GATEWAY_CACHE_MAX_BODY_BYTES", 1024 * 1024),
            cache_memory_bytes=_integer(env, "GATEWAY_CACHE_MEMORY_BYTES", 64 * 1024 * 1024),
            upstream_pool_per_host=_integer(env, "GATEWAY_UPSTREAM_POOL_PER_HOST", 64, minimum=1),
            drain_seconds=_number(env, "GATEWAY_DRAIN_SECONDS", 30.0),
            client_header_timeout=_number(env, "GATEWAY_CLIENT_HEADER_TIMEOUT", 10.0, minimum=0.001),
            client_body_timeout=_number(env, "GATEWAY_CLIENT_BODY_TIMEOUT", 30.0, minimum=0.001),
            client_body_min_rate=_integer(env, "GATEWAY_CLIENT_BODY_MIN_RATE", 1024),
            upstream_pool_timeout=_number(env, "GATEWAY_UPSTREAM_POOL_TIMEOUT", 5.0, minimum=0.001),
            breaker_failures=_integer(env, "GATEWAY_BREAKER_FAILURES", 5, minimum=1),
            snapshot_path=env.get("GATEWAY_SNAPSHOT_PATH", ""),
            breaker_open_seconds=_number(env, "GATEWAY_BREAKER_OPEN_SECONDS", 30.0, minimum=0.001),
            upstream_space_share=share,
            max_connections=_integer(env, "GATEWAY_MAX_CONNECTIONS", 10000, minimum=1),
            trusted_proxies=_networks(env, "GATEWAY_TRUSTED_PROXIES"),
            auth_failures_per_minute=_integer(env, "GATEWAY_AUTH_FAILURES_PER_MINUTE", 60, minimum=1),
            caller_cache_ttl=_number(env, "GATEWAY_CALLER_CACHE_TTL", 60.0, minimum=0.001),
            cache_max_ttl=_integer(env, "GATEWAY_CACHE_MAX_TTL", 86400, minimum=1),
            cache_redis_url=_redis_url(env, "GATEWAY_CACHE_REDIS_URL", redis_url),
            webhook_retry_schedule=_schedule(env, "GATEWAY_WEBHOOK_RETRY_SCHEDULE", DEFAULT_WEBHOOK_RETRY_SCHEDULE),
            webhook_timeout=_number(env, "GATEWAY_WEBHOOK_TIMEOUT", 10.0, minimum=0.001),
        )

    def require(self, *names: str) -> None:
        """Stop startup when a setting a command needs is empty, naming its variable."""
        variables = {
            "database_url": "DATABASE_URL",
            "migrate_database_url": "GATEWAY_MIGRATE_DATABASE_URL (or DATABASE_URL)",
            "encryption_keys": "GATEWAY_ENCRYPTION_KEYS",
            "assertion_key": "GATEWAY_ASSERTION_KEY",
        }
        for name in names:
            if name == "jwt":
                self._require_caller_auth()
            elif not getattr(self, name):
                raise ConfigError(f"Config '{variables[name]}' is missing, and has no default.")

    def _require_caller_auth(self) -> None:
        if not (self.jwt_secret or self.jwt_public_key or self.jwks_url):
            raise ConfigError(
                "No caller authentication is configured: set GATEWAY_JWT_SECRET, "
                "GATEWAY_JWT_PUBLIC_KEY or GATEWAY_JWKS_URL."
            )
