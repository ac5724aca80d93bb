"""The "Teacher's pet" reproduction study: does distillation harm a subgroup, and does the
recommended configuration (``auto``) remove the harm and keep distillation's gain?

One command builds the data sets, trains every teacher, runs the pipeline for every (case,
method, seed) cell and writes docs/results/study.{csv,json}, per-subgroup delta plots and
docs/results.md. Cases (bench/_study_runs.py): Fashion-MNIST-LT in the present regime (weak
teacher) and the paper's regime (a teacher clearly better than the student), balanced
Fashion-MNIST, long-tailed 8x8 digits, and Fashion-MNIST with a defocused minority, once with a
teacher that saw it and once with one that never did. Methods: one_hot, the teacher-free
rebalanced baselines, kd at alpha 0.5 / 0.9, every registered mitigation and auto.

    .venv/bin/python bench/study.py                  # everything (resumes finished runs)
    .venv/bin/python bench/study.py --report-only    # rebuild tables, plots and docs only
    .venv/bin/python bench/study.py --same-as OTHER  # does another call's --out agree?

Runs are resumable (a finished run is read back). Worker processes of one torch thread each:
on a shared 2-core machine a one-thread process is several times faster than a two-thread one
whose threads wait on each other. A teacher's cells start as soon as it is trained; the
teacher-free cells start at once.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from compression.losses.registry import AUTO  # noqa: E402

from bench._study_auto import derive_auto, verify_derived  # noqa: E402
from bench._study_compare import compare_outcomes  # noqa: E402
from bench._study_report import write_outputs  # noqa: E402
from bench._study_runs import (CASES, REFERENCE, Case, Method, StudyConfig,  # noqa: E402
                               case_teacher_summary, cell_teacher, ensure_case_teacher,
                               methods, probe_sources, run_cell, run_dir,
                               weights_only_students)
from bench._study_teachers import log, memoize_teachers  # noqa: E402

__all__ = ["main"]

Cell = tuple[Case, Method, int]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    d = StudyConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=[c.name for c in CASES],
                   choices=[c.name for c in CASES])
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds),
                   help="training seeds (the data split is fixed per dataset)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="student epochs (Fashion-MNIST)")
    p.add_argument("--paper-teacher-epochs", type=int, default=d.paper_teacher[1],
                   help="epochs of the paper regime's Fashion-MNIST teacher")
    p.add_argument("--student-width", type=float, default=d.student_width,
                   help=f"the {d.student_arch} student's width (channels x width)")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at once (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--device", default=d.device, choices=["cpu", "cuda"],
                   help="where every run and teacher trains (its own run folders)")
    p.add_argument("--out", type=Path, default=ROOT / d.out_dir, help="run folders")
    p.add_argument("--results", type=Path, default=ROOT / "docs/results")
    p.add_argument("--doc", type=Path, default=ROOT / "docs/results.md")
    p.add_argument("--teachers-only", action="store_true", help="train the teachers and stop")
    p.add_argument("--report-only", action="store_true",
                   help="no training: rebuild outputs from the runs already finished")
    p.add_argument("--derive-auto", action="store_true",
                   help="compute the auto cells from their candidates' runs instead of "
                        "training them (the same students; bench/_study_auto.py)")
    p.add_argument("--verify-auto", nargs=2, metavar=("CASE", "SEED"),
                   help="train one derived auto cell through the pipeline and check it gives "
                        "the derived cell's test outcomes")
    p.add_argument("--same-as", type=Path, metavar="OTHER_OUT",
                   help="no training: compare every run's test outcomes with the same run "
                        "under another call's --out (exit 1 unless all agree)")
    return p.parse_args(argv)


def _init_worker(threads: int, study_pid: int) -> None:
    torch.set_num_threads(threads)
    memoize_teachers()
    weights_only_students()
    threading.Thread(target=_exit_with, args=(study_pid,), daemon=True).start()


def _exit_with(study_pid: int, every_s: float = 2.0) -> None:
    """End this worker once the study process is gone (killed, say): nothing would read what
    it trains, and it would go on writing into the study's folders."""
    while os.getppid() == study_pid:
        time.sleep(every_s)
    os._exit(1)


def _pool(jobs: int, threads: int) -> ProcessPoolExecutor:
    """Worker processes (spawned: no forked torch state), each on ``threads`` threads; each
    ends with the study process."""
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads, os.getpid()))


def _cells(cases: list[Case], config: StudyConfig, derive_auto: bool = False
           ) -> tuple[list[Cell], dict[Case, list[Cell]]]:
    """Teacher-free cells (one case per dataset stands for all: they ignore the teacher) and,
    per case, the cells that need its teacher (auto's left out when it is derived);
    seed-major."""
    rows = [m for m in methods() if not (derive_auto and m.label == AUTO)]
    first = {}
    for case in cases:
        first.setdefault(case.dataset, case)
    free = [(first[d], m, s) for s in config.seeds for d, _ in first.items()
            for m in rows if m.teacher_free]
    taught = {c: [(c, m, s) for s in config.seeds for m in rows if not m.teacher_free]
              for c in cases}
    return free, taught


def _schedule(pool: ProcessPoolExecutor, cases: list[Case], config: StudyConfig,
              teachers_only: bool, jobs: int, derive_auto: bool = False
              ) -> tuple[dict[str, dict], list[dict], int]:
    """Run teachers and cells, at most ``jobs`` at a time: every teacher first, then the
    cells in case order, in a case the cells its target check reads (one_hot, the
    rebalanced students, kd at 0.9, auto) for every seed, then the rest, lowest seed first;
    a cell waits for its teacher, and for the cells whose probe runs it reuses
    (``probe_sources``), which start before the other rows of their seed; cases that share a
    teacher file train it once. Teachers are the longest tasks: started last, one would leave
    a worker idle at the end while the cells of its case wait for it. A study cut short has
    whole cases, and within a case the target check first.
    Returns (teacher summaries, run summaries, runs trained)."""
    free, taught = _cells(cases, config, derive_auto)
    rank = {c: i for i, c in enumerate(cases)}
    order = {m.label: i for i, m in enumerate(methods())}
    leads = {m.label for c in cases for r in methods() for _, m in probe_sources(c, r)}
    ready: list[tuple] = [("teacher", c) for c in cases]
    if not teachers_only:
        ready += [("cell", cell) for cell in free]
    total = len(free) + sum(map(len, taught.values()))
    pending: dict[Future, tuple[str, object]] = {}
    planned = {_key(cell) for cells in taught.values() for cell in cells}
    finished: set[tuple] = set()

    def blocked(task: tuple) -> bool:
        kind, item = task
        if kind == "teacher":
            return any(k == "teacher" and cell_teacher(c, config) == cell_teacher(item, config)
                       for k, c in pending.values())
        case, method, seed = item
        return any(_key((c, m, seed)) in planned - finished
                   for c, m in probe_sources(case, method))

    teachers, results, trained, start = {}, [], 0, time.perf_counter()
    while pending or ready:
        while len(pending) < jobs and (runnable := [t for t in ready if not blocked(t)]):
            task = min(runnable, key=lambda t: _priority(t, rank, order, leads))
            ready.remove(task)
            kind, item = task
            future = (pool.submit(ensure_case_teacher, item, config) if kind == "teacher"
                      else pool.submit(run_cell, *item, config))
            pending[future] = task
        assert pending, "every task left waits for one that is not scheduled"
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            kind, item = pending.pop(future)
            if kind == "teacher":
                teachers[item.name] = future.result()
                ready += [] if teachers_only else [("cell", cell) for cell in taught[item]]
                continue
            summary, reused = future.result()
            finished.add(_key(item))
            results.append(summary)
            trained += not reused
            _progress(item, summary, reused, len(results), total, trained, start)
    return teachers, results, trained


def _key(cell: Cell) -> tuple[str, str, int]:
    case, method, seed = cell
    return case.name, method.label, seed


def _priority(task: tuple, rank: dict, order: dict, leads: set[str]) -> tuple:
    """Teachers first, in case order; then cells by case, the target check's first, and in a
    tier the rows whose probe others reuse (longest and awaited) first."""
    kind, item = task
    if kind == "teacher":
        return (0, rank[item], 0, 0, False, 0)
    case, method, seed = item
    tier = 0 if method.teacher_free or method.label in (REFERENCE, "auto") else 1
    return (1, rank[case], tier, seed, method.label not in leads, order[method.label])


def _progress(cell: Cell, summary: dict, reused: bool, i: int, total: int, trained: int,
              start: float) -> None:
    case, method, seed = cell
    eta = (time.perf_counter() - start) / trained * (total - i) if trained else 0.0
    note = "(reused)" if reused else f"{summary['seconds']:.0f} s, eta {eta / 60:.1f} min"
    worst = min(g["accuracy"] for g in summary["groups"] if g["accuracy"] is not None)
    log(f"[{i}/{total}] {case.name} {method.label:<27} seed {seed}: "
        f"acc {summary['accuracy']:.4f} worst {worst:.4f} {note}")


def _derived(cases: list[Case], config: StudyConfig) -> list[dict]:
    """The auto cells computed from their candidates' runs (``--derive-auto``)."""
    auto = next(m for m in methods() if m.label == AUTO)
    out = []
    for case in cases:
        for seed in config.seeds:
            summary, reused = derive_auto(case, auto, seed, config)
            if not reused:
                log(f"{case.name} auto seed {seed}: derived, chose "
                    f"{summary['selection']['chosen']} ({summary['derived_from']})")
            out.append(summary)
    return out


def _verify(cell: list[str], config: StudyConfig) -> int:
    """``--verify-auto CASE SEED``: 0 when the pipeline's auto matches the derived cell."""
    case = next((c for c in CASES if c.name == cell[0]), None)
    if case is None:
        raise SystemExit(f"--verify-auto: unknown case {cell[0]!r}")
    auto = next(m for m in methods() if m.label == AUTO)
    with tempfile.TemporaryDirectory() as scratch:
        same = verify_derived(case, auto, int(cell[1]), config, Path(scratch))
    log(f"{case.name} auto seed {cell[1]}: pipeline run and derived cell "
        + ("agree on every test example" if same else "DIFFER"))
    return 0 if same else 1


def _finished(cases: list[Case], config: StudyConfig) -> tuple[dict[str, dict], list[dict]]:
    """``--report-only``: the teachers and runs already on disk."""
    free, taught = _cells(cases, config)
    cells = free + [cell for c in cases for cell in taught[c]]
    teachers = {c.name: t for c in cases if (t := case_teacher_summary(c, config))}
    results = [run_cell(*cell, config)[0] for cell in cells
               if (run_dir(*cell, config) / "result.json").exists()]
    return teachers, results


def _invocation(config: StudyConfig, args: argparse.Namespace, seconds: float,
                trained: int) -> dict:
    """The wall time of the first invocation that trained runs, with every later one that
    trained more (resumed: new rows) under ``later`` (kept across --report-only)."""
    path = config.out_dir / config.tag() / "invocation.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    if trained:
        record = {"seconds": seconds, "trained_runs": trained, "jobs": args.jobs,
                  "derive_auto": args.derive_auto,
                  "threads": args.threads, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "load_average_at_end": list(_loadavg())}
        known = ({**known, "later": known.get("later", []) + [record]} if known
                 else {**record, "later": []})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known, indent=1))
    return known


def _loadavg() -> tuple[float, ...]:
    try:
        import os
        return os.getloadavg()
    except OSError:
        return ()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    paper = StudyConfig().paper_teacher
    if not args.student_width > 0:
        raise SystemExit(f"--student-width is {args.student_width}; it must be > 0")
    config = StudyConfig(seeds=tuple(args.seeds), epochs=args.epochs, device=args.device,
                         out_dir=args.out, student_width=args.student_width,
                         paper_teacher=(paper[0], args.paper_teacher_epochs, *paper[2:]))
    cases = [c for c in CASES if c.name in args.cases]
    start = time.perf_counter()
    log(f"study settings {config.tag()}: {config}; {args.jobs} worker(s) x "
        f"{args.threads} thread(s); methods: {', '.join(m.label for m in methods())}")
    if args.verify_auto:
        _init_worker(args.threads)  # as the runs were trained
        return _verify(args.verify_auto, config)
    if args.same_as:
        comparison = compare_outcomes(config.out_dir / config.tag(),
                                      args.same_as / config.tag())
        log(comparison.summary())
        return 0 if comparison.identical else 1
    if args.report_only:
        teachers, results = _finished(cases, config)
        trained = 0
    else:
        with _pool(args.jobs, args.threads) as pool:
            teachers, results, trained = _schedule(pool, cases, config, args.teachers_only,
                                                     args.jobs, args.derive_auto)
        if args.teachers_only:
            return 0
    if args.derive_auto:
        results = [r for r in results if r["method"] != AUTO] + _derived(cases, config)
    invocation = _invocation(config, args, time.perf_counter() - start, trained)
    paths = write_outputs(results, teachers, cases, config, args.results, args.doc, invocation)
    log("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
