"""Teacher-free rebalancing against distillation on long-tailed 8x8 digits.

How much of a distillation mitigation's gain on a long tail is plain class rebalancing? This
trains, over several seeds, one student per method with ``compression.pipeline.run`` on
scikit-learn's 8x8 digits made long-tailed by the job's own ``long_tail`` logic (exp profile),
and prints overall and worst-class test accuracy with per-seed paired deltas against the
one_hot student of the same seed, then the harm diagnosis of the kd student (seed 0).

    .venv/bin/python bench/rebalance_baselines.py            # needs scikit-learn installed

The digits are split once (seeded, stratified) into train and a balanced test set and
written as npz files; a resnet8 teacher is trained briefly on the long-tailed train split.
Runs use one torch thread each, one after another, so the timings are comparable.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from compression.pipeline import run  # noqa: E402
from compression.spec import (DataSpec, ExportSpec, GuardrailSpec, JobSpec,  # noqa: E402
                              LongTailSpec, MitigationSpec, StudentSpec, TeacherSpec,
                              TrainingSpec)
from compression.teacher_training import TeacherRecipe, train_teacher  # noqa: E402

__all__ = ["Config", "METHODS", "main"]

KD_ALPHA = 0.9


@dataclass(frozen=True)
class Config:
    seeds: tuple[int, ...] = (0, 1, 2)
    imbalance: float = 20.0
    test_fraction: float = 0.4
    epochs: int = 30
    teacher_epochs: int = 20
    student_width: float = 0.5
    data_seed: int = 0
    out_dir: Path = ROOT / "runs" / "rebalance"


def _m(name: str, alpha: float = 0.0, **params: Any) -> MitigationSpec:
    return MitigationSpec(name=name, alpha=alpha, params=params)


# label -> mitigation; "harm": a teacher run, so the job trains a one-hot baseline beside it
# and its report carries the harm diagnosis (the 0.5 margin only makes the rule run).
METHODS: dict[str, MitigationSpec] = {
    "one_hot": _m("one_hot"),
    "logit_adjusted": _m("logit_adjusted"),
    "balanced_softmax": _m("balanced_softmax"),
    "class_balanced": _m("class_balanced"),
    "group_dro_one_hot": _m("group_dro_one_hot"),
    "kd a=0.5": _m("kd", 0.5),
    "kd a=0.5 + logit_adjusted": _m("kd", 0.5, label_loss="logit_adjusted"),
    f"kd a={KD_ALPHA:g}": _m("kd", KD_ALPHA),
    f"kd a={KD_ALPHA:g} + logit_adjusted": _m("kd", KD_ALPHA, label_loss="logit_adjusted"),
    f"group_dro a={KD_ALPHA:g}": _m("group_dro", KD_ALPHA),
}


def make_digits(config: Config) -> tuple[Path, Path]:
    """sklearn's digits split once into train and a stratified, balanced-ish test set."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("this benchmark needs scikit-learn: .venv/bin/python -m pip install "
                 "scikit-learn")
    digits = load_digits()
    x = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # [N, 8, 8], 0..16 -> 0..255
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(config.data_seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[
        :round(config.test_fraction * int((y == c).sum()))] for c in range(10)])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test] = True
    config.out_dir.mkdir(parents=True, exist_ok=True)
    names = np.array([str(c) for c in range(10)])
    paths = config.out_dir / "digits_train.npz", config.out_dir / "digits_test.npz"
    for path, keep in zip(paths, (~is_test, is_test)):
        np.savez(path, x=x[keep], y=y[keep], class_names=names)
    return paths


def data_spec(config: Config, train: Path, test: Path) -> DataSpec:
    return DataSpec(source="npz", path=str(train), test_path=str(test),
                    long_tail=LongTailSpec(profile="exp", imbalance=config.imbalance),
                    seed=config.data_seed)


def training(seed: int, epochs: int) -> TrainingSpec:
    return TrainingSpec(epochs=epochs, batch_size=64, lr=0.05, schedule="cosine",
                        warmup_epochs=1, augment="none", device="cpu", seed=seed)


def ensure_teacher(config: Config, data: DataSpec) -> tuple[Path, float]:
    """A resnet8 trained with one-hot labels on the long-tailed train split."""
    path = config.out_dir / f"teacher_resnet8_e{config.teacher_epochs}_lt{config.imbalance:g}.pt2"
    summary = path.with_suffix(".json")
    if not summary.exists():
        job = JobSpec(name="digits-teacher", data=data,
                      training=training(0, config.teacher_epochs))
        report = train_teacher(job, TeacherRecipe(arch="resnet8"), path)
        summary.write_text(json.dumps({"accuracy": report.overall.accuracy}))
    return path, json.loads(summary.read_text())["accuracy"]


def run_one(config: Config, data: DataSpec, teacher: Path, label: str,
            seed: int) -> dict[str, Any]:
    """One pipeline run; its accuracies, per class, and the harm diagnosis when it has one."""
    mitigation = METHODS[label]
    with_teacher = mitigation.name in ("kd", "group_dro")
    settings = f"e{config.epochs}_lt{config.imbalance:g}_w{config.student_width:g}"
    out = (config.out_dir / "runs" / settings / label.replace(" ", "_").replace("=", "")
           / f"seed{seed}")  # a finished run with the same settings is resumed, not retrained
    spec = JobSpec(
        name=f"digits-{seed}", output_dir=str(out), teacher=TeacherSpec(path=str(teacher)),
        data=data, student=StudentSpec(arch="tiny_cnn", width=config.student_width),
        training=training(seed, config.epochs), mitigation=mitigation,
        guardrails=GuardrailSpec(max_drop_vs_one_hot=0.5 if with_teacher else None,
                                 max_drop_vs_student=None),
        export=ExportSpec(onnx=False, int8=False, tensorrt="off"))
    start = time.perf_counter()
    result = run(spec)
    report = json.loads(result.report_path.read_text())
    student = result.reports["student"]
    per_class = [c.accuracy for c in student.per_class]
    return {"label": label, "seed": seed, "accuracy": student.overall.accuracy,
            "worst": min(per_class), "per_class": per_class,
            "harm_diagnosis": report.get("harm_diagnosis"),
            "seconds": time.perf_counter() - start}


def _pts(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    sd = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {sd:.1f}"


def table(results: list[dict[str, Any]], seeds: tuple[int, ...]) -> str:
    """Markdown: mean ± sd over seeds, and per-seed paired deltas against one_hot."""
    by = {(r["label"], r["seed"]): r for r in results}
    seed_cols = " / ".join(f"s{s}" for s in seeds)
    lines = [f"| method | overall | worst class | Δ overall ({seed_cols}) | "
             f"Δ worst ({seed_cols}) |", "|---|---|---|---|---|"]
    for label in METHODS:
        runs = [by[label, s] for s in seeds]
        d_all = [100 * (r["accuracy"] - by["one_hot", r["seed"]]["accuracy"]) for r in runs]
        d_worst = [100 * (r["worst"] - by["one_hot", r["seed"]]["worst"]) for r in runs]
        lines.append(f"| {label} | {_pts([r['accuracy'] for r in runs])} | "
                     f"{_pts([r['worst'] for r in runs])} | "
                     f"{' / '.join(f'{d:+.1f}' for d in d_all)} | "
                     f"{' / '.join(f'{d:+.1f}' for d in d_worst)} |")
    return "\n".join(lines)


def diagnosis_lines(result: dict[str, Any]) -> list[str]:
    """The harmed classes of one run, one line each."""
    diagnosis = result["harm_diagnosis"] or {"subgroups": []}
    lines = []
    for g in diagnosis["subgroups"]:
        t = g["teacher"] or {}
        went = ", ".join(f"{d['class']} +{d['delta']}" for d in g["destinations"]) or "-"
        lines.append(
            f"- class {g['group']}: {100 * g['one_hot_accuracy']:.1f}% -> "
            f"{100 * g['student_accuracy']:.1f}% (n {g['n']}, newly wrong {g['newly_wrong']}, "
            f"newly right {g['newly_right']}); went to {went}; teacher accuracy "
            f"{100 * t.get('accuracy', float('nan')):.1f}%, confidence "
            f"{t.get('mean_confidence', float('nan')):.2f}, mass out "
            f"{t.get('mass_out', float('nan')):.2f}, mass in {t.get('mass_in', float('nan')):.3f},"
            f" copied errors {t.get('copied_errors')}")
    return lines or ["- no class below one_hot"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=list(Config.seeds))
    p.add_argument("--epochs", type=int, default=Config.epochs)
    p.add_argument("--imbalance", type=float, default=Config.imbalance)
    args = p.parse_args(argv)
    config = Config(seeds=tuple(args.seeds), epochs=args.epochs, imbalance=args.imbalance)
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = data_spec(config, *make_digits(config))
    teacher, teacher_accuracy = ensure_teacher(config, data)
    results = [run_one(config, data, teacher, label, seed)
               for seed in config.seeds for label in METHODS]
    (config.out_dir / "results.json").write_text(json.dumps(results, indent=1))
    print(f"teacher resnet8 ({config.teacher_epochs} epochs): test accuracy "
          f"{100 * teacher_accuracy:.1f}%\n")
    print(table(results, config.seeds))
    kd = next(r for r in results if r["label"] == f"kd a={KD_ALPHA:g}")
    print(f"\nharm diagnosis, kd a={KD_ALPHA:g}, seed {kd['seed']}:")
    print("\n".join(diagnosis_lines(kd)))
    print(f"\nwall time {time.perf_counter() - start:.0f} s "
          f"(runs: {sum(r['seconds'] for r in results):.0f} s)")


if __name__ == "__main__":
    main()
