"""Every numeric field of the job spec has a declared range, checked when the spec is parsed."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compression.errors import InvalidInput
from compression.spec import JobSpec, parse_spec

_HOSTILE = (math.nan, math.inf, -math.inf, 1e308, -1e308, 2**70, -(2**70))


def _numeric_fields(cls: type, prefix: str = "") -> list[tuple[str, type]]:
    """(dotted path, int or float) of every numeric field below ``cls``."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if dataclasses.is_dataclass(hint):
            out += _numeric_fields(hint, f"{prefix}{f.name}.")
        elif hint in (int, float) or (inner and inner[0] in (int, float) and len(inner) == 1):
            out.append((f"{prefix}{f.name}", hint if hint in (int, float) else inner[0]))
    return out


def _nested(path: str, value: object) -> dict:
    data: dict = {}
    node = data
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return data


NUMERIC = _numeric_fields(JobSpec)


def test_the_spec_has_numeric_fields_to_check():
    names = {p for p, _ in NUMERIC}
    assert {"training.lr", "training.seed", "mitigation.temperature", "export.opset",
            "data.long_tail.imbalance"} <= names


@pytest.mark.parametrize("path,kind", NUMERIC, ids=[p for p, _ in NUMERIC])
def test_non_finite_and_absurd_values_are_refused_naming_the_field(path, kind):
    for value in _HOSTILE:
        if kind is int and isinstance(value, float):
            value = 2**70 if value > 0 else -(2**70)
        with pytest.raises(InvalidInput) as caught:
            parse_spec(_nested(path, value))
        # "training.lr ..." or, from a section's own checks, "training: lr ..."
        named = [p.replace(": ", ".", 1).startswith(path) or p.startswith(path)
                 for p in caught.value.problems]
        assert any(named), (value, caught.value)


def test_in_range_values_parse_and_bounds_are_inclusive_where_declared():
    spec = parse_spec({"training": {"momentum": 0.0, "weight_decay": 1.0, "seed": 2**32 - 1},
                       "mitigation": {"alpha": 1.0, "temperature": 100},
                       "export": {"opset": 21}})
    assert spec.training.seed == 2**32 - 1 and spec.mitigation.temperature == 100.0
    with pytest.raises(InvalidInput, match=r"training.momentum is 1.0; it must be in \[0, 1\)"):
        parse_spec({"training": {"momentum": 1.0}})


def test_every_problem_is_listed_at_once():
    with pytest.raises(InvalidInput) as caught:
        parse_spec({"training": {"lr": math.nan, "momentum": -5},
                    "mitigation": {"temperature": 1e308}})
    assert len(caught.value.problems) == 3


def test_a_huge_value_is_not_echoed_whole():
    with pytest.raises(InvalidInput) as caught:
        parse_spec({"name": "x", "training": {"optimizer": "a" * 10_000_000}})
    assert len(str(caught.value)) < 2_000


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
_keys = st.sampled_from(["name", "training", "lr", "epochs", "data", "mitigation", "alpha",
                         "guardrails", "min_samples", "export", "opset", "seed", "params",
                         "candidates", "subgroups", "mapping", "x"])
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=4)), max_leaves=12)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values, max_size=5))
def test_any_mapping_gives_a_valid_spec_or_invalid_input(data):
    try:
        spec = parse_spec(data)
    except InvalidInput as exc:
        assert exc.problems and all(isinstance(p, str) for p in exc.problems)
        return
    assert isinstance(spec, JobSpec)
    for path, _ in NUMERIC:  # what parses is finite and within its range
        value = spec
        for part in path.split("."):
            value = getattr(value, part)
        assert value is None or math.isfinite(value)
