import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

TPET = [sys.executable, "-m", "service.cli"]
REPO = Path(__file__).resolve().parents[2]
# How long a test waits for a job or a CLI command to end: a guard against hangs, not a timing
# assertion. A job that takes seconds alone can take many minutes on a machine loaded many
# times over, and a test must not fail for that.
JOB_TIMEOUT_S = 1800
INCLUSTER_NAME = "tpet-api.teachers-pet.svc"  # what a pod-facing server certificate names


def _bars(n: int, num_classes: int, rng: np.random.Generator):
    """Class c lights up a horizontal bar at row 2c of an 8x8 image, plus noise."""
    y = np.arange(n) % num_classes
    x = rng.integers(0, 60, size=(n, 8, 8))
    for c in range(num_classes):
        x[y == c, 2 * c, :] += 180
    return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)


@pytest.fixture
def bars_job(tmp_path):
    """Write a tiny npz dataset and a job using it; return a function making job files."""
    rng = np.random.default_rng(0)
    for name, n in (("train", 800), ("test", 200)):
        x, y = _bars(n, 4, rng)
        np.savez(tmp_path / f"{name}.npz", x=x, y=y,
                 class_names=np.array(["a", "b", "c", "d"]))

    def make(**overrides):
        job = {"name": "bars", "output_dir": str(tmp_path / "out"),
               "teacher": {"path": str(tmp_path / "teacher.pt2")},
               "data": {"source": "npz", "path": str(tmp_path / "train.npz"),
                        "test_path": str(tmp_path / "test.npz"), "holdout_fraction": 0.2},
               "student": {"arch": "tiny_cnn"},
               "training": {"epochs": 4, "batch_size": 32, "lr": 0.05}}
        for key, value in overrides.items():
            job[key] = {**job.get(key, {}), **value} if isinstance(value, dict) else value
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(job))
        return path

    return make


# Certificates for the TLS tests (test_security.py, test_worker_tls.py).
def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(d, name: str, ca: str, usage: str, san: str = "") -> None:
    """``name``.key/.pem signed by ``ca``.key/.pem (EC P-256: fast to make)."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    (d / f"{name}.ext").write_text(f"extendedKeyUsage={usage}\n" +
                                   (f"subjectAltName={san}\n" if san else ""))
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "1", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
            cwd=d)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A CA with a server (127.0.0.1, localhost) and a client certificate, a server
    certificate naming only an in-cluster Service (``INCLUSTER_NAME``), and a rogue CA with
    its own client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (it makes the test certificates)")
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue-ca"):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "1", "-subj",
                f"/CN={ca}", cwd=d)
    _issue(d, "server", "ca", "serverAuth", "IP:127.0.0.1,DNS:localhost")
    _issue(d, "incluster", "ca", "serverAuth", f"DNS:{INCLUSTER_NAME}")
    _issue(d, "client", "ca", "clientAuth")
    _issue(d, "rogue", "rogue-ca", "clientAuth")
    return d
