"""The Kubernetes objects of a worker attempt and the launcher's config block.

Objects are built with the official client, serialized as the client sends them
(``ApiClient().sanitize_for_serialization``) and checked with kubernetes-validate's strict
schemas for the oldest and the newest Kubernetes version we support.
"""

from pathlib import Path

import pytest

from compression.errors import InvalidInput

client = pytest.importorskip("kubernetes.client", reason="needs the kubernetes client")
kubernetes_validate = pytest.importorskip("kubernetes_validate",
                                          reason="needs kubernetes-validate")

from service.k8s_objects import (  # noqa: E402
    KubernetesConfig, build_job, build_rendezvous_service, build_token_secret, job_object_name,
    worker_command)
from service.launcher import LaunchRequest  # noqa: E402

K8S_VERSIONS = ("1.30", "1.37")
BASE = {"image": "registry.example/tpet/worker:0.1.0", "manager_target": "tpet-api:50051",
        "volumes": [{"claim": "tpet-artifacts", "mount_path": "/var/lib/tpet/artifacts"},
                    {"claim": "tpet-data", "mount_path": "/data", "read_only": True}]}
REQUEST = LaunchRequest("j0123456789ab", 2, Path("/var/lib/tpet/artifacts/j0123456789ab"))
ENV = {"TPET_SERVER": "127.0.0.1:50051", "TPET_JOB_ID": "j0123456789ab",
       "TPET_JOB_TOKEN": "tok-123", "CUDA_VISIBLE_DEVICES": "k8s0"}


def serialize(obj) -> dict:
    return client.ApiClient().sanitize_for_serialization(obj)


def strictly_valid(manifest: dict) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(manifest, version, strict=True)


def config(**overrides) -> KubernetesConfig:
    return KubernetesConfig.from_mapping({**BASE, **overrides})


def container_of(job: dict) -> dict:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def test_single_gpu_job_runs_the_worker_with_the_token_from_its_secret():
    job = serialize(build_job(config(node_selector={"pool": "gpu"}, tolerations=[
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule",
         "tolerationSeconds": 60}]), REQUEST, ENV))
    strictly_valid(job)
    assert job["metadata"]["name"] == "tpet-j0123456789ab-a2"
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["teachers-pet/job-id"] == "j0123456789ab"
    assert labels["teachers-pet/attempt"] == "2"
    spec = job["spec"]
    assert spec["suspend"] is True and spec["backoffLimit"] == 0
    assert spec["ttlSecondsAfterFinished"] == 86400 and "activeDeadlineSeconds" not in spec
    assert (spec["completions"], spec["parallelism"], spec["completionMode"]) == (
        1, 1, "NonIndexed")
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                   "effect": "NoSchedule", "tolerationSeconds": 60}]
    assert pod["securityContext"]["runAsUser"] == 10001 and "subdomain" not in pod
    container = container_of(job)
    assert container["command"] == ["python", "-m", "service.worker"]
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "16Gi",
                                                "nvidia.com/gpu": "1"}
    env = {e["name"]: e for e in container["env"]}
    # The manager's loopback target and slot index mean nothing in a pod.
    assert env["TPET_SERVER"]["value"] == "tpet-api:50051"
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert env["TPET_JOB_ID"]["value"] == "j0123456789ab"
    assert env["TPET_JOB_TOKEN"] == {"name": "TPET_JOB_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "tpet-j0123456789ab-a2-token", "key": "token"}}}
    assert "tok-123" not in str(job)
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
    assert mounts == {"/tmp": False, "/dev/shm": False, "/var/lib/tpet/artifacts": False,
                      "/data": True}


def test_pod_failure_policy_fails_on_worker_errors_and_ignores_disruptions():
    job = serialize(build_job(config(backoff_limit=3, active_deadline_s=7200), REQUEST, ENV))
    strictly_valid(job)
    assert job["spec"]["activeDeadlineSeconds"] == 7200 and job["spec"]["backoffLimit"] == 3
    assert job["spec"]["podReplacementPolicy"] == "Failed"
    fail, ignore = job["spec"]["podFailurePolicy"]["rules"]
    assert fail == {"action": "FailJob", "onExitCodes": {
        "containerName": "worker", "operator": "In", "values": [1, 2]}}
    assert ignore == {"action": "Ignore", "onPodConditions": [
        {"type": "DisruptionTarget", "status": "True"}]}


def test_cpu_only_job_requests_no_gpu_and_hides_any():
    job = serialize(build_job(config(gpus_per_node=0), REQUEST, ENV))
    strictly_valid(job)
    container = container_of(job)
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CUDA_VISIBLE_DEVICES"] == ""


def test_several_gpus_run_torchrun_standalone():
    cfg = config(gpus_per_node=4)
    assert worker_command(cfg, "x") == ["torchrun", "--nproc_per_node=4", "--standalone",
                                        "-m", "service.worker"]
    job = serialize(build_job(cfg, REQUEST, ENV))
    assert container_of(job)["resources"]["requests"]["nvidia.com/gpu"] == "4"


def test_several_nodes_make_an_indexed_job_with_a_rendezvous_service():
    cfg = config(nodes=3, gpus_per_node=8, rendezvous_port=29400)
    job = serialize(build_job(cfg, REQUEST, ENV))
    strictly_valid(job)
    name = "tpet-j0123456789ab-a2"
    assert (job["spec"]["completions"], job["spec"]["parallelism"],
            job["spec"]["completionMode"]) == (3, 3, "Indexed")
    assert job["spec"]["template"]["spec"]["subdomain"] == name
    assert container_of(job)["command"] == [
        "torchrun", "--nproc_per_node=8", "--nnodes=3", "--node_rank=$(JOB_COMPLETION_INDEX)",
        f"--master_addr={name}-0.{name}", "--master_port=29400", "-m", "service.worker"]
    env = {e["name"]: e for e in container_of(job)["env"]}
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']")
    service = serialize(build_rendezvous_service(cfg, REQUEST))
    strictly_valid(service)
    assert service["metadata"]["name"] == name
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"teachers-pet/job-id": "j0123456789ab",
                                           "teachers-pet/attempt": "2"}
    assert service["spec"]["ports"][0]["port"] == 29400


def test_token_secret_is_owned_by_the_job():
    owner = client.V1Job(metadata=client.V1ObjectMeta(name="tpet-j0123456789ab-a2",
                                                      uid="uid-7"))
    secret = serialize(build_token_secret(REQUEST, "tok-123", owner))
    strictly_valid(secret)
    assert secret["metadata"]["name"] == "tpet-j0123456789ab-a2-token"
    assert secret["stringData"] == {"token": "tok-123"} and secret["immutable"] is True
    assert secret["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "tpet-j0123456789ab-a2",
         "uid": "uid-7"}]


def test_tls_secret_is_mounted_read_only_and_named_in_the_worker_env():
    cfg = config(tls_secret="tpet-worker-tls", tls_server_name="tpet-api.teachers-pet.svc")
    tls_dir = "/var/run/secrets/teachers-pet/tls"
    for client_cert in (False, True):
        job = serialize(build_job(cfg, REQUEST, ENV, client_cert=client_cert))
        strictly_valid(job)
        pod = job["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if "secret" in v]
        assert volume["secret"] == {"secretName": "tpet-worker-tls", "defaultMode": 0o440,
                                    "optional": True}
        # 0440 with fsGroup: the worker's group reads the files, others cannot.
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
        (mount,) = [m for m in container_of(job)["volumeMounts"]
                    if m["name"] == volume["name"]]
        assert mount == {"name": volume["name"], "mountPath": tls_dir, "readOnly": True}
        env = {e["name"]: e.get("value") for e in container_of(job)["env"]
               if e["name"].startswith("TPET_WORKER_TLS_")}
        expected = {"TPET_WORKER_TLS_CA": f"{tls_dir}/ca.crt",
                    "TPET_WORKER_TLS_SERVER_NAME": "tpet-api.teachers-pet.svc"}
        if client_cert:  # mutual TLS: the Secret's certificate is the worker's
            expected.update(TPET_WORKER_TLS_CERT=f"{tls_dir}/tls.crt",
                            TPET_WORKER_TLS_KEY=f"{tls_dir}/tls.key")
        assert env == expected
    plain = serialize(build_job(config(), REQUEST, ENV, client_cert=True))
    assert "TPET_WORKER_TLS" not in str(plain) and "secret" not in str(
        plain["spec"]["template"]["spec"]["volumes"])


def test_tls_settings_are_checked():
    with pytest.raises(InvalidInput) as err:
        config(tls_secret="Worker_TLS", tls_server_name="tpet api")
    assert len(err.value.problems) == 2, err.value.problems
    assert "tls_secret is 'Worker_TLS'; use the name of a Secret" in str(err.value)
    assert "tls_server_name is 'tpet api'; use a DNS name or IP address" in str(err.value)
    with pytest.raises(InvalidInput, match="tls_server_name needs tls_secret"):
        config(tls_server_name="tpet-api.teachers-pet.svc")
    with pytest.raises(InvalidInput, match="tls_secret: expected str, got 3"):
        config(tls_secret=3)
    assert config(tls_secret="tpet-worker-tls", tls_server_name="10.0.0.5").problems() == []


def test_object_names_are_dns_labels():
    assert job_object_name("j0123456789ab", 12) == "tpet-j0123456789ab-a12"
    assert job_object_name("Job_ID.x" * 10, 1) == "tpet-job-id-xjob-id-xjob-id-xjob-id-xjob-a1"


def test_config_lists_every_problem():
    with pytest.raises(InvalidInput) as err:
        KubernetesConfig.from_mapping({"image": "", "nodes": 0, "gpus_per_node": -1,
                                       "memory": "16 GB", "node_selector": {"gpu": 1},
                                       "volumes": [{"claim": "a", "mount_path": "rel"}],
                                       "tolerations": [{"key": "x", "bogus": 1}],
                                       "image_pull_policy": "Sometimes",
                                       "env": {"TPET_SERVER": "x", "NCCL_DEBUG": "INFO"}})
    text = str(err.value)
    assert len(err.value.problems) == 10, text
    for expected in ("image: required", "manager_target: required", "nodes is 0",
                     "gpus_per_node is -1", "memory is '16 GB'",
                     "node_selector.gpu: expected str, got 1", "volumes[0]",
                     "tolerations must be", "image_pull_policy: 'Sometimes' is not one of",
                     "env sets TPET_SERVER; the launcher sets"):
        assert expected in text
    # Types the client's models would refuse only when a job starts are caught here.
    with pytest.raises(InvalidInput, match="tolerations must be"):
        config(tolerations=[{"key": "x", "tolerationSeconds": "60"}])


def test_yaml_numbers_are_accepted_as_quantities():
    job = serialize(build_job(config(cpu=8, memory="32Gi", env={"NCCL_DEBUG": "INFO"}),
                              REQUEST, ENV))
    strictly_valid(job)
    container = container_of(job)
    assert container["resources"]["requests"]["cpu"] == "8"
    assert {"name": "NCCL_DEBUG", "value": "INFO"} in container["env"]


def test_config_rejects_unknown_settings_and_non_mappings():
    with pytest.raises(InvalidInput, match="gpu: unknown field; known: .*gpus_per_node"):
        KubernetesConfig.from_mapping({**BASE, "gpu": 1})
    assert KubernetesConfig.problems_in(["image"]) == [
        "kubernetes.the block must be a mapping of settings, not list"]
    assert KubernetesConfig.problems_in(BASE) == []


def test_server_config_selects_the_launcher_and_checks_its_block(tmp_path):
    from service.config import load_config, resolve_slots

    path = tmp_path / "server.yaml"
    path.write_text("launcher: kubernetes\nmax_concurrent_jobs: 3\n"
                    "kubernetes: {image: w:1, nodes: 0}\n")
    with pytest.raises(InvalidInput) as err:
        load_config(path)
    assert err.value.problems == ["kubernetes.nodes is 0; it must be in [1, 10000]",
                                  "kubernetes.manager_target: required (e.g. tpet-api:50051)"]
    path.write_text("launcher: kubernetes\nmax_concurrent_jobs: 3\n"
                    "kubernetes: {image: w:1, manager_target: 'tpet-api:50051'}\n")
    assert resolve_slots(load_config(path)) == ("k8s0", "k8s1", "k8s2")
    with pytest.raises(InvalidInput, match="launcher: 'slurm' is not one of local, kubernetes"):
        load_config(launcher="slurm")
    assert load_config().launcher == "local"


def test_server_without_cluster_credentials_says_what_to_do(tmp_path, monkeypatch):
    from service.config import load_config
    from service.server import start_server

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    config = load_config(state_dir=str(tmp_path / "state"), port=0, launcher="kubernetes",
                         kubernetes=BASE)
    with pytest.raises(InvalidInput, match="no credentials for the Kubernetes API .*set "
                                           "KUBECONFIG"):
        start_server(config)
    assert not (tmp_path / "state").exists()  # nothing was opened
