import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compression.data.images import load_images, read_imagefolder, read_manifest
from compression.errors import InvalidInput


def png(path: Path, value, size=(4, 3), mode="L") -> Path:
    """A flat image of ``value`` (int for L, tuple for RGB); size is (W, H)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def tree(root: Path, spec: dict[str, list[int]]) -> Path:
    for cls, values in spec.items():
        for i, v in enumerate(values):
            png(root / cls / f"{i}.png", v)
    return root


def test_imagefolder_sorted_classes_and_pixels(tmp_path):
    root = tree(tmp_path / "train", {"zebra": [7], "ant": [1, 2]})
    (root / "ant" / "notes.txt").write_text("ignored")
    split = read_imagefolder(root, 0, None)
    assert split.class_names == ("ant", "zebra")
    assert split.y.tolist() == [0, 0, 1]
    assert split.x.shape == (3, 1, 3, 4) and split.x.dtype == np.uint8
    assert split.x[:, 0, 0, 0].tolist() == [1, 2, 7]


def test_imagefolder_test_tree_must_match_classes(tmp_path):
    train = read_imagefolder(tree(tmp_path / "train", {"a": [1], "b": [2]}), 0, None)
    with pytest.raises(InvalidInput, match=r"missing \['b'\], extra \['c'\]") as err:
        read_imagefolder(tree(tmp_path / "test", {"a": [1], "c": [2]}), 0, train.class_names)
    assert "test" in str(err.value)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(InvalidInput, match="nope does not exist"):
        read_imagefolder(tmp_path / "nope", 0, None)
    (tmp_path / "flat").mkdir()
    with pytest.raises(InvalidInput, match="flat has no class folders"):
        read_imagefolder(tmp_path / "flat", 0, None)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(InvalidInput, match="empty .*holds no samples"):
        read_imagefolder(tmp_path / "empty", 0, None)


def test_ragged_sizes_name_two_files_and_suggest_image_size(tmp_path):
    a = png(tmp_path / "a.png", 1, size=(4, 4))
    b = png(tmp_path / "b.png", 1, size=(5, 4))
    with pytest.raises(InvalidInput, match="image_size") as err:
        load_images([a, b], 0)
    assert "a.png is 4x4" in str(err.value) and "b.png is 5x4" in str(err.value)
    assert load_images([a, b], 6).shape == (2, 1, 6, 6)


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(InvalidInput, match="cannot read image .*broken.png"):
        load_images([bad], 0)


def test_mixed_gray_and_rgb_promote_to_rgb(tmp_path):
    gray = png(tmp_path / "g.png", 9)
    rgb = png(tmp_path / "c.png", (1, 2, 3), mode="RGB")
    rgba = png(tmp_path / "t.png", (4, 5, 6, 0), mode="RGBA")
    x = load_images([gray, rgb, rgba], 0)
    assert x.shape == (3, 3, 3, 4)
    assert x[:, :, 0, 0].tolist() == [[9, 9, 9], [1, 2, 3], [4, 5, 6]]


def _manifest_tree(tmp_path: Path) -> None:
    png(tmp_path / "img" / "a.png", 10)
    png(tmp_path / "img" / "b.png", 20)
    png(tmp_path / "img" / "c.png", 30)


def test_manifest_csv_names_groups_and_relative_paths(tmp_path):
    _manifest_tree(tmp_path)
    absolute = tmp_path / "img" / "c.png"
    (tmp_path / "train.csv").write_text(
        f"path,label,group\nimg/a.png,dog,x\nimg/b.png,cat,y\n{absolute},dog,x\n")
    split = read_manifest(tmp_path / "train.csv", 0, None)
    assert split.class_names == ("cat", "dog")
    assert split.y.tolist() == [1, 0, 1]
    assert split.attr.tolist() == ["x", "y", "x"]
    assert split.x[:, 0, 0, 0].tolist() == [10, 20, 30]
    # a test manifest may use a class name or an index
    (tmp_path / "test.csv").write_text("path,label\nimg/a.png,1\nimg/b.png,cat\n")
    test = read_manifest(tmp_path / "test.csv", 0, split.class_names)
    assert test.y.tolist() == [1, 0] and test.attr is None


def test_manifest_jsonl_integer_labels(tmp_path):
    _manifest_tree(tmp_path)
    rows = [{"path": "img/a.png", "label": 2, "group": 5}, {"path": "img/b.png", "label": "0",
                                                             "group": "5"}]
    (tmp_path / "m.jsonl").write_text("\n\n".join(json.dumps(r) for r in rows) + "\n")
    split = read_manifest(tmp_path / "m.jsonl", 4, None)
    assert split.class_names == ("0", "1", "2")  # all labels integers: classes 0..max
    assert split.y.tolist() == [2, 0]
    assert split.attr.tolist() == ["5", "5"]
    assert split.x.shape == (2, 1, 4, 4)  # resized to image_size


@pytest.mark.parametrize("name, text, needle", [
    ("h.csv", "file,label\nimg/a.png,0\n", r"header is \['file', 'label'\]"),
    ("e.csv", "path,label\n", "holds no samples"),
    ("m.csv", "path,label\nimg/gone.png,0\n", "gone.png .*line 2.* does not exist"),
    ("l.csv", "path,label\nimg/a.png,\n", "line 2: label is missing"),
    ("g.csv", "path,label,group\nimg/a.png,0,u\nimg/b.png,0,\n", "line 3: group is empty"),
    ("j.jsonl", '{"path": "img/a.png", "label": 0}\n{oops\n', "line 2 is not valid JSON"),
    ("mix.jsonl", '{"path": "img/a.png", "label": 0, "group": "g"}\n'
                  '{"path": "img/b.png", "label": 0}\n', "line 2: no group"),
    ("m.txt", "path,label\n", "must end in .csv or .jsonl"),
])
def test_manifest_errors_name_the_file(tmp_path, name, text, needle):
    _manifest_tree(tmp_path)
    (tmp_path / name).write_text(text)
    with pytest.raises(InvalidInput, match=needle) as err:
        read_manifest(tmp_path / name, 0, None)
    assert name in str(err.value)


def test_manifest_unknown_class_in_test(tmp_path):
    _manifest_tree(tmp_path)
    (tmp_path / "test.csv").write_text("path,label\nimg/a.png,cat\nimg/b.png,wolf\n")
    with pytest.raises(InvalidInput, match=r"test.csv line 3: label 'wolf' .*\['cat', 'dog'\]"):
        read_manifest(tmp_path / "test.csv", 0, ("cat", "dog"))
    (tmp_path / "idx.csv").write_text("path,label\nimg/a.png,2\n")
    with pytest.raises(InvalidInput, match="idx.csv line 2: label '2'"):
        read_manifest(tmp_path / "idx.csv", 0, ("cat", "dog"))
    with pytest.raises(InvalidInput, match="missing.csv does not exist"):
        read_manifest(tmp_path / "missing.csv", 0, None)
