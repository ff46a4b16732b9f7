"""The Envoy bootstrap for a fleet of responder replicas: one balancer, two listeners.

gRPC (HTTP/2, cleartext prior knowledge from the clients; HTTP/2 to each replica) and
HTTP OCSP and CRLs (HTTP/1.1) are balanced round robin over the same replicas. Each
cluster checks every replica actively: gRPC with grpc.health.v1 on the replica's
`jpki-va.rotation` entry, HTTP with `GET /health`; both say NOT_SERVING (503) while the
replica has no index, is behind the newest snapshot past its `--max-lag`, or refused
it, so a stale replica leaves rotation and comes back once it has caught up.

A call that meets a dead replica (connection refused or reset: a replica SIGKILLed
before its health check has noticed) is retried by Envoy on another replica
(`retry_on` below, never the same host twice); so is a gRPC UNAVAILABLE or CANCELLED
from a replica that is stopping. Envoy counts the retries
(`cluster.<name>.upstream_rq_retry` on its admin port). The verifier calls are reads,
so a retry changes nothing but the provision ledger, which may count a call twice
when a replica committed it and died before the answer left.

With `EnvoyTls`, replicas on hosts of their own: Envoy terminates the verifiers' mTLS
(their client certificates checked against the verifiers' client CA), speaks TLS to
each replica with a client certificate of its own (the replicas'
`--trusted-proxy-cert`), checks each replica's server certificate for one name the
fleet shares, and passes the verified client certificate on in the
`x-forwarded-client-cert` header (`Hash=`, its SHA-256), having dropped whatever a
caller sent in that header (SANITIZE_SET). Terminating, not passing TLS through, is
what keeps the balancer a balancer: a TCP pass-through would pin every call of a
connection to one replica, so no per-call retry on another replica (SIGKILL would fail
calls) and no leaving rotation for a stale replica until the caller reconnects.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The health entry Envoy asks for (app/responder_app.py's ROTATION_HEALTH).
ROTATION_SERVICE = "jpki-va.rotation"
HEALTH_PATH = "/health"
GRPC_CLUSTER = "responders_grpc"
HTTP_CLUSTER = "responders_http"
_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
#: The name every replica's server certificate carries (a DNS subjectAltName), which
#: Envoy asks for (SNI) and checks: the replicas are told apart by address, not name.
REPLICA_NAME = "jpki-va-responder"


@dataclass(frozen=True)
class EnvoyTls:
    """Files Envoy reads (PEM): its certificate for verifiers and the CA of theirs; the
    CA of the replicas' server certificates and its own client certificate to them."""

    cert: Path
    key: Path
    client_ca: Path
    replica_ca: Path
    proxy_cert: Path
    proxy_key: Path
    replica_name: str = REPLICA_NAME


def _certificate(cert: Path, key: Path) -> dict[str, Any]:
    return {
        "certificate_chain": {"filename": str(cert)},
        "private_key": {"filename": str(key)},
    }


def _downstream_tls(tls: EnvoyTls, alpn: list[str]) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _TLS + "DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [_certificate(tls.cert, tls.key)],
                "validation_context": {"trusted_ca": {"filename": str(tls.client_ca)}},
                "alpn_protocols": alpn,
            },
        },
    }


def _upstream_tls(tls: EnvoyTls, alpn: list[str]) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _TLS + "UpstreamTlsContext",
            "sni": tls.replica_name,
            "common_tls_context": {
                "tls_certificates": [_certificate(tls.proxy_cert, tls.proxy_key)],
                "validation_context": {
                    "trusted_ca": {"filename": str(tls.replica_ca)},
                    "match_typed_subject_alt_names": [
                        {"san_type": "DNS", "matcher": {"exact": tls.replica_name}}
                    ],
                },
                "alpn_protocols": alpn,
            },
        },
    }


@dataclass(frozen=True)
class Replica:
    """One responder replica: its gRPC and HTTP addresses (HOST:PORT)."""

    grpc: str
    http: str


@dataclass(frozen=True)
class Balancing:
    """What the operator chooses; the defaults suit a fleet on one site."""

    grpc_listen: str = "127.0.0.1:8443"
    http_listen: str = "127.0.0.1:8080"
    admin_listen: str = "127.0.0.1:9901"
    check_interval: float = 0.5  # seconds between active checks of each replica
    check_timeout: float = 1.0
    retries: int = 2  # per call, each on another replica
    # Past this many concurrent streams on one connection Envoy opens another, which
    # the replica's kernel (SO_REUSEPORT) may give to another of its workers.
    streams_per_connection: int = 16
    tls: EnvoyTls | None = None  # None: plaintext, replicas and callers on loopback

    def __post_init__(self) -> None:
        if not 0 < self.check_interval <= 60 or not 0 < self.check_timeout <= 60:
            raise ValueError("check interval and timeout must be in (0, 60] seconds")
        if not 0 <= self.retries <= 10:
            raise ValueError("retries must be 0..10")
        if self.streams_per_connection < 1:
            raise ValueError("streams per connection must be >= 1")


def _socket(address: str) -> dict[str, Any]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{address!r} is not HOST:PORT")
    return {"socket_address": {"address": host.strip("[]"), "port_value": int(port)}}


def _seconds(value: float) -> str:
    return f"{value:.3f}s"


def _listener(
    name: str,
    address: str,
    cluster: str,
    retry_on: str,
    b: Balancing,
    alpn: list[str],
) -> dict[str, Any]:
    route: dict[str, Any] = {
        "cluster": cluster,
        # Streams (CheckStream, WatchRevocations) last as long as the caller wants: the
        # caller's own deadline (grpc-timeout) bounds a call, not a route timeout.
        "timeout": "0s",
        "max_stream_duration": {"grpc_timeout_header_max": "0s"},
        "retry_policy": {
            "retry_on": retry_on,
            "num_retries": b.retries,
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.retry.host."
                        "previous_hosts.v3.PreviousHostsPredicate"
                    },
                }
            ],
            "host_selection_retry_max_attempts": 5,
        },
    }
    manager: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "AUTO",
        # The replica believes this header from Envoy only; Envoy sets it from the
        # certificate it verified and drops any a caller sent (Hash= is always in it).
        "forward_client_cert_details": "SANITIZE_SET" if b.tls else "SANITIZE",
        "route_config": {
            "name": name,
            "virtual_hosts": [
                {
                    "name": name,
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": route}],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    chain: dict[str, Any] = {
        "filters": [
            {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": manager,
            }
        ]
    }
    if b.tls is not None:
        chain["transport_socket"] = _downstream_tls(b.tls, alpn)
    return {"name": name, "address": _socket(address), "filter_chains": [chain]}


def _cluster(
    name: str,
    endpoints: Sequence[str],
    check: dict[str, Any],
    protocol: dict[str, Any],
    b: Balancing,
    alpn: list[str],
) -> dict[str, Any]:
    tls = {} if b.tls is None else {"transport_socket": _upstream_tls(b.tls, alpn)}
    return {
        "name": name,
        **tls,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": {
            _PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{_PROTOCOL_OPTIONS}",
                "explicit_http_config": protocol,
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket(e)}} for e in endpoints]}
            ],
        },
        "health_checks": [
            {
                "timeout": _seconds(b.check_timeout),
                "interval": _seconds(b.check_interval),
                # Else a cluster checked before its first call waits 60 s for the next.
                "no_traffic_interval": _seconds(b.check_interval),
                "no_traffic_healthy_interval": _seconds(b.check_interval),
                # One failed check takes a replica out, one passed check brings it back:
                # the replica itself decides (its lag bound), not a count of failures.
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "always_log_health_check_failures": False,
                **check,
            }
        ],
    }


def envoy_bootstrap(replicas: Sequence[Replica], balancing: Balancing) -> dict[str, Any]:
    """The bootstrap as a mapping (Envoy reads it as JSON or YAML)."""
    if not replicas:
        raise ValueError("a fleet needs at least one replica")
    b = balancing
    return {
        "admin": {"address": _socket(b.admin_listen)},
        "static_resources": {
            "listeners": [
                _listener(
                    "grpc",
                    b.grpc_listen,
                    GRPC_CLUSTER,
                    # cancelled: what a replica's workers answer to calls that
                    # arrive while they stop (their supervisor gone, before the next
                    # health check); a caller's own cancel never comes back to retry.
                    "connect-failure,refused-stream,reset,unavailable,cancelled",
                    b,
                    ["h2"],
                ),
                _listener(
                    "http",
                    b.http_listen,
                    HTTP_CLUSTER,
                    "connect-failure,reset,gateway-error",
                    b,
                    ["http/1.1"],
                ),
            ],
            "clusters": [
                _cluster(
                    GRPC_CLUSTER,
                    [r.grpc for r in replicas],
                    {"grpc_health_check": {"service_name": ROTATION_SERVICE}},
                    {
                        "http2_protocol_options": {
                            "max_concurrent_streams": b.streams_per_connection
                        }
                    },
                    b,
                    ["h2"],
                ),
                _cluster(
                    HTTP_CLUSTER,
                    [r.http for r in replicas],
                    {"http_health_check": {"path": HEALTH_PATH}},
                    {"http_protocol_options": {}},
                    b,
                    ["http/1.1"],
                ),
            ],
        },
    }


def render(replicas: Sequence[Replica], balancing: Balancing) -> str:
    return json.dumps(envoy_bootstrap(replicas, balancing), indent=2) + "\n"
