"""The Kubernetes manifests as users apply them: `kubectl kustomize` renders every overlay,
kubernetes-validate --strict accepts every object, the operator's own schemas accept the
monitoring objects, and yamllint passes on deploy/.

No cluster runs here: nothing is applied, and no image is built or pulled.
"""

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

from compression.errors import InvalidInput
from service.config import load_config

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("dev", "prod")
K8S_VERSIONS = ("1.30", "1.37")  # the oldest and the newest Kubernetes we check against
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}  # CRDs: checked by their own schemas
ALERTS = DEPLOY / "monitoring" / "alerts.yaml"
DASHBOARD = DEPLOY / "monitoring" / "dashboards" / "teachers-pet.json"
COMPONENT = DEPLOY / "k8s" / "components" / "monitoring"


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (it renders the kustomizations)")
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def one(overlay: str, kind: str, name_prefix: str = "") -> dict:
    (found,) = [o for o in render(overlay) if o["kind"] == kind
                and o["metadata"]["name"].startswith(name_prefix)]
    return found


def server_yaml(overlay: str) -> dict:
    return yaml.safe_load(one(overlay, "ConfigMap", "tpet-server-config")["data"]["server.yaml"])


def api_container(overlay: str) -> dict:
    (container,) = one(overlay, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_passes_strict_validation(overlay):
    kv = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate")
    objects = render(overlay)
    assert len({(o["kind"], o["metadata"]["name"]) for o in objects}) == len(objects)
    for obj in objects:
        if obj["kind"] in OPERATOR_KINDS:
            continue  # no schema in kubernetes-validate; see the next test
        for version in K8S_VERSIONS:
            kv.validate(obj, version, strict=True)
        namespace = obj["metadata"].get("namespace", obj["metadata"]["name"])
        assert namespace == {"dev": "teachers-pet-dev", "prod": "teachers-pet"}[overlay]


def test_monitoring_objects_match_the_operator_schemas():
    models = pytest.importorskip(
        "cloudcoil.models.prometheus_operator.v1",
        reason="needs cloudcoil-models-prometheus-operator (the operator's CRD schemas)")
    found = [o for o in render("prod") if o["kind"] in OPERATOR_KINDS]
    assert sorted(o["kind"] for o in found) == sorted(OPERATOR_KINDS)
    for obj in found:
        model = getattr(models, obj["kind"]).model_validate(obj)
        # The models drop fields they do not know: a difference is a misspelt or stray field.
        assert model.model_dump(mode="json", by_alias=True, exclude_unset=True) == obj


def test_servicemonitor_scrapes_the_metrics_port_of_the_api_service():
    monitor, service = one("prod", "ServiceMonitor"), one("prod", "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"][
        "labels"].items()
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9464}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    # Prometheus names the scrape job after the Service; the rules select on that name.
    assert "jobLabel" not in monitor["spec"]
    exprs = [r["expr"] for g in one("prod", "PrometheusRule")["spec"]["groups"]
             for r in g["rules"] if "up{" in r["expr"]]
    assert exprs and all(f'job="{service["metadata"]["name"]}"' in e for e in exprs)


def test_prometheus_rule_embeds_the_alert_rules_file():
    if not ALERTS.exists():
        pytest.skip(f"{ALERTS.relative_to(REPO)} does not exist yet; nothing to compare with")
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    assert one("prod", "PrometheusRule")["spec"]["groups"] == groups, (
        "copy the groups of deploy/monitoring/alerts.yaml into "
        "deploy/k8s/components/monitoring/prometheusrule.yaml")


def test_dashboard_configmap_is_provisioned_from_the_dashboard_file():
    config_map = one("prod", "ConfigMap", "tpet-grafana-dashboard")
    assert config_map["metadata"]["name"] == "tpet-grafana-dashboard"  # no hash suffix
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["teachers-pet.json"])
    assert dashboard["uid"] == "teachers-pet" and dashboard["panels"]
    if not DASHBOARD.exists():
        pytest.skip(f"{DASHBOARD.relative_to(REPO)} does not exist yet; nothing to compare with")
    assert dashboard == json.loads(DASHBOARD.read_text()), (
        f"cp {DASHBOARD.relative_to(REPO)} {COMPONENT.relative_to(REPO)}/")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_config_loads_and_probes_hit_its_grpc_port(overlay, tmp_path):
    data = server_yaml(overlay)
    if data["launcher"] == "kubernetes":
        pytest.importorskip("kubernetes", reason="the config check needs the kubernetes client")
    container = api_container(overlay)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert data["state_dir"] == mounts["state"]
    assert PurePosixPath(data["auth_token_file"]).parent == PurePosixPath(mounts["auth"])
    token = tmp_path / "token"
    token.write_text("t")
    config = load_config(None, **{**data, "auth_token_file": str(token)})
    # Probes, the Service and Prometheus all come from outside the pod.
    assert config.host == "0.0.0.0" and config.metrics_host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": config.port}
    assert container["args"] == ["serve", "--config", f"{mounts['config']}/server.yaml"]


def test_dev_runs_jobs_in_the_api_pod_on_cpu():
    data = server_yaml("dev")
    assert data["launcher"] == "local" and data["gpus"] == []
    secret = one("dev", "Secret")
    volumes = one("dev", "StatefulSet")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "auth", "secret": {"secretName": secret["metadata"]["name"]}} in volumes
    assert "nvidia.com/gpu" not in str(render("dev"))


def prod_worker_job() -> dict:
    """The Job the prod config makes for a worker attempt, as the launcher sends it."""
    client = pytest.importorskip("kubernetes.client", reason="needs the kubernetes client")
    from service.k8s_objects import KubernetesConfig, build_job
    from service.launcher import LaunchRequest

    config = KubernetesConfig.from_mapping(server_yaml("prod")["kubernetes"])
    request = LaunchRequest("j1", 1, Path(server_yaml("prod")["state_dir"], "artifacts", "j1"))
    job = build_job(config, request, {"TPET_JOB_ID": "j1", "TPET_JOB_TOKEN": "t"})
    return client.ApiClient().sanitize_for_serialization(job)


def test_prod_worker_job_passes_strict_validation():
    kv = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate")
    job = prod_worker_job()
    for version in K8S_VERSIONS:
        kv.validate(job, version, strict=True)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_prod_runs_gpu_jobs_on_shared_volumes_with_a_matching_worker_image():
    pytest.importorskip("kubernetes", reason="needs the kubernetes client")
    from service.k8s_objects import KubernetesConfig

    data = server_yaml("prod")
    assert data["launcher"] == "kubernetes"
    config = KubernetesConfig.from_mapping(data["kubernetes"])
    assert config.gpus_per_node >= 1 and config.node_selector and config.tolerations
    claims = {o["metadata"]["name"] for o in render("prod") if o["kind"] ==
              "PersistentVolumeClaim"}
    assert {v["claim"] for v in config.volumes} <= claims
    # The manager puts each job's output_dir in state_dir/artifacts: workers must see it there.
    artifacts = PurePosixPath(data["state_dir"]) / "artifacts"
    (shared,) = [v for v in config.volumes if artifacts.is_relative_to(v["mount_path"])]
    api_mounts = {m["mountPath"] for m in api_container("prod")["volumeMounts"]}
    assert shared["mount_path"] in api_mounts
    accounts = {o["metadata"]["name"] for o in render("prod") if o["kind"] == "ServiceAccount"}
    assert config.service_account in accounts
    api_tag = api_container("prod")["image"].rsplit(":", 1)[1]
    assert config.image.rsplit(":", 1)[1] == api_tag, "release the API and worker images together"


def test_prod_tls_lines_once_uncommented_give_worker_pods_mutual_tls(tmp_path):
    pytest.importorskip("kubernetes", reason="needs the kubernetes client")
    kv = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate")
    from service.k8s_objects import KubernetesConfig, build_job
    from service.launcher import LaunchRequest

    text = one("prod", "ConfigMap", "tpet-server-config")["data"]["server.yaml"]
    enabled = yaml.safe_load(re.sub(r"^( *)# (tls_\w+: )", r"\1\2", text, flags=re.M))
    files = {k: v for k, v in enabled.items() if k.startswith("tls_")}
    assert set(files) == {"tls_cert_file", "tls_key_file", "tls_client_ca_file"}
    assert {"tls_secret", "tls_server_name"} <= set(enabled["kubernetes"])
    # Stand-ins for the mounted Secret's files; the real ones exist only in the pod.
    for name in (*files, "auth_token_file"):
        (tmp_path / name).write_text("x")
    here = {name: str(tmp_path / name) for name in (*files, "auth_token_file")}
    config = load_config(None, **{**enabled, **here})
    with pytest.raises(InvalidInput, match="kubernetes.tls_secret: required with tls_cert"):
        load_config(None, **{**enabled, **here, "kubernetes": server_yaml("prod")["kubernetes"]})
    request = LaunchRequest("j1", 1, Path(config.state_dir, "artifacts", "j1"))
    job = client_dict(build_job(KubernetesConfig.from_mapping(config.kubernetes), request,
                                {"TPET_JOB_ID": "j1", "TPET_JOB_TOKEN": "t"},
                                client_cert=bool(config.tls_client_ca_file)))
    for version in K8S_VERSIONS:
        kv.validate(job, version, strict=True)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"] for e in container["env"]}
    assert {"TPET_WORKER_TLS_CA", "TPET_WORKER_TLS_CERT", "TPET_WORKER_TLS_KEY",
            "TPET_WORKER_TLS_SERVER_NAME"} <= env


def client_dict(obj) -> dict:
    from kubernetes import client

    return client.ApiClient().sanitize_for_serialization(obj)


def test_rbac_grants_what_the_kubernetes_launcher_calls():
    rules = one("prod", "Role")["rules"]
    granted = {(group, resource, verb) for r in rules for group in r["apiGroups"]
               for resource in r["resources"] for verb in r["verbs"]}
    needed = {("batch", "jobs", v) for v in ("create", "list", "patch", "delete")}
    needed |= {("batch", "jobs/status", "get"), ("", "pods", "list"), ("", "pods", "delete"),
               ("", "secrets", "create"), ("", "services", "create")}
    assert needed <= granted
    assert not any(verb in ("get", "list", "watch") for g, res, verb in granted
                   if res == "secrets"), "the API never reads Secrets back"
    binding = one("prod", "RoleBinding")
    api_account = one("prod", "StatefulSet")["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"][0]["name"] == api_account
    assert binding["roleRef"]["name"] == one("prod", "Role")["metadata"]["name"]


def test_disruption_budget_and_network_policies_select_the_pods_they_mean():
    api_labels = one("prod", "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    budget = one("prod", "PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= api_labels.items()
    policies = {o["metadata"]["name"]: o["spec"] for o in render("prod")
                if o["kind"] == "NetworkPolicy"}
    assert policies["tpet-api"]["podSelector"]["matchLabels"].items() <= api_labels.items()
    allowed = {p["port"] for rule in policies["tpet-api"]["ingress"] for p in rule["ports"]}
    assert allowed == {50051, 9464}
    worker_labels = prod_worker_job()["spec"]["template"]["metadata"]["labels"]
    assert policies["tpet-worker"]["podSelector"]["matchLabels"].items() <= worker_labels.items()


def test_yamllint_passes_on_deploy():
    if shutil.which("yamllint") is None:
        pytest.skip("yamllint is not installed (Debian package yamllint)")
    out = subprocess.run(["yamllint", "--strict", "-c", str(DEPLOY / ".yamllint"), str(DEPLOY)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
