"""Indexing a data set holds packed arrays, not Python objects per image.

The streaming path's memory must not grow with the data set beyond a few bytes per image: an
index of 200,000 files that kept a string, a Path or a parsed row per file would take hundreds
of MiB. These tests count bytes with ``tracemalloc`` (deterministic, not timing): the peak
while indexing a large manifest minus the peak for a small one, per extra row, is what each
row costs while the index is built.

Whenever a ``Path`` is made (the access checks make one per file) pathlib interns its parts,
and the interpreter resizes its table of interned strings now and then as names come and go:
a few MiB at once, whatever the data set's size, in whichever run it happens to fall. The
tests intern the file names beforehand, so that no run inserts a name into that table. And
``access.read_input`` reads a file in chunks of 16 MiB, a constant that would hide the rows'
cost at this size: the tests read in small chunks.
"""

from __future__ import annotations

import gc
import os
import sys
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from compression import access
from compression.data.images import list_imagefolder
from compression.data.index import ImageIndex, NamePacker, PackedNames
from compression.data.lazy_sources import index_manifest

SMALL, LARGE = 2_000, 20_000
CLASSES = 10


_INTERNED = [sys.intern(f"{i:06d}.png") for i in range(LARGE)]  # see the docstring


def _images(root: Path, n: int) -> list[str]:
    """n tiny PNGs in root/c<k>/ (hard links to one file: the index opens each by name)."""
    one = root / "one.png"
    Image.fromarray(np.zeros((2, 3), np.uint8)).save(one)
    names = []
    for i in range(n):
        name = f"c{i % CLASSES}/{_INTERNED[i]}"
        (root / name).parent.mkdir(exist_ok=True)
        os.link(one, root / name)
        names.append(name)
    one.unlink()
    return names


def _manifest(root: Path, n: int) -> Path:
    names = _images(root, n)
    path = root / "train.csv"
    path.write_text("path,label,group\n" + "".join(
        f"{name},{i % CLASSES},g{i % 3}\n" for i, name in enumerate(names)))
    return path


def _peak(fn: Callable[[], Any]) -> tuple[int, Any]:
    gc.collect()
    tracemalloc.start()
    try:
        out = fn()
        return tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


def _per_row(small: Callable[[], Any], large: Callable[[], Any]) -> tuple[float, Any]:
    """Peak bytes per row beyond the small run's, and the large run's result."""
    small()  # imports, caches and lazily built tables are not the index's
    low, _ = _peak(small)
    high, out = _peak(large)
    return (high - low) / (LARGE - SMALL), out


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    return {n: _manifest(tmp_path_factory.mktemp(f"m{n}"), n) for n in (SMALL, LARGE)}


def _layout_bytes(path: Path) -> int:
    """What a row of the packed index takes at most while it is built: the manifest line
    (bytes, then text), its packed path (name + an int64 end), line number and label and group
    codes (8 + 4 + 4), the resolved path packed (name + end, twice while the growing buffer is
    copied out), the label (int64), the group (a short fixed-width string), the header's shape
    (3 int64) and the index's file_of, offset, length (3 int64)."""
    line, name = 24, len(str(path)) + 8
    return 2 * line + line + 8 + 16 + 2 * name + 8 + 16 + 24 + 24


@pytest.fixture
def small_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    read_upto = access.read_upto
    monkeypatch.setattr(access, "read_upto", lambda f, n: read_upto(f, n, chunk=1 << 16))


def test_indexing_a_manifest_costs_bytes_per_row(manifests, small_reads):
    large = manifests[LARGE]
    layout = _layout_bytes(large.parent / "c0" / "000000.png")
    per_row, split = _per_row(lambda: index_manifest(manifests[SMALL], 0, None, workers=2),
                              lambda: index_manifest(large, 0, None, workers=2))
    # Twice the layout: growable buffers over-allocate (by up to 1/8) and are copied once when
    # packed. The packed index takes about half the layout here; a Python string per row takes
    # 49 bytes plus its length, a parsed row or a thread pool future per file hundreds: an
    # index built from them took about 1.9 KiB per row in this test.
    assert per_row < 2 * layout, (per_row, layout)
    assert len(split.x) == LARGE and split.x.sample_shape == (1, 2, 3)
    assert split.y[:12].tolist() == [i % CLASSES for i in range(12)]
    assert split.attr is not None and split.attr[:4].tolist() == ["g0", "g1", "g2", "g0"]
    assert split.x.where(LARGE - 1) == str(large.parent / "c9" / f"{LARGE - 1:06d}.png")


def test_listing_an_image_folder_keeps_no_path_per_file(manifests, small_reads):
    # One folder is listed at a time: its entries are held while it is read (under 1 KiB each,
    # a tenth of the files here), the files already listed only as packed names, copied once
    # when packed; and an int64 label per file.
    roots = {n: path.parent for n, path in manifests.items()}
    per_row, (paths, labels, classes) = _per_row(
        lambda: list_imagefolder(roots[SMALL], None),
        lambda: list_imagefolder(roots[LARGE], None))
    name = len(str(roots[LARGE] / "c0" / "000000.png")) + 8
    assert per_row < 2 * name + 8 + 100, (per_row, name)
    assert classes == tuple(f"c{k}" for k in range(CLASSES))
    assert paths[0] == str(roots[LARGE] / "c0" / "000000.png")
    assert paths[len(paths) - 1] == str(roots[LARGE] / "c9" / f"{LARGE - 1:06d}.png")
    assert np.bincount(labels).tolist() == [LARGE // CLASSES] * CLASSES


def test_packed_names_round_trip():
    names = ["", "a", "dir/é.png", "x\udcff.png", "lone \ud800 surrogate", "a,b\n"]
    packer = NamePacker()
    for name in names:
        packer.append(name)
    packed = packer.packed()
    assert len(packed) == len(names) and list(packed) == names
    assert [packed[i] for i in range(len(names))] == names
    assert list(PackedNames.of(names)) == names
    assert PackedNames.of(packed) is packed
    assert len(PackedNames.of([])) == 0 and list(NamePacker().packed()) == []
    assert packed.nbytes == packed.blob.nbytes + 8 * len(names)


def test_index_of_names_equals_index_of_packed_names(tmp_path):
    names = [str(tmp_path / n) for n in _images(tmp_path, 5)]
    a = ImageIndex.of_files(names, 0, "x")
    b = ImageIndex.of_files(PackedNames.of(names), 0, "x", workers=2)
    assert list(a.files) == list(b.files) == names
    assert a.sample_shape == b.sample_shape == (1, 2, 3)

