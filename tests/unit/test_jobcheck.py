"""Mistakes that need no data are invalid specs at once, each named, all listed together."""

from __future__ import annotations

import pytest

from compression.errors import InvalidInput
from compression.spec import parse_spec


def _problems(data: dict) -> list[str]:
    with pytest.raises(InvalidInput) as caught:
        parse_spec(data)
    return caught.value.problems


def test_typos_in_names_are_found_without_data():
    problems = _problems({
        "student": {"arch": "resnet9"}, "teacher": {"path": "t.safetensors", "arch": "rn20"},
        "mitigation": {"name": "auto", "candidates": [{"name": "kd"}, {"name": "adaptiv"}]}})
    assert len(problems) == 3
    assert problems[0].startswith("mitigation.candidates[1]: mitigation.name: unknown loss")
    assert "student.arch: unknown architecture 'resnet9'" in problems[1]
    assert "teacher.arch: unknown architecture 'rn20'" in problems[2]


def test_unknown_or_mistyped_params_are_found_without_data():
    problems = _problems({"mitigation": {"name": "group_dro",
                                         "params": {"betta": 0.5, "eta": "fast"}}})
    assert any("params.betta: unknown param" in p for p in problems)
    assert any("params.eta is 'fast'" in p for p in problems)


def test_fashion_mnist_class_and_subgroup_names_are_checked_at_parse_time():
    problems = _problems({"data": {"subgroups": {"by": "map",
                                                 "mapping": {"Shirtt": "tops", "7": "shoes"}}},
                          "guardrails": {"min_accuracy_by_group": {"top": 0.5}}})
    assert "mapping names unknown classes ['Shirtt']" in problems[0]
    assert "unknown subgroups ['top']; the subgroups are: shoes, tops" in problems[1]


def test_names_only_the_data_can_tell_are_left_to_preflight():
    spec = parse_spec({"data": {"source": "npz", "path": "a.npz", "test_path": "b.npz"},
                       "guardrails": {"min_accuracy_by_group": {"anything": 0.5}}})
    assert spec.guardrails.min_accuracy_by_group == {"anything": 0.5}
