"""The Dockerfiles, linted by hadolint and read as a reviewer would (no Docker daemon or registry
here, so nothing is built), and the API image's health check script run against a real server."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from service.config import ServerConfig
from service.server import start_server

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
IMAGES = ("api", "worker")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, comments dropped, continuation lines joined."""
    lines = [line for line in path.read_text().splitlines() if not line.strip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    out = []
    for line in filter(None, (raw.strip() for raw in joined.splitlines())):
        op, _, rest = line.partition(" ")
        out.append((op.upper(), rest.strip()))
    return out


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def base_images(steps: list[tuple[str, str]]) -> list[str]:
    """The FROM images with the defaults of global ARGs filled in; earlier stages left out."""
    args, stages, images = {}, set(), []
    for op, rest in steps:
        if op == "ARG" and "=" in rest and not images:
            name, value = rest.split("=", 1)
            args[name] = value
        elif op == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], words[0])
            if image not in stages:
                images.append(image)
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])
    return images


def pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and any(c.isdigit() for c in tag)


def pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(d.split("==") for d in deps if "==" in d)


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint_passes(image):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or \
        shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -e '.[dev]'"
    done = subprocess.run([hadolint, "--no-color", str(DOCKER / f"{image}.Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("image", IMAGES)
def test_base_images_are_pinned(image):
    images = base_images(instructions(DOCKER / f"{image}.Dockerfile"))
    assert images and all(pinned(i) for i in images), images
    assert not pinned("python:latest") and not pinned("python") and pinned("python:3.11.11-slim")


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_a_non_root_user_with_a_health_check_decision(image):
    stage = final_stage(instructions(DOCKER / f"{image}.Dockerfile"))
    users = [rest.split(":")[0] for op, rest in stage if op == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    (healthcheck,) = [rest for op, rest in stage if op == "HEALTHCHECK"]
    if image == "api":
        assert "healthcheck.py" in healthcheck and "CMD" in healthcheck
    else:  # a batch process: the manager's heartbeat is its health check
        assert healthcheck == "NONE"


@pytest.mark.parametrize("image", IMAGES)
def test_pip_installs_are_pinned_as_in_pyproject(image):
    pins = pyproject_pins()
    installs = [rest for op, rest in instructions(DOCKER / f"{image}.Dockerfile")
                if op == "RUN" and "pip install" in rest]
    assert installs
    for command in installs:
        words = command.split("pip install", 1)[1].split("&&")[0].split()
        packages = [w for w in words[words.index("--index-url") + 2 if "--index-url" in words
                                     else 0:] if not w.startswith(("-", "/", "."))]
        for package in packages:
            name, _, version = package.partition("==")
            assert version, f"{image}.Dockerfile: {package} is not pinned"
            if name in pins:
                assert version == pins[name], f"{image}.Dockerfile pins {package}, pyproject " \
                                              f"{name}=={pins[name]}"


@pytest.mark.parametrize("image", IMAGES)
def test_copied_files_exist_and_are_in_the_build_context(image):
    allowed = [line[1:].rstrip("/") for line in
               (DOCKER / f"{image}.Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")]
    sources = [w for op, rest in instructions(DOCKER / f"{image}.Dockerfile")
               if op == "COPY" and "--from" not in rest for w in rest.split()[:-1]]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert any(source == a or source.startswith(a + "/") for a in allowed), (
            f"{source} is excluded by {image}.Dockerfile.dockerignore")


def test_health_check_script_follows_the_server(tmp_path):
    server = start_server(ServerConfig(port=0, state_dir=str(tmp_path), gpus=[],
                                       max_concurrent_jobs=0))
    probe = [sys.executable, str(DOCKER / "healthcheck.py"), server.address]
    try:
        up = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    finally:
        server.stop(grace_s=1)
    down = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    assert up.returncode == 0, up.stderr
    assert down.returncode == 1
    assert down.stderr.strip() == f"unhealthy: {server.address}: UNAVAILABLE"
