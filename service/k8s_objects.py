"""The Kubernetes objects of one worker attempt, and the launcher's ``kubernetes:`` config.

``build_job`` makes the attempt's batch/v1 Job: the worker entry point of the local launcher
(``python -m service.worker``; ``torchrun ... -m service.worker`` when it spans GPUs or nodes)
with the manager's worker environment (``service.worker_contract``), except that the server's
address is the in-cluster one (``manager_target``) and the token is read from the attempt's
Secret (``build_token_secret``):
a literal env value would show to anyone allowed to read Jobs or pods. With ``tls_secret`` the
pod mounts that Secret and the worker dials the manager over TLS (``security.worker_channel``),
presenting the Secret's certificate too when the server asks for one (mutual TLS). Several
nodes make an Indexed Job whose pod 0 hosts the torchrun rendezvous, named by a headless
Service (``build_rendezvous_service``). Built with the official client's model objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from kubernetes import client

from compression.errors import InvalidInput
from compression.typed import choice, parse_into, ranged
from service.launcher import LaunchRequest
from service.worker_contract import (ENV_DEVICES, ENV_JOB_TOKEN, ENV_SERVER, WORKER_EXIT_FAILED,
                                     WORKER_EXIT_MISCONFIGURED, WORKER_MODULE, WORKER_TLS_ENV,
                                     WORKER_TLS_SERVER_NAME_ENV)

__all__ = ["KubernetesConfig", "build_job", "build_token_secret", "build_rendezvous_service",
           "worker_command", "job_object_name", "JOB_ID_LABEL", "ATTEMPT_LABEL", "WORKER_UID",
           "FAIL_JOB_EXIT_CODES", "WORKER_TLS_DIR"]

JOB_ID_LABEL = "teachers-pet/job-id"
ATTEMPT_LABEL = "teachers-pet/attempt"
WORKER_UID = 10001  # the `tpet` user of deploy/docker/worker.Dockerfile
GPU_RESOURCE = "nvidia.com/gpu"
# Exit codes after which re-running the same pod cannot help (see worker_contract); the
# manager retries with a new attempt and token when max_attempts allows.
FAIL_JOB_EXIT_CODES = [WORKER_EXIT_FAILED, WORKER_EXIT_MISCONFIGURED]
# Where the worker finds the tls_secret's keys: ca.crt, and for mutual TLS tls.crt and tls.key
# (the keys cert-manager writes for a Certificate whose issuer provides its CA).
WORKER_TLS_DIR = "/var/run/secrets/teachers-pet/tls"
_TLS_MODE = 0o440  # owner and group (fsGroup, the worker's group) may read; nobody else
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
_HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
_RESERVED_ENV = ("TPET_", "JOB_COMPLETION_INDEX")
_TOLERATION_KEYS = {"key": "key", "operator": "operator", "value": "value",
                    "effect": "effect", "tolerationSeconds": "toleration_seconds"}


@dataclass(frozen=True)
class KubernetesConfig:
    """The ``kubernetes:`` block of the server config (docs/operations.md, Kubernetes)."""

    image: str = ""  # the worker image, e.g. registry/teachers-pet/worker:0.1.0
    manager_target: str = ""  # how worker pods reach the server, e.g. tpet-api:50051
    namespace: str = ""  # "": the server pod's own namespace
    service_account: str = ""  # "": the namespace's default
    image_pull_policy: str = choice("Always", "IfNotPresent", "Never", default="IfNotPresent")
    gpus_per_node: int = ranged(1, 0, 1024)  # >1: torchrun --nproc_per_node in the pod
    nodes: int = ranged(1, 1, 10_000)  # >1: an Indexed Job, one pod per node, rendezvous on 0
    # Kubernetes quantities; YAML may write a bare number (cpu: 8)
    cpu: str | int | float = "4"
    memory: str | int | float = "16Gi"
    shm_size: str | int | float = "2Gi"  # /dev/shm for DataLoader workers and NCCL
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)  # Kubernetes spelling
    volumes: list[dict[str, Any]] = field(default_factory=list)  # {claim, mount_path, read_only}
    env: dict[str, str] = field(default_factory=dict)  # e.g. NCCL settings
    backoff_limit: int = ranged(0, 0, 1000)  # pod retries in one attempt (not evictions)
    active_deadline_s: int = ranged(0, 0, 2**31 - 1)  # 0: none
    ttl_after_finished_s: int = ranged(86400, 0, 2**31 - 1)
    poll_interval_s: float = ranged(5.0, 0.0, 3600.0)
    rendezvous_port: int = ranged(29500, 1, 65535)
    tls_secret: str = ""  # a Secret with ca.crt (mutual TLS: tls.crt, tls.key): pods speak TLS
    tls_server_name: str = ""  # the name the server's certificate carries, if not the target's

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> KubernetesConfig:
        """Parse the block; ``InvalidInput`` lists every problem."""
        config, problems = _parse(data)
        if problems or config is None:
            raise InvalidInput(problems, "invalid kubernetes launcher config")
        return config

    @staticmethod
    def problems_in(data: Any) -> list[str]:
        """The block's problems, each prefixed ``kubernetes.``, for the server config's list."""
        return [f"kubernetes.{p}" for p in _parse(data)[1]]

    def problems(self) -> list[str]:
        """Checks across fields and of Kubernetes syntax; types and ranges are declared."""
        return [*_text_problems(self), *_list_problems(self.tolerations, self.volumes),
                *_tls_problems(self)]


def _parse(data: Any) -> tuple[KubernetesConfig | None, list[str]]:
    if data is not None and not isinstance(data, Mapping):
        return None, [f"the block must be a mapping of settings, not {type(data).__name__}"]
    problems: list[str] = []
    config = parse_into(KubernetesConfig, dict(data or {}), "", problems)
    return config, problems


def _text_problems(config: KubernetesConfig) -> list[str]:
    out = [f"{name}: required (e.g. {example})" for name, example in (
        ("image", "registry/teachers-pet/worker:0.1.0"), ("manager_target", "tpet-api:50051"))
        if not getattr(config, name)]
    for name in ("cpu", "memory", "shm_size"):
        if not _QUANTITY.match(str(getattr(config, name))):
            out.append(f"{name} is {getattr(config, name)!r}; use a Kubernetes quantity like "
                       "4, 500m or 16Gi")
    reserved = [k for k in config.env if k.startswith(_RESERVED_ENV)]
    if reserved:
        out.append(f"env sets {', '.join(reserved)}; the launcher sets TPET_* and "
                   "JOB_COMPLETION_INDEX itself")
    return out


def _tls_problems(config: KubernetesConfig) -> list[str]:
    secret, name = config.tls_secret, config.tls_server_name
    out = []
    if not isinstance(secret, str) or secret and not _DNS_SUBDOMAIN.match(secret):
        out.append(f"tls_secret is {secret!r}; use the name of a Secret in the Jobs' "
                   "namespace (lowercase letters, digits, '-', '.'), e.g. tpet-worker-tls")
    if not isinstance(name, str) or name and not _HOST_NAME.match(name):
        out.append(f"tls_server_name is {name!r}; use a DNS name or IP address that the "
                   "server's certificate carries, e.g. tpet-api.teachers-pet.svc")
    elif name and not secret:
        out.append("tls_server_name needs tls_secret: set it to a Secret whose ca.crt signed "
                   "the server's certificate")
    return out


def _list_problems(tolerations: Any, volumes: Any) -> list[str]:
    out = []
    if not isinstance(tolerations, list) or not all(map(_toleration_ok, tolerations)):
        out.append(f"tolerations must be a list of pod-spec tolerations (keys among "
                   f"{', '.join(_TOLERATION_KEYS)}; tolerationSeconds a number)")
    if not isinstance(volumes, list):
        return out + ["volumes must be a list of {claim, mount_path, read_only}"]
    for i, v in enumerate(volumes):
        if not (isinstance(v, dict) and set(v) <= {"claim", "mount_path", "read_only"}
                and isinstance(v.get("claim"), str) and v["claim"]
                and str(v.get("mount_path", "")).startswith("/")
                and isinstance(v.get("read_only", False), bool)):
            out.append(f"volumes[{i}] is {v!r}; use {{claim: NAME, mount_path: /ABS/PATH, "
                       "read_only: false}")
    return out


def _toleration_ok(toleration: Any) -> bool:
    if not isinstance(toleration, dict) or not set(toleration) <= set(_TOLERATION_KEYS):
        return False
    try:
        _toleration(toleration)
    except ValueError:  # the client's models check types
        return False
    return True


def _toleration(toleration: dict[str, Any]) -> client.V1Toleration:
    return client.V1Toleration(**{_TOLERATION_KEYS[k]: v for k, v in toleration.items()})


def job_object_name(job_id: str, attempt: int) -> str:
    """``tpet-<job id>-a<attempt>``, a DNS label short enough for Indexed pod hostnames."""
    return re.sub(r"[^a-z0-9-]", "-", f"tpet-{job_id.lower()}"[:40]) + f"-a{attempt}"


def _labels(job: LaunchRequest) -> dict[str, str]:
    return {"app.kubernetes.io/name": "teachers-pet", "app.kubernetes.io/component": "worker",
            "app.kubernetes.io/managed-by": "teachers-pet", JOB_ID_LABEL: job.job_id,
            ATTEMPT_LABEL: str(job.attempt)}


def worker_command(config: KubernetesConfig, job_name: str) -> list[str]:
    """The container command: the worker, under torchrun when it spans GPUs or nodes."""
    if config.nodes == 1 and config.gpus_per_node <= 1:
        return ["python", "-m", WORKER_MODULE]
    command = ["torchrun", f"--nproc_per_node={max(1, config.gpus_per_node)}"]
    if config.nodes == 1:
        return [*command, "--standalone", "-m", WORKER_MODULE]
    # Pod 0 of the Indexed Job hosts the rendezvous: <job>-0.<headless service>.
    return [*command, f"--nnodes={config.nodes}", "--node_rank=$(JOB_COMPLETION_INDEX)",
            f"--master_addr={job_name}-0.{job_name}", f"--master_port={config.rendezvous_port}",
            "-m", WORKER_MODULE]


def _tls_env(config: KubernetesConfig, client_cert: bool) -> dict[str, str]:
    """The worker's TLS variables (``security.worker_channel``); none without tls_secret."""
    if not config.tls_secret:
        return {}
    ca, cert, key = WORKER_TLS_ENV
    out = {ca: f"{WORKER_TLS_DIR}/ca.crt"}
    if client_cert:
        out.update({cert: f"{WORKER_TLS_DIR}/tls.crt", key: f"{WORKER_TLS_DIR}/tls.key"})
    if config.tls_server_name:
        out[WORKER_TLS_SERVER_NAME_ENV] = config.tls_server_name
    return out


def _env(config: KubernetesConfig, job_name: str, env: Mapping[str, str],
         client_cert: bool) -> list[client.V1EnvVar]:
    # The device plugin decides which GPUs the pod sees; the manager's slot index means nothing
    # here. A pod without GPUs is told so, as a CPU slot's local worker is.
    plain = {k: v for k, v in env.items() if k not in (ENV_JOB_TOKEN, ENV_DEVICES)}
    plain.update(config.env, HOME="/tmp")
    plain.update({ENV_SERVER: config.manager_target, **_tls_env(config, client_cert)})
    if config.gpus_per_node == 0:
        plain[ENV_DEVICES] = ""
    out = [client.V1EnvVar(name=k, value=v) for k, v in sorted(plain.items())]
    out.append(client.V1EnvVar(name=ENV_JOB_TOKEN, value_from=client.V1EnvVarSource(
        secret_key_ref=client.V1SecretKeySelector(name=f"{job_name}-token", key="token"))))
    if config.nodes > 1:  # set here so that $(JOB_COMPLETION_INDEX) expands in the command
        out.append(client.V1EnvVar(name="JOB_COMPLETION_INDEX", value_from=client.V1EnvVarSource(
            field_ref=client.V1ObjectFieldSelector(
                field_path="metadata.annotations['batch.kubernetes.io/job-completion-index']"))))
    return out


def _container(config: KubernetesConfig, job_name: str, env: Mapping[str, str],
               client_cert: bool) -> client.V1Container:
    amounts = {"cpu": str(config.cpu), "memory": str(config.memory)}  # YAML may give 8
    if config.gpus_per_node:
        amounts[GPU_RESOURCE] = str(config.gpus_per_node)
    mounts = [client.V1VolumeMount(name="tmp", mount_path="/tmp"),
              client.V1VolumeMount(name="dshm", mount_path="/dev/shm")]
    mounts += [client.V1VolumeMount(name=f"vol{i}", mount_path=v["mount_path"],
                                    read_only=v.get("read_only", False))
               for i, v in enumerate(config.volumes)]
    if config.tls_secret:
        mounts.append(client.V1VolumeMount(name="worker-tls", mount_path=WORKER_TLS_DIR,
                                           read_only=True))
    return client.V1Container(
        name="worker", image=config.image, image_pull_policy=config.image_pull_policy,
        command=worker_command(config, job_name),
        env=_env(config, job_name, env, client_cert),
        resources=client.V1ResourceRequirements(requests=dict(amounts), limits=dict(amounts)),
        volume_mounts=mounts, termination_message_policy="FallbackToLogsOnError",
        security_context=client.V1SecurityContext(
            allow_privilege_escalation=False, read_only_root_filesystem=True,
            capabilities=client.V1Capabilities(drop=["ALL"])))


def _volumes(config: KubernetesConfig) -> list[client.V1Volume]:
    volumes = [client.V1Volume(name="tmp", empty_dir=client.V1EmptyDirVolumeSource()),
               client.V1Volume(name="dshm", empty_dir=client.V1EmptyDirVolumeSource(
                   medium="Memory", size_limit=str(config.shm_size)))]
    volumes += [client.V1Volume(name=f"vol{i}", persistent_volume_claim=(
        client.V1PersistentVolumeClaimVolumeSource(claim_name=v["claim"],
                                                   read_only=v.get("read_only", False))))
        for i, v in enumerate(config.volumes)]
    if config.tls_secret:
        # optional: a missing Secret (or key) lets the worker start and fail at once, naming
        # the file it lacks, rather than leave the pod waiting for the mount with no end.
        volumes.append(client.V1Volume(name="worker-tls", secret=client.V1SecretVolumeSource(
            secret_name=config.tls_secret, default_mode=_TLS_MODE, optional=True)))
    return volumes


def _pod_spec(config: KubernetesConfig, job_name: str, env: Mapping[str, str],
              client_cert: bool) -> client.V1PodSpec:
    return client.V1PodSpec(
        restart_policy="Never", containers=[_container(config, job_name, env, client_cert)],
        volumes=_volumes(config),
        service_account_name=config.service_account or None,
        automount_service_account_token=False,  # workers talk to the manager, not the API
        node_selector=config.node_selector or None,
        tolerations=[_toleration(t) for t in config.tolerations] or None,
        subdomain=job_name if config.nodes > 1 else None,
        security_context=client.V1PodSecurityContext(
            run_as_non_root=True, run_as_user=WORKER_UID, run_as_group=WORKER_UID,
            fs_group=WORKER_UID, fs_group_change_policy="OnRootMismatch",
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault")))


def build_job(config: KubernetesConfig, job: LaunchRequest, env: Mapping[str, str],
              suspend: bool = True, client_cert: bool = False) -> client.V1Job:
    """The attempt's Job; ``env`` is the manager's worker environment (token included).
    ``client_cert``: the server wants mutual TLS, so the worker presents the tls_secret's
    tls.crt and tls.key."""
    name = job_object_name(job.job_id, job.attempt)
    indexed = config.nodes > 1
    policy = client.V1PodFailurePolicy(rules=[
        client.V1PodFailurePolicyRule(action="FailJob", on_exit_codes=(
            client.V1PodFailurePolicyOnExitCodesRequirement(
                container_name="worker", operator="In", values=FAIL_JOB_EXIT_CODES))),
        # Evictions, preemption and node drains do not use up the backoff limit.
        client.V1PodFailurePolicyRule(action="Ignore", on_pod_conditions=[
            client.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget",
                                                            status="True")])])
    return client.V1Job(
        api_version="batch/v1", kind="Job",
        metadata=client.V1ObjectMeta(name=name, labels=_labels(job)),
        spec=client.V1JobSpec(
            suspend=suspend, backoff_limit=config.backoff_limit, pod_failure_policy=policy,
            pod_replacement_policy="Failed",  # never two pods of one attempt at once
            ttl_seconds_after_finished=config.ttl_after_finished_s,
            active_deadline_seconds=config.active_deadline_s or None,
            completion_mode="Indexed" if indexed else "NonIndexed",
            completions=config.nodes, parallelism=config.nodes,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=_labels(job)),
                spec=_pod_spec(config, name, env, client_cert))))


def _owned_meta(name: str, job: LaunchRequest, owner: client.V1Job | None) -> client.V1ObjectMeta:
    refs = None
    if owner is not None:
        refs = [client.V1OwnerReference(api_version="batch/v1", kind="Job",
                                        name=owner.metadata.name, uid=owner.metadata.uid)]
    return client.V1ObjectMeta(name=name, labels=_labels(job), owner_references=refs)


def build_token_secret(job: LaunchRequest, token: str,
                       owner: client.V1Job | None = None) -> client.V1Secret:
    """The attempt's token, read by the worker as ``worker_contract.ENV_JOB_TOKEN``."""
    name = job_object_name(job.job_id, job.attempt) + "-token"
    return client.V1Secret(api_version="v1", kind="Secret", type="Opaque", immutable=True,
                           metadata=_owned_meta(name, job, owner), string_data={"token": token})


def build_rendezvous_service(config: KubernetesConfig, job: LaunchRequest,
                             owner: client.V1Job | None = None) -> client.V1Service:
    """Headless Service giving the Indexed Job's pods DNS names (``<job>-<index>.<job>``)."""
    name = job_object_name(job.job_id, job.attempt)
    selector = {JOB_ID_LABEL: job.job_id, ATTEMPT_LABEL: str(job.attempt)}
    return client.V1Service(
        api_version="v1", kind="Service", metadata=_owned_meta(name, job, owner),
        spec=client.V1ServiceSpec(
            cluster_ip="None", selector=selector, publish_not_ready_addresses=True,
            ports=[client.V1ServicePort(name="rendezvous", port=config.rendezvous_port,
                                        target_port=config.rendezvous_port)]))
