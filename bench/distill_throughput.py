"""Distillation throughput: our training loop against torchdistill 1.1.5, side by side.

Three variants train the same student from the same teacher on the same data
(Fashion-MNIST-LT, exponential profile, imbalance 100) with the same batch size, SGD settings,
cosine schedule, epochs and KD loss (alpha 0.5, T 4):

  torchdistill   torchdistill's DistillationBox over a torch DataLoader (num_workers 0)
  ours_nocache   compression.training.train, teacher_cache="off" (teacher forward per batch)
  ours_cache     the same with teacher_cache="on" (one teacher pass, then cached logits)

Each run is a fresh subprocess (memory figures stay separate); with --repeats the order
rotates each round so drift spreads over all variants. Throughput is total samples processed /
wall time over all epochs. On a shared machine other processes slow a run down, so each run
waits for a quiet machine, records how much CPU others used meanwhile, and is rerun when that
was too much; the table gives the best and the median over the repeats, and samples per
CPU-second of the run's own process. The teacher is randomly initialised: its weights do not
change the work per sample. Results and method: docs/benchmarks.md.

    .venv/bin/pip install torchdistill==1.1.5   # benchmark only, not a project dependency
    .venv/bin/python bench/distill_throughput.py --epochs 5 --threads 1 --repeats 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

__all__ = ["main", "parse_args", "summarise", "markdown_table"]

_RESULT_TAG = "RESULT "
_MIB = 2 ** 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--teacher-arch", default="resnet20",
                   help="randomly initialised; throughput does not depend on its weights")
    p.add_argument("--student-arch", default="tiny_cnn")
    p.add_argument("--max-train", type=int, default=0,
                   help="stratified subsample of the train split (0: all of it)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch.set_num_threads for every variant")
    p.add_argument("--repeats", type=int, default=1, help="rounds of all three variants")
    p.add_argument("--seed", type=int, default=0)
    # Both thresholds default to the share of the CPUs that --threads leaves free, plus a margin:
    # load there does not compete with the benchmark's threads.
    p.add_argument("--quiet-below", type=float,
                   help="before each run wait until other processes use less than this share "
                        "of all CPUs (0..1; default: free share + 0.10); 1 disables the wait")
    p.add_argument("--quiet-timeout", type=float, default=120.0,
                   help="seconds to wait for a quiet machine before running anyway")
    p.add_argument("--max-foreign", type=float,
                   help="rerun a run during which other processes used more than this share "
                        "of all CPUs (default: free share + 0.15); kept in --json, not the table")
    p.add_argument("--retries", type=int, default=2, help="reruns allowed per disturbed run")
    p.add_argument("--json", type=Path, help="also write every run's figures here, as they come")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant and exit
    args = p.parse_args(argv)
    for name, least in (("epochs", 1), ("batch_size", 1), ("threads", 1), ("repeats", 1),
                        ("retries", 0), ("max_train", 0)):
        if getattr(args, name) < least:
            p.error(f"--{name.replace('_', '-')} is {getattr(args, name)}; it must be >= {least}")
    free = max(0, (os.cpu_count() or 1) - args.threads) / (os.cpu_count() or 1)
    args.quiet_below = free + 0.10 if args.quiet_below is None else args.quiet_below
    args.max_foreign = free + 0.15 if args.max_foreign is None else args.max_foreign
    return args


def _child_argv(args: argparse.Namespace, variant: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--variant", variant,
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--teacher-arch", args.teacher_arch, "--student-arch", args.student_arch,
            "--max-train", str(args.max_train), "--threads", str(args.threads),
            "--seed", str(args.seed)]


def _run_child(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """Run one variant in a fresh interpreter; its last RESULT line is the figures.

    Adds quiet (the machine was calm before the start) and waited_s.
    """
    from bench._cpu_load import wait_for_quiet
    quiet, waited = (True, 0.0) if args.quiet_below >= 1 else wait_for_quiet(
        args.quiet_below, args.quiet_timeout)
    proc = subprocess.run(_child_argv(args, variant), cwd=ROOT, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"variant {variant} failed (exit {proc.returncode}); see above")
    result = json.loads(lines[-1][len(_RESULT_TAG):])
    return {**result, "quiet": quiet, "waited_s": waited}


def _run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run, in order; a disturbed run is marked ``disturbed`` and run again."""
    from bench._throughput_variant import VARIANTS
    runs: list[dict[str, Any]] = []
    for r in range(args.repeats):
        order = VARIANTS[r % 3:] + VARIANTS[:r % 3]
        for variant in order:
            for _ in range(args.retries + 1):
                print(f"round {r + 1}/{args.repeats}: {variant} ...", file=sys.stderr, flush=True)
                run = _run_child(args, variant)
                run.update(round=r + 1, disturbed=run["foreign_load"] > args.max_foreign)
                runs.append(run)
                if args.json:
                    args.json.write_text(json.dumps(runs, indent=2))
                print(f"  {run['samples'] / run['seconds']:.0f} samples/s in "
                      f"{run['seconds']:.1f} s; other processes used {run['foreign_load']:.0%} "
                      f"of the CPUs{' (disturbed)' if run['disturbed'] else ''}",
                      file=sys.stderr, flush=True)
                if not run["disturbed"]:
                    break
    return runs


_ROWS = (("torchdistill", "torchdistill 1.1.5 DistillationBox"),
         ("ours_nocache", "ours, teacher_cache off"),
         ("ours_cache", "ours, teacher_cache on (cache pass included)"),
         ("ours_cache_ex", "ours, teacher_cache on (cache pass excluded)"))


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant; ours_cache gives two, with and without its cache pass.

    Contention only ever slows a run down, so the headline figure is the best samples/s over
    the repeats (as ``timeit`` takes the minimum); the median is given beside it. per_cpu_s:
    samples per CPU-second of the process (all threads), which other load disturbs less than
    wall time; None for the cache-excluded row. Memory figures are medians; foreign_max the
    largest share of the CPUs that other processes used during any of the row's runs.
    """
    rows = []
    for name, label in _ROWS:
        mine = [r for r in runs if r["variant"] == name.removesuffix("_ex")]
        # Disturbed runs count only where a variant has nothing else.
        mine = [r for r in mine if not r.get("disturbed")] or mine
        if not mine:
            continue
        excl = name.endswith("_ex")
        secs = [r["seconds"] - (r["cache_seconds"] if excl else 0.0) for r in mine]
        rates = [r["samples"] / s for r, s in zip(mine, secs)]
        rows.append({
            "name": label, "n": len(mine), "samples_per_s": max(rates),
            "median_samples_per_s": statistics.median(rates), "seconds": min(secs),
            "per_cpu_s": None if excl else max(r["samples"] / max(r["cpu_seconds"], 1e-9)
                                               for r in mine),
            "cache_seconds": min(r.get("cache_seconds", 0.0) for r in mine),
            "peak_mib": statistics.median(r["peak_rss_bytes"] for r in mine) / _MIB,
            "growth_mib": statistics.median(r["rss_growth_bytes"] for r in mine) / _MIB,
            "foreign_max": max(r.get("foreign_load", 0.0) for r in mine)})
    return rows


def _cell(value: float | None, base: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} ({value / base:.2f}x)" if base else f"{value:.0f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows from ``summarise``; each rate with its ratio to the torchdistill row's (ours / it)."""
    base = rows[0] if rows and rows[0]["name"].startswith("torchdistill") else {}
    head = ("| variant | runs | samples/s, best (ratio) | samples/s, median (ratio) "
            "| samples per CPU-s (ratio) | train s | cache s | peak RSS MiB | RSS growth MiB "
            "| other load, max |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    body = [f"| {r['name']} | {r['n']} | {_cell(r['samples_per_s'], base.get('samples_per_s'))} | "
            f"{_cell(r['median_samples_per_s'], base.get('median_samples_per_s'))} | "
            f"{_cell(r['per_cpu_s'], base.get('per_cpu_s'))} | {r['seconds']:.1f} | "
            f"{r['cache_seconds']:.1f} | {r['peak_mib']:.0f} | {r['growth_mib']:.0f} | "
            f"{r['foreign_max']:.0%} |" for r in rows]
    return "\n".join([head, *body])


def _environment(args: argparse.Namespace, runs: list[dict[str, Any]]) -> str:
    import torch
    try:
        from importlib.metadata import version
        td = version("torchdistill")
    except Exception:  # noqa: BLE001 - only a label in the report
        td = "not installed"
    cpu = _cpu_model()
    n_train = runs[0]["train_samples"] if runs else 0
    return (f"date {datetime.date.today().isoformat()}; CPU {cpu} ({os.cpu_count()} logical); "
            f"Python {platform.python_version()}; torch {torch.__version__}; torchdistill {td}; "
            f"torch threads {args.threads}; {n_train} train samples x {args.epochs} epochs, "
            f"batch {args.batch_size}; teacher {args.teacher_arch} (random init), "
            f"student {args.student_arch}; {args.repeats} round(s); a run is disturbed (rerun, "
            f"left out of the table) when other processes used > {args.max_foreign:.0%} "
            f"of the CPUs")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.variant:
        from bench._throughput_variant import run_variant
        print(_RESULT_TAG + json.dumps(run_variant(args.variant, args)), flush=True)
        return 0
    runs = _run_all(args)
    print(markdown_table(summarise(runs)))
    print()
    print(_environment(args, runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
