"""Two study calls compared run by run on their saved test outcomes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench._study_compare import compare_outcomes


def _save(root: Path, run: str, hit: list[int]) -> None:
    folder = root / run
    folder.mkdir(parents=True)
    np.savez_compressed(folder / "outcomes.npz", hit=np.array(hit, dtype=bool),
                        label=np.array([0, 1, 1]), group=np.array([0, 1, 1]))


def test_identical_calls_agree_and_one_changed_answer_is_named(tmp_path: Path) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    for root in (here, there):
        _save(root, "case/kd/seed0", [1, 0, 1])
    assert compare_outcomes(here, there).identical

    _save(here, "case/auto/seed0", [1, 1, 1])
    _save(there, "case/auto/seed0", [1, 1, 0])  # one test example answered differently
    _save(there, "case/one_hot/seed0", [1, 1, 1])
    result = compare_outcomes(here, there)
    assert not result.identical
    assert result.same == ["case/kd/seed0"] and result.differ == ["case/auto/seed0"]
    assert result.only_there == ["case/one_hot/seed0"] and result.only_here == []
    assert "1 differ" in result.summary() and "differ: case/auto/seed0" in result.summary()


def test_nothing_to_compare_is_not_agreement(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert not compare_outcomes(tmp_path / "a", tmp_path / "b").identical
