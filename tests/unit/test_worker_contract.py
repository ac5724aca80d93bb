"""The worker contract: one light module that the server side imports instead of the worker."""

import subprocess
import sys
from pathlib import Path

import pytest

from service.worker_contract import (ENV_DEVICES, ENV_JOB_ID, ENV_JOB_TOKEN, ENV_SERVER,
                                     WORKER_ENV, Slot, read_worker_env, worker_env)

REPO = Path(__file__).resolve().parents[2]


def _loaded_by(module: str) -> set[str]:
    """The top modules of interest that a fresh interpreter has loaded after ``module``."""
    code = (f"import sys, {module}; print(' '.join(m for m in ('torch', 'service.worker') "
            "if m in sys.modules))")
    ran = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    return set(ran.stdout.split())


def test_the_contract_imports_no_torch_and_the_servicer_not_the_worker():
    # Whether the servicer imports torch is up to the modules it needs besides (the input
    # policy reads data sources); the worker contract itself never does.
    assert _loaded_by("service.worker_contract") == set()
    assert "service.worker" not in _loaded_by("service.servicer")
    assert _loaded_by("service.worker") == {"torch", "service.worker"}  # the check can tell


@pytest.mark.parametrize("name,kind,devices", [
    ("cpu0", "cpu", ""), ("cpu3", "cpu", ""), ("0", "gpu", "0"), ("7", "gpu", "7"),
    ("k8s1", "pod", ""),
])
def test_slots_by_name(name, kind, devices):
    slot = Slot.parse(name)
    assert (slot.kind, slot.visible_devices, str(slot)) == (kind, devices, name)


@pytest.mark.parametrize("name", ["", "cpu", "gpu0", "-1", "k8s", "cpu 1", "cpu٣", "0x1"])
def test_a_slot_name_that_is_none_of_them_is_refused(name):
    with pytest.raises(ValueError, match="is not cpu<n>, k8s<n> or a GPU index"):
        Slot.parse(name)


def test_worker_env_round_trips_and_names_what_is_missing():
    env = worker_env("127.0.0.1:5", "j1", "tok", "2")
    assert set(env) == set(WORKER_ENV) and env[ENV_DEVICES] == "2"
    assert worker_env("h:1", "j1", "tok", Slot("cpu", 0))[ENV_DEVICES] == ""
    assert read_worker_env(env) == ("127.0.0.1:5", "j1", "tok")
    for name in (ENV_SERVER, ENV_JOB_ID, ENV_JOB_TOKEN):
        with pytest.raises(KeyError, match=name):
            read_worker_env({k: v for k, v in env.items() if k != name})
