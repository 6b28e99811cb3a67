"""Every metric of the gateway, defined in one place. Labels come from bounded sets only:
service slug, route id, method, status class, cache status, error kind, never paths or callers."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from db import pool as db_pool

REGISTRY: Final = CollectorRegistry(auto_describe=True)

# From 100 µs (a cache hit) to 30 s (the default upstream timeout).
LATENCY_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                          0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS: Final = Counter(
    "gateway_requests", "Proxied requests answered", ["service", "route", "method", "status_class"],
    registry=REGISTRY)
REQUEST_DURATION: Final = Histogram(
    "gateway_request_duration_seconds", "Time from request to the end of the answer, upstream included",
    ["service"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
GATEWAY_DURATION: Final = Histogram(
    "gateway_overhead_duration_seconds", "Time spent in the gateway itself (total minus upstream)",
    ["service"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
UPSTREAM_DURATION: Final = Histogram(
    "gateway_upstream_duration_seconds", "Time from sending to the upstream to the end of its answer",
    ["service"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
UPSTREAM_ERRORS: Final = Counter(
    "gateway_upstream_errors", "Upstream calls that failed, by kind", ["service", "kind"], registry=REGISTRY)
CLIENT_BODY_ABORTED: Final = Counter(
    "gateway_client_body_aborted",
    "Proxied calls aborted because the caller sent its body too slowly: a gap longer than "
    "GATEWAY_CLIENT_BODY_TIMEOUT (timeout) or under GATEWAY_CLIENT_BODY_MIN_RATE (min_rate)",
    ["reason"], registry=REGISTRY)
for _reason in ("timeout", "min_rate"):  # exported from the start, at 0
    CLIENT_BODY_ABORTED.labels(_reason)
RATE_LIMITED: Final = Counter(
    "gateway_rate_limited", "Requests refused by a rate limit", ["service", "route"], registry=REGISTRY)
RATE_LIMIT_FALLBACK: Final = Counter(
    "gateway_rate_limit_fallback", "Rate-limit decisions taken without Redis, by failure mode",
    ["mode"], registry=REGISTRY)
for _mode in ("local", "open", "closed"):  # GATEWAY_RATE_LIMIT_FAILURE's values, exported at 0
    RATE_LIMIT_FALLBACK.labels(_mode)
CACHE: Final = Counter(
    "gateway_cache", "Response cache lookups by outcome", ["service", "status"], registry=REGISTRY)
DEPENDENCY_ERRORS: Final = Counter(
    "gateway_dependency_errors", "Failed calls to PostgreSQL or Redis", ["dependency"], registry=REGISTRY)
for _dependency in ("postgres", "redis"):  # exported from the start, at 0, so rate() alerts work
    DEPENDENCY_ERRORS.labels(_dependency)
# db/ never imports the gateway: it reports its failures (db/pool.py) to whoever listens.
db_pool.add_failure_listener(lambda exc: DEPENDENCY_ERRORS.labels("postgres").inc())
# With several workers (PROMETHEUS_MULTIPROC_DIR set, see gateway/workers.py) each process writes
# its own values and the master merges them: counters and histograms add up; these gauges report
# the table most recently loaded by a live worker ("livemostrecent": a worker that has not loaded
# one yet never wins, a dead worker's value is dropped), without a pid label. One process: ignored.
HEALTH_CHECKS: Final = Counter(
    "gateway_health_checks", "Active health probes of plugin upstreams, by result", ["service", "result"],
    registry=REGISTRY)
SNAPSHOT_IN_USE: Final = Gauge(
    "gateway_snapshot_in_use", "1 while the proxy serves from the last-known-good snapshot (PostgreSQL away at start)",
    registry=REGISTRY, multiprocess_mode="livemax")
SNAPSHOT_WRITTEN: Final = Gauge(
    "gateway_snapshot_written_timestamp_seconds", "When the snapshot in use, or last written, was written (Unix time)",
    registry=REGISTRY, multiprocess_mode="livemax")
# Open breakers per service, summed over the live workers (each holds its own breakers).
BREAKER_OPEN: Final = Gauge("gateway_breaker_open", "Circuit breakers open now, per service (installation and origin)",
                            ["service"], registry=REGISTRY, multiprocess_mode="livesum")
ROUTES: Final = Gauge("gateway_route_table_routes", "Routes in the table in force", registry=REGISTRY,
                      multiprocess_mode="livemostrecent")
ROUTES_LOADED: Final = Gauge(
    "gateway_route_table_loaded_timestamp_seconds", "When the table in force was loaded (Unix time)",
    registry=REGISTRY, multiprocess_mode="livemostrecent")
