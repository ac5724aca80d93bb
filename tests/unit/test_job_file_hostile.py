"""Hostile job files through the real command line: each is exit 2 with a message naming the
file, never a traceback, a MemoryError or a hang."""

import os
import signal

import pytest

from service.cli import EXIT_INVALID, main
from service.config import load_config
from compression.errors import InvalidInput

LAUGHS = ('lol0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
          + "".join(f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10)))


@pytest.fixture(autouse=True)
def keep_sigint():
    """``tpet run`` installs its Ctrl-C handler; give pytest its own back."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def tpet(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


CASES = {
    "latin1.yaml": (b"name: caf\xe9\nteacher: {path: t.pt2}\n", "is not UTF-8 text"),
    "deep.yaml": ("a: " + "[" * 20_000 + "]" * 20_000 + "\n", "nests deeper than 64 levels"),
    "laughs.yaml": (LAUGHS, "expands to more than 100,000 values"),
    "cycle.yaml": ("a: &a [1, *a]\n", "refers to a value that contains it"),
    "empty.yaml": ("", "is empty"),
    "comments.yaml": ("# nothing but a comment\n", "is empty"),
    "list.yaml": ("- name: a\n", "must be a mapping"),
    "scalar.yaml": ("just words\n", "must be a mapping"),
    "huge.yaml": ("name: a\n" + "# padding\n" * 120_000, "is larger than 1024 KiB"),
    "broken.yaml": ("name: [unclosed\n", "is not valid YAML"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_tpet_run_refuses_a_hostile_job_file_with_exit_2(tmp_path, capsys, name):
    content, message = CASES[name]
    path = write(tmp_path, name, content)
    code, err = tpet(capsys, "run", path)
    assert code == EXIT_INVALID
    assert message in err and str(path) in err


@pytest.mark.parametrize("name", ["laughs.yaml", "empty.yaml", "latin1.yaml"])
def test_tpet_compress_refuses_it_before_calling_any_server(tmp_path, capsys, name):
    content, message = CASES[name]
    path = write(tmp_path, name, content)
    code, err = tpet(capsys, "compress", path, "--server", "127.0.0.1:9")  # nothing listens
    assert code == EXIT_INVALID and message in err and str(path) in err


def test_a_fifo_or_a_folder_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "job.yaml"
    os.mkfifo(fifo)  # opening it to read would wait for a writer forever
    code, err = tpet(capsys, "run", fifo)
    assert code == EXIT_INVALID and "not a regular file" in err
    code, err = tpet(capsys, "run", tmp_path)
    assert code == EXIT_INVALID and "is a directory" in err


def test_a_job_file_within_the_limits_still_reads(tmp_path):
    from compression.spec import read_job_file

    path = write(tmp_path, "ok.yaml", "\ufeffname: a\nteacher: {path: t.pt2}\n"
                 "base: &b {lr: 0.1}\ntraining:\n  <<: *b\n  epochs: 2\n")
    assert read_job_file(path)["training"] == {"lr": 0.1, "epochs": 2}


def test_the_server_config_uses_the_same_reader(tmp_path):
    path = write(tmp_path, "server.yaml", LAUGHS)
    with pytest.raises(InvalidInput, match=r"server config .*server.yaml expands to more"):
        load_config(path)
    assert load_config(write(tmp_path, "empty.yaml", "")).port == 50051  # empty: defaults
