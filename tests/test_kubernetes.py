"""Every environment's manifests, rendered as the deploy job renders them, then checked.

The deploy job applies `kubectl kustomize environments/<env>/kustomize` to a cluster, so a
wrong field would first show at `kubectl apply` in that environment. Here the same
rendering is validated offline against the Kubernetes API schemas of the cluster's
version, strictly (an unknown field is an error, as the API server's strict field
validation makes it), and then for the facts that running the service depends on:
autoscaling bounds, the disruption budget, probes, an unprivileged pod, resources, and
secrets that stay in the Secret.

Both tools are real: kubectl (its built-in kustomize) and kubernetes-validate, whose
wheel carries the schemas of each Kubernetes version. .ci/run installs both; without
them these tests skip, which CI (CRISPML_FORBID_SKIPS=1) turns into failures.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from types import ModuleType

import pytest
import yaml
from fastapi import APIRouter

from pipeline.service.routers import probes

from .conftest import PROJECT

# The minor version of the clusters: the deploy job's kubectl (the alpine/k8s image in
# .gitlab-ci.yml) is kept within one minor of them, and a test below holds the two equal.
KUBERNETES_VERSION = "1.34"
ENVIRONMENTS = ("dev", "qa", "prod")
NAME = "crispml-service"
# What the deploy job creates from the CI/CD variables (environments/base/kustomize).
SECRET = "crispml-service"
# Prod's autoscaling bounds, as the project's issue 10 sets them.
PROD_REPLICAS = (1, 3)
# Env var names whose value is a credential or may carry one (a store URL has a password).
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|KEY|CREDENTIAL|URL|URI|DSN", re.IGNORECASE)


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: .ci/run installs it (kustomize renders with it)")
    return kubectl


def _validator() -> ModuleType:
    try:
        import kubernetes_validate
    except ImportError as error:
        pytest.skip(f"kubernetes-validate not installed: {error} (a dev dependency)")
    return kubernetes_validate


def render(env: str) -> list[dict]:
    done = subprocess.run(
        [_kubectl(), "kustomize", str(PROJECT / "environments" / env / "kustomize")],
        capture_output=True,
        text=True,
        timeout=60,
        # Rendering needs no cluster: no kubeconfig may be read, whatever the machine has.
        env={**os.environ, "KUBECONFIG": os.devnull},
    )
    assert done.returncode == 0, f"{env}: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {env: render(env) for env in ENVIRONMENTS}


def by_kind(docs: list[dict]) -> dict[str, dict]:
    kinds = [doc["kind"] for doc in docs]
    assert len(kinds) == len(set(kinds)), f"one of each kind expected: {kinds}"
    return {doc["kind"]: doc for doc in docs}


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def quantity(value: str | int | float) -> float:
    """A number: a request of "500m" and a limit of "1" only compare once both are."""
    units = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
    return float(number) * units[unit]


def evictable(budget: dict, replicas: int) -> int:
    """Pods a drain may take from `replicas` ready ones: a budget says it either way round."""
    if "maxUnavailable" in budget:
        return budget["maxUnavailable"]
    return replicas - budget["minAvailable"]


def validation_error(document: dict) -> str | None:
    """The refusal as text (or None), so that a test lists every broken document at once."""
    validator = _validator()
    try:
        used = validator.validate(document, KUBERNETES_VERSION, strict=True)
    except validator.ValidationError as error:
        where = "/".join(str(part) for part in error.absolute_path)
        return f"{document['kind']} {where}: {error.message}"
    # The package falls back to an older version's schemas: it must have this one.
    assert used == KUBERNETES_VERSION, f"validated against {used}, not {KUBERNETES_VERSION}"
    return None


# --------------------------------------------------------------------------- schemas


def test_validated_version_is_the_deploy_jobs() -> None:
    ci = (PROJECT / ".gitlab-ci.yml").read_text()
    versions = set(re.findall(r"alpine/k8s:(\d+\.\d+)\.\d+", ci))
    assert versions == {KUBERNETES_VERSION}, versions


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_document_is_valid_for_the_cluster_version(
    rendered: dict[str, list[dict]], env: str
) -> None:
    docs = rendered[env]
    errors = [error for doc in docs if (error := validation_error(doc))]
    assert not errors, errors
    assert {doc["metadata"]["namespace"] for doc in docs} == {f"crispml-{env}"}


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda d: d["spec"].update(replicas="three"), id="replicas-a-string"),
        pytest.param(
            lambda d: d["spec"]["template"]["spec"]["containers"][0].update(livenesProbe={}),
            id="misspelt-field",
        ),
        pytest.param(
            lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"),
            id="required-field-missing",
        ),
        pytest.param(lambda d: d["spec"].pop("selector"), id="no-selector"),
    ],
)
def test_the_validator_refuses_a_broken_deployment(
    rendered: dict[str, list[dict]], breakage
) -> None:
    """Without this a validator that accepts anything would pass the test above."""
    deployment = by_kind(rendered["prod"])["Deployment"]
    assert validation_error(deployment) is None
    broken = copy.deepcopy(deployment)
    breakage(broken)
    assert validation_error(broken) is not None


# --------------------------------------------------------------------------- shape


def test_each_environment_renders_its_resources(rendered: dict[str, list[dict]]) -> None:
    expected = {
        "dev": {"Deployment", "Service"},
        "qa": {"Deployment", "Service"},
        "prod": {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"},
    }
    for env, docs in rendered.items():
        docs_by_kind = by_kind(docs)
        assert set(docs_by_kind) == expected[env], env
        assert {doc["metadata"]["name"] for doc in docs} == {NAME}, env
        deployment, service = docs_by_kind["Deployment"], docs_by_kind["Service"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        # The pod label becomes CRISPML_ENV: the model alias the service follows.
        assert pod_labels["crispml.io/environment"] == env
        for container in pod_spec(deployment)["containers"]:
            variables = {variable["name"]: variable for variable in container["env"]}
            assert variables["CRISPML_ENV"]["valueFrom"] == {
                "fieldRef": {"fieldPath": "metadata.labels['crispml.io/environment']"}
            }, env
        assert service["spec"]["selector"].items() <= pod_labels.items(), env
        if "HorizontalPodAutoscaler" not in docs_by_kind:
            assert deployment["spec"]["replicas"] >= 1, env


def test_prod_autoscales_the_deployment_between_one_and_three_replicas(
    rendered: dict[str, list[dict]],
) -> None:
    docs = by_kind(rendered["prod"])
    hpa, deployment = docs["HorizontalPodAutoscaler"]["spec"], docs["Deployment"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == PROD_REPLICAS
    assert hpa["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": deployment["kind"],
        "name": deployment["metadata"]["name"],
    }
    # A count outside the bounds would be applied, then corrected by the HPA at once.
    replicas = deployment["spec"].get("replicas", hpa["minReplicas"])
    assert hpa["minReplicas"] <= replicas <= hpa["maxReplicas"]
    # Utilisation is measured against the request: without one the HPA cannot scale.
    resources = [m["resource"]["name"] for m in hpa["metrics"] if m["type"] == "Resource"]
    assert resources, hpa["metrics"]
    for container in containers(pod_spec(deployment)):
        assert set(resources) <= set(container["resources"]["requests"]), container["name"]


def test_prod_disruption_budget_covers_the_pods_and_lets_a_node_drain(
    rendered: dict[str, list[dict]],
) -> None:
    docs = by_kind(rendered["prod"])
    deployment, pdb = docs["Deployment"], docs["PodDisruptionBudget"]["spec"]
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert set(pdb["selector"]) == {"matchLabels"}
    assert pdb["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    # Pods one eviction may take, at the HPA's bounds: at least one (or no node drains
    # while the HPA sits at its minimum), and never all of them at its maximum.
    assert evictable(pdb, hpa["minReplicas"]) >= 1, pdb
    assert evictable(pdb, hpa["maxReplicas"]) < hpa["maxReplicas"], pdb


# --------------------------------------------------------------------------- pods


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_probes_ask_the_service_probe_routes_on_its_port(
    rendered: dict[str, list[dict]], env: str
) -> None:
    router = APIRouter()
    probes.add_routes(router, state=None)  # the handlers are not called: only the paths
    probe_paths = {route.path for route in router.routes} - {"/metrics"}
    (container,) = pod_spec(by_kind(rendered[env])["Deployment"])["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    listening = int(container["args"][container["args"].index("--port") + 1])
    # Liveness must not depend on the store or the model (a store outage would restart
    # every pod): /healthz. Readiness is exactly that dependency: /readyz.
    wanted = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in wanted.items():
        check = container[probe]["httpGet"]
        assert check["path"] == path and path in probe_paths, (probe, probe_paths)
        port = check["port"]
        assert ports.get(port, port) == listening, (probe, port)
        assert check.get("scheme", "HTTP") == "HTTP"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_pods_run_unprivileged_on_a_read_only_root(
    rendered: dict[str, list[dict]], env: str
) -> None:
    pod = pod_spec(by_kind(rendered[env])["Deployment"])
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] != 0 and context.get("runAsGroup", 1) != 0
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert not any(pod.get(host) for host in ("hostNetwork", "hostPID", "hostIPC"))
    empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    for container in containers(pod):
        own = container["securityContext"]
        assert own["allowPrivilegeEscalation"] is False, container["name"]
        assert own.get("privileged", False) is False, container["name"]
        assert own["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert own.get("runAsUser", context["runAsUser"]) != 0, container["name"]
        # The root file system is read-only; the service writes only under /tmp (HOME,
        # MPLCONFIGDIR, MLflow's model download, Evidently's reports): an emptyDir there.
        assert own["readOnlyRootFilesystem"] is True, container["name"]
        tmp = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp"]
        assert len(tmp) == 1 and tmp[0]["name"] in empty_dirs, container["name"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_container_requests_and_limits_cpu_and_memory(
    rendered: dict[str, list[dict]], env: str
) -> None:
    for container in containers(pod_spec(by_kind(rendered[env])["Deployment"])):
        resources = container["resources"]
        for resource in ("cpu", "memory"):
            request = quantity(resources["requests"][resource])
            limit = quantity(resources["limits"][resource])
            assert 0 < request <= limit, (env, container["name"], resource)
            if env == "prod":  # Guaranteed QoS: the last pods evicted under node pressure
                assert request == limit, (container["name"], resource)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_secrets_come_from_the_secret_by_reference_only(
    rendered: dict[str, list[dict]], env: str
) -> None:
    docs = rendered[env]
    assert not {"Secret", "ConfigMap"} & {doc["kind"] for doc in docs}
    for container in containers(pod_spec(by_kind(docs)["Deployment"])):
        for source in container.get("envFrom", []):
            assert set(source) == {"secretRef"}, source
            assert source["secretRef"]["name"] == SECRET
        for variable in container.get("env", []):
            if "valueFrom" in variable:
                (kind,) = variable["valueFrom"]
                assert kind in {"secretKeyRef", "fieldRef", "resourceFieldRef"}, variable
                if kind == "secretKeyRef":
                    assert variable["valueFrom"][kind]["name"] == SECRET
            else:
                assert not SECRET_NAME.search(variable["name"]), variable
    text = yaml.safe_dump_all(docs)
    # Anywhere else (an annotation, an argument): a URL with a password, an AWS key id.
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text)
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
