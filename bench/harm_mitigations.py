"""Harm-driven mitigations against one_hot and kd on long-tailed 8x8 digits, per seed.

Trains, with ``compression.pipeline.run``, one student per method and seed on scikit-learn's
8x8 digits made long-tailed (the data and the resnet8 teacher of
``bench/rebalance_baselines.py``), and prints per-seed paired deltas: overall, worst class
and every class, against the one_hot and the kd student of the same seed (same test images).

    .venv/bin/python bench/harm_mitigations.py            # needs scikit-learn installed

Finished runs are reused by a second invocation (their checkpoints and reports stay in
runs/harm_mitigations/).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.rebalance_baselines import (Config, data_spec, ensure_teacher,  # noqa: E402
                                       make_digits, training)
from compression.teacher_training import TeacherRecipe, train_teacher  # noqa: E402
from compression.data import load_dataset  # noqa: E402
from compression.evaluation import evaluate, predict_logits  # noqa: E402
from compression.guardrails import FAIL, judge  # noqa: E402
from compression.models import build_model  # noqa: E402
from compression.pipeline import run  # noqa: E402
from compression.spec import (ExportSpec, GuardrailSpec, JobSpec, LongTailSpec,  # noqa: E402
                              MitigationSpec, StudentSpec, TeacherSpec)

__all__ = ["METHODS", "main"]

ALPHA = 0.9
LA = {"label_loss": "logit_adjusted"}


def _m(name: str, alpha: float = ALPHA, **params: Any) -> MitigationSpec:
    return MitigationSpec(name=name, alpha=alpha, params=params)


# label -> mitigation; one_hot and kd are the references of every delta
METHODS: dict[str, MitigationSpec] = {
    "one_hot": _m("one_hot", 0.0),
    "kd": _m("kd"),
    "logit_adjusted": _m("logit_adjusted", 0.0),
    "group_dro": _m("group_dro"),
    "paired_alpha": _m("paired_alpha"),
    "paired_alpha + la": _m("paired_alpha", **LA),
    "paired_mask": _m("paired_alpha", mask_classes=True),
    "paired_mask + la": _m("paired_alpha", mask_classes=True, **LA),
    "paired_dro": _m("paired_dro"),
    "balanced_teacher": _m("balanced_teacher"),
    "balanced_teacher + la": _m("balanced_teacher", **LA),
    "auto": MitigationSpec(name="auto"),
}


def ensure_full_teacher(config: Config, data) -> tuple[Path, float]:
    """A resnet8 trained on the whole training split before the long tail is cut: a teacher
    that saw more of the rare classes than the student will (an earlier, larger corpus)."""
    path = config.out_dir / f"teacher_resnet8_e{config.teacher_epochs}_full.pt2"
    summary = path.with_suffix(".json")
    if not summary.exists():
        job = JobSpec(name="digits-teacher-full", data=replace(data, long_tail=LongTailSpec()),
                      training=training(0, config.teacher_epochs))
        report = train_teacher(job, TeacherRecipe(arch="resnet8"), path)
        summary.write_text(json.dumps({"accuracy": report.overall.accuracy}))
    return path, json.loads(summary.read_text())["accuracy"]


def run_one(config: Config, data, teacher: Path, label: str, seed: int,
            regime: str = "lt", report_only: bool = False) -> dict[str, Any]:
    mitigation = METHODS[label]
    settings = (f"e{config.epochs}_lt{config.imbalance:g}_w{config.student_width:g}"
                f"_t{config.teacher_epochs}" + ("" if regime == "lt" else f"_{regime}"))
    out = ROOT / "runs" / "harm_mitigations" / settings / label.replace(" ", "") / f"seed{seed}"
    spec = JobSpec(
        name=f"harm-{seed}", output_dir=str(out), teacher=TeacherSpec(path=str(teacher)),
        data=data, student=StudentSpec(arch="tiny_cnn", width=config.student_width),
        training=training(seed, config.epochs), mitigation=mitigation,
        guardrails=GuardrailSpec(max_drop_vs_student=None),
        export=ExportSpec(onnx=False, int8=False, tensorrt="off"))
    start = time.perf_counter()
    if not (report_only and (out / "report.json").exists()):
        run(spec)
    report = json.loads((out / "report.json").read_text())
    student = report["evaluations"]["student"]
    return {"label": label, "seed": seed, "accuracy": student["overall"]["accuracy"],
            "per_class": [c["accuracy"] for c in student["per_class"]],
            "selection": report.get("selection"), "stage_seconds": report.get("stage_seconds"),
            "loss_state": report["training"].get("loss_state"), "out": str(out),
            "seconds": time.perf_counter() - start}


def harmed_classes(config: Config, data, results: list[dict]) -> None:
    """Add to each run the classes where it is significantly below the one_hot student of its
    seed on test: the guardrails' paired test, margin 0, Holm over the 10 classes at 95%."""
    from safetensors.torch import load_file
    dataset = load_dataset(data)
    test, policy = dataset.test, GuardrailSpec(max_drop_vs_one_hot=0.0, max_drop_vs_student=None,
                                               block_on_insufficient_evidence=False)

    def report(r: dict):
        model = build_model("tiny_cnn", dataset.input_shape[0], dataset.num_classes,
                            config.student_width)
        model.load_state_dict(load_file(str(Path(r["out"]) / "student.safetensors")))
        logits = predict_logits(model.eval(), test, 512, torch.device("cpu"))
        return evaluate(logits, test, dataset.class_names, dataset.group_names, name=r["label"])
    one_hot = {r["seed"]: report(r) for r in results if r["label"] == "one_hot"}
    for r in results:
        verdict = judge(report(r), policy, "bench", one_hot=one_hot[r["seed"]])
        r["harmed"] = [c.subgroup for c in verdict.checks if c.verdict == FAIL]


def _row(label: str, runs: list[dict], refs: list[dict]) -> str:
    cells = []
    for r, ref in zip(runs, refs):
        d_all = 100 * (r["accuracy"] - ref["accuracy"])
        d_worst = 100 * (min(r["per_class"]) - min(ref["per_class"]))
        d_cls = [100 * (a - b) for a, b in zip(r["per_class"], ref["per_class"])]
        harmed = ",".join(r.get("harmed") or []) or "none"
        cells.append(f"{d_all:+.1f} / {d_worst:+.1f} / {min(d_cls):+.1f} "
                     f"(class {d_cls.index(min(d_cls))})"
                     + (f" / {harmed}" if ref["label"] == "one_hot" else ""))
    return f"| {label} | " + " | ".join(cells) + " |"


def tables(results: list[dict], seeds: tuple[int, ...], labels: list[str]) -> str:
    by = {(r["label"], r["seed"]): r for r in results}
    out = []
    for ref in ("one_hot", "kd"):
        shown = " / classes significantly below one_hot" if ref == "one_hot" else ""
        out += [f"\nvs {ref}: Δ overall / Δ worst class / most-lowered class{shown}, per seed",
                "| method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                "|---|" + "---|" * len(seeds)]
        out += [_row(label, [by[label, s] for s in seeds], [by[ref, s] for s in seeds])
                for label in labels if label != ref]
    out += ["\nper-class test accuracy (%), per seed"]
    for label in labels:
        for s in seeds:
            r = by[label, s]
            out.append(f"{label:24s} s{s} {100 * r['accuracy']:5.1f} | " + " ".join(
                f"{100 * a:3.0f}" for a in r["per_class"]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=list(Config.seeds))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--epochs", type=int, default=Config.epochs)
    p.add_argument("--teacher-epochs", type=int, default=Config.teacher_epochs)
    p.add_argument("--width", type=float, default=Config.student_width)
    p.add_argument("--teacher", choices=("lt", "full"), default="lt",
                   help="lt: trained on the student's long-tailed split; full: on the whole "
                        "training split before the tail is cut")
    p.add_argument("--report-only", action="store_true",
                   help="read the finished runs' reports; train only what is missing")
    args = p.parse_args(argv)
    config = Config(seeds=tuple(args.seeds), epochs=args.epochs, student_width=args.width,
                    teacher_epochs=args.teacher_epochs)
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = data_spec(config, *make_digits(config))
    teacher, accuracy = (ensure_teacher if args.teacher == "lt" else ensure_full_teacher)(
        config, data)
    labels = [m for m in METHODS if m in args.methods or m in ("one_hot", "kd")]
    results = [run_one(config, data, teacher, label, seed, args.teacher, args.report_only)
               for seed in config.seeds for label in labels]
    harmed_classes(config, data, results)
    out = ROOT / "runs" / "harm_mitigations" / f"results_{args.teacher}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"teacher resnet8: test accuracy {100 * accuracy:.1f}%")
    print(tables(results, config.seeds, labels))
    for r in results:
        if r["selection"]:
            print(f"auto seed {r['seed']}: chose {r['selection']['chosen']}")
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
