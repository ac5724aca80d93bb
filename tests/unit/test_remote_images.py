"""Image folders, manifests and WebDataset shards streamed from a real S3 endpoint (moto on
127.0.0.1, reached through s3fs as users reach S3) give the samples their local copies give,
through DataLoader workers; store errors and the allowed URI prefixes name the URI."""

from __future__ import annotations

import gc
import io
import json

import numpy as np
import pytest
import torch

from compression import access
from compression.access import AccessDenied, InputAccess
from compression.data import load_dataset
from compression.data.images import read_imagefolder, read_manifest
from compression.data.loader import loading
from compression.data.remote_files import index_remote, read_remote
from compression.data.stream import OrderedBatches, SampleDataset, make_loader
from compression.errors import InvalidInput
from compression.spec import parse_spec
from tests.s3server import SECRET, s3_server
from tests.wds import png, shard

pytestmark = pytest.mark.integration

CLASSES = ("cat", "dog", "owl")
ROOT = "s3://data/imgs"


def _pixels(rng: np.random.Generator, c: int, i: int) -> np.ndarray:
    """6x6, gray for every third image, RGB otherwise; class c lights rows 2c and 2c+1."""
    x = rng.integers(0, 80, (6, 6, 3), dtype=np.uint8)
    x[2 * c:2 * c + 2] += 150
    return x[:, :, 0] if i % 3 == 0 else x


def _files(rng: np.random.Generator, split: str, n: int) -> dict[str, bytes]:
    """Relative path -> PNG bytes of an image folder; 'dog' nests folders whose names sort
    differently as strings ('more-x/' < 'more/') and as paths ('more' < 'more-x')."""
    out = {}
    for c, name in enumerate(CLASSES):
        for i in range(n):
            sub = {1: "more/", 2: "more-x/"}.get(i, "") if name == "dog" else ""
            out[f"{split}/{name}/{sub}{i:03d}.png"] = png(_pixels(rng, c, i))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same tree locally (returned) and under s3://data/imgs/: image folders train/ and
    test/, manifests (a CSV with relative keys and groups, a JSONL with full paths or URIs)
    and WebDataset shards."""
    pytest.importorskip("s3fs")
    local = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    files = {**_files(rng, "train", 6), **_files(rng, "test", 3)}
    tree = dict(files)
    rows = [(p, p.split("/")[1]) for p in sorted(files) if p.startswith("train/")]
    tree["lists/train.csv"] = ("path,label,group\n" + "".join(
        f"../{p},{label},{'ab'[i % 2]}\n" for i, (p, label) in enumerate(rows))).encode()
    tests = [p for p in sorted(files) if p.startswith("test/")]
    tree["lists/test-remote.jsonl"] = "".join(
        json.dumps({"path": f"{ROOT}/{p}", "label": p.split("/")[1], "group": "a"}) + "\n"
        for p in tests).encode()
    tree["lists/test-local.jsonl"] = "".join(
        json.dumps({"path": str(local / p), "label": p.split("/")[1], "group": "a"}) + "\n"
        for p in tests).encode()
    for split in ("train", "test"):
        samples = [(p.rsplit(".", 1)[0].replace("/", "_"),
                    {"png": files[p], "cls": str(CLASSES.index(p.split("/")[1])).encode()})
                   for p in sorted(files) if p.startswith(f"{split}/")]
        tree[f"shards/{split}-000.tar"] = shard(samples)
    for path, body in tree.items():
        (local / path).parent.mkdir(parents=True, exist_ok=True)
        (local / path).write_bytes(body)
    with s3_server("data") as server:
        for path, body in tree.items():
            server.put("data", f"imgs/{path}", body)
        yield server, local


@pytest.fixture
def s3(data, monkeypatch):
    import s3fs

    server, _ = data
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()  # clients made with other credentials
    yield server
    s3fs.S3FileSystem.clear_instance_cache()
    # A loader that raised is kept alive by its traceback's cycle. Collected here, its workers
    # are stopped now, in this thread, not whenever a collection next runs, which may be in
    # the S3 server's thread while it answers the next test's request.
    gc.collect()


PATHS = {"imagefolder": ("train", "test"),
         "manifest": ("lists/train.csv", "lists/test-{}.jsonl"),
         "webdataset": ("shards/train-000.tar", "shards/test-000.tar")}


def _load(source: str, root: str, in_memory: str, where: str, **more):
    train, test = PATHS[source]
    return load_dataset(parse_spec({"data": {
        "source": source, "path": f"{root}/{train}", "test_path": f"{root}/{test.format(where)}",
        "in_memory": in_memory, "workers": 2, **more}}).data)


def _streamed_pass(x) -> torch.Tensor:
    """Every sample of a streamed split, read once through two DataLoader workers."""
    loader = make_loader(SampleDataset(x.index), OrderedBatches(len(x), 7), workers=2)
    return torch.cat([batch for batch, _ in loader])


@pytest.mark.parametrize("source", ["imagefolder", "manifest", "webdataset"])
def test_splits_in_s3_stream_the_samples_of_their_local_copies(s3, data, source):
    local = _load(source, str(data[1]), "always", "local")
    remote = _load(source, ROOT, "never", "remote")
    assert loading(local) == "in_memory" and loading(remote) == "streaming"
    assert remote.class_names == local.class_names
    assert len(local.class_names) == len(CLASSES)  # webdataset: ("0", "1", "2")
    assert remote.group_names == local.group_names
    assert remote.train.x.index.files[0].startswith(f"{ROOT}/")
    for name in ("train", "holdout", "test"):
        held, streamed = getattr(local, name), getattr(remote, name)
        assert len(streamed) == len(held) > 0
        assert torch.equal(streamed.y, held.y) and torch.equal(streamed.group, held.group)
        assert torch.equal(_streamed_pass(streamed.x), held.x)
    assert torch.equal(remote.test.x[[0, 2]], local.test.x[[0, 2]])  # decoded in this process


@pytest.mark.parametrize("source", ["imagefolder", "manifest", "webdataset"])
def test_splits_in_s3_load_in_memory_as_their_local_copies(s3, data, source):
    local = _load(source, str(data[1]), "always", "local")
    remote = _load(source, ROOT, "always", "remote")
    assert loading(remote) == "in_memory" and remote.class_names == local.class_names
    for name in ("train", "holdout", "test"):
        held, read = getattr(local, name), getattr(remote, name)
        assert torch.equal(read.x, held.x) and torch.equal(read.y, held.y)
        assert torch.equal(read.group, held.group)


@pytest.mark.parametrize("source, read", [("imagefolder", read_imagefolder),
                                          ("manifest", read_manifest)])
def test_read_remote_decodes_what_the_local_reader_decodes(s3, data, source, read):
    train = PATHS[source][0]
    remote, local = read_remote(source, f"{ROOT}/{train}", 4, None), read(data[1] / train, 4, None)
    assert remote.class_names == local.class_names and np.array_equal(remote.y, local.y)
    assert remote.x.dtype == np.uint8 and np.array_equal(remote.x, local.x)
    if source == "manifest":  # its group column
        assert np.array_equal(remote.attr, local.attr)
    else:
        assert remote.attr is None and local.attr is None


def test_a_manifest_line_outside_the_prefixes_is_refused_when_indexed_and_when_opened(s3, data):
    s3.put("data", "imgs/lists/escape.csv", b"path,label\n../train/cat/000.png,cat\n"
           b"s3://data/private/x.png,dog\n")
    allowed = InputAccess.of(["s3://data/imgs/"])
    with access.granted(allowed), pytest.raises(AccessDenied) as refused:
        _load("manifest", ROOT, "never", "", path=f"{ROOT}/lists/escape.csv")
    assert ("image (manifest s3://data/imgs/lists/escape.csv line 3) s3://data/private/x.png "
            "is outside the allowed data roots") in str(refused.value)

    # Indexed under a wider policy, read under the job's: each worker checks at the open.
    streamed = _load("manifest", ROOT, "never", "remote").train.x
    with access.granted(InputAccess.of(["s3://data/imgs/test/"])):
        with pytest.raises(AccessDenied, match="image s3://data/imgs/train/cat/000.png is "
                                               "outside the allowed data roots"):
            _streamed_pass(streamed)


@pytest.mark.parametrize("case", ["missing bucket", "missing key", "removed after indexing",
                                  "denied credentials"])
def test_store_errors_are_invalid_input_naming_the_uri(s3, data, case):
    if case == "missing bucket":
        with pytest.raises(InvalidInput) as caught:
            _load("imagefolder", "s3://no-such-bucket/imgs", "never", "")
        needles = ["s3://no-such-bucket/imgs/train", "bucket 'no-such-bucket' does not exist"]
    elif case == "missing key":
        s3.put("data", "imgs/lists/gone.csv", b"path,label\n../train/cat/000.png,cat\n"
               b"../train/dog/gone.png,dog\n")
        with pytest.raises(InvalidInput) as caught:
            _load("manifest", ROOT, "never", "", path=f"{ROOT}/lists/gone.csv")
        needles = ["(manifest s3://data/imgs/lists/gone.csv line 3) "
                   "s3://data/imgs/train/dog/gone.png does not exist"]
    elif case == "removed after indexing":
        for i in range(8):
            s3.put("data", f"imgs/late/{'ab'[i % 2]}/{i}.png", png(np.full((4, 4), i, np.uint8)))
        streamed = _load("imagefolder", ROOT, "never", "", path=f"{ROOT}/late",
                         test_path=f"{ROOT}/late").test.x
        s3.client().delete_object(Bucket="data", Key="imgs/late/b/3.png")
        with pytest.raises(InvalidInput) as caught:
            _streamed_pass(streamed)
        needles = ["image s3://data/imgs/late/b/3.png does not exist"]
    else:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        with s3.iam_enforced(), pytest.MonkeyPatch.context() as env:
            env.setenv("AWS_ACCESS_KEY_ID", "AKIANOTKNOWNTOIAM000")
            with pytest.raises(InvalidInput) as caught:
                _load("imagefolder", ROOT, "never", "")
        needles = ["image folder s3://data/imgs/train", "access denied"]
    said = str(caught.value)
    for needle in needles:
        assert needle in said
    assert SECRET not in said


def test_folder_listing_and_manifest_keys_follow_the_local_rules(s3, data):
    # A folder needs a bucket to list; relative keys may not climb out of their bucket.
    with pytest.raises(InvalidInput, match="only a bucket"):
        _load("imagefolder", "https://example.invalid/imgs", "never", "")
    s3.put("data", "imgs/lists/climb.jsonl",
           b'{"path": "../../../x.png", "label": "cat"}\n')
    with pytest.raises(InvalidInput, match=r"line 1: path '../../../x.png' leads out of the "
                                           r"bucket 'data'"):
        _load("manifest", ROOT, "never", "", path=f"{ROOT}/lists/climb.jsonl")
    s3.put("data", "imgs/lists/secret.csv", b"path,label\n"
           b"s3://AKIA1:hunter2@data/imgs/train/cat/000.png,cat\n")
    with pytest.raises(InvalidInput, match="line 2.* carries credentials") as caught:
        _load("manifest", ROOT, "never", "", path=f"{ROOT}/lists/secret.csv")
    assert "hunter2" not in str(caught.value)
    s3.put("data", "imgs/two/cat/0.png", png(np.zeros((4, 4), np.uint8)))
    s3.put("data", "imgs/two/.hidden/0.png", png(np.zeros((4, 4), np.uint8)))
    with pytest.raises(InvalidInput, match=r"s3://data/imgs/two has other classes than the "
                                           r"training set: missing \['dog', 'owl'\], extra \[\]"):
        _load("imagefolder", ROOT, "never", "", test_path=f"{ROOT}/two")


def test_a_header_past_the_first_bytes_is_read_whole(s3):
    """A JPEG whose frame header follows 100 kB of ICC profile: the first ranged read holds
    no size, so the whole object is read; the index knows its shape all the same."""
    from PIL import Image

    pixels = np.random.default_rng(1).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", icc_profile=bytes(100_000))
    assert len(out.getvalue()) > 100_000
    for name in ("a", "b"):
        s3.put("data", f"imgs/icc/{name}/0.jpg", out.getvalue())
    split = index_remote("imagefolder", f"{ROOT}/icc/", 0, None)
    assert split.x.shape == (2, 3, 5, 7) and split.class_names == ("a", "b")
    expected = np.asarray(Image.open(io.BytesIO(out.getvalue())).convert("RGB"))
    assert np.array_equal(split.x.decode(1), expected.transpose(2, 0, 1))
