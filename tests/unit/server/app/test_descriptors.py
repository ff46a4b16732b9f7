"""Connection caps under a worker's descriptor limit (app/descriptors.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jpki_va.server.app.config import ConfigError, ResponderConfig
from jpki_va.server.app.descriptors import RESERVED, ConnectionCaps, connection_caps


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


def test_unnamed_caps_share_what_the_limit_leaves(tmp_path: Path) -> None:
    room = 1024 - RESERVED
    http = _config(tmp_path, http_listen="127.0.0.1:0")
    assert connection_caps(http, 1024) == ConnectionCaps(grpc=room // 2, http=room // 2)
    assert connection_caps(_config(tmp_path), 1024) == ConnectionCaps(grpc=room, http=0)


def test_a_named_cap_is_kept_and_the_other_gets_the_rest(tmp_path: Path) -> None:
    config = _config(tmp_path, http_listen="127.0.0.1:0", grpc_max_connections=100)
    assert connection_caps(config, 1024) == ConnectionCaps(grpc=100, http=1024 - RESERVED - 100)
    both = _config(
        tmp_path, http_listen="127.0.0.1:0", grpc_max_connections=10, http_max_connections=20
    )
    assert connection_caps(both, 1024) == ConnectionCaps(grpc=10, http=20)


@pytest.mark.parametrize(
    ("settings", "limit"),
    [
        ({"grpc_max_connections": 1024 - RESERVED}, 1024),  # leaves none for HTTP
        ({"grpc_max_connections": 500, "http_max_connections": 500}, 1024),
        ({}, RESERVED + 1),  # no room for one connection of each
    ],
)
def test_caps_that_do_not_fit_under_the_limit_are_refused(
    tmp_path: Path, settings: dict[str, int], limit: int
) -> None:
    config = _config(tmp_path, http_listen="127.0.0.1:0", **settings)
    with pytest.raises(ConfigError, match=f"open files limit {limit}"):
        connection_caps(config, limit)
