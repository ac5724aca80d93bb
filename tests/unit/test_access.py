"""compression.access: every open is checked against the job's policy at the moment it happens."""

import os
import threading
from pathlib import Path

import pytest

from compression import access
from compression.access import AccessDenied, InputAccess
from compression.errors import InvalidInput


@pytest.fixture
def tree(tmp_path):
    """root/ (allowed) with d/data.bin; outside/ (not allowed) with d/data.bin and secret."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    for top, text in ((root, b"inside"), (outside, b"OUTSIDE")):
        (top / "d").mkdir(parents=True)
        (top / "d" / "data.bin").write_bytes(text)
    (outside / "secret").write_bytes(b"s3cret")
    return root, outside, InputAccess.of([str(root)], max_bytes=1000)


def finishes(fn, timeout=5.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it blocks."""
    outcome = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{fn} blocked"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def test_paths_inside_pass_and_outside_are_denied_with_their_target(tree):
    root, outside, policy = tree
    with access.granted(policy):
        assert access.read_input(root / "d" / "data.bin", "data") == b"inside"
        (root / "link").symlink_to(outside / "secret")
        with pytest.raises(AccessDenied, match=f"resolves to {outside / 'secret'}") as err:
            access.read_input(root / "link", "data.path")
    assert "data.path" in str(err.value) and str(root) in str(err.value)
    assert access.current() == InputAccess()  # granted restores the previous policy
    assert access.read_input(root / "link", "data") == b"s3cret"  # the default allows any path


def test_a_fifo_is_named_as_such_and_never_blocks(tree):
    root, _, policy = tree
    fifo = root / "pipe.csv"
    os.mkfifo(fifo)
    for granted in (InputAccess(), policy):
        with access.granted(granted), pytest.raises(InvalidInput) as err:
            finishes(lambda: access.open_input(fifo, "manifest"))
        assert "is not a regular file (a FIFO)" in str(err.value)
        assert "does not exist" not in str(err.value)


def test_directories_devices_missing_files_and_size(tree):
    root, _, policy = tree
    with access.granted(policy):
        with pytest.raises(InvalidInput, match=r"'.*d' is not a regular file \(a directory\)"):
            access.open_input(root / "d", "npz file")
        with pytest.raises(InvalidInput, match="gone.bin' does not exist"):
            access.open_input(root / "gone.bin", "npz file")
        (root / "big.bin").write_bytes(b"x" * 1001)
        with pytest.raises(InvalidInput, match="1001 bytes, over the limit of 1000"):
            access.open_input(root / "big.bin", "npz file")
        with pytest.raises(InvalidInput, match="NUL character"):
            access.open_input(f"{root}/a\0b", "image")
        with pytest.raises(InvalidInput, match="holds more than 3 bytes"):
            access.read_input(root / "d" / "data.bin", "data", limit=3)
        # a limit far beyond the file allocates what the file holds, not the limit
        assert access.read_input(root / "d" / "data.bin", "data", limit=2**45) == b"inside"
    with pytest.raises(InvalidInput, match="not a regular file \\(a character device\\)"):
        access.open_input("/dev/zero", "idx file")  # refused before it is opened


@pytest.mark.parametrize("proc", [True, False], ids=["proc", "no-proc"])
def test_a_folder_swapped_for_a_symlink_after_the_check_is_caught(tree, monkeypatch, proc):
    """The race an attacker wins by timing: root/d is checked, then replaced by a symlink to
    outside/d before the open. The opened file's own real path gives it away."""
    root, outside, policy = tree
    if not proc:
        monkeypatch.setattr(access, "_PROC_FD", "/nonexistent/fd")
    check = access.special_kind

    def swap_then_check(path):  # runs between the path check and the open
        (root / "d").rename(root / "d-old")
        (root / "d").symlink_to(outside / "d")
        return check(path)

    monkeypatch.setattr(access, "special_kind", swap_then_check)
    with access.granted(policy), pytest.raises(AccessDenied) as err:
        access.open_input(root / "d" / "data.bin", "image")
    assert f"resolves to {outside / 'd' / 'data.bin'}" in str(err.value)


def test_listing_checks_every_entry_and_walks_without_following_folder_links(tree):
    root, outside, policy = tree
    (root / "d" / "sub").mkdir()
    (root / "d" / "sub" / "b.png").write_bytes(b"b")
    (root / "d" / "loop").symlink_to(root / "d")  # a cycle must not hang the walk
    with access.granted(policy):
        assert [name for name, _ in access.list_dir(root / "d", "image folder")] == [
            "data.bin", "loop", "sub"]
        assert access.walk_files(root / "d", "image folder") == [
            root / "d" / "data.bin", root / "d" / "sub" / "b.png"]
        (root / "d" / "sub" / "evil.png").symlink_to(outside / "secret")
        with pytest.raises(AccessDenied, match="evil.png"):
            access.walk_files(root / "d", "image folder")
        with pytest.raises(AccessDenied, match="outside the allowed data roots"):
            access.list_dir(outside, "image folder")
        with pytest.raises(InvalidInput, match="is not a directory"):
            access.list_dir(root / "d" / "data.bin", "image folder")


def test_explicit_policy_and_decoded_limit(tree):
    root, outside, policy = tree
    with pytest.raises(AccessDenied):
        access.checked_path(outside / "secret", "teacher.path", policy)
    assert access.current().roots is None  # nothing was installed
    assert access.decoded_limit() == access.DEFAULT_DECODED_BYTES
    assert access.decoded_limit(policy) == 1000
    assert access.special_kind(root / "d") is None and access.special_kind(root / "x") is None
    assert access.special_kind("/dev/null") == "a character device"
    assert Path(access.checked_path(root / "d" / ".." / "d", "data", policy)) == root / "d"


def test_the_policy_a_server_sends_is_the_one_its_worker_installs(tree):
    """Kubernetes worker pods do not share the server's config: StartJob carries the policy."""
    from service._proto import worker_pb2
    from service.config import ServerConfig
    from service.servicer import _access
    from service.worker import input_access

    root, _, _ = tree
    policy = ServerConfig(data_roots=[str(root)], max_data_bytes=1234,
                          allow_torchscript_teachers=True).input_policy()
    wire = worker_pb2.StartJobResponse(access=_access(policy)).SerializeToString()
    installed = input_access(worker_pb2.StartJobResponse.FromString(wire))
    assert installed == policy.access == InputAccess((str(root),), 1234, True)
    assert input_access(worker_pb2.StartJobResponse(access=_access(None))) == InputAccess()


def test_the_submission_check_never_blocks_on_a_fifo(tree):
    from compression.spec import parse_spec
    from service.security import InputPolicy

    root, _, _ = tree
    os.mkfifo(root / "m.csv")
    spec = parse_spec({"name": "j", "teacher": {"path": str(root / "d" / "data.bin")},
                       "data": {"source": "manifest", "path": str(root / "m.csv"),
                                "test_path": str(root / "m.csv")}})
    with pytest.raises(InvalidInput, match=r"data.path .*m.csv' is not a regular file \(a FIFO\)"):
        finishes(lambda: InputPolicy.of([str(root)], 1000).check(spec))
