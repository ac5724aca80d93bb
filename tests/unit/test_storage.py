"""Object storage: URIs checked and redacted, objects read through compression.access from a
real S3 endpoint (moto's server on 127.0.0.1), WebDataset shards, and the bundle upload."""

import hashlib
import io
import tarfile

import numpy as np
import pytest

from compression import access, storage
from compression.access import AccessDenied, InputAccess
from compression.artifacts.upload import MARKER, check_job, check_target, upload_bundle
from compression.data.webdataset import MAX_SHARDS, expand_shards, read_webdataset
from compression.errors import InvalidInput, StageFailed
from compression.spec import DataSpec, JobSpec, TeacherSpec
from service.config import load_config
from tests.s3server import SECRET, s3_server
from tests.wds import bars_samples, png, shard

LEAKY = "https://alice:hunter2@example.com:8443/m/teacher.pt2?X-Amz-Signature=abc123#frag"


@pytest.fixture(scope="module")
def s3():
    """Buckets 'data' and 'out' on a fresh server; this process's S3 clients point at it."""
    s3fs = pytest.importorskip("s3fs")
    with s3_server("data", "out") as server, pytest.MonkeyPatch.context() as mp:
        for key, value in server.env().items():
            mp.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()  # one made for another endpoint
        yield server
        s3fs.S3FileSystem.clear_instance_cache()


def test_redact_strips_user_info_query_and_fragment():
    assert storage.redact(LEAKY) == "https://example.com:8443/m/teacher.pt2"
    assert storage.redact("s3://k:s@bucket/a?versionId=1") == "s3://bucket/a"
    assert storage.redact("/local/path?x") == "/local/path?x"  # not a URI: as given


@pytest.mark.parametrize("text", [LEAKY, "s3://AKIAXXX:hunter2@data/x.npz",
                                  "gs://data/x.npz?token=abc123"])
def test_a_uri_carrying_credentials_is_refused_without_showing_them(text):
    for attempt in (lambda: access.open_input(text, "teacher.path"),
                    lambda: check_target(text.replace("https", "s3"), probe=False)):
        with pytest.raises(InvalidInput, match="carries credentials") as err:
            attempt()
        assert "hunter2" not in str(err.value) and "abc123" not in str(err.value)


def test_a_job_refuses_credentials_in_any_uri_before_doing_any_work():
    # one_hot never opens the teacher: the spec would still carry the secret into the report
    spec = JobSpec(teacher=TeacherSpec(path=LEAKY),
                   data=DataSpec(source="webdataset", path="a.tar::s3://k:hunter2@b/x.tar"))
    for field, changed in (("teacher.path", spec),
                           ("data.path", JobSpec(data=spec.data))):
        with pytest.raises(InvalidInput, match=f"{field} .* carries credentials") as err:
            check_job(changed)
        assert "hunter2" not in str(err.value)


@pytest.mark.parametrize("text,why", [("ftp://h/x", "uses scheme ftp://"),
                                      ("s3:///x", "names no bucket"),
                                      ("s3://b/a/../x", "'..' segment"),
                                      ("https://h/a/%2e%2e/x", "'..' segment"),
                                      ("s3://b/x::zip://y", "'::'"),
                                      ("file://host/x", "names a host")])
def test_malformed_uris_say_what_is_wrong(text, why):
    with pytest.raises(InvalidInput, match=why):
        storage.parse_uri(text, "data.path")


def test_prefixes_hold_whole_segments_of_one_bucket():
    policy = InputAccess.of(["s3://data/allowed", "gcs://g/", "/srv"])
    assert policy.roots == ("s3://data/allowed", "gs://g/", "/srv")
    allowed = ["s3://data/allowed/x.tar", "s3://data/allowed", "gs://g/any/thing"]
    refused = ["s3://data/allowedx/y", "s3://other/allowed/x", "https://data/allowed/x"]
    for text, expected in [(t, True) for t in allowed] + [(t, False) for t in refused]:
        assert policy.allows_uri(storage.parse_uri(text, "p")) is expected, text
    assert InputAccess().allows_uri(storage.parse_uri("s3://any/x", "p"))  # no policy


def test_an_object_outside_the_prefixes_is_denied_before_the_store_is_asked(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # asking it would fail
    with access.granted(InputAccess.of(["s3://data/ok/"], max_bytes=100)):
        with pytest.raises(AccessDenied, match=r"data.path s3://data/nope/x.npz is outside"):
            access.open_input("s3://data/nope/x.npz", "data.path")
        with pytest.raises(AccessDenied, match="output_uri s3://out/x is outside"):
            check_target("s3://out/x")
        with pytest.raises(InvalidInput, match="reads local paths only|object storage"):
            access.list_dir("s3://data/ok/folder", "image folder")


def test_the_server_config_lists_bad_uri_prefixes():
    with pytest.raises(InvalidInput) as err:
        load_config(data_roots=["/srv", "ftp://h/x", "s3://k:hunter2@b/"])
    text = str(err.value)
    assert "ftp://h/x" in text and "carries credentials" in text and "hunter2" not in text
    policy = load_config(data_roots=["/srv", "s3://b/p/"]).input_policy()
    assert "s3://b/p/" in policy.access.roots


def test_shard_patterns_expand_like_webdataset():
    assert expand_shards("a-{000..002}.tar::b-{x,y}.tar") == [
        "a-000.tar", "a-001.tar", "a-002.tar", "b-x.tar", "b-y.tar"]
    assert expand_shards("s3://b/{8..10}-{0,1}.tar")[:3] == [
        "s3://b/8-0.tar", "s3://b/8-1.tar", "s3://b/9-0.tar"]
    for bad, why in (("a-{0..2.tar", "unbalanced"), ("{3..1}.tar", "must go up"),
                     ("{0..99999}-{0..99}.tar", "more than"), ("a::", "empty pattern"),
                     ("{a{b}}", "nested"), ("{x}.tar", "neither a range")):
        with pytest.raises(InvalidInput, match=why):
            expand_shards(bad)
    assert len(expand_shards(f"{{1..{MAX_SHARDS}}}")) == MAX_SHARDS


def test_webdataset_shards_give_images_labels_and_groups(tmp_path):
    samples = bars_samples(12, 3, seed=0, groups=True)
    (tmp_path / "s-0.tar").write_bytes(shard(samples[:5]))
    (tmp_path / "s-1.tar").write_bytes(shard(samples[5:]))
    split = read_webdataset(f"file://{tmp_path}/s-{{0..1}}.tar", 0, None)
    assert split.x.shape == (12, 1, 8, 8) and split.x.dtype == np.uint8
    assert split.y.tolist() == [i % 3 for i in range(12)]
    assert split.class_names == ("0", "1", "2")
    assert split.attr.tolist() == ["even", "odd"] * 6
    assert int(split.x[4, 0, 2].min()) >= 180  # sample 4 is class 1: bar on row 2
    test = read_webdataset(str(tmp_path / "s-1.tar"), 4, split.class_names)
    assert test.x.shape == (7, 1, 4, 4) and test.class_names == ("0", "1", "2")


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)
    return out.getvalue()


def _link(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


@pytest.mark.parametrize("content,why", [
    (shard([("a", {"png": png(np.zeros((2, 2), np.uint8))})]), "no .cls label"),
    (shard([("a", {"cls": b"1"})]), "0 images"),
    (shard([("a", {"png": png(np.zeros((2, 2), np.uint8)), "cls": b"x"})]), "integer"),
    (shard([("a", {"png": b"not a png", "cls": b"1"})]), "cannot read the image"),
    (shard([("a", {"png": png(np.zeros((2, 2), np.uint8)), "cls": b"9" * 40})]), "at most 32"),
    (_tar_with(_link("a.png")), "link or special file"),
    (b"this is not a tar file" * 40, "cannot read webdataset shard"),
])
def test_bad_shards_name_the_shard_and_the_problem(tmp_path, content, why):
    (tmp_path / "bad.tar").write_bytes(content)
    with pytest.raises(InvalidInput, match=why) as err:
        read_webdataset(str(tmp_path / "bad.tar"), 0, None)
    assert "bad.tar" in str(err.value)


def test_a_member_declaring_more_than_the_shard_holds_is_refused(tmp_path):
    # the header says 8 GiB; the file holds one block of it
    data = bytearray(shard([("a", {"png": b"x" * 512, "cls": b"1"})]))
    data[124:136] = b"%011o\0" % (8 * 2**30 - 1)  # the size field of the first member
    data[148:156] = b"        "
    data[148:155] = b"%06o\0" % sum(data[:512])  # its checksum, recomputed
    (tmp_path / "liar.tar").write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match="liar.tar.*(unexpected end of data|truncated)"):
        read_webdataset(str(tmp_path / "liar.tar"), 0, None)


# -- against the S3 endpoint ------------------------------------------------------------------


def test_objects_are_read_through_the_policy_with_their_size_checked(s3):
    s3.put("data", "ok/blob.bin", b"x" * 300)
    with access.granted(InputAccess.of(["s3://data/ok/"], max_bytes=1000)):
        assert access.read_input("s3://data/ok/blob.bin", "teacher.path") == b"x" * 300
        assert access.exists("s3://data/ok/blob.bin", "data.path")
        assert not access.exists("s3://data/ok/none.bin", "data.path")
    with access.granted(InputAccess.of(["s3://data/"], max_bytes=299)):
        with pytest.raises(InvalidInput, match="is 300 bytes, over the limit of 299"):
            access.open_input("s3://data/ok/blob.bin", "teacher.path")
    with pytest.raises(InvalidInput, match="is a folder, not an object"):
        access.open_input("s3://data/ok", "teacher.path")


@pytest.mark.parametrize("uri,why", [
    ("s3://no-such-bucket/t.pt2", "the bucket 'no-such-bucket' does not exist"),
    ("s3://data/missing/t.pt2", r"s3://data/missing/t.pt2 does not exist \(no object")])
def test_a_missing_bucket_or_key_is_invalid_input_naming_the_uri(s3, uri, why):
    with pytest.raises(InvalidInput, match=why) as err:
        access.read_input(uri, "teacher.path")
    assert uri in str(err.value) and "teacher.path" in str(err.value)


def test_denied_or_absent_credentials_are_invalid_input_naming_the_uri(s3, monkeypatch):
    import s3fs

    s3.put("data", "ok/c.bin", b"c")
    with s3.iam_enforced(), pytest.raises(InvalidInput, match="access denied") as err:
        access.read_input("s3://data/ok/c.bin", "teacher.path")
    assert "s3://data/ok/c.bin" in str(err.value) and SECRET not in str(err.value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(InvalidInput, match="no usable credentials") as err:
            access.read_input("s3://data/ok/c.bin", "teacher.path")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert "s3://data/ok/c.bin" in str(err.value)


def test_an_unreachable_store_fails_the_stage_rather_than_blaming_the_input(monkeypatch):
    pytest.importorskip("s3fs").S3FileSystem.clear_instance_cache()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    try:
        with pytest.raises(StageFailed, match="s3://data/x.npz"):
            access.read_input("s3://data/x.npz", "data.path")
    finally:
        pytest.importorskip("s3fs").S3FileSystem.clear_instance_cache()


def test_webdataset_shards_are_read_from_the_store(s3):
    samples = bars_samples(8, 4, seed=1)
    s3.put("data", "wds/train-0.tar", shard(samples[:4]))
    s3.put("data", "wds/train-1.tar", shard(samples[4:]))
    with access.granted(InputAccess.of(["s3://data/wds/"], max_bytes=2**20)):
        split = read_webdataset("s3://data/wds/train-{0..1}.tar", 0, None)
    assert split.y.tolist() == [0, 1, 2, 3] * 2 and split.x.shape == (8, 1, 8, 8)


def test_upload_sends_every_file_then_the_report_last(s3, tmp_path):
    files = {"model.onnx": b"onnx" * 100, "triton/m/config.pbtxt": b"cfg", MARKER: b"{}"}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    s3.put("out", "runs/j1/report.json", b'{"stale": true}')
    seen = {}

    def write_report(uploads):  # runs after every file, before the marker goes up
        seen["keys"] = s3.keys("out", "runs/j1/")
        (tmp_path / MARKER).write_text(f'{{"uploads": "{len(uploads["artifacts"])}"}}')

    uploads = upload_bundle(tmp_path, "s3://out/runs/j1", files, write_report)
    assert seen["keys"] == ["runs/j1/model.onnx", "runs/j1/triton/m/config.pbtxt"]
    assert s3.get("out", "runs/j1/report.json") == b'{"uploads": "2"}'
    assert uploads["marker"] == "s3://out/runs/j1/report.json"
    for name in ("model.onnx", "triton/m/config.pbtxt"):
        record = uploads["artifacts"][name]
        assert record["uri"] == f"s3://out/runs/j1/{name}"
        assert record["sha256"] == hashlib.sha256(files[name]).hexdigest()
        assert record["sha256"] == s3.sha256("out", f"runs/j1/{name}")


def test_an_upload_to_a_missing_bucket_fails_when_the_job_starts(s3):
    with pytest.raises(InvalidInput, match="bucket 'nowhere' does not exist"):
        check_target("s3://nowhere/runs/j1")
    with pytest.raises(InvalidInput, match="uses scheme https://"):
        check_target("https://example.com/runs/j1")  # read only


def test_every_shard_of_a_pattern_is_checked_at_submission(tmp_path):
    from service.errors import PermissionDenied
    from service.security import InputPolicy

    (tmp_path / "s-0.tar").write_bytes(shard(bars_samples(2, 2, seed=0)))
    policy = InputPolicy.of([str(tmp_path), "s3://data/wds/"], max_bytes=2**20)
    spec = JobSpec(teacher=TeacherSpec(path="s3://data/wds/t.safetensors", arch="tiny_cnn"),
                   data=DataSpec(source="webdataset", path=f"{tmp_path}/s-{{0..1}}.tar",
                                 test_path="s3://data/wds/test-{0..3}.tar"))
    policy.check(spec)  # s-1.tar is missing: the worker says so when it opens it
    for path in (f"{tmp_path}/s-{{0,1}}.tar::/etc/passwd",
                 "s3://data/wds/{a,b}.tar::s3://data/other/x.tar"):
        escaping = JobSpec(teacher=spec.teacher, data=DataSpec(
            source="webdataset", path=path, test_path=spec.data.test_path))
        with pytest.raises(PermissionDenied, match="data.path .*(passwd|other/x.tar)"):
            policy.check(escaping)


def test_image_folders_and_manifests_in_object_storage_pass_submission_within_the_prefixes():
    from service.errors import PermissionDenied
    from service.security import InputPolicy

    policy = InputPolicy.of(["s3://data/images/"], max_bytes=2**20)
    teacher = TeacherSpec(path="s3://data/images/t.safetensors", arch="tiny_cnn")
    for source, path in (("imagefolder", "s3://data/images/train/"),
                         ("manifest", "s3://data/images/train.csv")):
        policy.check(JobSpec(teacher=teacher, data=DataSpec(source=source, path=path)))
        with pytest.raises(PermissionDenied, match="data.path s3://data/other/ is outside"):
            policy.check(JobSpec(teacher=teacher,
                                 data=DataSpec(source=source, path="s3://data/other/")))
    with pytest.raises(InvalidInput, match="source fashion-mnist reads local paths only"):
        policy.check(JobSpec(teacher=teacher, data=DataSpec(path="s3://data/images/fm/")))
