"""The committed generated code in service/_proto matches what protos/ generates."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "service" / "_proto"


def test_generated_code_matches_protos(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_protos.py"), "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    fresh = {p.name: p.read_text() for p in tmp_path.iterdir() if p.is_file()}
    committed = {p.name: p.read_text() for p in COMMITTED.iterdir() if p.is_file()}
    assert "compress_pb2_grpc.py" in fresh and "worker_pb2.py" in fresh
    assert sorted(committed) == sorted(fresh), "files differ: run scripts/gen_protos.py"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"{stale} differ from protos/: run scripts/gen_protos.py"


def test_generated_imports_are_package_relative():
    for path in COMMITTED.glob("*.py"):
        assert "from teacherspet" not in path.read_text(), path.name
