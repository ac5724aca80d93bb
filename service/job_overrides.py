"""``--set key=value``: change a job file's settings from the command line.

``training.lr=0.01`` sets ``lr`` inside ``training``, creating the mappings on the way; the
value is read as YAML, so ``0.01`` and ``1e-3`` are numbers, ``true`` a boolean, ``null``
no value, ``[30, 60]`` a list and ``'007'`` the string. Overrides apply in order to the file's plain
data, before validation: a setting the job does not have is reported by the same validation,
with the known ones, as if the file had it.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Iterable

from compression.errors import InvalidInput
from compression.safe_yaml import load_yaml_text

__all__ = ["apply_overrides", "parse_override"]

# A number as YAML 1.2 writes it; PyYAML (YAML 1.1) reads 1e-3, without a dot, as a string.
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=1"`` -> (["a", "b"], 1); ``InvalidInput`` says what is wrong with it."""
    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or not key.strip():
        raise InvalidInput(f"--set {text!r} is not KEY=VALUE (e.g. training.epochs=3)")
    if any(not part.strip() for part in path):
        raise InvalidInput(f"--set {text!r}: key {key.strip()!r} has an empty part; "
                           "write dotted names such as training.lr")
    try:
        value = load_yaml_text(raw, f"--set {key.strip()}")
    except InvalidInput:  # YAML's own account of a one-line value says little more
        raise InvalidInput(f"--set {text!r}: the value is not valid YAML; quote it to mean "
                           "a string") from None
    if isinstance(value, str) and _FLOAT.fullmatch(raw.strip()):
        value = float(raw)  # unquoted, so meant as the number
    if isinstance(value, dict):
        raise InvalidInput(f"--set {text!r}: the value is a mapping; set its keys one by one "
                           f"({key.strip()}.NAME=VALUE), or quote it to mean a string")
    return [part.strip() for part in path], value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of the job mapping ``data`` with every override applied, in order; one
    ``InvalidInput`` lists every override that cannot apply."""
    out = copy.deepcopy(data)
    problems: list[str] = []
    for text in overrides:
        try:
            path, value = parse_override(text)
            _set(out, path, value, text)
        except InvalidInput as exc:
            problems += exc.problems
    if problems:
        raise InvalidInput(problems, "invalid --set")
    return out


def _set(data: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    node = data
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(path[:depth + 1])
            raise InvalidInput(f"--set {text!r}: {where} is {child!r}, not a mapping of "
                               "settings; set it as a whole")
        node = child
    node[path[-1]] = value
