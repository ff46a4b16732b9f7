"""Regenerate the Python code for the .proto files in this folder.

Run as ``./tasks proto`` (``python -m jpki_va.protos.generate``); the test suite runs it
into a temporary directory and compares, so checked-in code cannot go stale. Paths are
relative to the ``protos/`` folder, the root of this distribution: a proto's import path
(``jpki_va/protos/va.proto``) is its Python module (``jpki_va.protos.va_pb2``).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_FILES = (
    "jpki_va/protos/va.proto",
    "jpki_va/protos/signer.proto",
    "jpki_va/protos/crl.proto",
    "jpki_va/protos/verifiers.proto",
    "jpki_va/protos/mapping.proto",
    "jpki_va/protos/record.proto",
)


def generate(out_dir: Path, root: Path) -> None:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto under out_dir.

    `root` is the protos/ folder: the import root of the .proto files.
    """
    include = Path(protoc.__file__).parent / "_proto"
    # mypy-protobuf's plugins give typed stubs for messages and for the gRPC code.
    bindir = Path(sys.executable).parent
    plugins = {}
    for name in ("protoc-gen-mypy", "protoc-gen-mypy_grpc"):
        found = shutil.which(name) or shutil.which(name, path=str(bindir))
        if found is None:
            raise SystemExit(f"{name} not found: install the dev extra (mypy-protobuf)")
        plugins[name] = found
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{include}",
        *(f"--plugin={name}={path}" for name, path in plugins.items()),
        f"--python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(root / p) for p in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[2]  # protos/
    generate(root, root)
    sys.exit(0)
