import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from compression.data.sources import FASHION_MNIST_CLASSES, read_fashion_mnist, read_idx, read_npz
from compression.errors import InvalidInput

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray, magic_type: int = 0x08) -> Path:
    header = bytes([0, 0, magic_type, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())
    return path


def write_fmnist(root: Path, n_train: int = 6, n_test: int = 4) -> Path:
    root.mkdir()
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = np.arange(n * 28 * 28, dtype=np.int64).reshape(n, 28, 28) % 256
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def test_idx_parse_round_trip(tmp_path):
    x = np.arange(24).reshape(2, 3, 4)
    out = read_idx(write_idx(tmp_path / "a.gz", x))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    assert np.array_equal(out, x) and out.flags.writeable


def test_idx_bad_magic_and_truncation_name_the_file(tmp_path):
    bad = write_idx(tmp_path / "floats.gz", np.zeros((2, 2)), magic_type=0x0D)
    with pytest.raises(InvalidInput, match="floats.gz is not an idx file"):
        read_idx(bad)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"abc")
    with pytest.raises(InvalidInput, match="short.gz is truncated"):
        read_idx(short)
    header_only = tmp_path / "header.gz"
    with gzip.open(header_only, "wb") as f:
        f.write(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(InvalidInput, match="header.gz is truncated inside its header"):
        read_idx(header_only)
    (tmp_path / "plain.gz").write_bytes(b"not gzip")
    with pytest.raises(InvalidInput, match="cannot read idx file .*plain.gz"):
        read_idx(tmp_path / "plain.gz")


def test_fashion_mnist_reader_on_tiny_files(tmp_path):
    root = write_fmnist(tmp_path / "fm")
    train = read_fashion_mnist(root, "train")
    assert train.x.shape == (6, 1, 28, 28) and train.x.dtype == np.uint8
    assert train.y.tolist() == [0, 1, 2, 3, 4, 5]
    assert int(train.x[1, 0, 0, 0]) == 784 % 256
    assert train.class_names == FASHION_MNIST_CLASSES
    assert len(read_fashion_mnist(root, "test")) == 4


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(InvalidInput, match="apt-get install dataset-fashion-mnist") as err:
        read_fashion_mnist(tmp_path / "nowhere", "train")
    assert "nowhere" in str(err.value)
    root = write_fmnist(tmp_path / "fm")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(InvalidInput, match="t10k-labels-idx1-ubyte.gz is missing.*dataset-fash"):
        read_fashion_mnist(root, "test")


def test_fashion_mnist_image_label_count_mismatch(tmp_path):
    root = write_fmnist(tmp_path / "fm")
    write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(5))
    with pytest.raises(InvalidInput, match="train-images-idx3-ubyte.gz"):
        read_fashion_mnist(root, "train")


@pytest.mark.skipif(not FMNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_real_test_files():
    test = read_fashion_mnist(FMNIST, "test")
    assert test.x.shape == (10000, 1, 28, 28)
    assert np.bincount(test.y).tolist() == [1000] * 10


@pytest.mark.parametrize("x, expected_first", [
    (np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3), [[[0, 1, 2], [3, 4, 5]]]),
    # NHWC (last axis 3) -> NCHW; float [0, 1] -> uint8
    (np.stack([np.full((2, 2, 3), [0.0, 0.5, 1.0])] * 2), [[[0, 0]] * 2, [[128, 128]] * 2,
                                                            [[255, 255]] * 2]),
    # last axis 2: read as NCHW with C = 1
    (np.zeros((2, 1, 3, 2), np.uint8), [[[0, 0]] * 3]),
])
def test_npz_layouts(tmp_path, x, expected_first):
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1]))
    split = read_npz(tmp_path / "d.npz", None)
    assert split.x.dtype == np.uint8 and split.x.flags.c_contiguous
    assert split.x[0].tolist() == expected_first
    assert split.class_names == ("0", "1") and split.attr is None


def test_npz_groups_and_class_names(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2, 2), np.uint8), y=np.array([0, 2, 1]),
             group=np.array([10, 2, 10]), class_names=np.array(["cat", "dog", "eel"]))
    split = read_npz(tmp_path / "d.npz", None)
    assert split.class_names == ("cat", "dog", "eel")
    assert split.attr.tolist() == ["10", "2", "10"]


def _npz(path, **arrays):
    arrays.setdefault("x", np.zeros((len(arrays.get("y", [0, 1])), 2, 2), np.uint8))
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, needle", [
    (dict(y=np.array([0, 1]), x=np.zeros((3, 2, 2), np.uint8)), "x has 3 samples but y has 2"),
    (dict(x=np.zeros((2, 2, 2), np.uint8)), "no array 'y'"),
    (dict(y=np.array([0.0, 1.0])), "integer class ids"),
    (dict(y=np.array([0, -1])), "label -1 .*out of range"),
    (dict(y=np.array([0, 3]), class_names=np.array(["a", "b"])), "label 3 .*out of range"),
    (dict(y=np.array([0, 1]), class_names=np.array(["a", "a"])), "duplicates"),
    (dict(y=np.array([0, 1]), x=np.full((2, 2, 2), 1.5)), r"float x must lie in \[0, 1\]"),
    (dict(y=np.array([0, 1]), x=np.zeros((2, 5, 2, 2), np.uint8)), "x has shape"),
    (dict(y=np.array([], np.int64), x=np.zeros((0, 2, 2), np.uint8)), "holds no samples"),
    (dict(y=np.array([0, 1]), group=np.array([1])), "group has shape"),
    (dict(y=np.array([0, 1]), group=np.array([None, 1], dtype=object)), "unicode array"),
])
def test_npz_errors_name_the_file(tmp_path, arrays, needle):
    path = _npz(tmp_path / "bad-data.npz", **arrays)
    with pytest.raises(InvalidInput, match=needle) as err:
        read_npz(path, None)
    assert "bad-data.npz" in str(err.value)


def test_npz_missing_and_unreadable(tmp_path):
    with pytest.raises(InvalidInput, match="absent.npz does not exist"):
        read_npz(tmp_path / "absent.npz", None)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InvalidInput, match="junk.npz"):
        read_npz(tmp_path / "junk.npz", None)


def test_npz_test_split_checked_against_train_classes(tmp_path):
    train = read_npz(_npz(tmp_path / "train.npz", y=np.array([0, 1, 2])), None)
    ok = read_npz(_npz(tmp_path / "ok.npz", y=np.array([2, 0])), train.class_names)
    assert ok.class_names == ("0", "1", "2")
    with pytest.raises(InvalidInput, match="test.npz: label 3"):
        read_npz(_npz(tmp_path / "test.npz", y=np.array([3, 0])), train.class_names)
    named = _npz(tmp_path / "named.npz", y=np.array([0, 1]), class_names=np.array(["a", "b", "c"]))
    with pytest.raises(InvalidInput, match="named.npz: class_names .* differ"):
        read_npz(named, train.class_names)
