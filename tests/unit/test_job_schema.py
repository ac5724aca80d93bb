"""The published JSON Schema of job files: generated, current, and in agreement with the parser."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from compression.errors import InvalidInput
from compression.schema import job_schema, job_schema_text
from compression.spec import parse_spec
from tests.unit.test_spec_ranges import NUMERIC, _nested

REPO = Path(__file__).resolve().parents[2]
PUBLISHED = REPO / "docs" / "job.schema.json"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def validator():
    schema = job_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_published_schema_is_current():
    assert PUBLISHED.read_text() == job_schema_text(), (
        "docs/job.schema.json is stale: python -m compression.schema > docs/job.schema.json")


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_every_example_job_validates(validator, example):
    data = yaml.safe_load(example.read_text())
    assert not list(validator.iter_errors(data))
    parse_spec(data)


def test_every_numeric_field_declares_its_range(validator):
    defs = json.loads(job_schema_text())["$defs"]
    for path, _ in NUMERIC:
        *_, leaf = path.split(".")
        declared = [d["properties"][leaf] for d in defs.values() if leaf in d["properties"]]
        assert declared and all({"minimum", "exclusiveMinimum"} & set(d) for d in declared), path


@pytest.mark.parametrize("path,kind", NUMERIC, ids=[p for p, _ in NUMERIC])
def test_schema_and_parser_refuse_the_same_out_of_range_values(validator, path, kind):
    for value in ((2**40, -(2**40)) if kind is int else (1e300, -1e300)):
        data = _nested(path, value)
        assert list(validator.iter_errors(data)), (path, value)
        with pytest.raises(InvalidInput):
            parse_spec(data)


def test_camel_case_keys_and_unknown_keys_are_judged_alike(validator):
    ok = {"training": {"batchSize": 64}, "mitigation": {"name": "kd", "alpha": 0.9}}
    assert not list(validator.iter_errors(ok)) and parse_spec(ok).training.batch_size == 64
    typo = {"training": {"batch_sise": 64}}
    assert list(validator.iter_errors(typo))
    with pytest.raises(InvalidInput, match="batch_sise: unknown field"):
        parse_spec(typo)
