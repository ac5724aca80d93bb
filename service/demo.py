"""`tpet demo`: the main job end to end through the service, on the embedded defaults.

Trains the demo teacher when it is missing, starts a server on 127.0.0.1 (any free port, its
state under runs/demo/), submits the example job through the client, follows its progress and
prints the report, ending with the guardrail verdict and its reason. A job the guardrails
reject is a demo that ran: it exits 0 and says so.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from compression.report import JobReport
from compression.spec import load_job
from compression.teacher_training import TeacherRecipe, train_teacher
from service.cli import EXIT_OK, EXIT_REJECTED
from service.client import TpetClient
from service.commands import _follow
from service.config import ServerConfig
from service.progress import ProgressPrinter
from service.report_view import format_report, verdict_reason
from service.server import start_server

__all__ = ["run_demo", "DEMO_STATE_DIR"]

DEMO_STATE_DIR = "runs/demo/state"
DEMO_TEACHER = TeacherRecipe(arch="resnet8")


def run_demo(job_path: str, should_stop: Callable[[], bool]) -> int:
    job = load_job(job_path)
    teacher = Path(job.teacher.path)
    if not teacher.exists():
        print(f"no teacher at {teacher}: training a {DEMO_TEACHER.arch} first", file=sys.stderr)
        report = train_teacher(job, DEMO_TEACHER, teacher, ProgressPrinter(), should_stop)
        print(f"teacher accuracy {report.overall.accuracy:.2%}", file=sys.stderr)
    server = start_server(ServerConfig(port=0, metrics_port=0, state_dir=DEMO_STATE_DIR))
    try:
        with TpetClient(server.address) as client:
            submitted = client.compress(job_path)
            print(f"submitted job {submitted.id} to the server at {server.address}",
                  file=sys.stderr)
            code = _follow(client, submitted.id)
            finished = client.get_job(submitted.id)
        if finished.report_json:
            report = JobReport.from_json(finished.report_json)
            print(f"\n{format_report(report)}\n\nartifacts: {finished.output_dir}\n"
                  f"verdict: {report.status}: {verdict_reason(report)}")
        if code == EXIT_REJECTED:  # the gate decided: the demo ran end to end
            print(f"the guardrails rejected this student; `tpet compress --wait` would exit "
                  f"{EXIT_REJECTED} for it", file=sys.stderr)
            return EXIT_OK
        return code
    finally:
        server.stop()
