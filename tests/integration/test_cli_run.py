"""`tpet train-teacher` and `tpet run` as a user runs them: real processes, real files."""

import json
import re
import subprocess
import sys

import pytest
import torch

from tests.integration.conftest import JOB_TIMEOUT_S, REPO, TPET

pytestmark = pytest.mark.integration


def tpet(*args, timeout=JOB_TIMEOUT_S):
    return subprocess.run([*TPET, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_train_teacher_then_distill_end_to_end(bars_job, tmp_path):
    job = bars_job()
    trained = tpet("train-teacher", job, "--arch", "resnet8", "--epochs", "3")
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "teacher.pt2").exists()

    ran = tpet("run", job)
    assert ran.returncode == 0, ran.stderr
    assert "status: SUCCEEDED" in ran.stdout
    assert "==> distill" in ran.stderr
    # not a terminal: plain lines with how far, how long, and how long still
    assert re.search(r"\n    distill +\d+%  epoch \d/4  step \d+/\d+  elapsed \d\d:\d\d  ETA ",
                     ran.stderr), ran.stderr
    assert "\r" not in ran.stderr

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    student = report["evaluations"]["student"]
    assert [g["name"] for g in student["groups"]] == ["a", "b", "c", "d"]
    assert student["overall"]["n"] == 200
    assert student["overall"]["accuracy"] > 0.5  # the bars are easy to tell apart
    assert report["status"] == "SUCCEEDED" and report["deployable"]
    # the fastest artifact that passed, by the latency measured in this run
    timed = {k: v for k, v in report["artifact_choice"]["artifacts"].items() if v["passed"]}
    assert report["shipped"] == min(timed, key=lambda k: timed[k]["median_ms"])
    assert {"onnx", "int8"} <= set(report["artifact_choice"]["artifacts"])
    assert report["exports"]["tensorrt"]["status"] == "SKIPPED"
    assert report["exports"]["onnx"]["parity_vs_pytorch"]["top1_agreement"] == 1.0
    assert {"student.pt2", "student.safetensors", "model.onnx", "model.int8.onnx",
            "model_card.md", "guardrails.png", "triton/bars/config.pbtxt",
            "triton/bars/1/model.onnx"} <= set(report["files"])

    program = torch.export.load(str(tmp_path / "out" / "student.pt2")).module()
    assert program(torch.rand(3, 1, 8, 8)).shape == (3, 4)


def test_unreachable_floor_rejects_with_exit_code_3(bars_job, tmp_path):
    # a barely trained student cannot reach 90% on any class
    ran = tpet("run", bars_job(mitigation={"name": "one_hot"}, export={"int8": False},
                               training={"epochs": 1, "lr": 1e-6},
                               guardrails={"min_accuracy": 0.9, "min_samples": 10}))
    assert ran.returncode == 3, ran.stderr
    assert "stage 'student' did not pass: FAIL on" in ran.stdout
    assert "status: REJECTED (nothing ships)" in ran.stdout
    # the reason, whole, is the last thing said
    last = ran.stderr[ran.stderr.rfind("\nrejected: ") + 1:]
    assert last.startswith("rejected: stage 'student' is FAIL and cannot ship"), ran.stderr
    assert "min_accuracy on 'a'" in last and "floor 90.0%" in last and "==>" not in last
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "REJECTED" and not report["deployable"]
    assert report["guardrails"]["first_failing_stage"] == "student"
    assert not (tmp_path / "out" / "triton").exists()


def test_a_rejected_job_records_the_reason_tpet_run_prints(bars_job):
    """The worker sends it as the job's error: `tpet jobs` and `compress --wait` show it."""
    import yaml

    from service.convert import dict_to_proto
    from service.worker import run_job

    job = bars_job(mitigation={"name": "one_hot"}, export={"int8": False},
                   training={"epochs": 1, "lr": 1e-6},
                   guardrails={"min_accuracy": 0.9, "min_samples": 10})
    outcome, error, kind, report = run_job(dict_to_proto(yaml.safe_load(job.read_text())),
                                           _Sink())
    assert (outcome, kind) == ("REJECTED", "") and json.loads(report)["status"] == "REJECTED"
    ran = tpet("run", job)
    assert ran.returncode == 3 and f"rejected: {error}" in ran.stderr
    assert error.startswith("stage 'student' is FAIL and cannot ship")


class _Sink(list):
    """The worker's reporter without a manager: events kept, never asked to stop."""

    def __call__(self, event):
        self.append(event)

    def should_stop(self):
        return False


def test_required_engine_without_tensorrt_fails_with_exit_code_4(bars_job):
    ran = tpet("run", bars_job(mitigation={"name": "one_hot"},
                               export={"int8": False, "tensorrt": "required"}))
    assert ran.returncode == 4
    assert "build_engine" in ran.stderr and "Traceback" not in ran.stderr


def test_unprovable_floor_is_refused_before_training(bars_job):
    ran = tpet("run", bars_job(guardrails={"min_accuracy_by_group": {"c": 1.0}}))
    assert ran.returncode == 2
    assert "subgroup 'c'" in ran.stderr and "==> distill" not in ran.stderr


def test_run_with_missing_teacher_is_invalid_input_without_traceback(bars_job):
    ran = tpet("run", bars_job())
    assert ran.returncode == 2
    assert "teacher.pt2" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_pickled_teacher_is_refused(bars_job, tmp_path):
    torch.save(torch.nn.Linear(64, 4), tmp_path / "teacher.pt")
    ran = tpet("run", bars_job(teacher={"path": str(tmp_path / "teacher.pt")}))
    assert ran.returncode == 2
    assert "pickled" in ran.stderr and "Traceback" not in ran.stderr


def test_invalid_spec_lists_every_problem(bars_job):
    ran = tpet("run", bars_job(training={"epochs": 0, "optimizer": "rmsprop"}))
    assert ran.returncode == 2
    assert "epochs is 0" in ran.stderr and "'rmsprop' is not one of sgd, adamw" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_unknown_mitigation_and_arch_name_the_known_ones(bars_job):
    ran = tpet("run", bars_job(mitigation={"name": "nope"}))
    assert ran.returncode == 2 and "known: kd, one_hot" in ran.stderr
    ran = tpet("run", bars_job(student={"arch": "resnet7"}))
    assert ran.returncode == 2 and "resnet20" in ran.stderr and "Traceback" not in ran.stderr


def test_one_hot_needs_no_teacher(bars_job, tmp_path):
    # set from the command line, over the file (whose default mitigation needs a teacher)
    ran = tpet("run", bars_job(), "--set", "mitigation.name=one_hot", "--set",
               "training.epochs=2", "--set", "training.lr=5e-2", "--json")
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert "teacher" not in report["evaluations"] and report["teacher"] is None
    assert report["evaluations"]["student"]["overall"]["n"] == 200
    assert (report["spec"]["training"]["epochs"], report["spec"]["training"]["lr"]) == (2, 0.05)


def test_version_and_a_bad_set_say_so_without_a_traceback(bars_job):
    ran = tpet("--version")
    assert ran.returncode == 0 and re.fullmatch(r"tpet \d+\.\d+\.\d+\S*\n", ran.stdout)
    ran = tpet("run", bars_job(), "--set", "training.epoch=1")
    assert ran.returncode == 2 and "training.epoch: unknown field" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_run_under_torchrun_trains_on_two_ranks(bars_job, tmp_path):
    from compression.models import build_model, save_exported

    save_exported(build_model("tiny_cnn", 1, 4, 1.0).eval(), (1, 8, 8), tmp_path / "teacher.pt2")
    job = bars_job(training={"epochs": 2})
    ran = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "service.cli", "run", job],
                         cwd=REPO, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.count("status: SUCCEEDED") == 1  # rank 0 alone reports
    assert ran.stderr.count("==> distill") == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["environment"]["ranks"] == 2 and report["status"] == "SUCCEEDED"
