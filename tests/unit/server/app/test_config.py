"""The responder's stream, connection and listening settings are checked with a clear message."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from jpki_va.server.app.config import ConfigError, ResponderConfig, TlsFiles
from jpki_va.server.base.metrics_http import MetricsListener


def _config(tmp_path: Path, **settings: Any) -> ResponderConfig:
    anchor = tmp_path / "root.pem"
    anchor.write_text("only its presence is checked here")
    return ResponderConfig(
        **{"snapshot_dir": tmp_path, **settings},
        state_dir=tmp_path,
        trust_anchors=(anchor,),
        insecure_loopback=True,
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


def _tls(tmp_path: Path) -> TlsFiles:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("only its presence is checked here")
    return TlsFiles(tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem")


def test_http_and_metrics_beyond_loopback_over_tls(tmp_path: Path) -> None:
    """A pod exposes HTTP and metrics on every address, over TLS with the role's files."""
    anchor = tmp_path / "root.pem"
    anchor.write_text("only its presence is checked here")
    tls = _tls(tmp_path)
    config = ResponderConfig(
        snapshot_dir=tmp_path,
        state_dir=tmp_path,
        trust_anchors=(anchor,),
        listen="0.0.0.0:50051",
        tls=tls,
        http_listen="0.0.0.0:8080",
        http_tls=True,
        metrics_listen="[::]:9100",
        metrics_tls=True,
    )
    assert config.metrics_listener == MetricsListener(
        "::", 9100, (tls.cert, tls.key, tls.client_ca)
    )
    loopback = _config(tmp_path, metrics_port=9100)
    assert loopback.metrics_listener == MetricsListener("127.0.0.1", 9100, None)
    assert _config(tmp_path).metrics_listener is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"http_listen": "0.0.0.0:8080"}, "plaintext is allowed only on loopback.*--http-tls"),
        (
            {"metrics_listen": "10.0.0.1:9100"},
            "plaintext is allowed only on loopback.*--metrics-tls",
        ),
        ({"http_listen": "127.0.0.1:8080", "http_tls": True}, "--http-tls needs"),
        ({"http_tls": True}, "--http-tls goes with --http-listen"),
        ({"metrics_tls": True}, "--metrics-tls goes with"),
        ({"metrics_port": 70000}, "bad metrics port"),
        (
            {"signer": "signer.jpki-va:50052"},
            "would be plaintext: loopback only, or give --signer-ca",
        ),
        ({"signer": "signer:50052", "signer_ca": Path("x")}, "go together"),
    ],
)
def test_plaintext_stays_on_loopback(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, **settings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"store": "http://bucket/prefix"}, "expected s3://BUCKET[/PREFIX]"),
        ({"store": "s3://"}, "expected s3://BUCKET[/PREFIX]"),
        ({"store": "s3://key:secret@bucket"}, "no credentials or options in the URL"),
        ({"store": "s3://bucket?region=x"}, "no credentials or options in the URL"),
        ({"snapshot_dir": Path("snapshots"), "store": "s3://b/p"}, "a directory (--snapshots)"),
        ({"store": None}, "a directory (--snapshots) or a --store"),
    ],
)
def test_a_bad_store_is_refused_with_its_reason(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _config(tmp_path, **{"snapshot_dir": None, **settings})


def test_a_store_alone_names_the_snapshots(tmp_path: Path) -> None:
    config = _config(tmp_path, snapshot_dir=None, store="s3://jpki-va/fleet")
    assert config.staging_dir == tmp_path / "staging"
