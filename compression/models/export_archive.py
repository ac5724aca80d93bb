"""A torch.export archive (.pt2) checked part by part before torch reads any of it.

``torch.export.save`` (torch 2.14) writes, under one top folder::

    archive_format ("pt2"), archive_version ("0"), byteorder, .data/version,
    .data/serialization_id
    models/model.json                            the program, as JSON
    data/weights/model_weights_config.json       + data/weights/weight_N: raw tensor bytes
    data/constants/model_constants_config.json   + data/constants/tensor_N
    data/sample_inputs/model.pt                  example inputs, a torch.save file
    extra/NAME                                   extra files, read as text

Anything else is refused before loading: compiled AOTInductor libraries (data/aotinductor),
pickled weights and objects (which torch.export.load unpickles unrestricted), other
programs, legacy parts, TorchScript code. Weights are only measured here, never loaded.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from pathlib import Path

import torch

from compression.errors import InvalidInput
from compression.models.archive import Archive, is_zip, read_archive
from compression.models.program_check import check_program
from compression.models.safe_load import PICKLED_CODE_HELP, embedded_code, imported_names

__all__ = ["check_export_archive"]

_REQUIRED = ("archive_format", "archive_version", "models/model.json",
             "data/weights/model_weights_config.json",
             "data/constants/model_constants_config.json", "data/sample_inputs/model.pt")
_OPTIONAL = ("byteorder", ".data/version", ".data/serialization_id")
_PAYLOADS = {"weights": re.compile(r"weight_\d{1,9}"), "constants": re.compile(r"tensor_\d{1,9}")}
_EXTRA = re.compile(r"extra/[\w.+@=-]+")
# what a torch.save of plain tensors in tuples and dicts imports
_TENSOR_GLOBALS = re.compile(r"torch\._utils\._rebuild_tensor(_v2)?|torch\.\w+Storage|"
                             r"torch\.storage\.UntypedStorage|collections\.OrderedDict")
_SHOW = 5


def _payload_parts(archive: Archive, folder: str) -> set[str]:
    """The data/<folder>/ parts its config names, each checked to be raw tensor bytes."""
    config_name = f"data/{folder}/model_{folder}_config.json"
    try:
        config = json.loads(archive.entries[config_name])["config"]
        items = list(config.values())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InvalidInput(f"{archive.path}: {config_name} is not a payload config") from None
    parts = set()
    for meta in items:
        name = meta.get("path_name") if isinstance(meta, dict) else None
        member = f"data/{folder}/{name}"
        if not isinstance(name, str) or meta.get("use_pickle") is not False or \
                not _PAYLOADS[folder].fullmatch(name):
            # pickled tensors, custom and opaque objects: torch unpickles them unrestricted
            raise embedded_code(archive.path, member if isinstance(name, str) else config_name)
        if not isinstance(meta.get("tensor_meta"), dict):
            raise InvalidInput(f"{archive.path}: {member} has no tensor description")
        if member not in archive.entries:
            raise InvalidInput(f"{archive.path}: {config_name} names {member}, which is missing")
        parts.add(member)
    return parts


def _check_layout(archive: Archive) -> None:
    names = archive.entries
    native = [n for n in names if n.startswith("data/aotinductor/")]
    if native:
        raise embedded_code(archive.path, "data/aotinductor (compiled native code)")
    missing = [n for n in _REQUIRED if n not in names]
    if missing:
        raise InvalidInput(f"{archive.path} lacks {', '.join(missing)}; it is not an archive "
                           "written by torch.export.save", "not a torch.export archive")
    if names["archive_format"] != b"pt2" or names["archive_version"] != b"0":
        raise InvalidInput(f"{archive.path} is a torch.export archive of another format "
                           f"version; re-save it with torch.export.save in torch "
                           f"{torch.__version__.split('+')[0]}")
    known = set(_REQUIRED) | set(_OPTIONAL) | _payload_parts(archive, "weights") | \
        _payload_parts(archive, "constants")
    unexpected = [n for n in names if n not in known and not _EXTRA.fullmatch(n)]
    if unexpected:
        raise InvalidInput(
            [f"unexpected entries: {', '.join(unexpected[:_SHOW])}"
             + (f" and {len(unexpected) - _SHOW} more" if len(unexpected) > _SHOW else ""),
             "torch.export.save writes only models/model.json, data/weights, data/constants, "
             f"data/sample_inputs and extra files; {PICKLED_CODE_HELP}"],
            f"{archive.path} is not a plain torch.export archive")


def _check_sample_inputs(archive: Archive) -> None:
    """The example inputs must be plain tensors: torch.export.load retries any pickle that
    a weights-only load refuses without restrictions."""
    member = "data/sample_inputs/model.pt"
    data = archive.entries[member]
    if not data:
        return  # torch reads an empty part as no inputs
    try:
        nested = read_archive(data, archive.path, "torch.save file") if is_zip(data) else None
    except InvalidInput:
        raise embedded_code(archive.path, member) from None
    stream = nested.entries.get("data.pkl", b"") if nested else data
    names = imported_names(stream)
    if not all(_TENSOR_GLOBALS.fullmatch(n) for n in names):
        raise embedded_code(archive.path, member)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the very bytes torch.export.load will read, through the same reader
            inputs = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # any refusal: torch.export.load would retry it unrestricted
        raise embedded_code(archive.path, member) from None
    # (args, kwargs): positional tensors only. Their paths become the source of the input
    # guards that .module() compiles, and a dict key there would be written into it as is.
    if not (isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[0], tuple)
            and all(isinstance(t, torch.Tensor) for t in inputs[0])
            and isinstance(inputs[1], dict) and not inputs[1]):
        raise InvalidInput(f"{archive.path}: {member} holds example inputs other than "
                           "positional tensors; a teacher takes one image tensor. Export it "
                           "with torch.export.export(model, (example,))")


def check_export_archive(archive: Archive) -> None:
    """Refuse a .pt2 that holds more than a program of built-in operators, raw tensors and
    plain example inputs. Nothing in it is run or unpickled unrestricted."""
    _check_layout(archive)
    _check_sample_inputs(archive)
    try:
        program = json.loads(archive.entries["models/model.json"])
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"{archive.path}: models/model.json is not JSON: {exc}") from None
    check_program(program, archive.path, "models/model.json")
