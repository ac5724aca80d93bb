"""Workers as Kubernetes Jobs: one batch/v1 Job per attempt, in the server's namespace.

``start`` creates the attempt's Job suspended (``service.k8s_objects``), then its token Secret
(and, for several nodes, the rendezvous Service) owned by the Job, then resumes it: no pod starts
without its token, and deleting the Job (cancel, TTL) deletes what it owns. ``poll`` reads the
Job's conditions at most every ``poll_interval_s`` (the manager asks every 0.2 s); ``kill``
deletes the Job with foreground propagation, and ``force`` also deletes its pods with no grace
period. API errors while starting become ``OSError`` (the manager fails that job); while polling
or killing they are logged and the next call tries again.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

from kubernetes import client
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from compression.errors import InvalidInput
from service.k8s_objects import (ATTEMPT_LABEL, JOB_ID_LABEL, KubernetesConfig, build_job,
                                 build_rendezvous_service, build_token_secret, job_object_name)
from service.launcher import ExitStatus, LaunchRequest, exit_reason
from service.worker_contract import ENV_JOB_TOKEN

__all__ = ["KubernetesLauncher", "KubernetesHandle", "KubernetesConfig", "LaunchError",
           "job_exit_status"]

log = logging.getLogger("tpet.k8s")
# Every call has a deadline: the manager holds its lock around launcher calls.
_TIMEOUT_S = 10
_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class LaunchError(OSError):
    """The Kubernetes API refused, or could not be reached, while starting a worker."""


def job_exit_status(job: client.V1Job, pods: list[client.V1Pod] = ()) -> ExitStatus | None:
    """None while the Job runs; how it ended once it is Complete or Failed.

    ``pods``: the Job's pods, to name the failed container's exit code and last output line.
    """
    status = job.status or client.V1JobStatus()
    ended = {c.type: c for c in status.conditions or [] if c.status == "True"}
    name = job.metadata.name
    counts = f"{status.succeeded or 0} pod(s) succeeded, {status.failed or 0} failed"
    if "Complete" in ended:
        return ExitStatus(0, f"worker exited with code 0 (Kubernetes Job {name} complete; "
                             f"{counts})")
    if "Failed" not in ended:
        return None  # running, pending, or replacing a failed pod within the backoff limit
    condition = ended["Failed"]
    why = f"{condition.reason or 'Failed'}: {condition.message}" if condition.message else (
        condition.reason or "Failed")
    job_part = f"Kubernetes Job {name} failed, {why}; {counts}"
    container = _failed_container(pods)
    if container is None:  # e.g. the deadline passed, or its pods are gone
        return ExitStatus(1, f"worker lost ({job_part})")
    code, last = container
    return ExitStatus(code, f"{exit_reason(code, last)} ({job_part})")


def _failed_container(pods: list[client.V1Pod]) -> tuple[int, str] | None:
    """Exit code and a short account of the latest failed worker container."""
    ended = [s.state.terminated for p in pods for s in (p.status and
             p.status.container_statuses or []) if s.state and s.state.terminated
             and s.state.terminated.exit_code]
    if not ended:
        return None
    last = max(ended, key=lambda t: (t.finished_at is not None, t.finished_at or 0))
    lines = (last.message or "").strip().splitlines()
    tail = lines[-1].strip()[:500] if lines else ""
    reason = last.reason if last.reason and last.reason != "Error" else ""
    return last.exit_code, "; ".join(s for s in (reason, tail) if s)


@dataclass
class KubernetesHandle:
    job_name: str
    namespace: str
    job_id: str
    next_poll: float = 0.0
    killed_with: int = 0  # the signal kill() stood for, once it deleted the Job

    @property
    def name(self) -> str:
        return f"Kubernetes Job {self.namespace}/{self.job_name}"


class KubernetesLauncher:
    """The ``Launcher`` protocol over the Kubernetes API (``batch``: BatchV1Api, ``core``:
    CoreV1Api; tests pass recording fakes, since no cluster runs there). ``client_cert``: the
    server requires client certificates (mutual TLS), so pods present the tls_secret's."""

    def __init__(self, config: KubernetesConfig, batch: Any, core: Any,
                 clock: Callable[[], float] = time.monotonic, client_cert: bool = False):
        self.config, self.batch, self.core, self.clock = config, batch, core, clock
        self.client_cert = client_cert
        self.namespace = config.namespace or _own_namespace()

    @classmethod
    def from_config(cls, data: Mapping[str, Any] | None,
                    client_cert: bool = False) -> KubernetesLauncher:
        """From the ``kubernetes:`` block, with in-cluster credentials (else ``KUBECONFIG``)."""
        from kubernetes import config as kube_config

        config = KubernetesConfig.from_mapping(data)
        try:
            kube_config.load_incluster_config()
        except kube_config.ConfigException:
            try:
                kube_config.load_kube_config()
            except (kube_config.ConfigException, OSError) as exc:
                raise InvalidInput(f"launcher kubernetes: no credentials for the Kubernetes API "
                                   f"({exc}); run the server in a pod with a service account, "
                                   "or set KUBECONFIG") from exc
        api = client.ApiClient()
        return cls(config, client.BatchV1Api(api), client.CoreV1Api(api),
                   client_cert=client_cert)

    def start(self, job: LaunchRequest, env: Mapping[str, str]) -> KubernetesHandle:
        self._check_output_dir(job.output_dir)
        name, ns = job_object_name(job.job_id, job.attempt), self.namespace
        try:
            self._delete_stale(job.job_id, keep=name)
            created = self.batch.create_namespaced_job(
                ns, build_job(self.config, job, env, client_cert=self.client_cert),
                _request_timeout=_TIMEOUT_S)
            try:
                self.core.create_namespaced_secret(
                    ns, build_token_secret(job, env[ENV_JOB_TOKEN], created),
                    _request_timeout=_TIMEOUT_S)
                if self.config.nodes > 1:
                    self.core.create_namespaced_service(
                        ns, build_rendezvous_service(self.config, job, created),
                        _request_timeout=_TIMEOUT_S)
                self.batch.patch_namespaced_job(name, ns, {"spec": {"suspend": False}},
                                                _request_timeout=_TIMEOUT_S)
            except (ApiException, HTTPError):
                self._delete(name)  # takes what it owns along
                raise
        except (ApiException, HTTPError, ValueError) as exc:  # ValueError: a model refused
            raise LaunchError(f"cannot start Kubernetes Job {ns}/{name}: {_api_error(exc)}") \
                from exc
        log.info("started Kubernetes Job %s/%s for job %s", ns, name, job.job_id)
        return KubernetesHandle(name, ns, job.job_id)

    def poll(self, handle: KubernetesHandle) -> ExitStatus | None:
        now = self.clock()
        if now < handle.next_poll:
            return None
        handle.next_poll = now + self.config.poll_interval_s
        try:
            job = self.batch.read_namespaced_job_status(handle.job_name, handle.namespace,
                                                        _request_timeout=_TIMEOUT_S)
            status = job_exit_status(job)
            if status is not None and status.code != 0:  # name the container that failed
                status = job_exit_status(job, self._pods(handle))
            return status
        except ApiException as exc:
            if exc.status == 404:
                return self._gone(handle)
            log.warning("cannot read %s (will retry): %s", handle.name, _api_error(exc))
        except HTTPError as exc:
            log.warning("cannot read %s (will retry): %s", handle.name, exc)
        return None

    def kill(self, handle: KubernetesHandle, force: bool = False) -> None:
        """Delete the Job (its pods first); ``force``: its pods too, with no grace period."""
        if self._delete(handle.job_name):
            handle.killed_with = max(handle.killed_with, int(signal.SIGTERM))
            handle.next_poll = 0.0
        if force:
            for pod in self._pods(handle):
                try:
                    self.core.delete_namespaced_pod(pod.metadata.name, handle.namespace,
                                                    grace_period_seconds=0,
                                                    _request_timeout=_TIMEOUT_S)
                except (ApiException, HTTPError) as exc:
                    if getattr(exc, "status", None) != 404:
                        log.warning("cannot delete pod %s of %s: %s", pod.metadata.name,
                                    handle.name, _api_error(exc))
                        return
            handle.killed_with = int(signal.SIGKILL)

    # -- helpers ---------------------------------------------------------------------------

    def _check_output_dir(self, output_dir: Path) -> None:
        # Without a shared volume the worker would write its artifacts into its own pod.
        path = PurePosixPath(output_dir)
        if not any(path.is_relative_to(v["mount_path"]) for v in self.config.volumes):
            raise LaunchError(f"the job's output_dir {path} is on no volume in "
                              "kubernetes.volumes; mount the artifacts claim at the server's "
                              "state_dir/artifacts (docs/operations.md, Kubernetes)")

    def _delete_stale(self, job_id: str, keep: str) -> None:
        """Delete Jobs of earlier attempts still around (a server that died), so that two
        workers never write into one output folder."""
        stale = self.batch.list_namespaced_job(self.namespace, _request_timeout=_TIMEOUT_S,
                                               label_selector=f"{JOB_ID_LABEL}={job_id}")
        for old in stale.items:
            if old.metadata.name != keep:
                log.info("deleting %s of an earlier attempt of job %s", old.metadata.name, job_id)
                self._delete(old.metadata.name)

    def _delete(self, name: str) -> bool:
        """Delete a Job in the foreground; True when it is deleted or gone."""
        try:
            self.batch.delete_namespaced_job(name, self.namespace, body=client.V1DeleteOptions(
                propagation_policy="Foreground"), _request_timeout=_TIMEOUT_S)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("cannot delete Kubernetes Job %s/%s: %s", self.namespace, name,
                            _api_error(exc))
                return False
        except HTTPError as exc:
            log.warning("cannot delete Kubernetes Job %s/%s: %s", self.namespace, name, exc)
            return False
        return True

    def _pods(self, handle: KubernetesHandle) -> list[client.V1Pod]:
        attempt = handle.job_name.rsplit("-a", 1)[-1]
        selector = f"{JOB_ID_LABEL}={handle.job_id},{ATTEMPT_LABEL}={attempt}"
        try:
            return list(self.core.list_namespaced_pod(handle.namespace, label_selector=selector,
                                                      _request_timeout=_TIMEOUT_S).items)
        except (ApiException, HTTPError) as exc:
            log.warning("cannot list the pods of %s: %s", handle.name, _api_error(exc))
            return []

    def _gone(self, handle: KubernetesHandle) -> ExitStatus:
        code = -(handle.killed_with or int(signal.SIGKILL))
        how = "deleted by the service" if handle.killed_with else "deleted outside the service"
        return ExitStatus(code, f"{exit_reason(code)} ({handle.name} {how})")


def _own_namespace() -> str:
    try:
        return _NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"


def _api_error(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}: {(exc.body or '')[:300]}".rstrip(": ")
    return str(exc)
