"""The contract: the .proto files lint clean, are documented, and match the code.

The generated Python code in ``src/editstore/v1`` is committed. These tests fail
when it drifts from what ``scripts/generate_protos.py`` makes of the protos
now, so a change to a .proto file must come with regenerated code.
"""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2

REPO = pathlib.Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO / "protos"
GENERATED = REPO / "src" / "editstore" / "v1"
BUF = pathlib.Path(sys.executable).parent / "buf"

# Field numbers of descriptor.proto, which make up SourceCodeInfo paths.
FILE_MESSAGES = 4
FILE_ENUMS = 5
FILE_SERVICES = 6
MESSAGE_FIELDS = 2
MESSAGE_NESTED = 3
MESSAGE_ENUMS = 4
MESSAGE_ONEOFS = 8
ENUM_VALUES = 2
SERVICE_METHODS = 2


def load_generator() -> ModuleType:
    path = REPO / "scripts" / "generate_protos.py"
    spec = importlib.util.spec_from_file_location("generate_protos", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_buf_lint_passes() -> None:
    assert BUF.is_file(), f"buf not found at {BUF}: pip install buf-bin"
    result = subprocess.run(
        [str(BUF), "lint"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_generated_code_matches_protos(tmp_path: pathlib.Path) -> None:
    generated = load_generator().generate(tmp_path)
    names = sorted(path.name for path in generated)
    committed = sorted(path.name for path in GENERATED.iterdir() if "_pb2" in path.name)
    assert names == committed
    assert len(names) == 6
    for path in generated:
        fresh = path.read_bytes()
        assert (GENERATED / path.name).read_bytes() == fresh, (
            f"src/editstore/v1/{path.name} is stale: "
            "run python scripts/generate_protos.py"
        )


def descriptor_set(tmp_path: pathlib.Path) -> descriptor_pb2.FileDescriptorSet:
    """Compile the protos with their comments into a FileDescriptorSet."""
    import grpc_tools
    from grpc_tools import protoc

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    output = tmp_path / "descriptors.binpb"
    protos = sorted((PROTO_ROOT / "editstore" / "v1").glob("*.proto"))
    assert len(protos) == 2
    arguments = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        "--include_source_info",
        f"--descriptor_set_out={output}",
        *(str(path.relative_to(PROTO_ROOT)) for path in protos),
    ]
    assert protoc.main(arguments) == 0
    return descriptor_pb2.FileDescriptorSet.FromString(output.read_bytes())


def undocumented(proto: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """Return the names of the elements of one file that have no comment."""
    comments = {
        tuple(location.path): location.leading_comments.strip()
        for location in proto.source_code_info.location
    }
    missing = []

    def check(path: tuple[int, ...], name: str) -> None:
        if not comments.get(path):
            missing.append(name)

    def walk_enum(
        path: tuple[int, ...], enum: descriptor_pb2.EnumDescriptorProto
    ) -> None:
        check(path, enum.name)
        for index, value in enumerate(enum.value):
            check((*path, ENUM_VALUES, index), f"{enum.name}.{value.name}")

    def walk_message(
        path: tuple[int, ...], prefix: str, message: descriptor_pb2.DescriptorProto
    ) -> None:
        name = f"{prefix}{message.name}"
        check(path, name)
        for index, field in enumerate(message.field):
            check((*path, MESSAGE_FIELDS, index), f"{name}.{field.name}")
        for index, oneof in enumerate(message.oneof_decl):
            # proto3 `optional` makes a synthetic oneof that has no source.
            if not oneof.name.startswith("_"):
                check((*path, MESSAGE_ONEOFS, index), f"{name}.{oneof.name}")
        for index, nested in enumerate(message.nested_type):
            walk_message((*path, MESSAGE_NESTED, index), f"{name}.", nested)
        for index, enum in enumerate(message.enum_type):
            walk_enum((*path, MESSAGE_ENUMS, index), enum)

    for index, message in enumerate(proto.message_type):
        walk_message((FILE_MESSAGES, index), "", message)
    for index, enum in enumerate(proto.enum_type):
        walk_enum((FILE_ENUMS, index), enum)
    for index, service in enumerate(proto.service):
        check((FILE_SERVICES, index), service.name)
        for number, method in enumerate(service.method):
            check(
                (FILE_SERVICES, index, SERVICE_METHODS, number),
                f"{service.name}.{method.name}",
            )
    return missing


def test_every_proto_element_has_a_comment(tmp_path: pathlib.Path) -> None:
    files = [
        proto
        for proto in descriptor_set(tmp_path).file
        if proto.name.startswith("editstore/")
    ]
    assert [proto.name for proto in files] == [
        "editstore/v1/session.proto",
        "editstore/v1/state.proto",
    ]
    for proto in files:
        assert proto.service, proto.name
        assert undocumented(proto) == [], proto.name


def test_comment_check_finds_a_missing_comment(tmp_path: pathlib.Path) -> None:
    proto_dir = tmp_path / "protos" / "sample" / "v1"
    proto_dir.mkdir(parents=True)
    (proto_dir / "sample.proto").write_text(
        'syntax = "proto3";\n'
        "package sample.v1;\n"
        "// Documented.\n"
        "message Documented {\n"
        "  // Documented.\n"
        "  string a = 1;\n"
        "  string b = 2;\n"
        "}\n"
    )
    from grpc_tools import protoc

    output = tmp_path / "sample.binpb"
    arguments = [
        "protoc",
        f"-I{tmp_path / 'protos'}",
        "--include_source_info",
        f"--descriptor_set_out={output}",
        "sample/v1/sample.proto",
    ]
    assert protoc.main(arguments) == 0
    (proto,) = descriptor_pb2.FileDescriptorSet.FromString(output.read_bytes()).file
    assert undocumented(proto) == ["Documented.b"]


@pytest.mark.parametrize(
    "module",
    [
        "editstore.v1.session_pb2",
        "editstore.v1.session_pb2_grpc",
        "editstore.v1.state_pb2",
        "editstore.v1.state_pb2_grpc",
    ],
)
def test_generated_modules_import(module: str) -> None:
    imported = importlib.import_module(module)
    assert imported.__file__ is not None
    assert pathlib.Path(imported.__file__).parent == GENERATED
