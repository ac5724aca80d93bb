"""Peak memory of a whole job (``tpet run``) as the data set grows: streaming against in memory.

The data are synthetic: RGB JPEGs of ``--image`` pixels in 10 classes (a colour gradient per
image plus noise), written once; a CSV manifest per size lists the first N of them, so the
sizes share files. The test split is the same 2,000 images for every size. A 1-epoch
``tiny_cnn`` teacher is trained once on the smallest size (``tpet train-teacher``); each job
then distils a ``tiny_cnn`` student for one epoch (kd, cached teacher logits), evaluates the
teacher and the student on holdout and test, exports ONNX and checks it: the whole pipeline.

Each job is its own ``tpet run`` process. While it runs, ``/proc`` is read every 0.2 s: the
job process's VmHWM (its own peak resident set) and the summed RSS and PSS of the job and its
DataLoader workers (PSS shares pages the workers have in common with the job among them, so
it does not count a page twice). The table gives the peaks and the wall time.

``--load-only`` measures the ``load_data`` stage alone (``load_dataset``: index or decode,
sample, carve, group) in the same way, where a whole job at that size would take too long.

    nice -n 10 .venv/bin/python bench/job_rss.py --sizes 10000 50000 200000
    nice -n 10 .venv/bin/python bench/job_rss.py --sizes 10000 50000 --modes never always
    nice -n 10 .venv/bin/python bench/job_rss.py --sizes 10000 200000 --modes never always \
        --load-only
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.loader_throughput import write_jpegs  # noqa: E402

__all__ = ["main", "tree_memory"]

TPET = [sys.executable, "-m", "service.cli"]
TEST_IMAGES = 2000
LOAD_ONLY = ("import sys; from compression.spec import load_job; "
             "from compression.data import load_dataset; from compression.data.loader import "
             "loading; d = load_dataset(load_job(sys.argv[1]).data); "
             "print(loading(d), len(d.train))")


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    except OSError:
        return 0


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out += children
        todo += children
    return out


def tree_memory(pid: int) -> dict[str, int]:
    """Bytes now: the process's peak RSS (VmHWM), and RSS and PSS summed over its tree."""
    tree = [pid, *_descendants(pid)]
    return {"hwm": _status_kib(pid, "VmHWM") * 1024,
            "rss": sum(_status_kib(p, "VmRSS") for p in tree) * 1024,
            "pss": sum(_pss_kib(p) for p in tree) * 1024, "processes": len(tree)}


def _write_manifest(path: Path, files: list[tuple[Path, int]]) -> Path:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["path", "label"])
        out.writerows((str(p), c) for p, c in files)
    return path


def _job(work: Path, n: int, mode: str, args: argparse.Namespace) -> Path:
    job = {"name": f"rss-{n}-{mode}", "output_dir": str(work / f"out-{n}-{mode}"),
           "teacher": {"path": str(work / "teacher.pt2")},
           "data": {"source": "manifest", "path": str(work / f"train-{n}.csv"),
                    "test_path": str(work / "test.csv"), "in_memory": mode,
                    "workers": args.workers, "holdout_fraction": 0.05},
           "student": {"arch": "tiny_cnn"},
           "training": {"epochs": 1, "batch_size": 256, "lr": 0.05, "device": "cpu"},
           "mitigation": {"name": "kd", "alpha": 0.5, "temperature": 4.0},
           "export": {"onnx": True, "int8": False, "tensorrt": "off"}}
    path = work / f"job-{n}-{mode}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _run(job: Path, env: dict[str, str], load_only: bool = False) -> dict[str, Any]:
    start = time.perf_counter()
    cmd = [sys.executable, "-c", LOAD_ONLY, str(job)] if load_only else [*TPET, "run", str(job)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = {"hwm": 0, "rss": 0, "pss": 0, "processes": 0}
    while proc.poll() is None:
        now = tree_memory(proc.pid)
        peak = {k: max(peak[k], now[k]) for k in peak}
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode not in (0, 3):  # 3: rejected by the guardrails, still a whole job
        raise SystemExit(f"{job} failed ({proc.returncode}):\n{err[-3000:]}")
    if load_only:
        loading, train = out.split()[-2:]
        return {**peak, "seconds": time.perf_counter() - start, "loading": loading,
                "train": int(train), "status": "load_data only"}
    report = json.loads((Path(yaml.safe_load(job.read_text())["output_dir"])
                         / "report.json").read_text())
    return {**peak, "seconds": time.perf_counter() - start,
            "loading": report["data"].get("loading"), "train": report["data"]["splits"]
            ["train"]["size"], "status": report["status"]}


def prepare(work: Path, sizes: list[int], image: int) -> None:
    """The JPEGs, one manifest per size, the test manifest and the teacher."""
    files = write_jpegs(work / "images", max(sizes), image, seed=0)
    for n in sizes:
        _write_manifest(work / f"train-{n}.csv", files[:n])
    _write_manifest(work / "test.csv", write_jpegs(work / "test", TEST_IMAGES, image, seed=1))


def _train_teacher(work: Path, smallest: int, args: argparse.Namespace,
                   env: dict[str, str]) -> None:
    job = _job(work, smallest, "never", args)
    done = subprocess.run([*TPET, "train-teacher", str(job), "--arch", "tiny_cnn", "--epochs",
                           "1"], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"training the teacher failed:\n{done.stderr[-3000:]}")


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| images | train split | in_memory | path that ran | job peak RSS (VmHWM) | "
             "peak RSS, job + workers | peak PSS, job + workers | wall |",
             "|---|---|---|---|---|---|---|---|"]
    mib = 2**20
    for r in rows:
        lines.append(f"| {r['images']} | {r['train']} | {r['mode']} | {r['loading']} | "
                     f"{r['hwm'] / mib:.0f} MiB | {r['rss'] / mib:.0f} MiB | "
                     f"{r['pss'] / mib:.0f} MiB | {r['seconds']:.0f} s |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000, 200000])
    p.add_argument("--modes", nargs="+", default=["never"], choices=["never", "always", "auto"])
    p.add_argument("--image", type=int, default=32, help="image side in pixels")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/tmp/tpet-job-rss"),
                   help="where the data and job outputs go (reused when present)")
    p.add_argument("--load-only", action="store_true",
                   help="measure load_dataset alone, not a whole job")
    p.add_argument("--json", type=Path, help="also write the rows here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    sizes = sorted(args.sizes)
    if not all((args.work / f"train-{n}.csv").exists() for n in sizes):
        prepare(args.work, sizes, args.image)
    if not args.load_only and not (args.work / "teacher.pt2").exists():
        _train_teacher(args.work, sizes[0], args, env)
    rows = []
    for n in sizes:
        for mode in args.modes:
            job = _job(args.work, n, mode, args)
            rows.append({"images": n, "mode": mode, **_run(job, env, args.load_only)})
            print(json.dumps(rows[-1]), flush=True)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
