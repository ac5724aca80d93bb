"""Harmed-slice discovery: how often it finds a hidden harmed minority, and how often it
reports harm where there is none.

Each seed builds its own data: ten classes of 16x16 images, a horizontal bar whose row
gives the class, on noise. A hidden minority, a share of the images of three classes
(drawn per seed), is rotated a quarter turn: the bar stands vertical. No subgroup column
says so; the job sees only the images and their classes.

- **harm**: the candidate is a student distilled (alpha 1, temperature 4) from a teacher
  that never saw the rotated images, so it copies the teacher's errors there; the
  reference is the same student trained on the labels (the one-hot student). This is the
  harm of Lukasik et al. (2022), made large on purpose on one hidden group.
- **control**: the candidate is the one-hot student again, from other initial weights:
  exchangeable with the reference: neither is worse by construction.

Discovery runs as a job runs it (``compression.guardrails.slices.discover_slices``, the
teacher's penultimate features, the defaults of ``guardrails.slice_discovery`` and of the
``discovered_slices`` rule, Holm at 95%): clusters found on holdout, judged on test.

    .venv/bin/python bench/slice_discovery.py --seeds 10

The minority counts as found when some FAIL slice has at least half of its members in it.
A FAIL is a false discovery when the slice's drop, measured on 20000 fresh images from
the same distribution (the same holdout chooses the same clusters, which are then applied
to them), is within the margin. Two particular trained models can truly differ on a
region even in the control, and distilling at alpha 1 copies a few of the teacher's
other errors, so neither scenario is free of real harm outside the minority by fiat.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compression.data.dataset import Split  # noqa: E402
from compression.evaluation.features import predict_with_features  # noqa: E402
from compression.guardrails.slices import (SliceComparison, SliceExamples,  # noqa: E402
                                           discover_slices)
from compression.models import build_model  # noqa: E402
from compression.spec import GuardrailSpec, SliceDiscoverySpec, SliceRuleSpec  # noqa: E402

__all__ = ["HiddenMinority", "hidden_minority", "train_classifier", "run_seed", "main"]

SIZE, CLASSES = 16, 10
TRUTH = 20000  # fresh images per seed that measure each slice's true drop
CLASS_NAMES = tuple(f"row{k}" for k in range(CLASSES))


@dataclass(frozen=True)
class HiddenMinority:
    """train / holdout / test splits (group ids all 0: no subgroup names the minority) and,
    per split, which examples are in the hidden minority ([N] bool), for scoring only."""

    train: Split
    holdout: Split
    test: Split
    hidden: dict[str, Tensor]
    classes: tuple[int, ...]
    truth: Split | None = None


def _images(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Bars on noise: class k lights row k + 3, from a random start over 8 to 12 pixels.
    The noise reaches past the bar's brightness, so models err on a few percent and two
    trained alike disagree on some examples (the control then has something to judge)."""
    y = torch.randint(CLASSES, (n,), generator=gen)
    x = torch.randint(0, 160, (n, 1, SIZE, SIZE), generator=gen)
    start = torch.randint(0, 5, (n,), generator=gen)
    length = torch.randint(8, 13, (n,), generator=gen)
    cols = torch.arange(SIZE)
    on = (cols >= start[:, None]) & (cols < (start + length)[:, None])  # [n, SIZE]
    rows = x[torch.arange(n), 0, y + 3]
    x[torch.arange(n), 0, y + 3] = torch.where(on, torch.full_like(rows, 150), rows)
    return x.to(torch.uint8), y


def hidden_minority(seed: int, n_train: int = 2000, n_holdout: int = 2000,
                    n_test: int = 3000, share: float = 0.3,
                    n_truth: int = 0) -> HiddenMinority:
    """Splits with ``share`` of the images of three classes rotated a quarter turn;
    ``n_truth`` more from the same distribution measure what is true of a slice."""
    gen = torch.Generator().manual_seed(seed)
    classes = tuple(sorted(torch.randperm(CLASSES, generator=gen)[:3].tolist()))
    splits, hidden = {}, {}
    for name, n in (("train", n_train), ("holdout", n_holdout), ("test", n_test),
                    ("truth", n_truth)):
        x, y = _images(n, gen)
        mask = torch.isin(y, torch.tensor(classes)) & (torch.rand(n, generator=gen) < share)
        x[mask] = x[mask].rot90(1, dims=(2, 3))
        splits[name] = Split(x, y, torch.zeros(n, dtype=torch.long))
        hidden[name] = mask
    return HiddenMinority(splits["train"], splits["holdout"], splits["test"], hidden, classes,
                          splits["truth"])


def train_classifier(split: Split, seed: int, *, teacher: nn.Module | None = None,
                     keep: Tensor | None = None, epochs: int = 6, width: float = 1.0,
                     temperature: float = 4.0) -> nn.Module:
    """A tiny_cnn trained on ``split`` (only the examples in ``keep`` when given): on the
    labels, or with ``teacher`` on its soft labels alone (KD with alpha 1)."""
    torch.manual_seed(seed)
    model = build_model("tiny_cnn", 1, CLASSES, width, seed=seed)
    x, y = split.x, split.y
    if keep is not None:
        x, y = x[keep], y[keep]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            xb = x[idx].float() / 255
            logits = model(xb)
            if teacher is None:
                loss = F.cross_entropy(logits, y[idx])
            else:
                with torch.no_grad():
                    soft = (teacher(xb) / temperature).softmax(1)
                loss = F.kl_div((logits / temperature).log_softmax(1), soft,
                                reduction="batchmean") * temperature ** 2
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _hits(model: nn.Module, split: Split) -> tuple[Tensor, Tensor]:
    """(right [N] bool, penultimate features [N, D]) of ``model`` on ``split``."""
    logits, feats = predict_with_features(model, split, 512)
    return logits.argmax(1) == split.y, feats


def compare(data: HiddenMinority, reference: nn.Module, candidate: nn.Module,
            features_of: nn.Module, seed: int,
            policy: GuardrailSpec | None = None) -> tuple[SliceComparison, dict[int, float]]:
    """Discovery of ``candidate`` against ``reference`` on ``features_of``'s features, and
    the drop of each candidate cluster on the ``truth`` split (empty without one): the same
    holdout and seed choose the same candidates, which are then measured on fresh data."""
    examples = []
    for split in (data.holdout, data.test, data.truth):
        if split is None:
            continue
        ref_hit, _ = _hits(reference, split)
        cand_hit, _ = _hits(candidate, split)
        _, feats = _hits(features_of, split)
        examples.append(SliceExamples(feats, ref_hit, cand_hit, split.y))
    run = lambda test, p: discover_slices(  # noqa: E731
        examples[0], test, stage="student", reference="one_hot", representation="teacher",
        settings=SliceDiscoverySpec(), policy=p, class_names=CLASS_NAMES, seed=seed)
    found = run(examples[1], policy or GuardrailSpec())
    if len(examples) < 3:
        return found, {}
    every = GuardrailSpec(discovered_slices=SliceRuleSpec(min_size=1))
    return found, {s.cluster: s.check.estimate for s in run(examples[2], every).slices}


def score(comparison: SliceComparison, hidden: Tensor,
          true_drop: dict[int, float]) -> dict[str, float]:
    """found: some FAIL slice is mostly minority; recall: the share of the minority's test
    examples inside such slices; false: FAIL slices whose drop on the fresh ``truth``
    images is within ``max_drop`` (no harm beyond the margin there)."""
    share = [(s, hidden[list(s.members)].float().mean().item()) for s in comparison.harmed]
    mostly = [s for s, p in share if p >= 0.5]
    false = [s for s in comparison.harmed if true_drop[s.cluster] <= comparison.max_drop]
    covered = sum(int(hidden[list(s.members)].sum()) for s in mostly)
    return {"found": float(bool(mostly)), "recall": covered / max(1, int(hidden.sum())),
            "false": float(len(false)), "judged": float(comparison.family_size)}


def run_seed(seed: int, epochs: int = 3) -> dict[str, dict[str, float]]:
    data = hidden_minority(seed, n_truth=TRUTH)
    majority = ~data.hidden["train"]
    teacher = train_classifier(data.train, seed + 1000, keep=majority, epochs=epochs, width=2.0)
    one_hot = train_classifier(data.train, seed, epochs=epochs)
    distilled = train_classifier(data.train, seed, teacher=teacher, epochs=epochs)
    other = train_classifier(data.train, seed + 2000, epochs=epochs)
    hidden = data.hidden["test"]
    ref_hit, cand_hit = _hits(one_hot, data.test)[0], _hits(distilled, data.test)[0]
    drop = (ref_hit[hidden].float().mean() - cand_hit[hidden].float().mean()).item()
    elsewhere = (ref_hit[~hidden].float().mean() - cand_hit[~hidden].float().mean()).item()
    harm, harm_truth = compare(data, one_hot, distilled, teacher, seed)
    control, control_truth = compare(data, one_hot, other, teacher, seed)
    harm, control = score(harm, hidden, harm_truth), score(control, hidden, control_truth)
    return {"harm": {**harm, "true_drop": drop, "elsewhere": elsewhere}, "control": control}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; tiny models train fastest on one")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = []
    for seed in range(args.seeds):
        r = run_seed(seed, args.epochs)
        rows.append(r)
        h, c = r["harm"], r["control"]
        print(f"seed {seed}: harm: minority drop {100 * h['true_drop']:.1f} pp (elsewhere "
              f"{100 * h['elsewhere']:.1f} pp), found "
              f"{int(h['found'])}, recall {h['recall']:.2f}, false {int(h['false'])} "
              f"of {int(h['judged'])} judged; control: false {int(c['false'])} of "
              f"{int(c['judged'])} judged", flush=True)
    n = len(rows)
    mean = lambda key, part: sum(r[part][key] for r in rows) / n  # noqa: E731
    any_false = lambda part: sum(r[part]["false"] > 0 for r in rows)  # noqa: E731
    print(f"\n{n} seeds, {time.perf_counter() - start:.0f} s")
    print("| scenario | seeds | minority found | recall (mean) | runs with a false "
          "discovery | false slices / judged |")
    print("|---|---:|---:|---:|---:|---:|")
    for part in ("harm", "control"):
        found = f"{sum(r[part]['found'] for r in rows):.0f}/{n}" if part == "harm" else "-"
        recall = f"{mean('recall', part):.2f}" if part == "harm" else "-"
        falses = sum(r[part]["false"] for r in rows)
        judged = sum(r[part]["judged"] for r in rows)
        print(f"| {part} | {n} | {found} | {recall} | {any_false(part)}/{n} | "
              f"{falses:.0f}/{judged:.0f} |")
    print(f"\nharm: the distilled student's drop on the minority averages "
          f"{100 * mean('true_drop', 'harm'):.1f} pp, elsewhere "
          f"{100 * mean('elsewhere', 'harm'):.1f} pp")


if __name__ == "__main__":
    main()
