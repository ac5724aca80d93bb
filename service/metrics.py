"""The job manager's metrics: the hooks it calls, ``NoMetrics``, and ``PrometheusMetrics``.

The manager owns the one metrics object and calls its hooks under its lock; the server exposes
``PrometheusMetrics.registry`` on its own HTTP port and adds ``rpc_interceptor()`` to the gRPC
server. Every label is bounded: per-job series exist only while a job runs (live gauges) or
for the last ``recent_jobs`` finished jobs (subgroup and verdict gauges, at most
``max_subgroups`` subgroups each); stage and subgroup labels that come from workers are capped
(past the cap they count as ``_other``). A finished job's report is read as the typed
``JobReport``, so the guardrail series show exactly the verdicts of its report.json.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections import deque
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from compression.errors import ErrorKind, InvalidInput
from compression.guardrails import GroupResult, StageVerdict
from compression.report import JobReport, blocks
from service.errors import KINDS, kind_named
from service.states import TERMINAL, JobState
from service.store import JobRecord

__all__ = ["Metrics", "NoMetrics", "PrometheusMetrics", "QueueSnapshot", "RpcMetricsInterceptor",
           "HOOKS", "complete", "epoch_fraction", "closest_to_floor", "OTHER"]

log = logging.getLogger("tpet.metrics")
HOOKS = ("job_submitted", "job_transition", "job_changed", "job_reported", "watch_queue")
OTHER = "_other"  # the label value past a cap
STAGE_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200)
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30)
Events = Sequence[tuple[str, str, Mapping[str, Any]]]


@dataclass(frozen=True)
class QueueSnapshot:
    counts: Mapping[str, int]  # jobs by state value, every state present
    oldest_queued_age_s: float  # 0 when nothing is queued
    limit: int  # max_queued


class Metrics(Protocol):
    """What the manager reports. An implementation may define only some hooks: the manager
    wraps it with ``complete``, which makes the missing ones do nothing."""

    def job_submitted(self) -> None: ...

    def job_transition(self, old: JobState, new: JobState) -> None: ...

    def job_changed(self, job: JobRecord, old: JobState) -> None:
        """After every state change, with the job as it is now."""

    def job_reported(self, job_id: str, events: Events, now: float) -> None:
        """A running job's worker reported (kind, stage, payload) events at ``now``."""

    def watch_queue(self, snapshot: Callable[[], QueueSnapshot]) -> None:
        """Read the queue through ``snapshot`` whenever the metrics are collected."""


class NoMetrics:
    def __getattr__(self, name: str) -> Callable[..., None]:
        if name in HOOKS:
            return _nothing
        raise AttributeError(name)


def _nothing(*args: Any, **kwargs: Any) -> None:
    del args, kwargs


class _Completed:
    def __init__(self, inner: Any):
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name in HOOKS:
            return getattr(self._inner, name, _nothing)
        raise AttributeError(name)


def complete(metrics: Any) -> Metrics:
    """``metrics`` with a do-nothing stand-in for each hook it does not define."""
    return _Completed(metrics)  # type: ignore[return-value]


class _Cap:
    """Admits the first ``limit`` distinct values; ``__call__`` says whether ``value`` is one."""

    def __init__(self, limit: int):
        self.limit, self.seen, self._lock = limit, set(), threading.Lock()

    def __call__(self, value: Any) -> bool:
        with self._lock:
            if value in self.seen or len(self.seen) < self.limit:
                self.seen.add(value)
                return True
        return False


class PrometheusMetrics:
    """Every ``tpet_*`` metric, defined here once, in ``registry`` (a fresh one by default).

    recent_jobs: finished jobs whose per-subgroup gauges are kept (older ones are removed).
    max_subgroups: per job, the subgroups closest to (or below) their floor that are kept.
    max_label_values: distinct (stage, subgroup) pairs of the violations counter before the
    subgroup becomes ``_other`` (stage names of the duration histogram: 64).
    """

    def __init__(self, registry: CollectorRegistry | None = None, recent_jobs: int = 20,
                 max_subgroups: int = 50, max_label_values: int = 500):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.recent_jobs, self.max_subgroups = recent_jobs, max_subgroups
        self._stages, self._pairs = _Cap(64), _Cap(max_label_values)
        self._recent: deque[tuple[str, list[tuple[Gauge, tuple[str, ...]]]]] = deque()
        self._lock = threading.Lock()
        self._snapshot: Callable[[], QueueSnapshot] | None = None
        self._define(self.registry)
        self.registry.register(_QueueCollector(self))

    def _define(self, r: CollectorRegistry) -> None:
        self.submitted = Counter("tpet_jobs_submitted", "Jobs accepted by Compress.",
                                 registry=r)
        self.outcomes = Counter("tpet_job_outcomes", "Jobs that ended, by final state.",
                                ["state"], registry=r)
        for state in sorted(TERMINAL):
            self.outcomes.labels(state.value)  # present at 0, so increase() sees the first
        self.stage_seconds = Histogram("tpet_stage_duration_seconds", "Pipeline stage "
                                       "durations reported by workers.", ["stage"],
                                       buckets=STAGE_BUCKETS, registry=r)
        self.progress = Gauge("tpet_job_progress_ratio", "Running job: fraction of the "
                              "current training stage's epochs done.", ["job_id"], registry=r)
        self.throughput = Gauge("tpet_job_samples_per_second", "Running job: training "
                                "samples per second.", ["job_id"], registry=r)
        self.last_event = Gauge("tpet_job_last_event_timestamp_seconds", "Running job: when "
                                "its worker last reported an event (Unix time).", ["job_id"],
                                registry=r)
        self._define_guardrails(r)
        self.failures = Counter("tpet_job_failures", "Failed jobs by the kind of failure.",
                                ["kind"], registry=r)
        for info in KINDS.values():
            self.failures.labels(info.label)
        self.parity_failures = Counter("tpet_export_parity_failures", "Jobs failed because "
                                       "an exported model did not match the PyTorch one.",
                                       registry=r)
        self.rpc_requests = Counter("tpet_rpc_requests", "gRPC calls by method and status "
                                    "code.", ["service", "method", "code"], registry=r)
        self.rpc_seconds = Histogram("tpet_rpc_duration_seconds", "gRPC call latency (a "
                                     "stream: its whole life).", ["service", "method"],
                                     buckets=RPC_BUCKETS, registry=r)

    def _define_guardrails(self, r: CollectorRegistry) -> None:
        """The finished jobs' subgroup and verdict gauges, and the build info."""
        self.accuracy = Gauge("tpet_subgroup_accuracy_ratio", "Recent finished job: subgroup "
                              "test accuracy at its deciding stage.",
                              ["job_id", "stage", "subgroup"], registry=r)
        self.floor = Gauge("tpet_subgroup_floor_ratio", "Recent finished job: the highest "
                           "floor a guardrail sets for the subgroup.",
                           ["job_id", "stage", "subgroup"], registry=r)
        self.verdicts = Gauge("tpet_guardrail_verdict", "Recent finished job: 1 for each "
                              "guardrail check of its deciding stage, labelled with the rule, "
                              "its verdict and whether that verdict blocks shipping.",
                              ["job_id", "stage", "subgroup", "rule", "verdict", "blocking"],
                              registry=r)
        self.finished_at = Gauge("tpet_job_finished_timestamp_seconds", "Recent finished job "
                                 "with a report: when it ended (Unix time).", ["job_id"],
                                 registry=r)
        Gauge("tpet_build_info", "The running teachers-pet: always 1.",
              ["version", "python", "torch"], registry=r).labels(*_build()).set(1)
        self.violations = Counter("tpet_guardrail_violations", "Subgroups that blocked a "
                                  "stage (below the floor, or too little evidence).",
                                  ["stage", "subgroup"], registry=r)

    # -- the manager's hooks ---------------------------------------------------------------

    def job_submitted(self) -> None:
        self.submitted.inc()

    def job_transition(self, old: JobState, new: JobState) -> None:
        if new in TERMINAL:
            self.outcomes.labels(JobState(new).value).inc()

    def job_changed(self, job: JobRecord, old: JobState) -> None:
        if job.state is JobState.RUNNING:
            self.progress.labels(job.id).set(0)
            self.last_event.labels(job.id).set(job.updated)
        elif old is JobState.RUNNING:
            for gauge in (self.progress, self.throughput, self.last_event):
                _remove(gauge, job.id)
        if job.state in TERMINAL:
            self._finished(job)

    def job_reported(self, job_id: str, events: Events, now: float) -> None:
        for kind, stage, payload in events:
            if kind == "stage_finished" and _number(payload.get("seconds")) is not None:
                label = stage if self._stages(stage) else OTHER
                self.stage_seconds.labels(label).observe(payload["seconds"])
            elif kind == "progress" and payload.get("phase", "train") == "train":
                fraction = epoch_fraction(payload)
                if fraction is not None:
                    self.progress.labels(job_id).set(fraction)
                if _number(payload.get("samples_per_s")) is not None:
                    self.throughput.labels(job_id).set(payload["samples_per_s"])
        if events:
            self.last_event.labels(job_id).set(now)

    def watch_queue(self, snapshot: Callable[[], QueueSnapshot]) -> None:
        self._snapshot = snapshot

    def rpc_interceptor(self) -> grpc.ServerInterceptor:
        return RpcMetricsInterceptor(self.rpc_requests, self.rpc_seconds)

    # -- finished jobs ---------------------------------------------------------------------

    def _finished(self, job: JobRecord) -> None:
        if job.state is JobState.FAILED:
            kind = kind_named(job.error_kind)
            self.failures.labels(KINDS[kind].label).inc()
            if kind is ErrorKind.PARITY_FAILED:
                self.parity_failures.inc()
        report = _report(job)
        if report is None:
            return
        for verdict in report.stages:
            for subgroup in verdict.failing_subgroups:
                self.violations.labels(verdict.stage, subgroup if self._pairs(
                    (verdict.stage, subgroup)) else OTHER).inc()
        if report.deciding_stage is not None:
            self._keep_job(job, report.deciding_stage)

    def _keep_job(self, job: JobRecord, verdict: StageVerdict) -> None:
        """Set the deciding stage's subgroup and verdict gauges; drop those of jobs past
        the window."""
        stage, kept = verdict.stage, [(self.finished_at, (job.id,))]
        self.finished_at.labels(job.id).set(job.updated)
        groups = closest_to_floor(verdict.groups, self.max_subgroups, verdict.failing_subgroups)
        for group in groups:
            labels = (job.id, stage, group.name)
            if group.accuracy is not None:
                self.accuracy.labels(*labels).set(group.accuracy)
            if group.floor is not None:
                self.floor.labels(*labels).set(group.floor)
            kept += [(self.accuracy, labels), (self.floor, labels)]
        names = {g.name for g in groups}
        for check in verdict.checks:
            if check.subgroup in names:
                labels = (job.id, stage, check.subgroup, check.rule, check.verdict,
                          "true" if blocks(verdict, check) else "false")
                self.verdicts.labels(*labels).set(1)
                kept.append((self.verdicts, labels))
        with self._lock:
            self._recent.append((job.id, kept))
            while len(self._recent) > self.recent_jobs:
                for metric, labels in self._recent.popleft()[1]:
                    _remove(metric, *labels)

    def snapshot(self) -> QueueSnapshot | None:
        if self._snapshot is None:
            return None
        try:
            return self._snapshot()
        except Exception:  # a closed store at shutdown: report nothing rather than fail
            log.debug("queue snapshot failed", exc_info=True)
            return None


class _QueueCollector:
    """Jobs by state and the queue, read from the store at each scrape (never drifts)."""

    def __init__(self, metrics: PrometheusMetrics):
        self.metrics = metrics

    def describe(self) -> list:
        return []  # collected lazily: the registry must not call collect() at register

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.metrics.snapshot()
        if snap is None:
            return
        jobs = GaugeMetricFamily("tpet_jobs", "Jobs in the store by state.", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], snap.counts.get(state.value, 0))
        yield jobs
        yield GaugeMetricFamily("tpet_queue_depth", "Jobs waiting for a slot (QUEUED).",
                                value=snap.counts.get(JobState.QUEUED.value, 0))
        yield GaugeMetricFamily("tpet_queue_limit", "Queued jobs the server accepts "
                                "(max_queued).", value=snap.limit)
        yield GaugeMetricFamily("tpet_queue_oldest_job_age_seconds", "How long the oldest "
                                "queued job has waited (0: none queued).",
                                value=snap.oldest_queued_age_s)


class RpcMetricsInterceptor(grpc.ServerInterceptor):
    """Counts every call by method and status code and times it. It must come first in the
    chain so that it sees the codes the error interceptor and authentication set."""

    def __init__(self, requests: Counter, seconds: Histogram):
        self.requests, self.seconds = requests, seconds

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:  # unknown methods: no label for names a client made up
            return None
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behavior = getattr(handler, kind)
            if behavior is not None:
                wrap = _stream if kind.endswith("_stream") else _unary
                return handler._replace(**{kind: wrap(behavior, self, service, method)})
        return handler

    def observe(self, service: str, method: str, code: str, start: float) -> None:
        self.requests.labels(service, method, code).inc()
        self.seconds.labels(service, method).observe(time.perf_counter() - start)


def _unary(behavior: Callable, rpc: RpcMetricsInterceptor, service: str, method: str) -> Callable:
    def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
        start, failed = time.perf_counter(), True
        try:
            response = behavior(request, context)
            failed = False
            return response
        finally:
            rpc.observe(service, method, _code(context, failed), start)
    return wrapped


def _stream(behavior: Callable, rpc: RpcMetricsInterceptor, service: str,
            method: str) -> Callable:
    def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        start, code = time.perf_counter(), None
        try:
            yield from behavior(request, context)
            code = _code(context, failed=False)
        except GeneratorExit:  # the client went away mid-stream
            code = "CANCELLED"
            raise
        finally:
            rpc.observe(service, method, code or _code(context, failed=True), start)
    return wrapped


def _code(context: grpc.ServicerContext, failed: bool) -> str:
    code = context.code()
    if code is None:
        return "UNKNOWN" if failed else "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


def epoch_fraction(payload: Mapping[str, Any]) -> float | None:
    """Progress through a training stage: (epoch - 1 + step / steps) / epochs, epochs 1-based;
    None when the payload lacks the numbers."""
    epoch, epochs = _number(payload.get("epoch")), _number(payload.get("epochs"))
    step, steps = _number(payload.get("step")), _number(payload.get("steps"))
    if epoch is None or not epochs:
        return None
    within = step / steps if step is not None and steps else 1.0
    return min(1.0, max(0.0, (epoch - 1 + within) / epochs))


def closest_to_floor(groups: Sequence[GroupResult], limit: int,
                     first: Sequence[str] = ()) -> list[GroupResult]:
    """The ``limit`` subgroups to show: those named in ``first`` (the ones blocking the stage),
    then the smallest accuracy - floor (no floor: accuracy itself; no accuracy: last); in
    their original order."""
    blocking = set(first)

    def key(item: tuple[int, GroupResult]) -> tuple[bool, float, int]:
        g = item[1]
        margin = float("inf") if g.accuracy is None else g.accuracy - (g.floor or 0.0)
        return g.name not in blocking, margin, item[0]
    chosen = sorted(sorted(enumerate(groups), key=key)[:limit])
    return [g for _, g in chosen]


def _report(job: JobRecord) -> JobReport | None:
    if not job.report_json:
        return None
    try:
        return JobReport.from_json(job.report_json)
    except InvalidInput as exc:  # say why, once per job: its guardrail series stay unset
        log.warning("job %s: unreadable report, no guardrail metrics: %s", job.id, exc)
        return None


def _build() -> tuple[str, str, str]:
    try:
        version = metadata.version("teachers-pet")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        version = "unknown"
    import torch  # already loaded: the job report reads evaluation types that use it

    return version, platform.python_version(), torch.__version__


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _remove(metric: Any, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:  # never set (e.g. a job that reported nothing)
        pass
