"""The CLI commands that run or talk to a server: serve, compress, jobs, watch, cancel, report.

``--server`` (or ``$TPET_SERVER``, default 127.0.0.1:50051) picks the server; ``--token-file``
(or ``--token``, ``$TPET_TOKEN``, ``$TPET_TOKEN_FILE``) gives its bearer token when it has one;
``--tls-ca`` (and ``--tls-cert``/``--tls-key`` for mutual TLS) talk TLS to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import textwrap
import threading
from datetime import datetime
from typing import Any

from compression.errors import ErrorKind
from compression.events import Event
from service.cli import EXIT_FAILED, EXIT_OK, EXIT_REJECTED, add_set_flag, job_data
from service.client import TpetClient, job_state
from service.errors import KINDS, FailedPrecondition, kind_named
from service.progress import ProgressPrinter
from service.states import JobState

__all__ = ["add_server_commands", "exit_code_of_job", "format_jobs"]

_MIN_ERROR_WIDTH = 30  # narrower: reasons go below their job's row, where they have room


def exit_code_of_job(job: Any) -> int:
    """0 succeeded, 3 rejected; a failed job exits by the kind of its failure (2 for input the
    worker found wrong or not allowed, 4 otherwise), a cancelled one 5."""
    state = job_state(job)
    if state is JobState.SUCCEEDED:
        return EXIT_OK
    if state is JobState.REJECTED:
        return EXIT_REJECTED
    if state is JobState.CANCELLED:
        return KINDS[ErrorKind.CANCELLED].exit_code
    if state is JobState.FAILED:
        return KINDS[kind_named(job.error_kind)].exit_code
    return EXIT_FAILED  # not finished: whoever waited for its end did not see one


def cmd_serve(args: argparse.Namespace, stop: Any) -> int:
    from service.config import load_config
    from service.server import start_server

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(args.config, host=args.host, port=args.port, state_dir=args.state_dir,
                         metrics_port=args.metrics_port, data_roots=args.data_root)
    server = start_server(config)
    if server.metrics_port is not None:
        print(f"tpet: metrics on http://{config.metrics_host}:{server.metrics_port}/metrics",
              file=sys.stderr)
    print(f"tpet: serving on {server.address} (state in {config.state_dir})", file=sys.stderr,
          flush=True)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    while not done.wait(1.0):
        pass
    print("tpet: stopping", file=sys.stderr, flush=True)
    server.stop()
    return EXIT_OK


def cmd_compress(args: argparse.Namespace, stop: Any) -> int:
    from service.convert import dict_to_proto

    spec = dict_to_proto(job_data(args.job, args.overrides), f"job file {args.job}")
    with _client(args) as client:
        job = client.compress(spec, request_id=args.request_id)
        print(job.id, flush=True)
        print(f"job {job.id} ({job.name}) {job_state(job).value}", file=sys.stderr)
        return _follow(client, job.id) if args.wait else EXIT_OK


def cmd_watch(args: argparse.Namespace, stop: Any) -> int:
    with _client(args) as client:
        return _follow(client, args.job_id)


def cmd_cancel(args: argparse.Namespace, stop: Any) -> int:
    with _client(args) as client:
        job = client.cancel(args.job_id)
        note = " (cancel requested; it stops at its next step)" if job.cancel_requested and \
            job_state(job) is JobState.RUNNING else ""
        print(f"job {job.id} {job_state(job).value}{note}")
        return EXIT_OK


def cmd_jobs(args: argparse.Namespace, stop: Any) -> int:
    with _client(args) as client:
        jobs = list(client.list_jobs(args.state or ()))
    print(format_jobs(jobs, shutil.get_terminal_size((120, 24)).columns))
    return EXIT_OK


def format_jobs(jobs: list[Any], columns: int) -> str:
    """A table of ``jobs`` fitting ``columns``; the last column, why a job failed or was
    rejected, is given whole: wrapped under itself, each of its lines kept (on a terminal too
    narrow for that, under the job's row)."""
    header = ["ID", "NAME", "STATE", "STAGE", "ATTEMPTS", "CREATED", "REASON"]
    rows = [[j.id, j.name, job_state(j).value, j.stage or "-", str(j.attempts),
             datetime.fromtimestamp(j.create_time.seconds).strftime("%Y-%m-%d %H:%M:%S")]
            for j in jobs]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    beside = sum(widths) + 2 * len(widths)
    below = columns - beside - 1 < _MIN_ERROR_WIDTH
    indent = 4 if below else beside
    width = max(_MIN_ERROR_WIDTH, columns - indent - 1)
    lines = [_cells(header[:-1], widths) + ("" if below else header[-1])]
    for row, job in zip(rows, jobs):
        reason = _wrapped(job.error, width)
        first = "" if below or not reason else reason.pop(0)
        lines.append((_cells(row, widths) + first).rstrip())
        lines += [" " * indent + more for more in reason]
    return "\n".join(lines)


def _cells(row: list[str], widths: list[int]) -> str:
    return "".join(c.ljust(w) + "  " for c, w in zip(row, widths))


def _wrapped(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width``; its own lines (a problem list) stay lines, and
    a wrapped line continues indented under its start."""
    out: list[str] = []
    for line in text.splitlines():
        lead = line[:len(line) - len(line.lstrip())]
        out += textwrap.wrap(line, width, initial_indent="", subsequent_indent=lead + "  ",
                             drop_whitespace=True, break_on_hyphens=False) or [""]
    return out


def cmd_report(args: argparse.Namespace, stop: Any) -> int:
    from service.convert_result import describe_result
    from service.report_view import format_report  # imports torch: only for this command

    with _client(args) as client:
        job = client.get_job(args.job_id)
    if not job.report_json:
        raise FailedPrecondition(f"job {job.id} has no report ({job_state(job).value}"
                                 f"{': ' + job.error if job.error else ''})")
    if args.json:
        print(job.report_json)
        return exit_code_of_job(job)
    result = f"{describe_result(job.result)}\n\n" if job.HasField("result") else ""
    print(f"{format_report(json.loads(job.report_json))}\n\n{result}"
          f"job {job.id}: {job_state(job).value}\nartifacts: {job.output_dir}")
    return exit_code_of_job(job)


def _client(args: argparse.Namespace) -> TpetClient:
    from service.security import ClientTls, load_token

    token = load_token(args.token_file) if args.token_file else args.token
    env = ClientTls.from_env()  # flags override the environment one setting at a time
    tls = (ClientTls(args.tls_ca or (env and env.ca_file) or "",
                     args.tls_cert or (env and env.cert_file) or "",
                     args.tls_key or (env and env.key_file) or "")
           if args.tls_ca or args.tls_cert or args.tls_key else env)
    return TpetClient(args.server, token, tls=tls)


def _follow(client: TpetClient, job_id: str) -> int:
    """Print the job's progress until it ends, then how it ended and why (on stderr: stdout
    holds only what `compress` prints, the job's id); the exit code says how it ended."""
    printer = ProgressPrinter()
    try:
        for event in client.watch(job_id):
            printer(_library_event(event))
    except KeyboardInterrupt:
        printer.close()
        print(f"\nstopped watching; job {job_id} goes on (`tpet cancel {job_id}` stops it)",
              file=sys.stderr)
        raise
    printer.close()
    job = client.get_job(job_id)
    print(_ending(job), file=sys.stderr)
    return exit_code_of_job(job)


def _ending(job: Any) -> str:
    """``job <id>: STATE``, the kind of a failure, and the whole reason when there is one
    (a rejected job's too: its worker records the guardrails' verdict as its error)."""
    state = job_state(job)
    kind = f" ({job.error_kind})" if state is JobState.FAILED and job.error_kind else ""
    return f"job {job.id}: {state.value}{kind}" + (f"\n{job.error}" if job.error else "")


def _library_event(event: Any) -> Event:
    from service.convert import struct_to_dict

    payload = struct_to_dict(event.payload)
    if event.kind == "state":  # the printer knows library events; say state changes as logs
        details = payload.get("reason") or payload.get("error") or ""
        message = f"job {payload.get('state')}" + (f": {details}" if details else "")
        return Event("log", event.stage, {"message": message})
    return Event(event.kind, event.stage, payload)


def _add_connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", help="host:port (default $TPET_SERVER or 127.0.0.1:50051)")
    p.add_argument("--token", help="the server's bearer token (default $TPET_TOKEN); "
                                   "prefer --token-file: arguments show in `ps`")
    p.add_argument("--token-file", help="a file holding the token (default $TPET_TOKEN_FILE)")
    p.add_argument("--tls-ca", help="talk TLS, trusting this CA (default $TPET_TLS_CA)")
    p.add_argument("--tls-cert", help="client certificate for mutual TLS ($TPET_TLS_CERT)")
    p.add_argument("--tls-key", help="its private key ($TPET_TLS_KEY)")


def add_server_commands(sub: Any) -> None:
    """Register the server commands on the ``tpet`` subparsers."""
    p = sub.add_parser("serve", help="run the Compress gRPC server")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 50051; 0: any free port)")
    p.add_argument("--state-dir", help="job store and artifacts (default ./state)")
    p.add_argument("--config", help="server config YAML (see docs/operations.md)")
    p.add_argument("--metrics-port", type=int,
                   help="Prometheus /metrics port (default 9464; 0: any free port, -1: none)")
    p.add_argument("--data-root", action="append",
                   help="a directory jobs may read from (repeatable; default: the working "
                        "directory and /usr/share/datasets)")
    p.set_defaults(func=cmd_serve, local=False)

    for name, func, help_text in (
            ("compress", cmd_compress, "submit a job to the server"),
            ("jobs", cmd_jobs, "list the server's jobs"),
            ("watch", cmd_watch, "follow a job's progress until it ends"),
            ("cancel", cmd_cancel, "cancel a job"),
            ("report", cmd_report, "print a finished job's report")):
        p = sub.add_parser(name, help=help_text)
        _add_connection_flags(p)
        p.set_defaults(func=func, local=False)
        if name == "compress":
            p.add_argument("job", help="job file (YAML)")
            add_set_flag(p)
            p.add_argument("--wait", action="store_true", help="follow it; exit by its end")
            p.add_argument("--request-id", help="idempotency key (default: a new UUID)")
        elif name == "jobs":
            p.add_argument("--state", action="append", choices=[s.value for s in JobState],
                           help="only jobs in this state (repeatable)")
        else:
            p.add_argument("job_id", help="the job's id (from `tpet compress` or `tpet jobs`)")
        if name == "report":
            p.add_argument("--json", action="store_true", help="print the JSON report")
