"""How the Kubernetes launcher reads Jobs back, starts, and deletes them.

Statuses are real client objects (V1Job, V1JobStatus, V1JobCondition, V1Pod) shaped as the API
server returns them. No cluster runs here, so the API itself is a fake that keeps objects in
dicts and records every call: the one place in these tests where a fake stands in.
"""

import inspect
import signal
from datetime import datetime, timezone
from pathlib import Path

import pytest

client = pytest.importorskip("kubernetes.client", reason="needs the kubernetes client")

from kubernetes.client.rest import ApiException  # noqa: E402

from service.k8s_launcher import (KubernetesConfig, KubernetesLauncher, LaunchError,  # noqa: E402
                                  job_exit_status)
from service.launcher import LaunchRequest  # noqa: E402
from service.manager import JobManager, ManagerConfig  # noqa: E402
from service.states import JobState  # noqa: E402
from service.store import JobStore  # noqa: E402

CONFIG = {"image": "w:1", "manager_target": "tpet-api:50051", "namespace": "tp",
          "poll_interval_s": 5.0,
          "volumes": [{"claim": "tpet-artifacts", "mount_path": "/var/lib/tpet/artifacts"}]}
REQUEST = LaunchRequest("jabc", 1, Path("/var/lib/tpet/artifacts/jabc"))
ENV = {"TPET_SERVER": "127.0.0.1:1", "TPET_JOB_ID": "jabc", "TPET_JOB_TOKEN": "tok",
       "CUDA_VISIBLE_DEVICES": "k8s0"}
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def v1job(name="tpet-jabc-a1", conditions=(), active=None, succeeded=None, failed=None):
    return client.V1Job(metadata=client.V1ObjectMeta(name=name, uid=f"uid-{name}"),
                        status=client.V1JobStatus(conditions=list(conditions) or None,
                                                  active=active, succeeded=succeeded,
                                                  failed=failed))


def condition(type_, reason=None, message=None, status="True"):
    return client.V1JobCondition(type=type_, status=status, reason=reason, message=message,
                                 last_transition_time=T0)


def pod(exit_code, reason="Error", message="", minute=0):
    terminated = client.V1ContainerStateTerminated(
        exit_code=exit_code, reason=reason, message=message,
        finished_at=T0.replace(minute=minute))
    return client.V1Pod(metadata=client.V1ObjectMeta(name=f"p{minute}"), status=client.V1PodStatus(
        container_statuses=[client.V1ContainerStatus(
            name="worker", image="w:1", image_id="", ready=False, restart_count=0,
            state=client.V1ContainerState(terminated=terminated))]))


class FakeApi:
    """BatchV1Api and CoreV1Api in one: objects in dicts, every call recorded."""

    def __init__(self, fail_on=()):
        self.calls, self.jobs, self.pods, self.fail_on = [], {}, [], set(fail_on)

    def _call(self, name, *args, options, **kwargs):
        # The manager holds its lock around launcher calls: none may wait forever.
        assert options == {"_request_timeout": 10}, f"{name} without a timeout"
        self.calls.append((name, *args, kwargs))
        if name in self.fail_on:
            raise ApiException(status=403, reason="Forbidden")

    def create_namespaced_job(self, namespace, body, **options):
        self._call("create_job", namespace, body.metadata.name, options=options,
                   suspend=body.spec.suspend)
        body.metadata.uid = f"uid-{body.metadata.name}"
        self.jobs[body.metadata.name] = body
        return body

    def create_namespaced_secret(self, namespace, body, **options):
        self._call("create_secret", namespace, body.metadata.name, options=options,
                   owner=body.metadata.owner_references[0].uid)

    def create_namespaced_service(self, namespace, body, **options):
        self._call("create_service", namespace, body.metadata.name, options=options)

    def patch_namespaced_job(self, name, namespace, body, **options):
        self._call("patch_job", name, namespace, options=options, body=body)

    def list_namespaced_job(self, namespace, *, label_selector, **options):
        self._call("list_jobs", namespace, options=options, label_selector=label_selector)
        return client.V1JobList(items=list(self.jobs.values()))

    def read_namespaced_job_status(self, name, namespace, **options):
        self._call("read_job", name, namespace, options=options)
        if name not in self.jobs:
            raise ApiException(status=404, reason="Not Found")
        return self.jobs[name]

    def delete_namespaced_job(self, name, namespace, *, body, **options):
        self._call("delete_job", name, namespace, options=options, policy=body.propagation_policy)
        if self.jobs.pop(name, None) is None:
            raise ApiException(status=404, reason="Not Found")

    def list_namespaced_pod(self, namespace, *, label_selector, **options):
        self._call("list_pods", namespace, options=options, label_selector=label_selector)
        return client.V1PodList(items=self.pods)

    def delete_namespaced_pod(self, name, namespace, *, grace_period_seconds, **options):
        self._call("delete_pod", name, namespace, options=options, grace=grace_period_seconds)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def launcher(api=None, **config):
    api = api or FakeApi()
    clock = Clock()
    made = KubernetesLauncher(KubernetesConfig.from_mapping({**CONFIG, **config}), api, api,
                              clock)
    return made, api, clock


def names(api):
    return [c[0] for c in api.calls]


def test_the_fake_takes_the_real_clients_arguments():
    methods = [m for m in vars(FakeApi) if not m.startswith("_")]
    assert len(methods) == 9
    for method in methods:
        real = getattr(client.BatchV1Api, method, None) or getattr(client.CoreV1Api, method)
        real_params = list(inspect.signature(real).parameters)
        fake = inspect.signature(getattr(FakeApi, method)).parameters.values()
        positional = [p.name for p in fake if p.kind is p.POSITIONAL_OR_KEYWORD]
        keywords = [p.name for p in fake if p.kind is p.KEYWORD_ONLY]
        assert positional == real_params[:len(positional)], method
        assert set(keywords) | {"_request_timeout"} <= set(real_params), method


def test_running_and_pending_jobs_have_no_exit_status():
    assert job_exit_status(v1job()) is None
    assert job_exit_status(v1job(active=1)) is None
    # A pod failed and is being replaced within the backoff limit: still running.
    assert job_exit_status(v1job(active=1, failed=1)) is None
    assert job_exit_status(v1job(conditions=[condition("Failed", status="False")])) is None
    # The controller marks FailureTarget before its pods are gone; Failed comes after.
    assert job_exit_status(v1job(conditions=[condition("FailureTarget")], active=1)) is None


def test_complete_job_exits_zero():
    status = job_exit_status(v1job(conditions=[condition("Complete")], succeeded=1))
    assert status.code == 0
    assert status.reason == ("worker exited with code 0 (Kubernetes Job tpet-jabc-a1 "
                             "complete; 1 pod(s) succeeded, 0 failed)")


def test_backoff_limit_names_the_last_failed_container():
    job = v1job(conditions=[condition("Failed", "BackoffLimitExceeded",
                                      "Job has reached the specified backoff limit")], failed=2)
    pods = [pod(1, message="Traceback...\nRuntimeError: old", minute=1),
            pod(137, reason="OOMKilled", minute=5)]
    status = job_exit_status(job, pods)
    assert status.code == 137
    assert status.reason == (
        "worker exited with code 137: OOMKilled (Kubernetes Job tpet-jabc-a1 failed, "
        "BackoffLimitExceeded: Job has reached the specified backoff limit; "
        "0 pod(s) succeeded, 2 failed)")


def test_pod_failure_policy_failure_carries_the_last_output_line():
    message = ("Container worker for pod tp/tpet-jabc-a1-x failed with exit code 2 matching "
               "FailJob rule at index 0")
    job = v1job(conditions=[condition("Failed", "PodFailurePolicy", message)], failed=1)
    status = job_exit_status(job, [pod(2, message="worker: 'TPET_JOB_ID' is not set\n")])
    assert status.code == 2
    assert status.reason.startswith("worker exited with code 2: worker: 'TPET_JOB_ID' is not "
                                    f"set (Kubernetes Job tpet-jabc-a1 failed, PodFailurePolicy: "
                                    f"{message}; ")


def test_deadline_exceeded_without_a_failed_container_is_a_lost_worker():
    job = v1job(conditions=[condition("Failed", "DeadlineExceeded",
                                      "Job was active longer than specified deadline")])
    status = job_exit_status(job, [pod(0)])
    assert status.code == 1
    assert status.reason == ("worker lost (Kubernetes Job tpet-jabc-a1 failed, "
                             "DeadlineExceeded: Job was active longer than specified deadline; "
                             "0 pod(s) succeeded, 0 failed)")


def test_start_creates_suspended_job_then_owned_secret_then_resumes():
    made, api, _ = launcher()
    handle = made.start(REQUEST, ENV)
    assert handle.name == "Kubernetes Job tp/tpet-jabc-a1"
    assert api.calls == [
        ("list_jobs", "tp", {"label_selector": "teachers-pet/job-id=jabc"}),
        ("create_job", "tp", "tpet-jabc-a1", {"suspend": True}),
        ("create_secret", "tp", "tpet-jabc-a1-token", {"owner": "uid-tpet-jabc-a1"}),
        ("patch_job", "tpet-jabc-a1", "tp", {"body": {"spec": {"suspend": False}}})]


def test_a_launcher_for_mutual_tls_gives_pods_the_secrets_client_certificate():
    config = KubernetesConfig.from_mapping({**CONFIG, "tls_secret": "tpet-worker-tls"})
    env = {}
    for client_cert in (False, True):
        api = FakeApi()
        KubernetesLauncher(config, api, api, Clock(), client_cert=client_cert).start(
            REQUEST, ENV)
        (job,) = api.jobs.values()
        env[client_cert] = {e.name for e in job.spec.template.spec.containers[0].env}
    assert "TPET_WORKER_TLS_CA" in env[False] & env[True]
    assert "TPET_WORKER_TLS_CERT" not in env[False]
    assert {"TPET_WORKER_TLS_CERT", "TPET_WORKER_TLS_KEY"} <= env[True]


def test_start_deletes_jobs_of_earlier_attempts_and_adds_a_rendezvous_for_nodes():
    made, api, _ = launcher(nodes=2)
    api.jobs["tpet-jabc-a1"] = v1job()  # left by a server that died
    made.start(LaunchRequest("jabc", 2, REQUEST.output_dir), ENV)
    assert ("delete_job", "tpet-jabc-a1", "tp", {"policy": "Foreground"}) in api.calls
    assert names(api) == ["list_jobs", "delete_job", "create_job", "create_secret",
                          "create_service", "patch_job"]


def test_start_failure_is_an_oserror_and_removes_the_half_made_job():
    made, api, _ = launcher(api=FakeApi(fail_on={"create_secret"}))
    with pytest.raises(OSError, match=r"cannot start Kubernetes Job tp/tpet-jabc-a1: 403 "
                                      "Forbidden"):
        made.start(REQUEST, ENV)
    assert names(api)[-1] == "delete_job" and api.jobs == {}


def test_start_refuses_an_output_dir_on_no_shared_volume():
    made, api, _ = launcher(volumes=[{"claim": "c", "mount_path": "/elsewhere"}])
    with pytest.raises(LaunchError, match="output_dir /var/lib/tpet/artifacts/jabc is on no "
                                          "volume"):
        made.start(REQUEST, ENV)
    assert api.calls == []


def test_poll_asks_the_api_at_most_every_poll_interval():
    made, api, clock = launcher()
    handle = made.start(REQUEST, ENV)
    api.calls.clear()
    assert made.poll(handle) is None and made.poll(handle) is None
    clock.now += 4.9
    assert made.poll(handle) is None
    assert names(api) == ["read_job"]
    clock.now += 0.2
    api.jobs[handle.job_name].status = client.V1JobStatus(
        conditions=[condition("Complete")], succeeded=1)
    assert made.poll(handle).code == 0
    assert names(api) == ["read_job", "read_job"]  # success needs no pod lookup


def test_poll_reads_the_failed_pods_and_survives_api_errors():
    made, api, clock = launcher()
    handle = made.start(REQUEST, ENV)
    api.pods = [pod(137, reason="OOMKilled")]
    api.jobs[handle.job_name].status = client.V1JobStatus(
        conditions=[condition("Failed", "BackoffLimitExceeded")], failed=1)
    api.fail_on = {"read_job"}
    assert made.poll(handle) is None  # logged; the next poll tries again
    api.fail_on = set()
    clock.now += 5
    status = made.poll(handle)
    assert status.code == 137 and "OOMKilled" in status.reason
    assert api.calls[-1] == ("list_pods", "tp", {
        "label_selector": "teachers-pet/job-id=jabc,teachers-pet/attempt=1"})


def test_kill_deletes_in_the_foreground_and_force_deletes_pods_at_once():
    made, api, clock = launcher()
    handle = made.start(REQUEST, ENV)
    api.pods = [pod(0)]
    api.calls.clear()
    made.kill(handle)
    assert api.calls == [("delete_job", "tpet-jabc-a1", "tp", {"policy": "Foreground"})]
    made.kill(handle, force=True)
    assert api.calls[-1] == ("delete_pod", "p0", "tp", {"grace": 0})
    status = made.poll(handle)  # kill resets the poll timer: the Job is gone at once
    assert status.code == -signal.SIGKILL
    assert status.reason == ("worker killed by signal SIGKILL (Kubernetes Job tp/tpet-jabc-a1 "
                             "deleted by the service)")


def test_a_job_deleted_by_someone_else_is_reported_as_such():
    made, api, clock = launcher()
    handle = made.start(REQUEST, ENV)
    del api.jobs[handle.job_name]
    assert made.poll(handle).reason.endswith("deleted outside the service)")


def test_manager_cancels_through_the_launcher(tmp_path):
    """The launcher fits the manager: launch, cancel, force after the grace, reap."""
    store = JobStore(tmp_path / "store.db")
    made, api, clock = launcher(volumes=[{"claim": "a", "mount_path": str(tmp_path)}],
                                poll_interval_s=0.0)
    manager = JobManager(store, made, ManagerConfig(state_dir=tmp_path, slots=("k8s0",),
                                                    cancel_grace_s=0.0))
    try:
        manager.recover("127.0.0.1:1")
        job = manager.submit({"name": "bars", "teacher": {"path": "t.pt2"}})
        manager.tick()
        assert manager.get(job.id).worker == f"Kubernetes Job tp/tpet-{job.id}-a1"
        manager.cancel(job.id)
        manager.tick()  # past the grace: force kill
        manager.tick()  # the Job is gone: reaped
        final = manager.get(job.id)
        assert final.state is JobState.CANCELLED
        assert final.error == (f"cancelled (worker killed by signal SIGKILL (Kubernetes Job "
                               f"tp/tpet-{job.id}-a1 deleted by the service))")
    finally:
        store.close()
