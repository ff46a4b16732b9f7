"""The responder's stream and connection settings are checked with a clear message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jpki_va.server.app.config import ConfigError, ResponderConfig


def _config(tmp_path: Path, **settings: Any) -> ResponderConfig:
    anchor = tmp_path / "root.pem"
    anchor.write_text("only its presence is checked here")
    return ResponderConfig(
        snapshot_dir=tmp_path,
        state_dir=tmp_path,
        trust_anchors=(anchor,),
        insecure_loopback=True,
        **settings,
    )


def test_stream_defaults_fit_together(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert config.max_watches <= config.max_streams
    assert 1 <= config.max_streams_per_caller <= config.max_streams
    assert config.stream_idle >= 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_streams": 0}, "max streams must be >= 1"),
        ({"max_streams": 4, "max_watches": 2, "max_streams_per_caller": 5}, "1 to 4"),
        ({"max_streams_per_caller": 0}, "max streams per caller must be 1 to 32"),
        ({"max_streams": 4, "max_streams_per_caller": 2}, "max watches must be 1 to 4"),
        ({"stream_idle": 0.5}, "stream idle time must be at least 1 second"),
        ({"http_max_connections": 0}, "http max connections must be >= 1"),
        ({"grpc_max_connections": -1}, "grpc max connections must be >= 1"),
    ],
)
def test_bad_stream_and_connection_settings(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, **settings)
