"""The run: start the upstream, the proxies and the gateways, seed them, check they answer what
they should, then the measured phases (main rounds, profiles, 2 workers, 10,000 routes) and the
cleanup of everything started."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auth.jwt import issue_token
from db.encryption import generate_key_ring_entry
from db.migrate import migrate
from gateway.dev import services as devservices
from gateway.proxy.ratelimit import MAX_BLOCK

from .measure import (GATEWAY_COUNTERS, RUN_ENDS, Run, alternating_rounds, gc_probe, run_wrk, scan_gateway_log,
                      scrape_metrics, sum_metric, write_wrk_script, wrk_available)
from .processes import Processes, http_get, log, process_tree, readyz, tail
from .profile import Profile, profile_gateway_raw, profile_targets
from .seeding import (BENCH_RATE_LIMIT, LIMITED_AND_CACHED_ROUTES, LIMITED_ROUTE, PLUGIN_SLUG, TARGET_ROUTES,
                      create_database, database_url_answers, drop_database, insert_extra_routes,
                      register_through_api, seed_host_rows, with_database)
from .targets import UPSTREAM_BODY, UPSTREAM_PATH, BenchRedis, Servers, Target, upstream_answers

# The Redis-backed gateway's targets: one process, three routes of the same plugin.
REDIS_TARGETS = {
    "gateway-redis": "gateway + Redis, route without limit",
    "gateway-limited": "gateway + Redis, rate-limited route (limit never reached)",
    "gateway-cached": "gateway + Redis, cached route (HIT)",
}
# The same deployment's second node with two workers, and the bare proxy in two processes.
TWO_WORKER_TARGETS = {
    "bare-aiohttp-2p": "bare aiohttp proxy (2 processes)",
    "gateway-2w": "gateway + Redis, 2 workers, route without limit",
    "gateway-2w-limited": "gateway + Redis, 2 workers, rate-limited route (limit never reached)",
    "gateway-2w-cached": "gateway + Redis, 2 workers, cached route (HIT)",
}


@dataclass
class RedisDeployment:
    """What a second node of the Redis-backed gateway needs to serve the same plugin and caller."""
    dsn: str
    encryption_keys: str  # the installation's credential is encrypted with these
    paths: dict[str, str]  # target key → the path wrk calls
    token: str  # the caller's JWT
    script: Path  # the wrk script sending it


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    procs: Processes = field(default_factory=Processes)
    runs: list[Run] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    profile: Profile | None = None
    bare_profile: Profile | None = None
    profile_10k: Profile | None = None
    redis_profiles: dict[str, Profile] = field(default_factory=dict)  # gateway-redis, -limited, -cached
    local_pg: devservices.LocalPostgres | None = None
    admin_dsn: str = ""
    bench_dbs: list[str] = field(default_factory=list)  # databases made by this run, dropped at the end
    redis: BenchRedis | None = None
    redis_deployment: RedisDeployment | None = None

    def __post_init__(self) -> None:
        self.servers = Servers(self.procs, self.tmp)

    def database(self, suffix: str = "") -> str:
        """A fresh, migrated database (on DATABASE_URL's server or a throwaway cluster)."""
        name = f"gateway_bench_{os.getpid()}{suffix}"
        if not self.admin_dsn:
            admin = database_url_answers()
            if admin:
                log(f"using DATABASE_URL's server, fresh database {name}")
            else:
                log("DATABASE_URL is unset or does not answer: starting a throwaway PostgreSQL")
                bin_dir = devservices.postgres_bin_dir()
                if bin_dir is None:
                    raise RuntimeError("no PostgreSQL binaries (apt-get install postgresql) and no DATABASE_URL")
                # Like start_postgres(), but kept for cleanup before it starts, so a failed start is stopped too.
                self.local_pg = devservices.LocalPostgres(self.tmp / "postgres", devservices.free_port(), bin_dir,
                                                          devservices._unprivileged_user())
                self.local_pg.start()
                admin = self.local_pg.dsn
            self.admin_dsn = admin
        asyncio.run(create_database(self.admin_dsn, name))
        self.bench_dbs.append(name)
        dsn = with_database(self.admin_dsn, name)
        asyncio.run(migrate(dsn))
        return dsn

    def warm_up(self, targets: list[Target]) -> None:
        log("warm-up (not recorded)")
        for target in targets:
            run_wrk(target, 64, min(3, self.args.duration), "warmup", quiet=True)

    def main(self) -> None:
        args = self.args
        wrk_available()  # before anything starts
        os.chmod(self.tmp, 0o755)  # PostgreSQL, running as its own user, must reach its data dir

        upstream_port, upstream_proc = self.servers.upstream()
        upstream = f"http://127.0.0.1:{upstream_port}"
        log(f"upstream nginx on {upstream_port} (pid {upstream_proc.pid})")
        proxy_port, proxy_proc = self.servers.nginx_proxy(upstream_port)
        log(f"nginx proxy on {proxy_port} (pid {proxy_proc.pid})")
        bare_port, (bare_proc,) = self.servers.bare_proxy(upstream_port)
        log(f"bare aiohttp proxy on {bare_port} (pid {bare_proc.pid})")

        dsn = self.database()
        secret = os.urandom(24).hex()
        seed = asyncio.run(seed_host_rows(dsn, secret))
        gw_port, gw_proc, _ = self.servers.gateway(dsn, secret, generate_key_ring_entry("bench1"))
        gateway = f"http://127.0.0.1:{gw_port}"
        log(f"gateway on {gw_port} (pid {gw_proc.pid})")
        asyncio.run(register_through_api(gateway, secret, seed, upstream))
        member_token = issue_token(secret, seed.member, lifetime_seconds=24 * 3600)
        plugin_path = f"/spaces/{seed.space}/plugins/{PLUGIN_SLUG}/reports/42"
        request = urllib.request.Request(gateway + plugin_path, headers={"Authorization": f"Bearer {member_token}"})
        self.wait_proxied(gateway + plugin_path, member_token, "gateway")
        log(f"member call through the gateway answers 200 ({plugin_path})")

        upstream_tree = process_tree(upstream_proc)
        scripts = self.tmp / "wrk"
        scripts.mkdir()
        plain = write_wrk_script(scripts / "plain.lua", {})
        authed = write_wrk_script(scripts / "gateway.lua", {"Authorization": f"Bearer {member_token}"})
        targets = [
            Target("upstream", "upstream (nginx, direct)", upstream + UPSTREAM_PATH, plain, upstream_tree),
            Target("nginx-proxy", "nginx reverse proxy", f"http://127.0.0.1:{proxy_port}{UPSTREAM_PATH}", plain,
                   process_tree(proxy_proc), upstream_tree),
            Target("bare-aiohttp", "bare aiohttp proxy (1 process)", f"http://127.0.0.1:{bare_port}{UPSTREAM_PATH}",
                   plain, process_tree(bare_proc), upstream_tree),
            Target("gateway", "gateway (1 process, full pipeline)", gateway + plugin_path, authed,
                   process_tree(gw_proc), upstream_tree),
        ]
        if not args.skip_redis:
            targets += self.redis_targets(upstream, upstream_port, secret, scripts, upstream_tree)
        by_key = {t.key: t for t in targets}
        self.facts["targets"] = {t.key: t.label for t in targets}
        self.facts["gateway_pid"] = gw_proc.pid

        self.warm_up(targets)
        self.runs += alternating_rounds(targets, args.connections, args.rounds, args.duration, "main")

        if args.profile:
            log(f"profiling with py-spy at 64 connections, {max(2, int(args.duration))}s each: "
                "gateway (flame graph), gateway (raw), bare aiohttp proxy (raw)")
            # The flame graph goes next to the results; a run that writes none (--quick) keeps it in
            # the temporary directory (see --keep), so it never replaces the one RESULTS.md refers to.
            svg = Path(args.output).with_name("profile.svg") if args.output else self.tmp / "profile.svg"
            self.profile, self.bare_profile = profile_targets(
                by_key["gateway"], gw_proc.pid, by_key["bare-aiohttp"], bare_proc.pid, args.duration, svg, self.tmp)

        if args.profile and self.redis is not None:
            log("profiling the Redis-backed gateway (raw): route without limit, limited route, cached route")
            for key in REDIS_TARGETS:
                self.redis_profiles[key] = profile_gateway_raw(by_key[key], self.facts["gateway_redis_pid"],
                                                               args.duration, self.tmp, f"{key}.raw")
        if self.redis is not None:
            self.facts["redis_after_rounds"] = self.redis_facts()

        if self.redis_deployment is not None and not args.skip_2_workers:
            # After redis_facts: this node counts on the limited route's Redis key too.
            two_workers = self.two_worker_targets(upstream_port, secret, self.redis_deployment, upstream_tree)
            self.facts["targets"] |= {t.key: t.label for t in two_workers}
            self.warm_up(two_workers)
            self.runs += alternating_rounds(two_workers, args.connections, args.rounds, args.duration, "2w")

        if not args.skip_10k:
            log(f"inserting {TARGET_ROUTES - 1:,} more routes straight into PostgreSQL")
            started = time.monotonic()
            total = asyncio.run(insert_extra_routes(dsn, seed, upstream))
            inserted = time.monotonic() - started
            deadline = time.monotonic() + 120
            while True:
                state = readyz(gateway)["route_table"]
                if state["routes"] >= TARGET_ROUTES:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway did not reload: /readyz says {state}\n"
                                       f"{tail(self.tmp / 'gateway.log')}")
                time.sleep(0.05)
            reloaded = time.monotonic() - started - inserted
            log(f"{total:,} routes in the database, {state['routes']:,} in the gateway's table "
                f"(insert {inserted:.2f}s, reload seen after {reloaded:.2f}s more)")
            self.facts["routes_10k"] = {"db": total, "table": state["routes"], "insert_s": inserted,
                                        "reload_s": reloaded}
            with urllib.request.urlopen(request, timeout=5) as response:
                assert upstream_answers(response.status, response.read()), "gateway broke after the reload"
            time.sleep(1.0)
            run_wrk(by_key["gateway"], 64, min(3, args.duration), "warmup", quiet=True)
            self.runs += alternating_rounds([by_key["bare-aiohttp"], by_key["gateway"]], [64], args.rounds,
                                            args.duration, "10k")
            self.facts["gc_probe"] = gc_probe(dsn)
            if args.profile:
                log("profiling the gateway with 10,000 routes (raw)")
                self.profile_10k = profile_gateway_raw(by_key["gateway"], gw_proc.pid, args.duration, self.tmp,
                                                       "gw10k.raw")
        self.facts["gateway_log"] = scan_gateway_log(self.tmp / "gateway.log", RUN_ENDS.get("gateway", []))
        for fact, name, keys in (("gateway_redis_log", "gateway-redis", REDIS_TARGETS),
                                 ("gateway_2w_log", "gateway-2w", TWO_WORKER_TARGETS)):
            if (self.tmp / f"{name}.log").exists():
                self.facts[fact] = scan_gateway_log(
                    self.tmp / f"{name}.log", sorted(end for key in keys for end in RUN_ENDS.get(key, [])))

    def wait_proxied(self, url: str, token: str, name: str, within: float = 10.0) -> dict[str, str]:
        """Polls until the gateway proxies `url` for the caller (its route table may still be
        reloading after the registration); returns the answer's headers."""
        deadline = time.monotonic() + within
        while True:
            status, headers, body = http_get(url, {"Authorization": f"Bearer {token}"})
            if status == 200 and body == UPSTREAM_BODY.encode():
                return headers
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} does not proxy {url}: {status} {body[:500]!r}\n"
                                   f"{tail(self.tmp / f'{name}.log')}")
            time.sleep(0.05)

    def redis_targets(self, upstream: str, upstream_port: int, secret: str, scripts: Path,
                      upstream_tree: Callable[[], list[int]]) -> list[Target]:
        """The second gateway (REDIS_URL set, its own database so the first one's table stays at one
        route) with a route without limit, a rate-limited route and a cached route of the same plugin,
        and nginx with proxy_cache. Checks that the limiter counts in Redis and that the cache HITs."""
        args = self.args
        self.redis = BenchRedis(args.redis, args.redis_db)
        self.redis.claim()
        log(f"Redis {self.redis.display}: empty, used by the Redis-backed gateway")
        dsn = self.database("_redis")
        seed = asyncio.run(seed_host_rows(dsn, secret))
        encryption_keys = generate_key_ring_entry("bench1")
        port, proc, metrics_port = self.servers.gateway(dsn, secret, encryption_keys, "gateway-redis", extra_env={
            "REDIS_URL": self.redis.url, "GATEWAY_REDIS_TIMEOUT": f"{args.redis_timeout:g}"})
        self.facts["gateway_redis_pid"] = proc.pid
        base = f"http://127.0.0.1:{port}"
        log(f"Redis-backed gateway on {port} (pid {proc.pid})")
        asyncio.run(register_through_api(base, secret, seed, upstream, extra_routes=LIMITED_AND_CACHED_ROUTES))
        token = issue_token(secret, seed.member, lifetime_seconds=24 * 3600)
        prefix = f"/spaces/{seed.space}/plugins/{PLUGIN_SLUG}"
        paths = {"gateway-redis": f"{prefix}/reports/42", "gateway-limited": f"{prefix}/limited/42",
                 "gateway-cached": f"{prefix}/cached/42"}
        for path in paths.values():
            self.wait_proxied(base + path, token, "gateway-redis")
        health = readyz(base)
        if health.get("redis") not in (None, "up"):
            raise RuntimeError(f"the Redis-backed gateway reports Redis {health.get('redis')!r}: {health}")

        # The limiter counts in Redis: two calls, Remaining drops by one, the window's key holds at
        # least the count (a limit this far from its end is counted in blocks reserved ahead,
        # gateway/proxy/ratelimit.py, so Redis may be up to one block ahead).
        auth = {"Authorization": f"Bearer {token}"}
        first = http_get(base + paths["gateway-limited"], auth)[1]
        second = http_get(base + paths["gateway-limited"], auth)[1]
        keys = self.redis.keys(BenchRedis.PREFIX + "rl:*")
        limiter: dict[str, Any] = {"limit": second.get("ratelimit-limit"), "policy": second.get("ratelimit-policy"),
                   "remaining": [first.get("ratelimit-remaining"), second.get("ratelimit-remaining")],
                   "redis_keys": len(keys), "redis_count": self.redis.counter_total()}
        if (limiter["limit"] != str(BENCH_RATE_LIMIT) or len(keys) != 1
                or int(first.get("ratelimit-remaining", -1)) - int(second.get("ratelimit-remaining", -1)) != 1
                or not 0 <= limiter["redis_count"] - (BENCH_RATE_LIMIT - int(second["ratelimit-remaining"])) <= MAX_BLOCK):
            raise RuntimeError(f"the rate limiter does not count in Redis as expected: {limiter}")
        log(f"limited route: RateLimit-Limit {limiter['limit']}, Remaining {limiter['remaining'][0]} → "
            f"{limiter['remaining'][1]}, Redis key count {limiter['redis_count']}")
        # The cache: the polling above stored the answer (MISS); the same caller and request now HIT.
        deadline = time.monotonic() + 2  # the MISS stores its answer right after streaming it
        while (sample := http_get(base + paths["gateway-cached"], auth)[1]).get("x-cache-status") != "HIT":
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        cache = {"status": sample.get("x-cache-status"), "age": sample.get("age"),
                 "redis_entries": len(self.redis.keys(BenchRedis.PREFIX + "c:*"))}
        if cache["status"] != "HIT":
            raise RuntimeError(f"the gateway's cached route does not HIT: {sample}")
        log(f"cached route: X-Cache-Status {cache['status']} (Age {cache['age']}), "
            f"{cache['redis_entries']} entry in Redis")
        self.facts["redis_checks"] = {"limiter": limiter, "cache": cache, "readyz_redis": health.get("redis"),
                                      "url": self.redis.display, "routes": seed.routes,
                                      "server": {k: self.redis.info().get(k) for k in ("redis_version",
                                                                                        "process_id")}}

        cache_port, cache_proc = self.servers.nginx_cache(upstream_port)
        log(f"nginx proxy_cache on {cache_port} (pid {cache_proc.pid}), answering HIT")
        script = write_wrk_script(scripts / "gateway-redis.lua", auth)
        self.redis_deployment = RedisDeployment(dsn, encryption_keys, paths, token, script)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.facts["redis_metrics_url"] = metrics_url

        def counters() -> dict[str, float]:
            return scrape_metrics(metrics_url, GATEWAY_COUNTERS)

        redis_cpu = self.redis.cpu_seconds
        gateway_tree = process_tree(proc)
        return [
            *(Target(key, label, base + paths[key], script, gateway_tree, upstream_tree, redis_cpu, counters)
              for key, label in REDIS_TARGETS.items()),
            Target("nginx-cache", "nginx reverse proxy with proxy_cache (HIT)",
                   f"http://127.0.0.1:{cache_port}{UPSTREAM_PATH}", scripts / "plain.lua",
                   process_tree(cache_proc), upstream_tree),
        ]

    def two_worker_targets(self, upstream_port: int, secret: str, deployment: RedisDeployment,
                           upstream_tree: Callable[[], list[int]]) -> list[Target]:
        """A second node of the Redis-backed gateway's deployment (its database, its Redis, its
        caller) with GATEWAY_WORKERS=2, and the bare proxy in two processes sharing one port."""
        assert self.redis is not None
        bare_port, bare_procs = self.servers.bare_proxy(upstream_port, processes=2)
        log(f"bare aiohttp proxy, 2 processes on {bare_port} (pids {', '.join(str(p.pid) for p in bare_procs)})")
        port, proc, metrics_port = self.servers.gateway(
            deployment.dsn, secret, deployment.encryption_keys, "gateway-2w", workers=2,
            extra_env={"REDIS_URL": self.redis.url, "GATEWAY_REDIS_TIMEOUT": f"{self.args.redis_timeout:g}"})
        base = f"http://127.0.0.1:{port}"
        for path in deployment.paths.values():
            self.wait_proxied(base + path, deployment.token, "gateway-2w")
        log(f"Redis-backed gateway, 2 workers, on {port} (arbiter pid {proc.pid})")
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

        def counters() -> dict[str, float]:
            return scrape_metrics(metrics_url, GATEWAY_COUNTERS)

        gateway_tree = process_tree(proc)
        own_paths = {"gateway-2w": deployment.paths["gateway-redis"],
                     "gateway-2w-limited": deployment.paths["gateway-limited"],
                     "gateway-2w-cached": deployment.paths["gateway-cached"]}
        return [
            Target("bare-aiohttp-2p", TWO_WORKER_TARGETS["bare-aiohttp-2p"],
                   f"http://127.0.0.1:{bare_port}{UPSTREAM_PATH}", self.tmp / "wrk" / "plain.lua",
                   process_tree(*bare_procs), upstream_tree),
            *(Target(key, TWO_WORKER_TARGETS[key], base + path, deployment.script, gateway_tree, upstream_tree,
                     self.redis.cpu_seconds, counters) for key, path in own_paths.items()),
        ]

    def redis_facts(self) -> dict[str, Any]:
        """After the rounds: what Redis counted for the limited route, and what the gateway answered."""
        assert self.redis is not None
        samples = scrape_metrics(self.facts["redis_metrics_url"], GATEWAY_COUNTERS)
        route_id = self.facts["redis_checks"]["routes"].get(LIMITED_ROUTE, "?")
        return {"redis_count": self.redis.counter_total(),
                "answered": sum_metric(samples, "gateway_requests_total", f'route="{route_id}"'),
                "fallbacks": sum_metric(samples, "gateway_rate_limit_fallback_total"),
                "redis_errors": sum_metric(samples, "gateway_dependency_errors_total", 'dependency="redis"'),
                "cache": {status: sum_metric(samples, "gateway_cache_total", f'status="{status}"')
                          for status in ("hit", "miss", "bypass")}}

    def cleanup(self) -> None:
        if self.args.keep:
            keep = Path(self.args.keep)
            keep.mkdir(parents=True, exist_ok=True)
            for artifact in [*self.tmp.glob("*.raw"), self.tmp / "gateway.log", self.tmp / "gateway-redis.log",
                             self.tmp / "gateway-2w.log", self.tmp / "profile.svg"]:
                if artifact.exists():
                    shutil.copy(artifact, keep / artifact.name)
        self.procs.stop_all()
        if self.redis is not None:  # after the gateways stopped: nothing writes there any more
            try:
                deleted = self.redis.cleanup()
                if self.redis.used:
                    log(f"deleted this run's {deleted} keys (pgw:*) from Redis {self.redis.display}")
            except Exception as exc:  # noqa: BLE001
                log(f"could not delete this run's keys from Redis {self.redis.display}: {exc}")
            finally:
                self.redis.close()
        if self.local_pg is None:
            for name in self.bench_dbs:
                try:
                    asyncio.run(drop_database(self.admin_dsn, name))
                except Exception as exc:  # noqa: BLE001
                    log(f"could not drop database {name}: {exc}")
        if self.local_pg is not None:
            self.local_pg.stop()
            log("throwaway PostgreSQL stopped")
