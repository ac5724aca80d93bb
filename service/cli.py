"""The ``tpet`` command line.

``run`` and ``train-teacher`` work in this process; ``serve`` runs the server and ``compress``,
``jobs``, ``watch``, ``cancel`` and ``report`` talk to it (service/commands.py); ``demo`` starts
a server, submits the example job and follows it (service/demo.py).

Exit codes, for pipelines: 0 succeeded, 2 invalid input (or an input the server does not
allow), 3 rejected by guardrails, 4 failed, 5 cancelled. Every error's kind decides its code
(``service.errors.KINDS``): a full disk is a failure (4), even where the library reports it as
a file it could not write.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from compression.errors import ErrorKind, TpetError
from compression.spec import JobSpec, parse_spec, read_job_file
from service.errors import (EXIT_CANCELLED, EXIT_FAILED, EXIT_INVALID, EXIT_OK, EXIT_REJECTED,
                            KINDS, kind_of)
from service.job_overrides import apply_overrides
from service.progress import ProgressPrinter

__all__ = ["main", "build_parser", "job_data", "version", "EXIT_OK", "EXIT_INVALID",
           "EXIT_REJECTED", "EXIT_FAILED", "EXIT_CANCELLED"]

DEMO_JOB = "examples/fashion_mnist_lt.yaml"


class _StopFlag:
    """Ctrl-C asks the running job to stop at its next check; a second Ctrl-C kills at once."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def install(self) -> None:
        def handler(signum: int, frame: object) -> None:
            del signum, frame
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print("\nstopping after the current step (Ctrl-C again to abort)", file=sys.stderr)
        signal.signal(signal.SIGINT, handler)


def version() -> str:
    """The installed package's version; from pyproject.toml when run from a checkout."""
    try:
        return metadata.version("teachers-pet")
    except metadata.PackageNotFoundError:
        import tomllib

        try:
            with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
                return f"{tomllib.load(f)['project']['version']} (not installed)"
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def job_data(path: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """A job file's plain data with the ``--set`` overrides applied, not yet validated."""
    return apply_overrides(read_job_file(path), overrides or [])


def _job(args: argparse.Namespace) -> JobSpec:
    return parse_spec(job_data(args.job, getattr(args, "overrides", None)))


def cmd_run(args: argparse.Namespace, stop: _StopFlag) -> int:
    from compression import distributed
    from compression.events import emit_nothing
    from compression.pipeline import REJECTED, run
    from service.report_view import as_report, format_report, verdict_reason

    joined = distributed.init_from_env()  # under torchrun every rank trains, rank 0 reports
    printer = ProgressPrinter() if distributed.is_primary() else None
    try:
        result = run(_job(args), printer or emit_nothing, stop)
    finally:
        if printer is not None:  # an error's message starts on a line of its own
            printer.close()
        if joined:
            distributed.shutdown()
    if result is None:  # a rank other than 0: its part is done
        return EXIT_OK
    text = result.report_path.read_text()
    report = as_report(json.loads(text))
    print(text if args.json else f"\n{format_report(report)}\nreport: {result.report_path}")
    if result.status == REJECTED:  # the last line a pipeline's log shows, --json or not
        print(f"rejected: {verdict_reason(report)}", file=sys.stderr)
        return EXIT_REJECTED
    return EXIT_OK


def cmd_train_teacher(args: argparse.Namespace, stop: _StopFlag) -> int:
    from compression.teacher_training import TeacherRecipe, train_teacher

    job = _job(args)
    out = Path(args.out or job.teacher.path)
    recipe = TeacherRecipe(arch=args.arch, width=args.width, epochs=args.epochs,
                           augment=args.augment)
    printer = ProgressPrinter()
    try:
        report = train_teacher(job, recipe, out, printer, stop)
    finally:
        printer.close()
    print(f"\nteacher ({args.arch}) saved to {out}\n{report.format_table()}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, stop: _StopFlag) -> int:
    from service.demo import run_demo

    return run_demo(args.job, stop)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a job in this process (no server)")
    p.add_argument("job", help="job file (YAML)")
    add_set_flag(p)
    p.add_argument("--json", action="store_true", help="print the JSON report")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train-teacher", help="train a teacher on a job's data and save it")
    p.add_argument("job", help="job file whose data section to train on")
    p.add_argument("--arch", default="resnet20", help="model architecture (default resnet20)")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier")
    p.add_argument("--epochs", type=int, help="epochs (default: the job's training.epochs)")
    p.add_argument("--augment", choices=["none", "crop", "crop_flip"],
                   help="augmentation (default: the job's training.augment)")
    p.add_argument("--out", help="output .pt2 (default: the job's teacher.path)")
    p.set_defaults(func=cmd_train_teacher)

    p = sub.add_parser("demo", help="the end-to-end demo on Fashion-MNIST-LT")
    p.add_argument("--job", default=DEMO_JOB, help=f"job file (default {DEMO_JOB})")
    p.set_defaults(func=cmd_demo)

    from service.commands import add_server_commands  # here: it imports this module's codes
    add_server_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop = _StopFlag()
    if getattr(args, "local", True):  # jobs run in this process: Ctrl-C stops them cleanly
        stop.install()
    return _exit_code_of(lambda: args.func(args, stop))


def add_set_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="change a setting of the job file: a dotted key "
                   "and a YAML value, e.g. --set training.epochs=3 (repeatable; applied in "
                   "order, before validation)")


def _exit_code_of(command: Callable[[], int]) -> int:
    """Run ``command``; an error ends it with the exit code of its kind."""
    try:
        return command()
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return KINDS[ErrorKind.CANCELLED].exit_code
    except Exception as exc:
        kind = kind_of(exc)
        if isinstance(exc, TpetError):
            print(_said(kind, exc), file=sys.stderr)
        else:  # an internal bug: keep the traceback, it is ours to fix
            traceback.print_exc()
        return KINDS[kind].exit_code


def _said(kind: ErrorKind, exc: TpetError) -> str:
    """How the error's line starts: the user's to fix, a cancel, or a failure."""
    if KINDS[kind].exit_code == EXIT_INVALID:
        return f"error: {exc}"
    if kind is ErrorKind.CANCELLED:
        return f"cancelled: {exc}" if str(exc) else "cancelled"
    return f"failed: {exc}"


if __name__ == "__main__":
    sys.exit(main())
