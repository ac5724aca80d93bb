#!/usr/bin/env python3
"""Generate service/_proto from protos/ with grpc_tools.protoc (the committed code).

    python scripts/gen_protos.py            # regenerate service/_proto
    python scripts/gen_protos.py --out DIR  # generate elsewhere (the drift test compares)

Files land flat in the output folder, their imports made package-relative so the generated
code needs no entry on sys.path.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

__all__ = ["generate", "PROTO_PACKAGE"]

REPO = Path(__file__).resolve().parents[1]
PROTO_PACKAGE = "teacherspet/v1"
HEADER = '"""Generated from protos/ by scripts/gen_protos.py; do not edit."""\n'


def generate(out_dir: Path, proto_root: Path = REPO / "protos") -> list[Path]:
    """Write the generated modules into ``out_dir``; return the files written."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    protos = sorted((proto_root / PROTO_PACKAGE).glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *map(str, protos)]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {', '.join(p.name for p in protos)}")
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.glob("*_pb2*.py*"):
            old.unlink()
        written = [out_dir / "__init__.py"]
        written[0].write_text(HEADER)
        for src in sorted((Path(tmp) / PROTO_PACKAGE).iterdir()):
            dst = out_dir / src.name
            dst.write_text(_relative_imports(src.read_text()))
            written.append(dst)
    return written


def _relative_imports(code: str) -> str:
    # protoc writes `from teacherspet.v1 import spec_pb2 as ...`, which only resolves with the
    # output folder on sys.path; inside the package it must be relative.
    package = PROTO_PACKAGE.replace("/", ".")
    return re.sub(rf"^from {re.escape(package)} import ", "from . import ", code, flags=re.M)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "service" / "_proto")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
