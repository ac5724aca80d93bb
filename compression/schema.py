"""The JSON Schema of a job file, generated from the spec's own declarations.

``python -m compression.schema > docs/job.schema.json`` regenerates the published copy; a test
fails when it drifts. Editors that speak JSON Schema (VS Code's YAML extension, JetBrains) use
it to check a job file as it is typed: put
``# yaml-language-server: $schema=<path or URL of job.schema.json>`` at the top of the file.
The schema says what one field may hold; checks across fields (and names only the data can
tell) stay in ``parse_spec``, which remains the judge.
"""

from __future__ import annotations

import json
from typing import Any

from compression.spec import JobSpec
from compression.typed import json_schema

__all__ = ["job_schema", "job_schema_text"]


def job_schema() -> dict[str, Any]:
    return json_schema(JobSpec, "teachers-pet job file")


def job_schema_text() -> str:
    return json.dumps(job_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(job_schema_text(), end="")
