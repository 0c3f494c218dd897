"""The Dockerfile and the base Kubernetes manifests agree with the service and each other.

No Docker daemon or cluster is needed: these are the facts a broken deployment would
get wrong first (a port that differs between image and pod, a root user, a selector
that matches nothing). What each environment deploys (probes, security context,
resources, autoscaling, secrets) is checked on the rendered overlays, validated against
the Kubernetes schemas, in tests/test_kubernetes.py.
"""

from __future__ import annotations

import re

import pytest
import yaml

from pipeline.config import load_settings
from pipeline.service.app import create_app
from pipeline.service.config import ServiceConfig

from .conftest import MAIN_ROOT, make_repo

BASE = MAIN_ROOT / "environments" / "base" / "kustomize"
NAME = "crispml-service"


def _docs() -> dict[str, dict]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    out = {}
    for resource in kustomization["resources"]:
        doc = yaml.safe_load((BASE / resource).read_text())
        out[doc["kind"]] = doc
    return out


@pytest.fixture(scope="module")
def routes(tmp_path_factory) -> set[str]:
    folder = tmp_path_factory.mktemp("routes")
    root = make_repo(folder / "repo", env="svcroutes", store_url=f"sqlite:///{folder}/s.db")
    app = create_app(load_settings(root), ServiceConfig())
    return {route.path for route in app.routes}


def test_base_has_deployment_service_and_hpa_named_for_the_overlays() -> None:
    docs = _docs()
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    assert {doc["metadata"]["name"] for doc in docs.values()} == {NAME}
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert [image["name"] for image in kustomization["images"]] == [NAME]


def test_selectors_ports_and_routes_fit_together(routes: set[str]) -> None:
    docs = _docs()
    deployment, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert container["image"] == NAME
    port = next(p for p in container["ports"] if p["name"] == "http")["containerPort"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    # The app serves the probe router's paths, which the probes ask (tests/test_kubernetes.py).
    assert {"/readyz", "/healthz", "/metrics"} <= routes
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert container["args"][-1] == str(port)
    # The prod overlay replaces these three fields: they must exist to be replaced.
    assert {"minReplicas", "maxReplicas", "metrics"} <= set(hpa["spec"])
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": NAME,
    }


def test_dockerfile_runs_the_service_unprivileged_with_a_health_check() -> None:
    dockerfile = (MAIN_ROOT / "Dockerfile").read_text()
    deployment = _docs()["Deployment"]["spec"]["template"]["spec"]
    user = re.findall(r"(?m)^USER\s+(\S+)", dockerfile)[-1]
    assert user.split(":")[0] not in {"root", "0"}
    assert user.split(":")[0] == str(deployment["securityContext"]["runAsUser"])
    healthcheck = re.search(r"(?ms)^HEALTHCHECK .*?\n(?!\s)", dockerfile).group(0)
    assert "/healthz" in healthcheck
    exposed = re.search(r"(?m)^EXPOSE\s+(\d+)", dockerfile).group(1)
    container_port = deployment["containers"][0]["ports"][0]["containerPort"]
    assert int(exposed) == container_port
    assert re.search(r'(?m)^CMD \["serve", "--host", "0.0.0.0", "--port", "8000"\]', dockerfile)
    assert not re.search(r"(?im)^ENV .*(TOKEN|PASSWORD|SECRET|_KEY)=", dockerfile)


def test_dockerignore_is_an_allow_list() -> None:
    lines = [
        line.strip()
        for line in (MAIN_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "README.md",
        "requirements.lock",  # the image installs from the hashed lock files
        "requirements-dev.lock",
        "pipeline",
        "params.yaml",
        "environments",
    }
    assert {"**/.env", "**/*.db"} <= set(lines)
