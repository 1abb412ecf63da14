"""deploy/: the Kubernetes manifests and fly.toml parse, agree with each other, with the Dockerfile
and with the server's settings, and (when kubernetes-validate is installed) match the Kubernetes
API schemas strictly, unknown fields included."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from embedder.settings import Settings
from tests.ops.dockerfile import Dockerfile
from tests.support import REPO

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
GRPC_PORT = 50051
HTTP_PORT = 8000
METRICS_PORT = 9090
K8S_VERSIONS = ("1.27.0", "1.37.0")


def _load(name: str) -> dict[str, Any]:
    (document,) = list(yaml.safe_load_all((K8S / name).read_text()))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return _load("deployment.yaml")


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    (only,) = containers
    return only


@pytest.fixture(scope="module")
def fly() -> dict[str, Any]:
    return tomllib.loads((DEPLOY / "fly.toml").read_text())


def _settings_env(env: dict[str, str]) -> dict[str, str]:
    """EMBEDDER_* variables, each checked to name a real setting (a typo would be ignored)."""
    fields = {"EMBEDDER_" + name.upper() for name in Settings.model_fields}
    embedder = {k: v for k, v in env.items() if k.startswith("EMBEDDER_")}
    assert set(embedder) <= fields, f"not settings: {set(embedder) - fields}"
    return embedder


def test_every_manifest_parses() -> None:
    files = sorted(K8S.glob("*.yaml"))
    assert {f.name for f in files} >= {"deployment.yaml", "service-headless.yaml", "hpa.yaml"}
    kinds = [doc["kind"] for f in files for doc in yaml.safe_load_all(f.read_text())]
    assert sorted(kinds) == ["Deployment", "HorizontalPodAutoscaler", "Service"]


def test_deployment_replicas_resources_and_ports(
    deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    assert deployment["spec"]["replicas"] == 2
    resources = container["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == "2"
    assert resources["requests"]["memory"] == resources["limits"]["memory"] == "1536Mi"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": GRPC_PORT, "http": HTTP_PORT, "metrics": METRICS_PORT}


def test_probes_are_the_http_health_endpoints(container: dict[str, Any]) -> None:
    """Readiness (and start-up) on /health/ready, liveness on /health/live, on the port the
    server's HTTP front end listens on in the pod (the default 127.0.0.1 would be unreachable)."""
    paths = {
        probe: container[probe]["httpGet"]["path"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert paths == {
        "startupProbe": "/health/ready",
        "readinessProbe": "/health/ready",
        "livenessProbe": "/health/live",
    }
    for probe in paths:
        assert container[probe]["httpGet"]["port"] == "http", probe
    env = _settings_env({e["name"]: e["value"] for e in container.get("env", [])})
    host, _, port = env["EMBEDDER_HTTP_ADDRESS"].rpartition(":")
    assert int(port) == HTTP_PORT and host in ("0.0.0.0", "[::]")
    liveness = container["livenessProbe"]
    grace = float(env.get("EMBEDDER_SHUTDOWN_GRACE_S", Settings.model_fields["shutdown_grace_s"].default))
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > grace, "a drain is not a death"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "time for --preload"


def test_pod_security_matches_the_image(
    deployment: dict[str, Any], container: dict[str, Any], dockerfile: Dockerfile
) -> None:
    pod = deployment["spec"]["template"]["spec"]
    user = dockerfile.last("runtime", "USER")
    assert user is not None
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == user.args.split(":")[0]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False


def test_models_volume_is_where_the_image_reads_models(
    deployment: dict[str, Any], container: dict[str, Any], dockerfile: Dockerfile
) -> None:
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    models_dir = dockerfile.env("runtime")["EMBEDDER_MODELS_DIR"]
    assert mounts[models_dir]["readOnly"] is True
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "persistentVolumeClaim" in volumes[mounts[models_dir]["name"]]
    assert "/tmp" in mounts, "the only writable path under a read-only root"


def test_shutdown_and_scrape_settings(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    env = _settings_env({e["name"]: e["value"] for e in container.get("env", [])})
    grace = float(env.get("EMBEDDER_SHUTDOWN_GRACE_S", Settings.model_fields["shutdown_grace_s"].default))
    template = deployment["spec"]["template"]
    assert template["spec"]["terminationGracePeriodSeconds"] > grace, "the drain must finish before SIGKILL"
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_headless_service_selects_the_pods(deployment: dict[str, Any]) -> None:
    service = _load("service-headless.yaml")
    assert service["metadata"]["name"] == "embedder-headless"
    assert service["spec"]["clusterIP"] == "None"  # the YAML string "None", not null
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports["grpc"] == (GRPC_PORT, "grpc") and ports["http"] == (HTTP_PORT, "http")
    assert service["spec"].get("publishNotReadyAddresses", False) is False


def test_hpa_scales_the_deployment_on_cpu(deployment: dict[str, Any]) -> None:
    hpa = _load("hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"] == 2


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version: str) -> None:
    validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate").validate
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            validate(document, version, strict=True)  # raises on any unknown or mistyped field


def test_fly_serves_grpc_over_tls_with_h2(fly: dict[str, Any]) -> None:
    (service,) = [s for s in fly["services"] if s["internal_port"] == GRPC_PORT]
    (port,) = service["ports"]
    assert port["port"] == 443
    assert port["handlers"] == ["tls"], "an http handler would turn the HTTP/2 stream into HTTP/1.1"
    assert port["tls_options"]["alpn"] == ["h2"]
    assert service["tcp_checks"], "the proxy routes only to Machines that accept on the gRPC port"


def test_fly_serves_http_and_routes_on_readiness(fly: dict[str, Any]) -> None:
    (service,) = [s for s in fly["services"] if s["internal_port"] == HTTP_PORT]
    (port,) = service["ports"]
    assert port["handlers"] == ["tls", "http"] and port["port"] != 443, "443 is the gRPC service's"
    (check,) = service["http_checks"]
    assert check["path"] == "/health/ready"
    host, _, listen = _settings_env(fly["env"])["EMBEDDER_HTTP_ADDRESS"].rpartition(":")
    assert int(listen) == HTTP_PORT and host == "[::]"


def test_fly_checks_metrics_vm_and_volume(fly: dict[str, Any], dockerfile: Dockerfile) -> None:
    assert fly["metrics"] == {"port": METRICS_PORT, "path": "/metrics"}
    assert any(c["type"] == "http" and c["port"] == METRICS_PORT for c in fly["checks"].values())
    (vm,) = fly["vm"]
    assert vm["cpus"] == 2 and vm["memory"] == "2gb"
    assert fly["mounts"]["destination"] == dockerfile.env("runtime")["EMBEDDER_MODELS_DIR"]
    assert fly["kill_signal"] == "SIGTERM"
    env = _settings_env(fly["env"])
    grace = float(env.get("EMBEDDER_SHUTDOWN_GRACE_S", Settings.model_fields["shutdown_grace_s"].default))
    kill_timeout = re.fullmatch(r"(\d+)s", fly["kill_timeout"])
    assert kill_timeout is not None and float(kill_timeout.group(1)) > grace


def test_fly_builds_an_existing_dockerfile_target(fly: dict[str, Any], dockerfile: Dockerfile) -> None:
    # flyctl resolves `dockerfile` relative to fly.toml's folder.
    assert (DEPLOY / fly["build"]["dockerfile"]).resolve() == (REPO / "Dockerfile").resolve()
    assert fly["build"]["build-target"] in {s.name for s in dockerfile.stages}


def test_readme_explains_client_side_round_robin() -> None:
    readme = (DEPLOY / "README.md").read_text()
    assert "dns:///embedder-headless.NAMESPACE.svc.cluster.local:50051" in readme
    assert "round_robin" in readme


def test_deploy_files_are_present() -> None:
    # The ops issue's deliverables, so a rename shows up here rather than in a cluster.
    for relative in ("Dockerfile", ".dockerignore", "deploy/fly.toml", "deploy/README.md"):
        assert Path(REPO / relative).is_file(), relative
