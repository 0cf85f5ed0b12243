"""Generate the Python code of the .proto files into src/editstore/v1.

Run after changing anything in protos/:

    python scripts/generate_protos.py

The generated files are committed, so that the package imports right after
``pip install``; tests/test_protos.py fails when they drift from the protos.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE = pathlib.PurePosixPath("editstore/v1")


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Generate the code of every .proto file into out_dir/editstore/v1."""
    import grpc_tools

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(path.relative_to(PROTO_ROOT)) for path in protos),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {[p.name for p in protos]}")
    return sorted((out_dir / PACKAGE).glob("*_pb2*.py*"))


def main() -> int:
    target = ROOT / "src" / PACKAGE
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(pathlib.Path(tmp)):
            (target / path.name).write_bytes(path.read_bytes())
            print(f"wrote {PACKAGE / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
