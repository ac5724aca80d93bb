"""How far can per-class logit offsets, added after training, take a study's students without
harming a class? An estimate of how far post-hoc logit adjustment can go on class-subgroup
cases.

The study's target asks, where kd harms a class, for a student with no class significantly
below the one-hot student and its worst class at least 3 points above kd's. On long-tailed
sets the tail can be lifted after training by adding an offset to each class's logit (post-hoc
logit adjustment, Menon et al., ICLR 2021, with the offsets searched rather than set from the
class priors). This script searches such offsets for every student the study saved, two ways:

- ``holdout``: what a deployable step would do. The offsets maximise the mean class accuracy
  on holdout with no class below the one-hot student's holdout accuracy (point estimates);
  the student with them is then judged on test.
- ``oracle``: the offsets are fitted on the test split itself, the one they are judged on:
  classes lifted towards the target's worst class (kd's worst class + 3 points), no class
  significantly below one_hot by the study's own paired test (Holm over the classes). It
  is the search with the answers in hand, an estimate of how far offsets can go and not a
  method; a coordinate search can miss better offsets, so it is no proof that none exist.

Both search the offsets one class at a time over a grid, a few passes, from zero.

    .venv/bin/python bench/class_offsets.py --study runs/study_r3 \\
        --cases fmnist_lt__paper fmnist_lt__present digits_lt__paper
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench._study_stats import LEVEL, TARGET_MAX_ACC_LOSS, TARGET_WORST_GAIN  # noqa: E402
from compression.evaluation.stats import tango_pvalue  # noqa: E402
from compression.guardrails.multiplicity import adjust  # noqa: E402
from compression.models.state import model_from_state, read_state_dict  # noqa: E402

GRID = np.round(np.arange(-6.0, 6.0001, 0.1), 1)  # logit units
PASSES = 6
ROWS = ("kd_a0.9", "paired_alpha_floor", "paired_dro", "group_dro", "balanced_teacher",
        "teacher_calibration", "one_hot")
TEACHER_FREE = ("one_hot", "logit_adjusted", "balanced_softmax", "group_dro_one_hot",
                "class_balanced")

Score = Callable[[np.ndarray], float]


def class_accuracy(hit: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """hit: [N] bool, labels: [N] in 0..k-1 -> [k] accuracy per class (every class present)."""
    return np.bincount(labels, weights=hit, minlength=k) / np.bincount(labels, minlength=k)


def fit_offsets(logits: np.ndarray, labels: np.ndarray, score: Score,
                grid: np.ndarray = GRID, passes: int = PASSES) -> np.ndarray:
    """Offsets [K] maximising ``score(hit)``, hit = argmax(logits + offsets) == labels.

    Coordinate search from zero: each class's offset in turn over ``grid``, the others held;
    a move is kept when it raises the score, or keeps it with a smaller offset. Stops after
    ``passes`` or a pass that moves nothing."""
    offsets = np.zeros(logits.shape[1])
    best = score(logits.argmax(1) == labels)
    for _ in range(passes):
        moved = False
        for k in range(logits.shape[1]):
            for value in grid:
                trial = offsets.copy()
                trial[k] = value
                s = score((logits + trial).argmax(1) == labels)
                if s > best + 1e-12 or (s > best - 1e-12 and abs(value) < abs(offsets[k]) - 1e-9):
                    best, offsets, moved = s, trial, True
        if not moved:
            break
    return offsets


def below_reference(hit: np.ndarray, ref_hit: np.ndarray, labels: np.ndarray, k: int
                    ) -> list[int]:
    """Classes where ``hit`` is significantly below ``ref_hit`` on the same examples: the
    study's one-sided paired test at LEVEL, Holm over the classes."""
    worse = np.bincount(labels, weights=ref_hit & ~hit, minlength=k).astype(int)
    better = np.bincount(labels, weights=~ref_hit & hit, minlength=k).astype(int)
    n = np.bincount(labels, minlength=k)
    p = [tango_pvalue(int(b), int(c), int(m), 0.0) for b, c, m in zip(worse, better, n)]
    return [c for c, (_, rejected) in enumerate(adjust(p, LEVEL, "holm")) if rejected]


def holdout_score(labels: np.ndarray, ref_hit: np.ndarray, k: int) -> Score:
    """Mean class accuracy; a class below the reference's accuracy costs 3 times its gap."""
    ref = class_accuracy(ref_hit, labels, k)

    def score(hit: np.ndarray) -> float:
        acc = class_accuracy(hit, labels, k)
        return float(acc.mean() - 3.0 * np.clip(ref - acc, 0, None).sum())
    return score


def oracle_score(labels: np.ndarray, ref_hit: np.ndarray, k: int, target: float) -> Score:
    """Classes lifted towards ``target`` (each counts up to it), then the mean. A class
    significantly below the reference outranks everything else: such an answer scores minus
    the number of those classes and their drops, so that the search can shrink a drop it
    cannot yet remove."""
    ref = class_accuracy(ref_hit, labels, k)

    def score(hit: np.ndarray) -> float:
        harmed = below_reference(hit, ref_hit, labels, k)
        acc = class_accuracy(hit, labels, k)
        if harmed:
            return -float(len(harmed) + (ref - acc)[harmed].sum())
        return float(np.minimum(acc, target).sum() + 1e-3 * acc.mean())
    return score


@functools.lru_cache(maxsize=None)
def read_split(path: str) -> tuple[torch.Tensor, np.ndarray, tuple[str, ...]]:
    """A study split's images [N, C, H, W] in [0, 1], labels and class names; read once,
    since every student of a case answers the same files."""
    data = np.load(ROOT / path)
    x = torch.from_numpy(data["x"]).float() / 255
    return (x[:, None] if x.dim() == 3 else x, data["y"].astype(int),
            tuple(str(n) for n in data["class_names"]))


def _spec(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())["spec"]


def student_logits(run: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A saved study student's logits on its job's holdout or test split, and the labels."""
    spec = _spec(run)
    x, y, names = read_split(spec["data"][f"{split}_path"])
    weights = run / "student.safetensors"
    model = model_from_state(read_state_dict(weights.read_bytes(), weights), weights,
                             spec["student"]["arch"], spec["student"]["width"],
                             tuple(x.shape[1:]), len(names))
    with torch.inference_mode():
        return model.eval()(x).numpy(), y


def class_names(run: Path) -> list[str]:
    return list(read_split(_spec(run)["data"]["test_path"])[2])


def summary(hit: np.ndarray, labels: np.ndarray, ref_hit: np.ndarray, names: list[str]
            ) -> dict:
    """Overall accuracy (every test example counts once, as in the study), the worst class's,
    and the classes significantly below the reference."""
    acc = class_accuracy(hit, labels, len(names))
    return {"overall": float(hit.mean()), "worst": float(acc.min()),
            "below_one_hot": [names[c] for c in below_reference(hit, ref_hit, labels,
                                                                len(names))]}


def case_seed(study: Path, case: str, seed: int) -> list[dict]:
    """Every row of one case and seed, as trained and with each kind of offsets."""
    tf_dir = study / case.split("__")[0] / "teacher_free"
    dirs = {r: (tf_dir if r in TEACHER_FREE else study / case) / r / f"seed{seed}"
            for r in ROWS + TEACHER_FREE}
    logits = {(r, s): student_logits(d, s) for r, d in dirs.items() for s in ("holdout", "test")}
    y_h, y_t = logits["one_hot", "holdout"][1], logits["one_hot", "test"][1]
    names = class_names(dirs["one_hot"])
    k = len(names)
    ref_h = logits["one_hot", "holdout"][0].argmax(1) == y_h
    ref_t = logits["one_hot", "test"][0].argmax(1) == y_t
    kd = summary(logits["kd_a0.9", "test"][0].argmax(1) == y_t, y_t, ref_t, names)
    free = [summary(logits[r, "test"][0].argmax(1) == y_t, y_t, ref_t, names)
            for r in TEACHER_FREE[1:]]
    target_worst = kd["worst"] + TARGET_WORST_GAIN
    out = []
    for row in ROWS:
        z_h, z_t = logits[row, "holdout"][0], logits[row, "test"][0]
        fitted = {"none": np.zeros(k),
                  "holdout": fit_offsets(z_h, y_h, holdout_score(y_h, ref_h, k)),
                  "oracle": fit_offsets(z_t, y_t, oracle_score(y_t, ref_t, k, target_worst))}
        for kind, offsets in fitted.items():
            s = summary((z_t + offsets).argmax(1) == y_t, y_t, ref_t, names)
            s.update(case=case, seed=seed, row=row, offsets=kind,
                     values=[round(float(v), 1) for v in offsets],
                     meets_first_three=(not s["below_one_hot"]
                                        and s["worst"] >= target_worst - 1e-12
                                        and s["overall"] >= kd["overall"]
                                        - TARGET_MAX_ACC_LOSS - 1e-12),
                     beats_teacher_free=(s["worst"] > max(f["worst"] for f in free)
                                         or s["overall"] > max(f["overall"] for f in free)))
            out.append(s)
            print(f"{case} seed {seed} {row:20s} {kind:8s} overall {s['overall']:.3f} worst "
                  f"{s['worst']:.3f} below one_hot {s['below_one_hot']} first three "
                  f"{s['meets_first_three']}", flush=True)
    return out


def table(rows: list[dict], command: str) -> str:
    lines = ["# Class offsets after training: what they reach on test", "",
             f"Written by `{command}` (docs/mitigations.md, \"Class offsets after training\").",
             "Offsets `none`: the student as trained; `holdout`: fitted on holdout, no class "
             "below one_hot there; `oracle`: fitted on this test split, an estimate of the "
             "best offsets can do, not a method. The last two columns are the study's target against kd a=0.9 and the "
             "best teacher-free row of the same seed.", "",
             "| case | seed | row | offsets | overall % | worst % | classes below one_hot "
             "| no harm, worst +3, overall -0.5 vs kd | beats teacher-free |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['seed']} | {r['row']} | {r['offsets']} | "
                     f"{100 * r['overall']:.1f} | {100 * r['worst']:.1f} | "
                     f"{', '.join(map(str, r['below_one_hot'])) or '-'} | "
                     f"{'yes' if r['meets_first_three'] else 'no'} | "
                     f"{'yes' if r['beats_teacher_free'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", type=Path, required=True, help="a bench/study.py --out folder")
    p.add_argument("--cases", nargs="+", required=True,
                   help="case folders with class subgroups, e.g. fmnist_lt__paper")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", type=Path, help="where to write class_offsets.json and .md "
                   "(default: the study folder)")
    args = p.parse_args()
    runs = [d for d in args.study.iterdir() if (d / "invocation.json").exists()]
    if len(runs) != 1:
        p.error(f"{args.study} must hold one study run folder; found {len(runs)}")
    rows = [r for case in args.cases for seed in args.seeds
            for r in case_seed(runs[0], case, seed)]
    out = args.out or args.study
    out.mkdir(parents=True, exist_ok=True)
    (out / "class_offsets.json").write_text(json.dumps(rows, indent=1))
    command = " ".join([".venv/bin/python", "bench/class_offsets.py", *sys.argv[1:]])
    (out / "class_offsets.md").write_text(table(rows, command))
    print(f"wrote {out / 'class_offsets.json'} and {out / 'class_offsets.md'}")


if __name__ == "__main__":
    main()
