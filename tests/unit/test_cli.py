"""The command line as a person meets it: --version, --set, progress, job lists, endings."""

import io
import signal
from importlib import metadata

import pytest
import yaml

from compression.errors import InvalidInput
from compression.events import Event
from service._proto import compress_pb2
from service.cli import EXIT_INVALID, main, version
from service.commands import _ending, format_jobs
from service.job_overrides import apply_overrides
from service.progress import ProgressPrinter, position


@pytest.fixture(autouse=True)
def keep_sigint():
    """``tpet run`` installs its Ctrl-C handler; give pytest its own back."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


@pytest.fixture
def job_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({
        "name": "bars", "output_dir": str(tmp_path / "out"), "mitigation": {"name": "one_hot"},
        "data": {"source": "npz", "path": str(tmp_path / "train.npz")},
        "training": {"epochs": 2}}))
    return path


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"tpet {version()}"
    assert version() == metadata.version("teachers-pet")  # installed: the package's own


# -- --set ---------------------------------------------------------------------------------

def test_overrides_are_yaml_values_at_dotted_keys():
    data = {"name": "x", "training": {"epochs": 4}}
    out = apply_overrides(data, ["training.epochs=2", "training.lr=1e-2", "export.int8=false",
                                 "name='007'", "training.step_milestones=[3, 6]",
                                 "guardrails.min_accuracy=null", "training.epochs=3"])
    assert out == {"name": "007", "training": {"epochs": 3, "lr": 0.01,
                                               "step_milestones": [3, 6]},
                   "export": {"int8": False}, "guardrails": {"min_accuracy": None}}
    assert data == {"name": "x", "training": {"epochs": 4}}  # the file's data is left alone


def test_every_bad_override_is_listed_in_one_error():
    with pytest.raises(InvalidInput) as err:
        apply_overrides({"name": "x"}, ["epochs", "=3", "a..b=1", "name.first=1",
                                        "training={epochs: 1}", "training.lr=[1", "ok=1"])
    assert err.value.context == "invalid --set"
    assert [p.split(":")[0].split(" is not")[0] for p in err.value.problems] == [
        "--set 'epochs'", "--set '=3'", "--set 'a..b=1'", "--set 'name.first=1'",
        "--set 'training={epochs", "--set 'training.lr=[1'"]
    assert "name is 'x', not a mapping" in err.value.problems[3]


def test_set_applies_before_validation(job_file, capsys):
    assert main(["run", str(job_file), "--set", "training.epochs=0"]) == EXIT_INVALID
    assert "epochs is 0" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["run"], ["compress", "--server", "127.0.0.1:1"]])
def test_a_bad_key_is_exit_2_naming_it(command, job_file, capsys):
    # no server is needed: what no job can hold is found before anything is sent
    assert main([*command, str(job_file), "--set", "training.epoch=3"]) == EXIT_INVALID
    assert "training.epoch: unknown field" in capsys.readouterr().err
    assert main([*command, str(job_file), "--set", "training"]) == EXIT_INVALID
    assert "--set 'training' is not KEY=VALUE" in capsys.readouterr().err


# -- progress ------------------------------------------------------------------------------

def _training(printer, steps=10, epochs=2, tick=None):
    printer(Event("stage_started", "distill"))
    for i in range(epochs * steps):
        if tick:
            tick()
        printer(Event("progress", "distill", {
            "phase": "train", "epoch": i // steps + 1, "epochs": epochs,
            "step": i % steps + 1, "steps": steps, "loss": 0.5}))
    printer(Event("stage_finished", "distill", {"seconds": 20.0}))


def test_position_counts_steps_over_every_epoch():
    assert position({"epoch": 2, "epochs": 5, "step": 3, "steps": 10}).done == 13
    assert position({"epoch": 2, "epochs": 5, "step": 3, "steps": 10}).total == 50
    assert position({"step": 4, "steps": 8, "phase": "teacher_cache"}).done == 4
    for odd in ({}, {"step": 9, "steps": 8}, {"step": True, "steps": 8}, {"step": "1"}):
        assert position(odd) is None


def test_plain_lines_say_percent_elapsed_and_eta_every_interval():
    now, out = [0.0], io.StringIO()
    printer = ProgressPrinter(out, interval_s=5.0, live=False, clock=lambda: now[0])

    def tick():
        now[0] += 1.0  # one step a second: 20 steps

    _training(printer, tick=tick)
    lines = out.getvalue().splitlines()
    assert lines[0] == "==> distill" and lines[-1] == "    distill done (seconds=20)"
    progress = lines[1:-1]
    assert len(progress) == 4  # at 1 s, 6 s, 11 s, 16 s: not one per event
    assert progress[2].split() == ["distill", "55%", "epoch", "2/2", "step", "11/20",
                                   "elapsed", "00:11", "ETA", "00:09", "loss", "0.5"]
    assert "\r" not in out.getvalue()
    done = io.StringIO()
    ProgressPrinter(done, live=False)(Event("progress", "quantize", {"step": 4, "steps": 4}))
    assert "100%" in done.getvalue() and "ETA 00:00" in done.getvalue()


def test_a_terminal_gets_a_bar_that_ends_before_the_next_line():
    out = io.StringIO()
    printer = ProgressPrinter(out, live=True)
    printer(Event("stage_started", "distill"))
    printer(Event("progress", "distill", {"epoch": 1, "epochs": 1, "step": 5, "steps": 10}))
    printer(Event("log", "distill", {"message": "lr lowered"}))
    printer(Event("progress", "distill", {"epoch": 1, "epochs": 1, "step": 10, "steps": 10}))
    printer(Event("stage_finished", "distill", {"seconds": 1.5}))
    text = out.getvalue()
    assert "\r" in text and "100%|" in text and "10/10" in text
    assert "\r    lr lowered\n" in text  # the bar is cleared for it, then drawn below
    assert text.endswith("\n    distill done (seconds=1.5)\n")


# -- jobs and endings ----------------------------------------------------------------------

def _job(state, error="", kind="", job_id="j1"):
    job = compress_pb2.Job(id=job_id, name="bars", state=compress_pb2.JobState.Value(state),
                           error=error, error_kind=kind, attempts=1)
    job.create_time.seconds = 1_700_000_000
    return job


LONG = ("stage 'student' is FAIL and cannot ship (absolute floors); subgroup c: accuracy "
        "41.0% below the floor 50.0% (difference -9.0 pp, 95% interval [-14.0, -4.0])")


def _reasons(lines, start):
    return " ".join(line[start:].strip() for line in lines[1:])


def test_jobs_show_the_whole_reason_wrapped_in_its_column():
    jobs = [_job("SUCCEEDED", job_id="j0"), _job("REJECTED", LONG),
            _job("FAILED", "invalid job spec:\n  - training.epochs is 0\n  - lr is -1", "x")]
    lines = format_jobs(jobs, 110).splitlines()
    start = lines[0].index("REASON")
    assert all(len(line) <= 110 for line in lines) and len(lines) > 4  # wrapped, not cut
    assert all(line[:start].strip() == "" for line in lines[1:] if not line.startswith("j"))
    assert " ".join(LONG.split()) in _reasons(lines, start)
    assert "invalid job spec: - training.epochs is 0 - lr is -1" in _reasons(lines, start)
    failed = next(i for i, line in enumerate(lines) if "FAILED" in line)
    assert lines[failed + 1][start:] == "  - training.epochs is 0"  # its own lines kept


def test_on_a_narrow_terminal_reasons_go_below_their_row():
    lines = format_jobs([_job("REJECTED", LONG)], 72).splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATE", "STAGE", "ATTEMPTS", "CREATED"]
    assert lines[1].split()[:3] == ["j1", "bars", "REJECTED"]
    assert len(lines) > 3 and all(len(line) <= 72 and line.startswith("    ")
                                  for line in lines[2:])
    assert " ".join(line.strip() for line in lines[2:]) == " ".join(LONG.split())


def test_the_ending_gives_the_kind_and_the_whole_error():
    assert _ending(_job("FAILED", "stage 'export_onnx' failed: ...", "parity_failed")) == \
        "job j1: FAILED (parity_failed)\nstage 'export_onnx' failed: ..."
    assert _ending(_job("REJECTED", LONG)) == f"job j1: REJECTED\n{LONG}"
    assert _ending(_job("SUCCEEDED")) == "job j1: SUCCEEDED"


def test_each_phase_says_at_once_that_it_began():
    out = io.StringIO()
    printer = ProgressPrinter(out, interval_s=5.0, live=False, clock=lambda: 0.0)
    printer(Event("progress", "distill", {"phase": "teacher_cache", "step": 1, "steps": 2}))
    printer(Event("progress", "distill", {"phase": "teacher_cache", "step": 2, "steps": 2}))
    printer(Event("progress", "distill", {"epoch": 1, "epochs": 1, "step": 1, "steps": 4}))
    assert [line.split()[:3] for line in out.getvalue().splitlines()] == [
        ["distill", "(teacher", "cache)"], ["distill", "25%", "epoch"]]
