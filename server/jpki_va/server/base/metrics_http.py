"""Where a role serves Prometheus /metrics: loopback in plaintext, or anywhere over TLS.

prometheus-client's own HTTP server does both; with TLS it demands a client
certificate issued by the role's client CA, as the gRPC port does, so a scraper
beyond loopback is authenticated like any other caller.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server


@dataclass(frozen=True)
class MetricsListener:
    """HOST and PORT (0: any free one); `tls` is (certificate chain, key, client CA)."""

    host: str
    port: int
    tls: tuple[Path, Path, Path] | None = None


def serve_metrics(
    listener: MetricsListener, registry: CollectorRegistry
) -> tuple[Any, threading.Thread]:
    """Start serving `registry`; returns the server (shutdown, server_close) and its thread."""
    if listener.tls is None:
        return start_http_server(listener.port, addr=listener.host, registry=registry)
    cert, key, client_ca = listener.tls
    return start_http_server(
        listener.port,
        addr=listener.host,
        registry=registry,
        certfile=str(cert),
        keyfile=str(key),
        client_cafile=str(client_ca),
        client_auth_required=True,
    )
