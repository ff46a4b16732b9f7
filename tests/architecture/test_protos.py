"""The checked-in generated code is what the .proto files generate."""

from __future__ import annotations

from pathlib import Path

from jpki_va.protos.generate import PROTO_FILES, generate
from tests.support import REPO


def test_regenerating_changes_nothing(tmp_path: Path) -> None:
    root = REPO / "protos"
    generate(tmp_path, root)
    produced = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    expected = sorted(
        Path(proto).with_name(Path(proto).stem + suffix)
        for proto in PROTO_FILES
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
    )
    assert produced == expected
    for rel in produced:
        assert (tmp_path / rel).read_bytes() == (root / rel).read_bytes(), f"{rel} is stale"
