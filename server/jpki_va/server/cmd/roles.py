"""The long-running roles (signer, responder, demo): parsed options to a composition root.

Loaded only when one of these commands runs: they bring in lmdb, python-pkcs11 and
the gRPC server, which `jpki-va --help` and the client commands must not load.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jpki_va import hsm
from jpki_va.core.cli import EXIT_USAGE, fail
from jpki_va.server.app import demo
from jpki_va.server.app.config import (
    ConfigError,
    ResponderConfig,
    SignerConfig,
    TlsFiles,
    hsm_config,
    load_toml,
    merge,
    parse_duration,
    parse_retention,
    tls_files,
)
from jpki_va.server.app.dir_lock import DirectoryInUse
from jpki_va.server.app.responder_app import PortTaken, serve
from jpki_va.server.app.signer_app import serve as serve_signer
from jpki_va.server.ledger.provisions import LedgerError
from jpki_va.server.responder.renew_policy import RenewPolicy
from jpki_va.server.rpc.server_common import CannotListen


def _one_line(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A role that cannot start says why in one line and exits 2, never a traceback."""

    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (
            CannotListen,
            ConfigError,
            DirectoryInUse,
            LedgerError,
            PortTaken,
            hsm.HsmError,
        ) as exc:
            fail(f"jpki-va {args.command}", str(exc))
            return EXIT_USAGE

    return guarded


def _hsm_from(args: argparse.Namespace, file_values: dict[str, Any]) -> hsm.HsmConfig:
    table = file_values.get("hsm", {})
    token = args.hsm_token or table.get("token_label")
    if not token:
        raise ConfigError("--hsm-token is required (or token_label in the config's [hsm])")
    return hsm_config(
        module=args.hsm_module or table.get("module") or hsm.DEFAULT_MODULE,
        token_label=token,
        pin_env=args.hsm_pin_env or table.get("pin_env"),
        pin_file=args.hsm_pin_file or table.get("pin_file"),
        softhsm2_conf=args.softhsm2_conf or table.get("softhsm2_conf"),
    )


def _tls_from(args: argparse.Namespace, file_values: dict[str, Any]) -> TlsFiles | None:
    table = file_values.get("tls", {})
    return tls_files(
        args.tls_cert or table.get("cert"),
        args.tls_key or table.get("key"),
        args.client_ca or table.get("client_ca"),
    )


def _metrics_values(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "metrics_port": args.metrics_port,
        "metrics_listen": args.metrics_listen,
        "metrics_tls": args.metrics_tls or None,
    }


def signer_config(args: argparse.Namespace) -> SignerConfig:
    file_values = load_toml(args.config)
    values = merge(
        file_values,
        {
            "data_dir": args.data_dir,
            "listen": args.listen,
            "base_url": args.base_url,
            "full_interval": args.full_interval,
            "delta_interval": args.delta_interval,
            "retention_issuance_record": args.retention_issuance_record,
            "retention_loss_record": args.retention_loss_record,
            "retention_crl_file": args.retention_crl_file,
            "retention_project_record": args.retention_project_record,
            "retention": args.retention or None,
            "notice_webhook": args.notice_webhook,
            "notice_spool": args.notice_spool,
            "notice_delivery_interval": args.notice_delivery_interval,
            "insecure_loopback": args.insecure_loopback or None,
            "bootstrap": args.bootstrap or None,
            "operator_certs": args.operator_cert,
            "sign_queue_limit": args.sign_queue_limit,
            "sign_queue_wait": args.sign_queue_wait,
            **_metrics_values(args),
            "store": args.store,
            "backup_interval": args.backup_interval,
        },
        SignerConfig,
    )
    values.pop("hsm", None)
    values.pop("tls", None)
    if "data_dir" not in values:
        raise ConfigError("--data-dir is required")
    values["data_dir"] = Path(values["data_dir"])
    for name in (
        "full_interval",
        "delta_interval",
        "backup_interval",
        "sign_queue_wait",
        "retention_issuance_record",
        "retention_loss_record",
        "retention_crl_file",
        "retention_project_record",
        "notice_delivery_interval",
    ):
        if name in values:
            values[name] = parse_duration(values[name], name.replace("_", " "))
    values["retention"] = parse_retention(values.get("retention"))
    values["operator_certs"] = tuple(Path(p) for p in values.get("operator_certs") or ())
    if values.get("notice_spool") is not None:
        values["notice_spool"] = Path(values["notice_spool"])
    try:
        return SignerConfig(
            hsm=_hsm_from(args, file_values), tls=_tls_from(args, file_values), **values
        )
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def _crl_retention_in_days(days: object, values: dict[str, Any]) -> None:
    """--crl-retention-days (and crl_retention_days in a config), the spelling of earlier
    releases, still work: they become retention_crl_file."""
    if days is None:
        return
    if "retention_crl_file" in values:
        raise ConfigError("give --retention-crl-file or --crl-retention-days, not both")
    if isinstance(days, bool) or not isinstance(days, int | float):
        raise ConfigError(f"crl retention days: expected a number, got {days!r}")
    values["retention_crl_file"] = float(days) * 86400


def responder_config(args: argparse.Namespace) -> ResponderConfig:
    file_values = load_toml(args.config)
    old_days = file_values.pop("crl_retention_days", None)
    if args.crl_retention_days is not None:
        old_days = args.crl_retention_days
    values = merge(
        file_values,
        {
            "snapshot_dir": args.snapshots,
            "store": args.store,
            "state_dir": args.state_dir,
            "trust_anchors": args.trust_anchor,
            "listen": args.listen,
            "workers": args.workers,
            "signer": args.signer,
            "signer_ca": args.signer_ca,
            "signer_client_cert": args.signer_client_cert,
            "signer_client_key": args.signer_client_key,
            "insecure_loopback": args.insecure_loopback or None,
            "poll_interval": args.poll_interval,
            "notice_interval": args.notice_interval,
            "max_lag": args.max_lag,
            "retention_crl_file": args.retention_crl_file,
            "retention_ledger": args.retention_ledger,
            "retention_audit": args.retention_audit,
            "loopback_verifier": args.loopback_verifier,
            "trusted_proxy_certs": args.trusted_proxy_cert,
            "http_listen": args.http_listen,
            "http_tls": args.http_tls or None,
            "metrics_per_partition": args.metrics_per_partition or None,
            **_metrics_values(args),
            "max_message_bytes": args.max_message_bytes,
            "max_batch": args.max_batch,
            "max_stream_batches": args.max_stream_batches,
            "max_ocsp_request_bytes": args.max_ocsp_request_bytes,
            "max_ocsp_cert_ids": args.max_ocsp_cert_ids,
            "ocsp_cache_mb": args.ocsp_cache_mb,
            "ocsp_preproduce": args.ocsp_preproduce,
            "ocsp_preproduce_share": args.ocsp_preproduce_share,
            "ocsp_renew_at": args.ocsp_renew_at,
            "max_watches": args.max_watches,
            "max_streams": args.max_streams,
            "max_streams_per_caller": args.max_streams_per_caller,
            "stream_idle": args.stream_idle,
            "grpc_max_connections": args.grpc_max_connections,
            "http_max_connections": args.http_max_connections,
        },
        ResponderConfig,
    )
    _crl_retention_in_days(old_days, values)
    for name in (
        "stream_idle",
        "poll_interval",
        "notice_interval",
        "max_lag",
        "retention_crl_file",
        "retention_ledger",
        "retention_audit",
    ):
        if name in values:
            values[name] = parse_duration(values[name], name.replace("_", " "))
    if "ocsp_renew_at" in values:
        try:
            values["ocsp_renew_at"] = RenewPolicy.parse(str(values["ocsp_renew_at"]))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    values.pop("tls", None)
    if "state_dir" not in values:
        raise ConfigError("--state-dir is required")
    if ("snapshot_dir" in values) == ("store" in values):
        raise ConfigError("name the snapshots: --snapshots DIR or --store URL")
    snapshots = values.get("snapshot_dir")
    values["snapshot_dir"] = None if snapshots is None else Path(snapshots)
    if values["snapshot_dir"] is not None and not values["snapshot_dir"].is_dir():
        # The responder would wait for snapshots that can never come.
        raise ConfigError(
            f"--snapshots {values['snapshot_dir']} is not a directory (the signer's "
            "DATA/snapshots, or where snapshots are shipped to)"
        )
    values["state_dir"] = Path(values["state_dir"])
    for name in ("signer_ca", "signer_client_cert", "signer_client_key"):
        if name in values:
            values[name] = Path(values[name])
    values["trust_anchors"] = tuple(Path(p) for p in values.get("trust_anchors") or ())
    values["trusted_proxy_certs"] = tuple(Path(p) for p in values.get("trusted_proxy_certs") or ())
    try:
        return ResponderConfig(tls=_tls_from(args, file_values), **values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


@_one_line
def run_signer(args: argparse.Namespace) -> int:
    config = signer_config(args)
    serve_signer(config, ready=lambda port: print(f"signer listening on port {port}", flush=True))
    return 0


@_one_line
def run_responder(args: argparse.Namespace) -> int:
    config = responder_config(args)
    serve(config, ready=lambda port: print(f"responder listening on port {port}", flush=True))
    return 0


@_one_line
def run_demo(args: argparse.Namespace) -> int:
    return demo.run(
        args.data_dir,
        args.port,
        stop=threading.Event(),
        reset=args.reset,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
    )
