"""Data files written to hurt: lying headers, bombs, special files, truncation, paths that move
after the job was accepted, and random mutations. Each is InvalidInput naming the file (or
AccessDenied naming the path), never an allocation, a hang or an internal error."""

import gzip
import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from compression import access
from compression.access import AccessDenied, InputAccess
from compression.data import load_dataset
from compression.data.images import read_imagefolder, read_manifest
from compression.data.raw import MAX_CLASSES, RawSplit
from compression.data.sources import read_fashion_mnist, read_idx, read_npz
from compression.errors import InvalidInput
from compression.spec import DataSpec


def npy(header: dict, body: bytes = b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + body


def zip_npz(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name + ".npy", data)
    return path


def idx_bytes(dims: tuple[int, ...], body: bytes) -> bytes:
    return bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + body


def png_bytes(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height 8-bit gray pixels (and holds none)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
            chunk(b"IEND", b""))


def png(path: Path, value: int = 7, size=(4, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


# -- lying headers and bombs -----------------------------------------------------------------


def test_an_npz_header_declaring_a_terabyte_is_refused_before_allocating(tmp_path):
    huge = {"descr": "|u1", "fortran_order": False, "shape": (10**6, 10**6)}
    path = zip_npz(tmp_path / "huge.npz", {"x": npy(huge), "y": npy(
        {"descr": "<i8", "fortran_order": False, "shape": (2,)}, b"\0" * 16)})
    with pytest.raises(InvalidInput, match=r"huge.npz: x declares shape \[1000000, 1000000\] "
                                           r"uint8 \(1000000000000 bytes\) but holds 0 bytes"):
        read_npz(path, None)  # with no policy installed


def test_npz_arrays_over_the_limit_are_refused_before_reading(tmp_path):
    np.savez_compressed(tmp_path / "zeros.npz", x=np.zeros((20, 1000, 1000), np.uint8),
                        y=np.zeros(20, np.int64))  # 20 MB of pixels in ~20 KB
    with access.granted(InputAccess(max_bytes=10**6)), pytest.raises(
            InvalidInput, match=r"zeros.npz: arrays x \[20, 1000, 1000\] uint8, y \[20\] int64 "
                                r"make 20000160 bytes, over the limit of 1000000 bytes"):
        read_npz(tmp_path / "zeros.npz", None)
    assert access.decoded_limit() == 16 * 2**30  # and with none, a sane default applies


@pytest.mark.parametrize("header, needle", [
    ({"descr": "|u1", "fortran_order": False, "shape": (-2, 4)}, "impossible shape"),
    ({"descr": "|O", "fortran_order": False, "shape": (2,)}, "unicode array"),
    ({"descr": [("a", "<i4")], "fortran_order": False, "shape": (2,)}, "plain numbers"),
])
def test_npz_headers_that_make_no_sense(tmp_path, header, needle):
    path = zip_npz(tmp_path / "odd.npz", {"x": npy(header, b"\0" * 64)})
    with pytest.raises(InvalidInput, match=needle) as err:
        read_npz(path, None)
    assert "odd.npz" in str(err.value)


def test_idx_headers_and_gzip_bombs_are_bounded(tmp_path):
    lying = tmp_path / "lying-idx3-ubyte"
    lying.write_bytes(idx_bytes((2**32 - 1, 2**32 - 1, 28), b"\0" * 10))
    with pytest.raises(InvalidInput, match="lying-idx3-ubyte: dims .* over the limit"):
        read_idx(lying)
    under = tmp_path / "under-idx1-ubyte"  # 4 GiB declared, under the default limit
    under.write_bytes(idx_bytes((2**32 - 1,), b"\0" * 10))
    with pytest.raises(InvalidInput, match="under-idx1-ubyte is truncated .*10 data bytes"):
        read_idx(under)  # read in chunks: memory follows the file, not its header
    bomb = tmp_path / "bomb-idx1-ubyte.gz"
    bomb.write_bytes(gzip.compress(idx_bytes((10**6,), b"\0" * 10**6)))  # ~1 KB on disk
    with access.granted(InputAccess(max_bytes=10**4)), pytest.raises(InvalidInput,
                                                                     match="limit of 10000"):
        read_idx(bomb)
    assert read_idx(bomb).shape == (10**6,)  # the default limit lets a real file through


def test_image_dimensions_are_checked_before_decoding(tmp_path):
    (tmp_path / "wide.png").write_bytes(png_bytes(100, 100))
    with access.granted(InputAccess(max_bytes=1000)), pytest.raises(
            InvalidInput, match=r"wide.png is 100x100 pixels: decoding it would take more"):
        read_manifest(_manifest(tmp_path, ["wide.png"]), 0, None)
    (tmp_path / "zero.png").write_bytes(png_bytes(0, 5))
    with pytest.raises(InvalidInput, match="zero.png"):
        read_manifest(_manifest(tmp_path, ["zero.png"]), 0, None)


def _manifest(folder: Path, images: list[str], name: str = "m.csv") -> Path:
    rows = "".join(f"{image},{i % 2}\n" for i, image in enumerate(images))
    (folder / name).write_text("path,label\n" + rows)
    return folder / name


def test_the_images_of_a_split_together_are_bounded(tmp_path):
    names = [png(tmp_path / f"{i}.png", size=(10, 10)).name for i in range(5)]
    manifest = _manifest(tmp_path, names)
    with access.granted(InputAccess(max_bytes=450)), pytest.raises(
            InvalidInput, match="the 5 images from .*0.png on pass the 450 bytes"):
        read_manifest(manifest, 0, None)
    assert len(read_manifest(manifest, 0, None)) == 5


@pytest.mark.parametrize("arrays, needle", [
    (dict(x=np.zeros((2, 0, 5), np.uint8), y=np.array([0, 1])), "5x0 pixels"),
    (dict(x=np.array([[[0.5]], [[np.nan]]]), y=np.array([0, 1])), "NaN or infinity"),
    (dict(x=np.array([[[0.5]], [[np.inf]]]), y=np.array([0, 1])), "NaN or infinity"),
    (dict(x=np.zeros((2, 2, 2), np.uint8), y=np.array([0, 2**40])), f"more than {MAX_CLASSES}"),
    (dict(x=np.zeros((2, 2, 2), np.uint8), y=np.array([0, 2**63 + 5], np.uint64)),
     "out of range"),
    (dict(x=np.zeros((2, 2, 2), np.uint8), y=np.array([0, 1]),
          group=np.array([b"\xff\xfe", b"a"])), "not UTF-8"),
    (dict(x=np.zeros((0, 2, 2), np.uint8), y=np.zeros(0, np.int64)), "holds no samples"),
    (dict(x=np.zeros((3, 2, 2), np.uint8), y=np.array([0, 1])), "x has 3 samples but y has 2"),
])
def test_npz_contents_that_cannot_form_a_split(tmp_path, arrays, needle):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InvalidInput, match=needle) as err:
        read_npz(tmp_path / "bad.npz", None)
    assert "bad.npz" in str(err.value)


def test_a_manifest_label_that_would_make_a_trillion_classes(tmp_path):
    png(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,999999999999\n")
    with pytest.raises(InvalidInput, match=f"m.csv: label 999999999999 .*more than {MAX_CLASSES}"):
        read_manifest(tmp_path / "m.csv", 0, None)
    (tmp_path / "m.jsonl").write_text('{"path": "a.png", "label": [1]}\n' + "[" * 10**5 + "\n")
    with pytest.raises(InvalidInput, match="m.jsonl line 1: label is \\[1\\]"):
        read_manifest(tmp_path / "m.jsonl", 0, None)
    (tmp_path / "deep.jsonl").write_text("[" * 10**5 + "\n")
    with pytest.raises(InvalidInput, match="deep.jsonl line 1 is not valid JSON"):
        read_manifest(tmp_path / "deep.jsonl", 0, None)


# -- special files ---------------------------------------------------------------------------


def test_fifos_are_named_as_such_by_every_reader(tmp_path):
    for name in ("m.csv", "d.npz", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        os.mkfifo(tmp_path / name)
    (tmp_path / "cls").mkdir()
    os.mkfifo(tmp_path / "cls" / "0.png")
    for read in (lambda: read_manifest(tmp_path / "m.csv", 0, None),
                 lambda: read_npz(tmp_path / "d.npz", None),
                 lambda: read_fashion_mnist(tmp_path, "train"),
                 lambda: read_imagefolder(tmp_path, 0, None)):
        with pytest.raises(InvalidInput, match=r"is not a regular file \(a FIFO\)") as err:
            read()  # O_NONBLOCK, then fstat: a FIFO without a writer never blocks here
        assert "does not exist" not in str(err.value)


# -- truncation ------------------------------------------------------------------------------


def _valid_files(folder: Path) -> dict[str, Path]:
    np.savez(folder / "d.npz", x=np.arange(32, dtype=np.uint8).reshape(2, 4, 4), y=[0, 1])
    (folder / "i-idx3-ubyte").write_bytes(idx_bytes((2, 3, 3), bytes(range(18))))
    (folder / "i-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes((2, 3, 3), b"\7" * 18)))
    png(folder / "a.png", size=(16, 16))
    Image.new("RGB", (16, 16), (1, 2, 3)).save(folder / "b.jpg", quality=90)
    (folder / "m.jsonl").write_text('{"path": "a.png", "label": "cat"}\n'
                                    '{"path": "b.jpg", "label": 0}\n')
    return {p.name: p for p in folder.iterdir()}


def _read(path: Path) -> object:
    if path.suffix == ".npz":
        return read_npz(path, None)
    if "idx" in path.name:
        return read_idx(path)
    if path.suffix in (".png", ".jpg"):
        return read_manifest(_manifest(path.parent, [path.name], "one.csv"), 0, None)
    return read_manifest(path, 0, None)


@pytest.mark.parametrize("name", ["d.npz", "i-idx3-ubyte", "i-idx3-ubyte.gz", "a.png", "b.jpg",
                                  "m.jsonl"])
def test_a_truncated_file_of_each_kind_is_invalid_input(tmp_path, name):
    path = _valid_files(tmp_path)[name]
    _read(path)  # whole, it reads
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(InvalidInput) as err:
        _read(path)
    assert name in str(err.value)


# -- paths that move after the job was accepted ----------------------------------------------


def test_a_manifest_line_added_later_cannot_leave_the_roots(tmp_path):
    root = tmp_path / "root"
    names = [png(root / "img" / f"{i}.png").relative_to(root).as_posix() for i in range(4)]
    secret = png(tmp_path / "elsewhere" / "secret.png")
    manifest = _manifest(root, names)
    spec = DataSpec(source="manifest", path=str(manifest), test_path=str(manifest))
    with access.granted(InputAccess.of([str(root)])):
        assert len(load_dataset(spec).test) == 4
        with manifest.open("a") as f:
            f.write(f"{secret},1\n")
        with pytest.raises(AccessDenied, match=f"m.csv line 6\\).*'{secret}' is outside"):
            load_dataset(spec)
    assert len(load_dataset(spec).test) == 5  # no policy: the same file is fine


def test_an_image_swapped_for_a_symlink_cannot_leave_the_roots(tmp_path):
    root = tmp_path / "root"
    png(root / "cat" / "0.png")
    png(root / "dog" / "0.png")
    with access.granted(InputAccess.of([str(root)])):
        assert len(read_imagefolder(root, 0, None)) == 2
        (root / "dog" / "0.png").unlink()
        (root / "dog" / "0.png").symlink_to("/etc/passwd")
        with pytest.raises(AccessDenied, match="dog/0.png' \\(it resolves to /etc/passwd\\)"):
            read_imagefolder(root, 0, None)


# -- random and mutated files: a valid split or InvalidInput, nothing else -------------------
# Mutations go inside the containers (the .npy members of a zip, the idx bytes in a gzip, the
# text of a manifest) so that they reach the parsers; mutating the container's own bytes
# mostly trips its checksum. Random containers come too.

_PROPERTY = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.too_slow])
_TEXT = b'path,label,group\n{}":0129-a.pngjpg /\\\r\x00\xff'


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A folder of valid files (the images the manifests name) and their bytes."""
    folder = tmp_path_factory.mktemp("hostile")
    valid = {name: path.read_bytes() for name, path in _valid_files(folder).items()}
    (folder / "m.csv").write_text("path,label,group\na.png,cat,x\nb.jpg,1,y\n")
    valid["m.csv"] = (folder / "m.csv").read_bytes()
    return folder, valid


def _edited(valid: bytes, values: st.SearchStrategy[int]) -> st.SearchStrategy[bytes]:
    """``valid`` with a few bytes replaced, inserted or deleted, and maybe cut short."""
    edit = st.tuples(st.sampled_from("rid"), st.integers(0, max(len(valid) - 1, 0)), values)

    def apply(args: tuple[list[tuple[str, int, int]], int]) -> bytes:
        data = bytearray(valid)
        for op, at, value in args[0]:
            at = min(at, len(data))
            if op == "r" and at < len(data):
                data[at] = value
            elif op == "i":
                data.insert(at, value)
            elif op == "d":
                del data[at:at + 1]
        return bytes(data[:args[1]])
    return st.tuples(st.lists(edit, min_size=1, max_size=4),
                     st.integers(len(valid) // 2, len(valid) + 4)).map(apply)


def _npz_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {n.removesuffix(".npy"): archive.read(n) for n in archive.namelist()}


def _npz_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in members.items():
            archive.writestr(name + ".npy", data)
    return buf.getvalue()


def _strategy(name: str, valid: bytes) -> st.SearchStrategy[bytes]:
    anything = st.integers(0, 255)
    if name.endswith(".npz"):
        x, y = _npz_members(valid)["x"], _npz_members(valid)["y"]
        inner = st.tuples(_edited(x, anything) | st.just(x), _edited(y, anything) | st.just(y))
        return st.one_of(inner.map(lambda m: _npz_zip({"x": m[0], "y": m[1]})),
                         st.binary(max_size=300))
    if name.endswith(".gz"):
        return st.one_of(_edited(gzip.decompress(valid), anything).map(gzip.compress),
                         _edited(valid, anything))
    return st.one_of(_edited(valid, st.sampled_from(list(_TEXT))), st.binary(max_size=200))


def _valid_split(split: RawSplit) -> None:
    assert split.x.ndim == 4 and split.x.dtype == np.uint8 and split.x.shape[1] in (1, 3)
    assert split.x.shape[2] > 0 and split.x.shape[3] > 0 and len(split) > 0
    assert len(split.x) == len(split.y)
    assert split.y.min() >= 0 and split.y.max() < len(split.class_names)


def _only_invalid_input(folder: Path, name: str, data: bytes) -> None:
    path = folder / f"mut-{name}"
    path.write_bytes(data)
    with access.granted(InputAccess.of([str(folder)], max_bytes=2**20)):
        try:
            out = _read(path)
        except InvalidInput:
            return
    if isinstance(out, RawSplit):
        _valid_split(out)
    else:
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8


@pytest.mark.parametrize("name", ["d.npz", "i-idx3-ubyte.gz", "m.csv", "m.jsonl"])
def test_mutated_files_are_read_or_refused(work, name):
    folder, valid = work

    @_PROPERTY
    @given(data=_strategy(name, valid[name]))
    def check(data):
        _only_invalid_input(folder, name, data)
    check()
