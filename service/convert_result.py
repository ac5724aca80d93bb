"""A finished job's typed result (``Job.result``), converted from its typed report.

Everything here is read from ``compression.report.JobReport``, the one type every reader of
a report uses, so the result can never say other than report.json: status and deployable
are the report's own derived fields, each stage's verdict is its ``stage_label`` (NOT JUDGED
where no rule applies) and its failing subgroups are the ones its own rule says block it.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

from google.protobuf import struct_pb2

from compression.errors import InvalidInput
from compression.guardrails import StageVerdict
from compression.report import NOT_JUDGED, JobReport, stage_label
from service._proto import compress_pb2

__all__ = ["report_to_result", "result_of", "shipped_file", "input_contract", "describe_result"]

log = logging.getLogger("tpet.service")

_VERDICTS = {"PASS": compress_pb2.VERDICT_PASS, "FAIL": compress_pb2.VERDICT_FAIL,
             "INSUFFICIENT_EVIDENCE": compress_pb2.VERDICT_INSUFFICIENT_EVIDENCE,
             NOT_JUDGED: compress_pb2.VERDICT_NOT_JUDGED}
_STUDENT_FILE = "student.pt2"  # the student stage ships its torch.export program


def result_of(job_id: str, report_json: str, output_dir: str) -> compress_pb2.JobResult | None:
    """The result of a job's stored report; None without one, or when it cannot be read
    (said once in the log; report_json still carries it)."""
    if not report_json:
        return None
    try:
        return report_to_result(JobReport.from_json(report_json), output_dir)
    except InvalidInput as exc:
        log.warning("job %s: unreadable report, no typed result: %s", job_id, exc)
        return None


def report_to_result(report: JobReport, output_dir: str = "") -> compress_pb2.JobResult:
    """``report`` as a ``JobResult``; ``output_dir``: the bundle's folder on the server."""
    result = compress_pb2.JobResult(
        status=compress_pb2.JobState.Value(report.status), deployable=report.deployable,
        stages=[_stage(v) for v in report.stages], summary=report.guardrails.summary)
    if report.shipped is not None:
        result.shipped.CopyFrom(_shipped(report, output_dir))
    return result


def shipped_file(report: JobReport) -> str | None:
    """The bundle file (relative path) of the shipped artifact; None when nothing ships."""
    if report.shipped is None:
        return None
    export = report.exports.get(report.shipped)
    return export.path if export is not None and export.path else _STUDENT_FILE


def input_contract(report: JobReport) -> dict[str, Any]:
    """What a client sends the artifacts: the report's own contract when it states one, else
    (reports written before it did) the one every artifact of such a job takes: float32
    in [0, 1]."""
    if report.input_contract:
        return dict(report.input_contract)
    c, h, w = report.data.input_shape
    return {"dtype": "float32", "shape": ["batch", c, h, w], "layout": "NCHW",
            "channel_order": "gray" if c == 1 else "rgb", "value_range": [0.0, 1.0],
            "preprocess": {}}


def _shipped(report: JobReport, output_dir: str) -> compress_pb2.ShippedArtifact:
    file = shipped_file(report)
    record = report.files.get(file)
    uploaded = ((report.uploads or {}).get("artifacts") or {}).get(file) or {}
    return compress_pb2.ShippedArtifact(
        stage=report.shipped, file=file,
        path=os.path.join(output_dir, file) if output_dir else "",
        uri=uploaded.get("uri", ""),
        sha256=uploaded.get("sha256") or (record.sha256 if record else ""),
        bytes=uploaded.get("bytes") or (record.bytes if record else 0),
        input_contract=_contract(input_contract(report)))


def _contract(data: Mapping[str, Any]) -> compress_pb2.InputContract:
    preprocess = data.get("preprocess")
    return compress_pb2.InputContract(
        dtype=str(data.get("dtype", "")),
        shape=[d for d in data.get("shape", ()) if isinstance(d, int)],  # not "batch"
        layout=str(data.get("layout", "")), channel_order=str(data.get("channel_order", "")),
        value_range=[float(v) for v in data.get("value_range", ())],
        preprocess=_struct(preprocess if isinstance(preprocess, dict) else {}),
        json=json.dumps(dict(data), sort_keys=True))


def _struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(json.loads(json.dumps(data)))  # plain JSON values only
    return struct


def _stage(v: StageVerdict) -> compress_pb2.StageResult:
    failing = set(v.failing_subgroups)
    rules: dict[str, list[str]] = {}
    for check in v.failing_checks:
        if check.subgroup is not None and check.rule not in rules.setdefault(check.subgroup, []):
            rules[check.subgroup].append(check.rule)
    return compress_pb2.StageResult(
        stage=v.stage, verdict=_VERDICTS[stage_label(v)], passed=v.passed,
        failing_subgroups=[
            compress_pb2.SubgroupResult(
                name=g.name, verdict=_VERDICTS[g.verdict or NOT_JUDGED], accuracy=g.accuracy,
                samples=g.n, floor=g.floor, rules=rules.get(g.name, []))
            for g in v.groups if g.name in failing],
        reasons=[check.message for check in v.failing_checks])


def describe_result(result: compress_pb2.JobResult) -> str:
    """The result in the lines ``tpet report`` prints: what ships, where, what it takes, and
    each stage's verdict with the subgroups that block it."""
    status = compress_pb2.JobState.Name(result.status)
    lines = [f"result: {status}, {'deployable' if result.deployable else 'not deployable'}"]
    if result.HasField("shipped"):
        a, c = result.shipped, result.shipped.input_contract
        lines += [f"ships: {a.stage} {a.file} (sha256 {a.sha256}, {a.bytes} bytes)",
                  f"  at: {a.uri or a.path}",
                  f"  input: {c.dtype} [batch, {', '.join(map(str, c.shape))}] {c.layout} "
                  f"{c.channel_order}, values in [{', '.join(f'{v:g}' for v in c.value_range)}]"]
    for s in result.stages:
        verdict = compress_pb2.Verdict.Name(s.verdict).removeprefix("VERDICT_")
        blocking = ", ".join(g.name for g in s.failing_subgroups)
        lines.append(f"  {s.stage}: {verdict}" + (f" (blocked by {blocking})" if blocking
                                                  else ""))
    return "\n".join(lines)
