"""The "Teacher's pet" reproduction study on Fashion-MNIST, with every mitigation we ship.

One command trains a ResNet teacher per dataset (or reuses it), runs the pipeline for
one_hot, kd at alpha 0.5 / 0.9 / 1.0 and every registered mitigation at alpha 0.9 over
several training seeds, on long-tailed (exp, imbalance 100) and balanced Fashion-MNIST, and
writes docs/results/study.{csv,json}, per-class delta plots and docs/results.md.

    .venv/bin/python bench/study.py                  # everything (resumes finished runs)
    .venv/bin/python bench/study.py --report-only    # rebuild tables, plots and docs only

Runs are resumable: a run whose result.json exists under runs/study/<settings hash>/ is read
back, not trained again. Two worker processes of one torch thread each by default: on a
shared 2-core machine a one-thread process is several times faster than a two-thread one
whose threads wait on each other for cores, and two of them keep both cores busy.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench._study_report import write_outputs  # noqa: E402
from bench._study_runs import (METHODS, StudyConfig, ensure_teacher, log,  # noqa: E402
                               run_cell, run_dir, teacher_summary)

__all__ = ["main"]

DATASETS = ("fmnist_lt", "fmnist_bal")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    d = StudyConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds),
                   help="training seeds (the data split is fixed per dataset)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="student epochs")
    p.add_argument("--student-arch", default=d.student_arch)
    p.add_argument("--student-width", type=float, default=d.student_width)
    p.add_argument("--teacher-arch", default=d.teacher_arch)
    p.add_argument("--teacher-width", type=float, default=d.teacher_width)
    p.add_argument("--teacher-epochs", type=int, default=d.teacher_epochs)
    p.add_argument("--teacher-augment", default=d.teacher_augment,
                   choices=("none", "crop", "crop_flip"))
    p.add_argument("--balanced-max-train", type=int, default=d.balanced_max_train)
    p.add_argument("--jobs", type=int, default=2, help="runs trained at once (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--out", type=Path, default=ROOT / d.out_dir, help="run folders")
    p.add_argument("--results", type=Path, default=ROOT / "docs/results")
    p.add_argument("--doc", type=Path, default=ROOT / "docs/results.md")
    p.add_argument("--teachers-only", action="store_true", help="train the teachers and stop")
    p.add_argument("--report-only", action="store_true",
                   help="no training: rebuild outputs from the runs already finished")
    return p.parse_args(argv)


def _config(args: argparse.Namespace) -> StudyConfig:
    return StudyConfig(
        seeds=tuple(args.seeds), epochs=args.epochs, student_arch=args.student_arch,
        student_width=args.student_width, teacher_arch=args.teacher_arch,
        teacher_width=args.teacher_width, teacher_epochs=args.teacher_epochs,
        teacher_augment=args.teacher_augment, balanced_max_train=args.balanced_max_train,
        out_dir=args.out)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _pool(jobs: int, threads: int) -> ProcessPoolExecutor:
    """Worker processes (spawned: no forked torch state), each on ``threads`` threads."""
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))


def _teachers(config: StudyConfig, datasets: list[str], pool: ProcessPoolExecutor) -> dict:
    futures = {d: pool.submit(ensure_teacher, d, config) for d in datasets}
    return {d: f.result() for d, f in futures.items()}


def _run_all(config: StudyConfig, datasets: list[str],
             pool: ProcessPoolExecutor | None) -> tuple[list[dict], int]:
    """Every (seed, dataset, method) cell, seed-major so a cut-short study has whole seeds;
    returns the run summaries and how many were trained (not reused).

    Without a pool only finished cells are read back (``--report-only``)."""
    cells = [(s, d, m) for s in config.seeds for d in datasets for m in METHODS]
    if pool is None:
        return [run_cell(d, m, s, config)[0] for s, d, m in cells
                if (run_dir(d, m, s, config) / "result.json").exists()], 0
    futures = {pool.submit(run_cell, d, m, s, config): (s, d, m) for s, d, m in cells}
    results, start, trained = [], time.perf_counter(), 0
    for i, future in enumerate(as_completed(futures), 1):
        seed, dataset, method = futures[future]
        summary, reused = future.result()
        results.append(summary)
        trained += not reused
        eta = (time.perf_counter() - start) / trained * (len(cells) - i) if trained else 0.0
        note = "(reused)" if reused else f"{summary['seconds']:.0f} s, eta {eta / 60:.1f} min"
        log(f"[{i}/{len(cells)}] {dataset} {method.label:<27} seed {seed}: "
            f"acc {summary['accuracy']:.4f} worst {min(summary['per_class']):.4f} {note}")
    order = {(s, d, m.label): k for k, (s, d, m) in enumerate(cells)}
    return sorted(results, key=lambda r: order[(r["seed"], r["dataset"], r["method"])]), trained


def _invocation(config: StudyConfig, args: argparse.Namespace, seconds: float,
                trained: int) -> dict:
    """The wall time of the last invocation that trained runs (kept across --report-only)."""
    path = config.out_dir / config.tag() / "invocation.json"
    if trained:
        record = {"seconds": seconds, "trained_runs": trained, "jobs": args.jobs,
                  "threads": args.threads, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1))
    return json.loads(path.read_text()) if path.exists() else {}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    config = _config(args)
    start = time.perf_counter()
    log(f"study settings {config.tag()}: {config}; {args.jobs} worker(s) x "
        f"{args.threads} thread(s)")
    if args.report_only:
        teachers = {d: t for d in args.datasets if (t := teacher_summary(d, config))}
        results, trained = _run_all(config, args.datasets, None)
    else:
        with _pool(args.jobs, args.threads) as pool:
            teachers = _teachers(config, args.datasets, pool)
            if args.teachers_only:
                return 0
            results, trained = _run_all(config, args.datasets, pool)
    invocation = _invocation(config, args, time.perf_counter() - start, trained)
    paths = write_outputs(results, teachers, config, args.results, args.doc, invocation)
    log("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
