"""Invariants of the Kubernetes manifests (deploy/kubernetes) that schema validation
(scripts/check-kubernetes, a CI step of its own) cannot see: they agree with the image, with the
gateway's settings and with each other, and they hold no secret."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.serve import STOP_MARGIN_SECONDS, GatewayApplication
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
SECRET_VARIABLES = {"DATABASE_URL", "GATEWAY_MIGRATE_DATABASE_URL", "REDIS_URL", "GATEWAY_CACHE_REDIS_URL",
                    "GATEWAY_ENCRYPTION_KEYS", "GATEWAY_ASSERTION_KEY", "GATEWAY_JWT_SECRET", "GATEWAY_JWT_PUBLIC_KEY"}
Doc = dict[str, Any]


def docs(relative: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all((DEPLOY / relative).read_text()) if d]


def one(relative: str, kind: str) -> Doc:
    found = [d for d in docs(relative) if d["kind"] == kind]
    assert len(found) == 1, f"{relative}: {len(found)} {kind}s"
    return found[0]


DEPLOYMENT = one("base/deployment.yaml", "Deployment")
JOB = one("base/migrate-job.yaml", "Job")
CONFIG = one("base/configmap.yaml", "ConfigMap")["data"]
SERVICE = one("base/service.yaml", "Service")
MONITOR = one("prometheus-operator/servicemonitor.yaml", "ServiceMonitor")
POD = DEPLOYMENT["spec"]["template"]["spec"]
(GATEWAY,) = POD["containers"]
PODS = {"deployment": POD, "migrate job": JOB["spec"]["template"]["spec"]}


def literal_env(container: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def settings(tmp_path: Path) -> Settings:
    """What the gateway container's non-secret environment means to the gateway."""
    return Settings.from_env({**CONFIG, **literal_env(GATEWAY)}, dotenv=tmp_path / "absent.env")


def emptydir_mounts(pod: Doc, container: Doc) -> dict[str, str]:
    """mountPath -> volume name, for the container's emptyDir volumes."""
    empty = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", []) if m["name"] in empty}


def on_emptydir(path: str, mounts: dict[str, str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


def test_the_pods_run_as_the_images_non_root_user() -> None:
    user = re.search(r"^USER\s+(\d+):(\d+)\s*$", (ROOT / "Dockerfile").read_text(), re.M)
    assert user, "the Dockerfile's runtime stage names its user by number"
    uid, gid = map(int, user.groups())
    assert uid != 0 and gid != 0
    for name, pod in PODS.items():
        context = pod["securityContext"]
        assert (context["runAsNonRoot"], context["runAsUser"], context["runAsGroup"]) == (True, uid, gid), name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            own = container["securityContext"]
            assert own["readOnlyRootFilesystem"] is True, name
            assert own["allowPrivilegeEscalation"] is False, name
            assert own["capabilities"]["drop"] == ["ALL"], name
            assert "runAsUser" not in own or own["runAsUser"] == uid, name


def test_every_place_the_gateway_writes_is_an_emptydir(tmp_path: Path) -> None:
    mounts = emptydir_mounts(POD, GATEWAY)
    env = literal_env(GATEWAY)
    # Temporary files (Python's tempfile, so gunicorn's heartbeats and the metrics directory).
    assert on_emptydir(env["TMPDIR"], mounts)
    # gunicorn's worker_tmp_dir is unset, so its heartbeat files go to TMPDIR.
    application = GatewayApplication(settings(tmp_path), host="127.0.0.1", port=8080, workers=1)
    assert application.cfg.worker_tmp_dir in (None, ""), "worker_tmp_dir set: mount an emptyDir there"
    # The metrics directory: `gateway serve` makes a fresh one under TMPDIR when
    # PROMETHEUS_MULTIPROC_DIR is unset; one given from outside must be an emptyDir as well.
    names = {e["name"] for e in GATEWAY.get("env", [])} | set(CONFIG)
    assert "PROMETHEUS_MULTIPROC_DIR" not in names or on_emptydir(env["PROMETHEUS_MULTIPROC_DIR"], mounts)
    # The snapshot, and its temporary file beside it (gateway/snapshot.py renames it over).
    snapshot = settings(tmp_path).snapshot_path
    assert snapshot and on_emptydir(posixpath.dirname(snapshot), mounts)
    assert posixpath.dirname(snapshot) != env["TMPDIR"], "the snapshot goes on its own disk-backed emptyDir"
    # The migration Job writes only temporary files.
    job_pod = PODS["migrate job"]
    (migrate,) = job_pod["containers"]
    assert on_emptydir(literal_env(migrate)["TMPDIR"], emptydir_mounts(job_pod, migrate))


def test_the_grace_period_covers_the_pause_and_the_drain(tmp_path: Path) -> None:
    pre_stop = GATEWAY["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    pause = float(pre_stop[1])
    drain = settings(tmp_path).drain_seconds
    assert drain == float(CONFIG["GATEWAY_DRAIN_SECONDS"]) == 30
    assert POD["terminationGracePeriodSeconds"] > pause + drain + STOP_MARGIN_SECONDS


def test_probes_ports_and_the_servicemonitor_agree(tmp_path: Path) -> None:
    ports = {p["name"]: p["containerPort"] for p in GATEWAY["ports"]}
    s = settings(tmp_path)
    assert ports == {"http": s.port, "metrics": s.metrics_port} == {"http": 8080, "metrics": 9180}
    assert (s.host, s.metrics_host) == ("0.0.0.0", "0.0.0.0")
    probes = {kind: GATEWAY[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"] == {"path": "/healthz", "port": "http"}
    assert probes["startupProbe"] == {"path": "/healthz", "port": "http"}
    assert probes["readinessProbe"] == {"path": "/readyz", "port": "http"}
    service_ports = {p["name"]: p["targetPort"] for p in SERVICE["spec"]["ports"]}
    assert service_ports == {"http": "http", "metrics": "metrics"}
    pod_labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    selects = SERVICE["spec"]["selector"]
    assert selects == DEPLOYMENT["spec"]["selector"]["matchLabels"]
    assert selects.items() <= pod_labels.items()
    assert MONITOR["spec"]["selector"]["matchLabels"].items() <= SERVICE["metadata"]["labels"].items()
    assert [e["port"] for e in MONITOR["spec"]["endpoints"]] == ["metrics"]
    assert MONITOR["spec"]["endpoints"][0]["path"] == "/metrics"
    namespaces = {yaml.safe_load((DEPLOY / k).read_text())["namespace"]
                  for k in ("kustomization.yaml", "prometheus-operator/kustomization.yaml")}
    assert namespaces == set(MONITOR["spec"]["namespaceSelector"]["matchNames"])


def test_commands_workers_and_the_rest_of_the_settings(tmp_path: Path) -> None:
    assert GATEWAY["command"] == ["gateway", "serve"]  # the serving login may not migrate
    assert JOB["spec"]["template"]["spec"]["containers"][0]["command"] == ["gateway", "migrate"]
    workers = next(e for e in GATEWAY["env"] if e["name"] == "GATEWAY_WORKERS")["valueFrom"]["resourceFieldRef"]
    assert workers == {"containerName": GATEWAY["name"], "resource": "limits.cpu", "divisor": "1"}
    assert re.fullmatch(r"[1-9][0-9]*", str(GATEWAY["resources"]["limits"]["cpu"])), "a whole number of CPUs"
    assert settings(tmp_path).trusted_proxies, "GATEWAY_TRUSTED_PROXIES parses to at least one network"
    assert "replicas" not in DEPLOYMENT["spec"], "the HorizontalPodAutoscaler owns the replica count"
    hpa = one("base/horizontalpodautoscaler.yaml", "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": DEPLOYMENT["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = one("base/poddisruptionbudget.yaml", "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == DEPLOYMENT["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("workload", ["deployment", "migrate job"])
def test_no_secret_value_is_written_in_the_manifests(workload: str) -> None:
    (container,) = PODS[workload]["containers"]
    example = {d["metadata"]["name"]: d["stringData"] for d in docs("secret.example.yaml")}
    for entry in container.get("env", []):
        if entry["name"] in SECRET_VARIABLES:
            assert "value" not in entry, f"{workload}: {entry['name']} is written out"
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["key"] in example[ref["name"]], f"{ref} is not in secret.example.yaml"
    for source in container.get("envFrom", []):
        assert "secretRef" not in source, "secrets one by one: nothing else in the Secret reaches the pod"
    names = {e["name"] for e in container.get("env", [])}
    if workload == "deployment":  # the tables' owner stays with the migration Job
        assert "GATEWAY_MIGRATE_DATABASE_URL" not in names
        assert {"DATABASE_URL", "REDIS_URL", "GATEWAY_ENCRYPTION_KEYS", "GATEWAY_ASSERTION_KEY"} <= names
    else:
        assert names & SECRET_VARIABLES == {"GATEWAY_MIGRATE_DATABASE_URL"}
    assert not set(CONFIG) & SECRET_VARIABLES
    assert not any(re.search(r"://[^/\s]*:[^/\s]*@|PRIVATE KEY", v) for v in CONFIG.values())


def test_no_secret_is_applied_and_the_example_holds_placeholders_only() -> None:
    listed = []
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        for entry in yaml.safe_load(kustomization.read_text()).get("resources", []):
            path = (kustomization.parent / entry).resolve()
            if path.is_file():
                listed.append(path)
                assert all(d["kind"] != "Secret" for d in docs(str(path.relative_to(DEPLOY))))
    assert listed and (DEPLOY / "secret.example.yaml").resolve() not in listed
    for secret in docs("secret.example.yaml"):
        assert "data" not in secret
        for key, value in secret["stringData"].items():
            assert "CHANGE-ME" in value, f"{key}: not a placeholder"
            assert "BEGIN" not in value and not re.search(r"[A-Za-z0-9_-]{32,}", value), key
