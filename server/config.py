"""Validated configuration: argv (and an optional TOML file) -> a frozen Config.

The composition roots take these and nothing else from the command line, so every
setting is checked once, here, with a message that names it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import hsm
from server.ocsp_keys import RenewPolicy

PIN_ENV = "JPKI_VA_HSM_PIN"


class ConfigError(ValueError):
    pass


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def _check_listen(address: str, insecure_loopback: bool, name: str) -> None:
    if ":" not in address:
        raise ConfigError(f"{name}: expected HOST:PORT, got {address!r}")
    port = address.rsplit(":", 1)[1]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name}: bad port in {address!r}")
    if not insecure_loopback:
        raise ConfigError(
            f"{name}: TLS is not configured; plaintext needs --insecure-loopback "
            "and a loopback address"
        )
    if not _is_loopback(address):
        raise ConfigError(f"{name}: plaintext is allowed only on 127.0.0.1, not {address!r}")


def hsm_config(
    *,
    module: str,
    token_label: str,
    pin_env: str | None,
    pin_file: str | None,
    softhsm2_conf: str | None,
) -> hsm.HsmConfig:
    pin = hsm.PinSource(file=pin_file) if pin_file else hsm.PinSource(env=pin_env or PIN_ENV)
    try:
        return hsm.HsmConfig(
            module=module, token_label=token_label, pin=pin, softhsm2_conf=softhsm2_conf
        )
    except hsm.HsmError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class SignerConfig:
    data_dir: Path
    hsm: hsm.HsmConfig
    listen: str = "127.0.0.1:50052"
    base_url: str = "http://127.0.0.1:8080"
    insecure_loopback: bool = False
    publish_interval: float = 5.0  # seconds; 0 publishes only on request
    bootstrap: bool = False  # create a missing CA hierarchy (the embedded default's ceremony)
    grpc_workers: int = 16
    sign_queue_limit: int = 8  # requests that may wait for the HSM; more: RESOURCE_EXHAUSTED
    sign_queue_wait: float = 5.0  # seconds a request may wait for the HSM
    metrics_port: int | None = None  # Prometheus /metrics on 127.0.0.1 (0: any free port)

    def __post_init__(self) -> None:
        _check_listen(self.listen, self.insecure_loopback, "signer listen")
        if self.publish_interval < 0:
            raise ConfigError("publish interval must be >= 0")
        if self.grpc_workers < 2:
            raise ConfigError("grpc workers must be >= 2")
        if not 1 <= self.sign_queue_limit < self.grpc_workers:
            # Past the worker count the gRPC pool, not this queue, would make callers wait.
            raise ConfigError("sign queue limit must be >= 1 and below the grpc workers")
        if self.sign_queue_wait <= 0:
            raise ConfigError("sign queue wait must be > 0 seconds")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"bad metrics port {self.metrics_port}")

    @property
    def registry_dir(self) -> Path:
        return self.data_dir / "registry"

    @property
    def snapshot_dir(self) -> Path:
        return self.data_dir / "snapshots"


@dataclass(frozen=True)
class ResponderConfig:
    snapshot_dir: Path
    state_dir: Path
    trust_anchors: tuple[Path, ...]
    listen: str = "127.0.0.1:50051"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    signer: str | None = None  # where to get delegated OCSP-signer certificates
    insecure_loopback: bool = False
    poll_interval: float = 1.0
    grpc_threads: int = 16
    grace_seconds: float = 5.0
    ocsp_renew_at: RenewPolicy = field(default_factory=RenewPolicy)  # default: half its life
    # HTTP OCSP and CRLs (RFC 6960 Appendix A, RFC 5019) beside gRPC; off when None.
    http_listen: str | None = None
    metrics_port: int | None = None  # Prometheus /metrics on 127.0.0.1; off when None
    # Limits on what one request may ask (bad input gets a clear error, not a crash).
    max_message_bytes: int = 4 * 1024 * 1024  # a gRPC message
    max_batch: int = 10_000  # CheckStream: requests per batch
    max_stream_batches: int = 100_000  # CheckStream: batches per stream
    max_ocsp_request_bytes: int = 16_384  # an OCSP request (HTTP body, gRPC Ocsp)
    max_ocsp_cert_ids: int = 64  # CertIDs in one OCSP request
    ocsp_cache_size: int = 100_000  # signed responses kept per worker; 0 disables
    ocsp_cache_margin: float = 60.0  # seconds before nextUpdate a cached response is renewed

    def __post_init__(self) -> None:
        _check_listen(self.listen, self.insecure_loopback, "responder listen")
        if self.http_listen is not None:
            # Status is provided to verifiers only (DESIGN §7); plain HTTP cannot tell
            # who asks, so it is served on loopback, behind an authenticating proxy.
            _check_listen(self.http_listen, True, "responder HTTP listen")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError("metrics port must be 0..65535")
        for name in (
            "max_message_bytes",
            "max_batch",
            "max_stream_batches",
            "max_ocsp_cert_ids",
            "grpc_threads",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', ' ')} must be >= 1")
        if not 64 <= self.max_ocsp_request_bytes <= self.max_message_bytes:
            raise ConfigError("max OCSP request bytes must be in 64..max message bytes")
        if self.ocsp_cache_size < 0 or self.ocsp_cache_margin < 0:
            raise ConfigError("OCSP cache size and margin must be >= 0")
        if self.workers < 1:
            raise ConfigError("workers must be >= 1")
        if not self.trust_anchors:
            raise ConfigError("at least one trust anchor (--trust-anchor) is required")
        for anchor in self.trust_anchors:
            if not anchor.is_file():
                raise ConfigError(f"trust anchor {anchor} does not exist")
        if self.poll_interval <= 0:
            raise ConfigError("poll interval must be > 0")
        if self.signer is not None and not _is_loopback(self.signer):
            raise ConfigError("the signer connection is plaintext: loopback only for now")

    @property
    def index_dir(self) -> Path:
        return self.state_dir / "index"

    @property
    def ocsp_dir(self) -> Path:
        return self.state_dir / "ocsp"

    @property
    def metrics_dir(self) -> Path:
        """prometheus-client multiprocess files; emptied when the responder starts."""
        return self.state_dir / "metrics"


def load_toml(path: Path | None) -> dict[str, Any]:
    """Settings from a TOML file; keys are the option names with underscores."""
    if path is None:
        return {}
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None


def merge(file_values: dict[str, Any], cli_values: dict[str, Any], cls: type) -> dict[str, Any]:
    """CLI values that were given override the file; unknown file keys are errors."""
    known = {f.name for f in fields(cls)}
    unknown = set(file_values) - known - {"hsm"}
    if unknown:
        raise ConfigError(f"unknown settings in config file: {', '.join(sorted(unknown))}")
    merged = dict(file_values)
    merged.update({k: v for k, v in cli_values.items() if v is not None})
    return merged
