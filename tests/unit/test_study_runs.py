"""The study's rows: which cells share a harm probe, the copy that lets them share it, and
its workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench._study_runs import (CASES, StudyConfig, _reuse_probe, methods, probe_sources,
                               run_dir)
from compression.losses.registry import harm_probe_plan


def _row(label: str):
    return next(m for m in methods() if m.label == label)


def _case(name: str):
    return next(c for c in CASES if c.name == name)


def test_paired_dro_reuses_the_probe_paired_alpha_trains() -> None:
    alpha, dro = _row("paired_alpha"), _row("paired_dro")
    never, saw = (_case("fmnist_attr/teacher_never_saw_blur"),
                  _case("fmnist_attr/teacher_saw_all"))
    assert harm_probe_plan(alpha.mitigation) == harm_probe_plan(dro.mitigation)
    assert probe_sources(never, dro) == [(never, alpha)]
    assert probe_sources(never, alpha) == []  # the dataset's first case trains it
    # another case of the dataset: its own leader first, then the first case's teacher-free
    # reference runs (the distilled ones are retrained: another teacher)
    assert probe_sources(saw, dro) == [(saw, alpha), (never, alpha)]
    assert probe_sources(saw, alpha) == [(never, alpha)]
    assert probe_sources(never, _row("kd a=0.9")) == probe_sources(saw, _row("one_hot")) == []
    # the floors' whole-split reference: the one_hot row's run, the one-hot baseline
    floor, one_hot = _row("paired_alpha floor"), _row("one_hot")
    assert probe_sources(never, floor) == [(never, alpha), (never, one_hot)]
    assert probe_sources(saw, floor) == [(saw, alpha), (never, alpha), (never, one_hot)]
    half1 = _row("paired_alpha floor half1")
    assert probe_sources(never, half1) == [(never, alpha), (never, one_hot)]
    assert probe_sources(saw, half1) == probe_sources(saw, floor)


def test_the_probe_runs_are_copied_from_the_cells_that_trained_them(tmp_path: Path) -> None:
    config = StudyConfig(out_dir=tmp_path)
    alpha, dro = _row("paired_alpha"), _row("paired_dro")
    never, saw = (_case("fmnist_attr/teacher_never_saw_blur"),
                  _case("fmnist_attr/teacher_saw_all"))

    def write(case, method, seed, run, content):
        folder = run_dir(case, method, seed, config) / "checkpoints" / "probe_abc" / run
        folder.mkdir(parents=True)
        (folder / "last.pt").write_bytes(content)

    write(never, alpha, 1, "fold0_reference", b"reference")
    write(never, alpha, 1, "fold0_distilled", b"never's teacher")
    write(saw, alpha, 1, "fold0_distilled", b"saw's teacher")
    (run_dir(saw, alpha, 1, config) / "checkpoints" / "student").mkdir()  # not a probe run
    _reuse_probe(saw, dro, 1, config)
    target = run_dir(saw, dro, 1, config) / "checkpoints"
    assert [p.name for p in target.iterdir()] == ["probe_abc"]
    read = {p.parent.name: p.read_bytes() for p in target.glob("probe_abc/*/last.pt")}
    assert read == {"fold0_distilled": b"saw's teacher", "fold0_reference": b"reference"}
    assert not (run_dir(saw, dro, 0, config) / "checkpoints").exists()  # other seed: none
    # from another case only the reference runs: a distilled run of another teacher would
    # be refused by the pipeline's resume check
    _reuse_probe(saw, alpha, 1, config)
    mine = run_dir(saw, alpha, 1, config) / "checkpoints" / "probe_abc"
    assert (mine / "fold0_distilled" / "last.pt").read_bytes() == b"saw's teacher"  # kept
    assert (mine / "fold0_reference" / "last.pt").read_bytes() == b"reference"
    write(never, alpha, 2, "fold1_reference", b"reference 2")
    write(never, alpha, 2, "fold1_distilled", b"never's teacher 2")
    _reuse_probe(saw, alpha, 2, config)
    assert [p.parent.name for p in run_dir(saw, alpha, 2, config).glob(
        "checkpoints/probe_abc/*/last.pt")] == ["fold1_reference"]
    floor = _row("paired_alpha floor")
    baseline = run_dir(never, _row("one_hot"), 1, config) / "checkpoints" / "one_hot"
    baseline.mkdir(parents=True)
    (baseline / "last.pt").write_bytes(b"one-hot")
    _reuse_probe(saw, floor, 1, config)
    copied = run_dir(saw, floor, 1, config) / "checkpoints"
    assert (copied / "one_hot" / "last.pt").read_bytes() == b"one-hot"
    assert (copied / "probe_abc" / "fold0_distilled" / "last.pt").read_bytes() == \
        b"saw's teacher"


def test_a_gpu_study_trains_on_cuda_in_its_own_folders() -> None:
    cpu, gpu = StudyConfig(), StudyConfig(device="cuda")
    assert gpu.tag() != cpu.tag()
    assert gpu.training("fmnist_bal", 0).device == "cuda"
    assert cpu.training("digits_lt", 0).device == "cpu"


def test_a_worker_ends_when_the_study_process_is_killed(tmp_path: Path) -> None:
    root, pid_file = Path(__file__).resolve().parents[2], tmp_path / "worker.pid"
    # the study process: one worker, busy for 10 min, then the study dies without cleanup
    script = (f"import os, pathlib, sys, time; sys.path.insert(0, {str(root)!r}); "
              "from bench.study import _pool; pool = _pool(1, 1); "
              "pid = pool.submit(os.getpid).result(); pool.submit(time.sleep, 600); "
              f"pathlib.Path({str(pid_file)!r}).write_text(str(pid)); os._exit(0)")
    subprocess.run([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120, check=True)
    worker = int(pid_file.read_text())

    def alive() -> bool:  # a zombie left for an init that does not reap has ended too
        try:
            return Path(f"/proc/{worker}/stat").read_text().split(")")[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 60
    while alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    ended = not alive()
    if not ended:
        os.kill(worker, 9)
    assert ended
