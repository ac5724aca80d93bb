"""Typed configuration: frozen dataclasses parsed from YAML/JSON mappings, every problem listed.

One mechanism for the job spec, the server config and the Kubernetes launcher's config. A field
declares what it accepts next to its default: ``choice(...)`` for a closed set of strings,
``ranged(...)`` for a numeric interval. Floats must be finite everywhere. Keys may be written
``snake_case`` or ``lowerCamelCase`` (the proto JSON mapping). A class may add cross-field checks
in a ``problems() -> list[str]`` method. ``json_schema`` publishes the same declarations for
editors and CI.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Range", "choice", "choices", "ranged", "parse_into", "json_schema", "shown", "camel"]

_MAX_INT = 2**53  # any count or seed beyond it is a typo (and JSON numbers lose precision)


@dataclass(frozen=True)
class Range:
    """The values a numeric field accepts: ``lo``/``hi`` bounds, each closed unless ``*_open``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, value: float) -> bool:
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def __str__(self) -> str:
        left = "(" if self.lo_open or self.lo is None else "["
        right = ")" if self.hi_open or self.hi is None else "]"
        lo = "-inf" if self.lo is None else _number(self.lo)
        hi = "inf" if self.hi is None else _number(self.hi)
        return f"{left}{lo}, {hi}{right}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def choice(*values: str, default: str) -> Any:
    """A string field that takes one of ``values``."""
    return field(default=default, metadata={"choices": values})


def choices(*values: str) -> Any:
    """A list-of-strings field (default empty) whose every item is one of ``values``."""
    return field(default=(), metadata={"choices": values, "each": True})


def ranged(default: Any, lo: float | None = None, hi: float | None = None, *,
           lo_open: bool = False, hi_open: bool = False) -> Any:
    """A numeric field with its declared range (checked when a mapping is parsed)."""
    return field(default=default, metadata={"range": Range(lo, hi, lo_open, hi_open)})


def shown(value: Any) -> str:
    """``repr`` cut short: a message must not echo a megabyte of someone's input."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def parse_into(cls: type, data: Any, where: str, problems: list[str]) -> Any:
    """An instance of dataclass ``cls`` from ``data`` (None when it cannot be built);
    every problem found is appended to ``problems``, each naming its field under ``where``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{where or 'spec'}: expected a mapping, got {shown(data)}")
        return None
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = _snake(str(raw_key))
        path = f"{where}.{key}" if where else key
        if key not in fields:
            problems.append(f"{_cut(path)}: unknown field; known: {', '.join(fields)}")
            continue
        converted = _field_value(fields[key], hints[key], value, path, problems)
        if converted is not None or (value is None and _optional(hints[key])):
            kwargs[key] = converted  # null elsewhere keeps the default, as in proto JSON
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a nested conversion failed; problems already say why
        problems.append(f"{where or 'spec'}: {exc}")
        return None
    check = getattr(obj, "problems", None)
    if check is not None:
        prefix = f"{where}: " if where else ""
        problems.extend(prefix + p for p in check())
    return obj


def _field_value(f: dataclasses.Field, hint: Any, value: Any, path: str,
                 problems: list[str]) -> Any:
    allowed = f.metadata.get("choices")
    items = value if f.metadata.get("each") and isinstance(value, (list, tuple)) else [value]
    wrong = [v for v in items if allowed and v not in allowed]
    if wrong:
        problems.append(f"{path}: {shown(wrong[0])} is not one of {', '.join(allowed)}")
        return None
    converted = _convert(value, hint, path, problems)
    declared = f.metadata.get("range")
    if declared is not None and converted is not None and not declared.contains(converted):
        problems.append(f"{path} is {shown(converted)}; it must be in {declared}")
        return None
    return converted


def _snake(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def _cut(path: str) -> str:
    return path if len(path) <= 80 else f"{path[:77]}..."


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # slow, and the same for every parse: computed once


def _convert(value: Any, hint: Any, where: str, problems: list[str]) -> Any:
    """Convert one YAML value to ``hint``; append a problem and return None when it cannot."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return parse_into(hint, value, where, problems)
    if hint is Any:
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {shown(value)}")
            return None
        items = [_convert(v, typing.get_args(hint)[0], f"{where}[{i}]", problems)
                 for i, v in enumerate(value)]
        return origin(items)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {shown(value)}")
            return None
        val_hint = typing.get_args(hint)[1] if origin is dict else Any
        return {str(k): _convert(v, val_hint, f"{where}.{k}", problems) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, hint, where, problems)
    return _convert_scalar(value, hint, where, problems)


def _convert_union(value: Any, hint: Any, where: str, problems: list[str]) -> Any:
    options = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None:
        return None
    tried: list[str] = []
    for option in options:  # the first alternative that takes the value without a problem
        found: list[str] = []
        converted = _convert(value, option, where, found)
        if not found:
            return converted
        tried += found
    problems.append(tried[0] if len(options) == 1 else
                    f"{where}: {shown(value)} is none of the accepted kinds "
                    f"({', '.join(_type_name(o) for o in options)})")
    return None


def _convert_scalar(value: Any, hint: Any, where: str, problems: list[str]) -> Any:
    ok = (isinstance(value, hint) and not (hint is int and isinstance(value, bool))) or (
        hint is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        problems.append(f"{where}: expected {_type_name(hint)}, got {shown(value)}")
        return None
    if hint is float and not math.isfinite(value):
        problems.append(f"{where}: {value} is not a finite number")
        return None
    if hint is int and abs(value) > _MAX_INT:
        problems.append(f"{where}: {shown(value)} is out of range; use a value below 2**53")
        return None
    return float(value) if hint is float else value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


# -- JSON Schema ----------------------------------------------------------------------------

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def json_schema(cls: type, title: str) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of what ``parse_into(cls, ...)`` accepts, as far as a
    schema can say: types, choices, ranges, unknown keys. Cross-field checks stay in code.
    Each dataclass is one entry of ``$defs`` (the spec is recursive: auto's candidates)."""
    defs: dict[str, Any] = {}
    root = _ref(cls, defs)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title,
            **root, "$defs": dict(sorted(defs.items()))}


def _ref(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    if cls.__name__ not in defs:
        defs[cls.__name__] = {}  # placeholder first: a field may refer back to this class
        defs[cls.__name__] = _object_schema(cls, defs)
    return {"$ref": f"#/$defs/{cls.__name__}"}


def _object_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = _type_hints(cls)
    properties: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        schema = _field_schema(f, hints[f.name], defs)
        properties[f.name] = schema
        if camel(f.name) != f.name:
            properties[camel(f.name)] = schema  # the proto JSON spelling of the same field
    out: dict[str, Any] = {"type": "object", "properties": properties,
                           "additionalProperties": False}
    if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("):
        out["description"] = " ".join(cls.__doc__.split())
    return out


def _field_schema(f: dataclasses.Field, hint: Any, defs: dict[str, Any]) -> dict[str, Any]:
    schema = _type_schema(hint, defs)
    if f.metadata.get("each"):
        schema = {"type": "array", "items": {"enum": list(f.metadata["choices"])}}
    elif "choices" in f.metadata:
        schema = {"enum": list(f.metadata["choices"])}
    declared = f.metadata.get("range")
    if declared is not None:
        schema = {**schema, **_range_schema(declared)}
    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, (bool, int, float, str)):
        schema = {**schema, "default": default}
    return schema


def _type_schema(hint: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _ref(hint, defs)
    if hint is Any:
        return {}
    if origin in (tuple, list):
        return {"type": "array", "items": _type_schema(typing.get_args(hint)[0], defs)}
    if origin is dict or hint is dict:
        values = _type_schema(typing.get_args(hint)[1], defs) if origin is dict else {}
        return {"type": "object", "additionalProperties": values or True}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_type_schema(a, defs) if a is not type(None) else {"type": "null"}
                          for a in typing.get_args(hint)]}
    return {"type": _JSON_TYPES[hint]}


def _range_schema(declared: Range) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if declared.lo is not None:
        out["exclusiveMinimum" if declared.lo_open else "minimum"] = declared.lo
    if declared.hi is not None:
        out["exclusiveMaximum" if declared.hi_open else "maximum"] = declared.hi
    return out
