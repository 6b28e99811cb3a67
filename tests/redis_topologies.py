"""Redis Sentinel and Redis Cluster on loopback, for tests: every server started here, on free
ports, with its files in a directory of the caller's, and stopped (or killed) by its own PID.

- `start_sentinel(directory)`: a primary, a replica (`--replicaof`) and three
  `redis-server --sentinel`, each with a config file of its own, over the master name `gw`;
  returned once every sentinel sees the replica and the two other sentinels, so that a killed
  primary is failed over (down-after 1 s).
- `start_cluster(directory)`: three primaries (`--cluster-enabled yes`) joined with
  `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`, returned once every node
  says `cluster_state:ok`.

Either may be secured (`Security`): a password on every data node (`requirepass`, `masterauth`),
one of their own on the sentinels, and TLS everywhere (`make_tls`: a CA and a certificate for
127.0.0.1, made with `cryptography`; the servers then listen on `--tls-port` only).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from gateway.dev.services import free_port

MASTER = "gw"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
START_SECONDS = 30.0


class TopologyError(RuntimeError):
    pass


def _redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise TopologyError("redis-server not found (Debian: apt-get install redis-server)")
    return binary


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together while chosen, so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path

    def server_args(self) -> list[str]:
        return ["--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
                "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no"]


def make_tls(directory: Path) -> Tls:
    """A CA, and a certificate it signed for 127.0.0.1 (every server's), as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test redis CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    tls = Tls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    tls.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    tls.key.chmod(0o600)
    return tls


@dataclass(frozen=True)
class Security:
    password: str | None = None  # every data node's (the default user's); replicas use it as masterauth
    sentinel_password: str | None = None  # the sentinels' own
    tls: Tls | None = None


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    password: str | None = None
    tls: Tls | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self, timeout: float = 2.0, db: int = 0) -> redis.Redis:
        tls: dict[str, object] = {"ssl": True, "ssl_ca_certs": str(self.tls.ca)} if self.tls else {}
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password,
                           socket_timeout=timeout, socket_connect_timeout=timeout, **tls)  # type: ignore[arg-type]

    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing saved, nothing said to the replicas or sentinels."""
        if self.running():
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.running():
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _answers(server: Server) -> bool:
    try:
        with server.client(0.5) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def _until(condition: Callable[[], bool], what: str, servers: list[Server], within: float = START_SECONDS) -> None:
    deadline = time.monotonic() + within
    while not condition():
        for server in servers:
            if not server.running():
                raise TopologyError(f"redis-server on port {server.port} exited: {server.log_tail()}")
        if time.monotonic() > deadline:
            raise TopologyError(f"timed out waiting for {what}: "
                                + "; ".join(f"{s.port}: {s.log_tail(3)}" for s in servers))
        time.sleep(0.05)


def _start(directory: Path, port: int, *args: str, config: Path | None = None, password: str | None = None,
           tls: Tls | None = None) -> Server:
    log = directory / f"redis-{port}.log"
    listen = ["--port", "0", "--tls-port", str(port), *tls.server_args()] if tls else ["--port", str(port)]
    command = [_redis_server(), *([str(config)] if config else []), *listen, "--bind", "127.0.0.1",
               "--dir", str(directory), "--logfile", str(log), "--save", "", "--appendonly", "no",
               *(["--requirepass", password] if password else []), *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server(process, port, log, password, tls)
    try:
        _until(lambda: _answers(server), f"redis-server on port {port}", [server])
    except BaseException:
        server.stop()
        raise
    return server


@dataclass
class Servers:
    """Stops every server it holds, each by its own process."""

    servers: list[Server] = field(default_factory=list)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _url(scheme: str, hosts: list[Server], security: Security, path: str, user: str, password: str | None,
         sentinel_password: str | None) -> str:
    credentials = f"{user}:{password}@" if password else ""
    query = [f"sentinel_password={sentinel_password}"] if sentinel_password else []
    if security.tls:
        query.append(f"ssl_ca_certs={security.tls.ca}")
        scheme = scheme.replace("redis+", "rediss+")
    hostlist = ",".join(f"127.0.0.1:{server.port}" for server in hosts)
    return f"{scheme}://{credentials}{hostlist}{path}" + ("?" + "&".join(query) if query else "")


@dataclass
class SentinelTopology(Servers):
    primary: Server | None = None
    replica: Server | None = None
    sentinels: list[Server] = field(default_factory=list)
    security: Security = Security()

    def url(self, db: int = 0, *, user: str = "", password: str | None = None,
            sentinel_password: str | None = None) -> str:
        """The REDIS_URL of this topology: its own passwords unless others are given."""
        return _url("redis+sentinel", self.sentinels, self.security, f"/{MASTER}/{db}", user,
                    password or self.security.password, sentinel_password or self.security.sentinel_password)

    def master_port(self) -> int | None:
        """The primary's port as the first answering sentinel names it."""
        for sentinel in self.sentinels:
            try:
                with sentinel.client(0.5) as client:
                    host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
                    return int(port)
            except (redis.RedisError, TypeError, ValueError):
                continue
        return None


def _sentinels_ready(topology: SentinelTopology) -> bool:
    for sentinel in topology.sentinels:
        try:
            with sentinel.client(0.5) as client:
                state = client.sentinel_master(MASTER)
        except redis.RedisError:
            return False
        if int(state.get("num-other-sentinels", 0)) < 2 or int(state.get("num-slaves", 0)) < 1:
            return False
    assert topology.replica is not None
    with topology.replica.client() as client:
        return client.info("replication").get("master_link_status") == "up"


def start_sentinel(directory: Path, security: Security = Security()) -> SentinelTopology:
    directory.mkdir(parents=True, exist_ok=True)
    topology = SentinelTopology(security=security)
    tls, password = security.tls, security.password
    data = ["--tls-replication", "yes"] if tls else []
    try:
        primary_port, replica_port, *sentinel_ports = _free_ports(5)
        topology.primary = _start(directory, primary_port, *data, password=password, tls=tls)
        topology.servers.append(topology.primary)
        topology.replica = _start(directory, replica_port, "--replicaof", "127.0.0.1", str(primary_port), *data,
                                  *(["--masterauth", password] if password else []), password=password, tls=tls)
        topology.servers.append(topology.replica)
        for port in sentinel_ports:
            config = directory / f"sentinel-{port}.conf"  # sentinel rewrites its file: one each
            config.write_text(
                f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
                + (f"sentinel auth-pass {MASTER} {password}\n" if password else "")
                + (f"sentinel sentinel-pass {security.sentinel_password}\n" if security.sentinel_password else "")
                + ("tls-replication yes\n" if tls else ""))
            sentinel = _start(directory, port, "--sentinel", config=config, password=security.sentinel_password,
                              tls=tls)
            topology.servers.append(sentinel)
            topology.sentinels.append(sentinel)
        _until(lambda: _sentinels_ready(topology), "the sentinels to see the replica and each other",
               topology.servers)
    except BaseException:
        topology.stop()
        raise
    return topology


@dataclass
class ClusterTopology(Servers):
    security: Security = Security()

    def url(self, *, user: str = "", password: str | None = None) -> str:
        """The REDIS_URL of this cluster (two of its nodes: the third is found)."""
        return _url("redis+cluster", self.servers[:2], self.security, "", user, password or self.security.password,
                    None)

    def node_ids(self) -> dict[int, str]:
        ids = {}
        for server in self.servers:
            with server.client() as client:
                ids[server.port] = client.execute_command("CLUSTER", "MYID").decode()
        return ids

    def owner(self, slot: int) -> Server:
        """The node that serves `slot` now, as the cluster itself says."""
        with self.servers[0].client() as client:
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = int(primary[1])
                    return next(s for s in self.servers if s.port == port)
        raise TopologyError(f"slot {slot} is not covered")


def _cluster_ok(topology: ClusterTopology) -> bool:
    for server in topology.servers:
        try:
            with server.client(0.5) as client:
                info = client.execute_command("CLUSTER", "INFO").decode()
        except redis.RedisError:
            return False
        if "cluster_state:ok" not in info or "cluster_known_nodes:3" not in info:
            return False
    return True


def start_cluster(directory: Path, security: Security = Security()) -> ClusterTopology:
    directory.mkdir(parents=True, exist_ok=True)
    topology = ClusterTopology(security=security)
    tls, password = security.tls, security.password
    secured = [*(["--tls-cluster", "yes", "--tls-replication", "yes"] if tls else []),
               *(["--masterauth", password] if password else [])]
    try:
        ports = _free_ports(6)  # a client port and a cluster bus port (`cluster-port`) each
        for port, bus in zip(ports[:3], ports[3:], strict=True):
            topology.servers.append(_start(
                directory, port, "--cluster-enabled", "yes", "--cluster-port", str(bus),
                "--cluster-config-file", str(directory / f"nodes-{port}.conf"), "--cluster-node-timeout", "2000",
                *secured, password=password, tls=tls))
        cli = shutil.which("redis-cli")
        if cli is None:
            raise TopologyError("redis-cli not found (Debian: apt-get install redis-tools)")
        cli_security = [*(["--tls", "--cacert", str(tls.ca)] if tls else []),
                        *(["-a", password, "--no-auth-warning"] if password else [])]
        created = subprocess.run(
            [cli, *cli_security, "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in topology.servers),
             "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=60)
        if created.returncode != 0:
            raise TopologyError(f"redis-cli --cluster create failed: {created.stdout[-500:]} {created.stderr[-500:]}")
        _until(lambda: _cluster_ok(topology), "cluster_state:ok on every node", topology.servers)
    except BaseException:
        topology.stop()
        raise
    return topology


class SlotMove:
    """Move one slot to another node step by step, as `redis-cli --cluster reshard` does, so that
    a test can act in between:

    - `begin()`: IMPORTING on the target, MIGRATING on the source. The source still serves the
      keys it has; a key it does not have (a new one) is answered with ASK (to the target);
    - `migrate_keys()`: MIGRATE every key of the slot to the target: now each of them is ASK;
    - `finish()`: SETSLOT ... NODE on every node: the source answers MOVED from then on."""

    def __init__(self, topology: ClusterTopology, slot: int, to: Server) -> None:
        self.topology, self.slot, self.target = topology, slot, to
        self.source = topology.owner(slot)
        if self.source is to:
            raise TopologyError(f"slot {slot} is on port {to.port} already")
        self.ids = topology.node_ids()

    def begin(self) -> None:
        with self.target.client() as target, self.source.client() as source:
            target.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.ids[self.source.port])
            source.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.ids[self.target.port])

    def migrate_keys(self) -> int:
        moved = 0
        with self.source.client() as source:
            while keys := source.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, 100):
                auth = ["AUTH", self.source.password] if self.source.password else []
                source.execute_command("MIGRATE", "127.0.0.1", self.target.port, "", 0, 5000, *auth, "KEYS", *keys)
                moved += len(keys)
        return moved

    def finish(self) -> None:
        # The target first, then the source, then the rest (as redis-cli does).
        others = [s for s in self.topology.servers if s not in (self.target, self.source)]
        for server in [self.target, self.source, *others]:
            with server.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", self.ids[self.target.port])


def redirections(server: Server) -> dict[str, int]:
    """How many MOVED and ASK answers `server` has given (INFO errorstats)."""
    with server.client() as client:
        stats = client.info("errorstats")
    return {kind: int(stats.get(f"errorstat_{kind}", {}).get("count", 0)) for kind in ("MOVED", "ASK")}
