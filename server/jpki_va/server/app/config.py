"""Validated configuration: argv (and an optional TOML file) -> a frozen Config.

The composition roots take these and nothing else from the command line, so every
setting is checked once, here, with a message that names it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from jpki_va import hsm
from jpki_va.core import cli as core_cli
from jpki_va.server.base.metrics_http import MetricsListener
from jpki_va.server.law.retention import DEFAULT_PROJECT_RECORD, RetentionPolicy
from jpki_va.server.pki.cert_profile import DEFAULT_VALIDITY
from jpki_va.server.responder.ocsp_cache import DEFAULT_BYTES
from jpki_va.server.responder.renew_policy import RenewPolicy

PIN_ENV = "JPKI_VA_HSM_PIN"


class ConfigError(ValueError):
    pass


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def _check_listen(address: str, insecure_loopback: bool, name: str, tls: bool = False) -> None:
    if ":" not in address:
        raise ConfigError(f"{name}: expected HOST:PORT, got {address!r}")
    port = address.rsplit(":", 1)[1]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name}: bad port in {address!r}")
    if tls:
        if insecure_loopback:
            raise ConfigError(f"{name}: choose TLS (--tls-cert ...) or --insecure-loopback")
        return
    if not insecure_loopback:
        raise ConfigError(
            f"{name}: TLS is not configured; plaintext needs --insecure-loopback "
            "and a loopback address"
        )
    if not _is_loopback(address):
        raise ConfigError(f"{name}: plaintext is allowed only on 127.0.0.1, not {address!r}")


def _check_beside(address: str, name: str, flag: str, on_tls: bool, tls: TlsFiles | None) -> None:
    """HTTP or metrics beside gRPC: plaintext on loopback, or TLS with the role's files."""
    if on_tls:
        if tls is None:
            raise ConfigError(f"{flag} needs the role's --tls-cert, --tls-key and --client-ca")
        _check_listen(address, False, name, tls=True)
        return
    if ":" in address and not _is_loopback(address):
        raise ConfigError(
            f"{name}: plaintext is allowed only on loopback, not {address!r}; "
            f"add {flag} to serve it over TLS"
        )
    _check_listen(address, True, name)


def _metrics_listener(
    port: int | None, listen: str | None, on_tls: bool, tls: TlsFiles | None
) -> MetricsListener | None:
    """Where /metrics listens: --metrics-port (loopback) or --metrics-listen HOST:PORT."""
    if port is not None and listen is not None:
        raise ConfigError("give --metrics-port or --metrics-listen, not both")
    if port is not None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"bad metrics port {port}")
        listen = f"127.0.0.1:{port}"
    if listen is None:
        if on_tls:
            raise ConfigError("--metrics-tls goes with --metrics-listen or --metrics-port")
        return None
    _check_beside(listen, "metrics listen", "--metrics-tls", on_tls, tls)
    host, number = listen.rsplit(":", 1)
    files = None if not on_tls or tls is None else (tls.cert, tls.key, tls.client_ca)
    return MetricsListener(host.strip("[]"), int(number), files)


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


def parse_duration(text: str | float | int, name: str) -> float:
    """Seconds from a number or a duration like `5s`, `90m`, `24h`, `3650d`
    (jpki_va.core.cli's one syntax); ConfigError names the setting."""
    try:
        return core_cli.parse_duration(text).total_seconds()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc}") from None


STORE_SCHEMES = ("s3",)


def check_store_url(url: str) -> tuple[str, str, str]:
    """(scheme, bucket, prefix) of a store URL such as s3://bucket/prefix."""
    scheme, sep, rest = url.partition("://")
    bucket, _, prefix = rest.partition("/")
    if not sep or scheme not in STORE_SCHEMES or not bucket:
        raise ConfigError(f"--store: expected s3://BUCKET[/PREFIX], got {url!r}")
    if "@" in bucket or "?" in url:
        # Credentials come from the environment or config files, never argv.
        raise ConfigError("--store: no credentials or options in the URL")
    return scheme, bucket, prefix.strip("/")


def _check_store(url: str | None) -> None:
    if url is not None:
        check_store_url(url)


@dataclass(frozen=True)
class TlsFiles:
    """Server certificate chain and key, and the CA that issues client certificates."""

    cert: Path
    key: Path
    client_ca: Path

    def __post_init__(self) -> None:
        for option, path in (("--tls-cert", self.cert), ("--tls-key", self.key)):
            if not path.is_file():
                raise ConfigError(f"{option} {path} does not exist")
        if not self.client_ca.is_file():
            raise ConfigError(f"--client-ca {self.client_ca} does not exist")

    def read(self) -> tuple[bytes, bytes, bytes]:
        try:
            return self.cert.read_bytes(), self.key.read_bytes(), self.client_ca.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read TLS files: {exc}") from None


def tls_files(cert: str | None, key: str | None, client_ca: str | None) -> TlsFiles | None:
    given = [v is not None for v in (cert, key, client_ca)]
    if not any(given):
        return None
    if not all(given):
        raise ConfigError("--tls-cert, --tls-key and --client-ca go together (mTLS)")
    assert cert is not None and key is not None and client_ca is not None
    return TlsFiles(Path(cert), Path(key), Path(client_ca))


@dataclass(frozen=True)
class SignerConfig:
    data_dir: Path
    hsm: hsm.HsmConfig
    listen: str = "127.0.0.1:50052"
    base_url: str = "http://127.0.0.1:8080"
    insecure_loopback: bool = False
    full_interval: float = 24 * 3600.0  # seconds between full snapshots
    # Seconds between delta snapshots while anything changed; 0: only on request. Short,
    # so a loss reaches every replica within 2 s (a tick with no change costs one read).
    delta_interval: float = 1.0
    bootstrap: bool = False  # create a missing CA hierarchy (the embedded default's ceremony)
    grpc_workers: int = 16
    sign_queue_limit: int = 8  # requests that may wait for the HSM; more: RESOURCE_EXHAUSTED
    sign_queue_wait: float = 5.0  # seconds a request may wait for the HSM
    metrics_port: int | None = None  # Prometheus /metrics on 127.0.0.1 (0: any free port)
    metrics_listen: str | None = None  # HOST:PORT instead; beyond loopback with metrics_tls
    metrics_tls: bool = False  # /metrics over TLS with the signer's certificate and client CA
    tls: TlsFiles | None = None
    operator_certs: tuple[Path, ...] = ()  # client certificates allowed registry operations
    # Notices to holders: a webhook URL, else printable files in the spool directory
    # (default DATA_DIR/notices); seconds between delivery rounds.
    notice_webhook: str | None = None
    notice_spool: Path | None = None
    notice_delivery_interval: float = 10.0
    # Seconds between looks at the clock for the 00:00 JST move-out sweep (第31条第2号).
    sweep_check: float = 60.0
    # 保存期間 (seconds); None keeps the placeholders of law/retention.py.
    retention_issuance_record: float | None = None
    retention_loss_record: float | None = None
    retention_crl_file: float | None = None
    retention_project_record: float | None = None
    # One period per record type the law names (law/retention.py RECORD_TYPES), seconds.
    retention: dict[str, float] = field(default_factory=dict)
    # Where snapshots are published beside the data directory's `snapshots/`, where they
    # are sealed: s3://BUCKET[/PREFIX]; None publishes them in that directory.
    store: str | None = None
    # Seconds between backups of the registry to the store (an S3 one); 0: on demand only.
    backup_interval: float = 3600.0

    def __post_init__(self) -> None:
        _check_listen(
            self.listen, self.insecure_loopback, "signer listen", tls=self.tls is not None
        )
        _check_store(self.store)
        if self.tls is not None and not self.operator_certs:
            raise ConfigError("with TLS, name the operators' client certificates (--operator-cert)")
        for path in self.operator_certs:
            if not path.is_file():
                raise ConfigError(f"--operator-cert {path} does not exist")
        if self.full_interval <= 0:
            raise ConfigError("full interval must be > 0")
        if self.delta_interval < 0:
            raise ConfigError("delta interval must be >= 0")
        if self.delta_interval and self.delta_interval > self.full_interval:
            raise ConfigError("delta interval must not exceed the full interval")
        self._check_notices()
        if self.sweep_check <= 0 or self.backup_interval < 0:
            raise ConfigError("sweep check must be > 0 and backup interval >= 0 seconds")
        if self.grpc_workers < 2:
            raise ConfigError("grpc workers must be >= 2")
        if not 1 <= self.sign_queue_limit < self.grpc_workers:
            # Past the worker count the gRPC pool, not this queue, would make callers wait.
            raise ConfigError("sign queue limit must be >= 1 and below the grpc workers")
        if self.sign_queue_wait <= 0:
            raise ConfigError("sign queue wait must be > 0 seconds")
        self.metrics_listener  # noqa: B018 (checked here, once)
        _ = self.retention_policy  # checked on the way

    def _check_notices(self) -> None:
        if self.notice_delivery_interval <= 0:
            raise ConfigError("notice delivery interval must be > 0 seconds")
        if self.notice_webhook is not None and not self.notice_webhook.startswith(
            ("http://", "https://")
        ):
            raise ConfigError(
                f"--notice-webhook: expected an http(s) URL, got {self.notice_webhook!r}"
            )

    @property
    def retention_policy(self) -> RetentionPolicy:
        default = RetentionPolicy()
        try:
            return RetentionPolicy(
                issuance_record=_days_or(self.retention_issuance_record, default.issuance_record),
                loss_record=_days_or(self.retention_loss_record, default.loss_record),
                crl_file=_days_or(self.retention_crl_file, default.crl_file),
                project_record=_days_or(self.retention_project_record, default.project_record),
                periods={k: timedelta(seconds=v) for k, v in self.retention.items()},
            ).checked(DEFAULT_VALIDITY)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def metrics_listener(self) -> MetricsListener | None:
        return _metrics_listener(self.metrics_port, self.metrics_listen, self.metrics_tls, self.tls)

    @property
    def registry_dir(self) -> Path:
        return self.data_dir / "registry"

    @property
    def snapshot_dir(self) -> Path:
        return self.data_dir / "snapshots"

    @property
    def notice_spool_dir(self) -> Path:
        return self.notice_spool or self.data_dir / "notices"

    @property
    def ledger_dir(self) -> Path:
        return self.data_dir / "ledger"


def parse_retention(items: list[str] | dict[str, Any] | None) -> dict[str, float]:
    """`TYPE=DURATION` items (the command line) or a TOML table: seconds per record type."""
    if not items:
        return {}
    pairs: list[tuple[str, Any]] = []
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        for item in items:
            name, sep, value = str(item).partition("=")
            if not sep:
                raise ConfigError(f"--retention: expected TYPE=DURATION, got {item!r}")
            pairs.append((name.strip(), value))
    return {name: parse_duration(value, f"retention of {name}") for name, value in pairs}


def _days_or(seconds: float | None, default: timedelta) -> timedelta:
    return default if seconds is None else timedelta(seconds=seconds)


@dataclass(frozen=True)
class ResponderConfig:
    snapshot_dir: Path | None  # the signer's snapshot directory; None with a `store`
    state_dir: Path
    trust_anchors: tuple[Path, ...]
    listen: str = "127.0.0.1:50051"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    signer: str | None = None  # where to get delegated OCSP-signer certificates
    # mTLS to the signer (a pod of its own): its CA, and the operator client certificate
    # the responder presents (the signer issues OCSP-signer certificates to operators).
    signer_ca: Path | None = None
    signer_client_cert: Path | None = None
    signer_client_key: Path | None = None
    insecure_loopback: bool = False
    tls: TlsFiles | None = None
    loopback_verifier: str | None = None  # plaintext callers without x-jpki-verifier
    # The balancer's client certificates (PEM files): on a TLS connection presenting one,
    # the x-forwarded-client-cert header it sets names the verifier (access/proxy.py).
    trusted_proxy_certs: tuple[Path, ...] = ()
    poll_interval: float = 1.0  # a full scan of the store, whatever its pointer says
    # How often the store's pointer is read (responder/snapshot_notice.py): a new
    # snapshot is scanned for within this (or the poll interval, if shorter).
    notice_interval: float = 0.2
    # Seconds behind the newest snapshot in the store before the replica's health
    # (jpki-va.rotation, HTTP /health) says NOT_SERVING (responder/rotation.py).
    max_lag: float = 30.0
    grpc_threads: int = 16  # unary calls; streams run on threads of their own
    # Open streams (CheckStream, WatchRevocations, GetCrl, Health.Watch) per worker,
    # per caller (verifier, or on plaintext loopback the connection), and how long
    # one may move no message before it is ended (rpc/stream_budget.py).
    max_streams: int = 32
    max_streams_per_caller: int = 8
    stream_idle: float = 60.0  # seconds
    max_watches: int = 8  # open WatchRevocations per worker, within max_streams
    grace_seconds: float = 5.0
    retention_crl_file: float = 365 * 86400.0  # 保存期間 of CRL files (seconds); cabinet order
    # 保存期間 of this responder's provision counts and audit trail (seconds): each
    # worker purges its ledger shard of what is older, at start and each new JST day.
    retention_ledger: float = DEFAULT_PROJECT_RECORD.total_seconds()
    retention_audit: float = DEFAULT_PROJECT_RECORD.total_seconds()
    ocsp_renew_at: RenewPolicy = field(default_factory=RenewPolicy)  # default: half its life
    # HTTP OCSP and CRLs (RFC 6960 Appendix A, RFC 5019) beside gRPC; off when None.
    http_listen: str | None = None
    # HTTPS with the responder's certificate; a client certificate issued by its client
    # CA is required and names the verifier as on gRPC. Without it: loopback only.
    http_tls: bool = False
    metrics_port: int | None = None  # Prometheus /metrics on 127.0.0.1; off when None
    metrics_listen: str | None = None  # HOST:PORT instead; beyond loopback with metrics_tls
    metrics_tls: bool = False  # /metrics over TLS with the responder's certificate, client CA
    # One CRL nextUpdate series per partition (about 1,900 a kind) besides the one per
    # kind and issuer generation.
    metrics_per_partition: bool = False
    # Connections a worker keeps open; None: a share of its descriptor limit
    # (app/descriptors.py). Past the HTTP cap the longest idle connection is shed;
    # past the gRPC cap grpc closes new connections at once.
    http_max_connections: int | None = None
    grpc_max_connections: int | None = None
    # Limits on what one request may ask (bad input gets a clear error, not a crash).
    max_message_bytes: int = 4 * 1024 * 1024  # a gRPC message
    max_batch: int = 10_000  # CheckStream: requests per batch
    max_stream_batches: int = 100_000  # CheckStream: batches per stream
    max_ocsp_request_bytes: int = 16_384  # an OCSP request (HTTP body, gRPC Ocsp)
    max_ocsp_cert_ids: int = 64  # CertIDs in one OCSP request
    # MiB of signed responses kept per worker; 0 disables. A budget of memory, not a
    # count (responder/ocsp_cache.py says what an entry is charged and why 48). Smaller
    # is worse than it looks: the cache is LRU, so a hot set even a little larger than
    # it (gRPC and HTTP OCSP share it) misses on every request and re-signs each answer.
    ocsp_cache_mb: int = DEFAULT_BYTES // (1024 * 1024)
    ocsp_cache_margin: float = 60.0  # seconds before nextUpdate a cached response is renewed
    # Pre-produced OCSP responses (responder/preproduced.py): a low-priority producer
    # process signs one per certificate ahead, within this share of one CPU.
    ocsp_preproduce: bool = True
    ocsp_preproduce_share: float = 0.25
    # Seconds between its passes over the whole index (beside those after a full
    # index or a new key), renewing responses near their nextUpdate.
    ocsp_preproduce_sweep: float = 900.0
    ocsp_preproduce_batch: int = 256  # certificates per transaction of the producer
    # The snapshot store when not a local directory: s3://BUCKET[/PREFIX] (its endpoint,
    # credentials and CA from the standard AWS environment or config files).
    store: str | None = None

    def __post_init__(self) -> None:
        if (self.snapshot_dir is None) == (self.store is None):
            raise ConfigError("name the snapshots: a directory (--snapshots) or a --store")
        _check_store(self.store)
        _check_listen(
            self.listen, self.insecure_loopback, "responder listen", tls=self.tls is not None
        )
        if self.loopback_verifier is not None and not self.insecure_loopback:
            raise ConfigError("--loopback-verifier goes with --insecure-loopback only")
        if self.trusted_proxy_certs and self.tls is None:
            raise ConfigError("--trusted-proxy-cert goes with mTLS (--tls-cert, --client-ca)")
        self.trusted_proxy_ders()  # checked here, once
        if self.retention_crl_file <= 0:
            raise ConfigError("CRL file retention must be > 0")
        if self.retention_ledger <= 0 or self.retention_audit <= 0:
            raise ConfigError("ledger and audit trail retention must be > 0")
        self._check_http_metrics_and_limits()
        if self.workers < 1:
            raise ConfigError("workers must be >= 1")
        self._check_streams()
        if not self.trust_anchors:
            raise ConfigError("at least one trust anchor (--trust-anchor) is required")
        for anchor in self.trust_anchors:
            if not anchor.is_file():
                raise ConfigError(f"trust anchor {anchor} does not exist")
        if self.poll_interval <= 0:
            raise ConfigError("poll interval must be > 0")
        if self.notice_interval <= 0:
            raise ConfigError("notice interval must be > 0")
        if self.max_lag <= 0:
            raise ConfigError("max lag must be > 0 seconds")
        self._check_signer_link()

    def trusted_proxy_ders(self) -> list[bytes]:
        """The DER of every certificate in the --trusted-proxy-cert files."""
        ders: list[bytes] = []
        for path in self.trusted_proxy_certs:
            try:
                certificates = x509.load_pem_x509_certificates(path.read_bytes())
            except OSError as exc:
                raise ConfigError(f"--trusted-proxy-cert {path}: {exc.strerror}") from None
            except ValueError:
                raise ConfigError(f"--trusted-proxy-cert {path}: not PEM certificates") from None
            ders += [c.public_bytes(serialization.Encoding.DER) for c in certificates]
        return ders

    def _check_signer_link(self) -> None:
        files = (self.signer_ca, self.signer_client_cert, self.signer_client_key)
        if any(f is not None for f in files):
            if not all(f is not None for f in files):
                raise ConfigError(
                    "--signer-ca, --signer-client-cert and --signer-client-key go together"
                )
            for option, path in zip(
                ("--signer-ca", "--signer-client-cert", "--signer-client-key"), files, strict=True
            ):
                if path is not None and not path.is_file():
                    raise ConfigError(f"{option} {path} does not exist")
            if self.signer is None:
                raise ConfigError("--signer-ca and its certificate go with --signer HOST:PORT")
        elif self.signer is not None and not _is_loopback(self.signer):
            raise ConfigError(
                f"the signer connection to {self.signer} would be plaintext: loopback only, "
                "or give --signer-ca, --signer-client-cert and --signer-client-key (mTLS)"
            )

    def signer_credentials(self) -> tuple[bytes, bytes, bytes] | None:
        """(CA, client key, client certificate chain) for the signer link, or None."""
        if (
            self.signer_ca is None
            or self.signer_client_cert is None
            or self.signer_client_key is None
        ):
            return None
        try:
            return (
                self.signer_ca.read_bytes(),
                self.signer_client_key.read_bytes(),
                self.signer_client_cert.read_bytes(),
            )
        except OSError as exc:
            raise ConfigError(f"cannot read the signer link's TLS files: {exc}") from None

    def _check_streams(self) -> None:
        if self.max_streams < 1:
            raise ConfigError("max streams must be >= 1")
        if not 1 <= self.max_streams_per_caller <= self.max_streams:
            raise ConfigError(f"max streams per caller must be 1 to {self.max_streams}")
        if not 1 <= self.max_watches <= self.max_streams:
            # A watch is a stream: past max_streams it would be refused anyway.
            raise ConfigError(f"max watches must be 1 to {self.max_streams} (the max streams)")
        if self.stream_idle < 1:
            raise ConfigError("stream idle time must be at least 1 second")

    def _check_http_metrics_and_limits(self) -> None:
        if self.http_listen is not None:
            # Status is provided to verifiers only (DESIGN §7); plain HTTP cannot tell
            # who asks, so it is served on loopback, behind an authenticating proxy,
            # or over TLS, where the client certificate names the verifier.
            _check_beside(
                self.http_listen, "responder HTTP listen", "--http-tls", self.http_tls, self.tls
            )
        elif self.http_tls:
            raise ConfigError("--http-tls goes with --http-listen")
        self.metrics_listener  # noqa: B018 (checked here, once)
        for name in (
            "max_message_bytes",
            "max_batch",
            "max_stream_batches",
            "max_ocsp_cert_ids",
            "grpc_threads",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', ' ')} must be >= 1")
        for name in ("http_max_connections", "grpc_max_connections"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name.replace('_', ' ')} must be >= 1")
        if not 64 <= self.max_ocsp_request_bytes <= self.max_message_bytes:
            raise ConfigError("max OCSP request bytes must be in 64..max message bytes")
        if self.ocsp_cache_mb < 0 or self.ocsp_cache_margin < 0:
            raise ConfigError("OCSP cache MiB and margin must be >= 0")
        if not 0 < self.ocsp_preproduce_share <= 1 or self.ocsp_preproduce_sweep <= 0:
            raise ConfigError("OCSP pre-production share must be in (0, 1], its sweep > 0")
        if self.ocsp_preproduce_batch < 1:
            raise ConfigError("OCSP pre-production batch must be >= 1")

    @property
    def metrics_listener(self) -> MetricsListener | None:
        return _metrics_listener(self.metrics_port, self.metrics_listen, self.metrics_tls, self.tls)

    @property
    def index_dir(self) -> Path:
        return self.state_dir / "index"

    @property
    def ocsp_dir(self) -> Path:
        return self.state_dir / "ocsp"

    @property
    def ledger_dir(self) -> Path:
        return self.state_dir / "ledger"

    @property
    def staging_dir(self) -> Path:
        """Snapshots fetched from a remote store, verified and ingested from here."""
        return self.state_dir / "staging"

    @property
    def crl_archive_dir(self) -> Path:
        return self.state_dir / "crls"

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


# What a TOML value may be, by the annotation of its setting. Floats are durations or
# seconds, so a string ("24h") is fine; parse_duration judges its content.
_TOML_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "str": ((str,), 'a string in quotes, e.g. "127.0.0.1:50052"'),
    "Path": ((str,), 'a path in quotes, e.g. "/var/lib/jpki-va"'),
    "bool": ((bool,), "true or false"),
    "int": ((int,), "a whole number"),
    "float": ((int, float, str), 'a number of seconds or a duration in quotes, e.g. "24h"'),
    "RenewPolicy": ((int, float, str), 'a fraction (0.5) or a duration in quotes ("36h")'),
    "tuple[Path, ...]": ((list,), 'a list of paths, e.g. ["/etc/jpki-va/root.pem"]'),
}


def _check_toml_type(name: str, value: object, annotation: str) -> None:
    expected = _TOML_TYPES.get(annotation.removesuffix(" | None"))
    if expected is None:
        return
    types, description = expected
    wrong = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
    if isinstance(value, list):
        wrong = wrong or not all(isinstance(item, str) for item in value)
    if wrong:
        raise ConfigError(f"config file: {name} = {value!r} should be {description}")


def merge(file_values: dict[str, Any], cli_values: dict[str, Any], cls: type) -> dict[str, Any]:
    """CLI values that were given override the file; unknown file keys are errors."""
    known = {f.name for f in fields(cls)}
    unknown = set(file_values) - known - {"hsm", "tls"}
    if unknown:
        raise ConfigError(f"unknown settings in config file: {', '.join(sorted(unknown))}")
    annotations = {f.name: str(f.type) for f in fields(cls)}
    for name, value in file_values.items():
        if name in annotations:
            _check_toml_type(name, value, annotations[name])
    merged = dict(file_values)
    merged.update({k: v for k, v in cli_values.items() if v is not None})
    return merged
