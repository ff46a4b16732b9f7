"""`jpki-va`: one command, with subcommands for every role.

argv -> a validated Config -> the role's composition root. Errors in input are one
line on stderr and exit code 2; nothing prints a traceback at a user.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hsm
from bench.cli import add_commands as add_bench_commands
from client._cli import add_commands
from hsm._cli import add_commands as add_hsm_commands
from server import demo
from server.certificate_cli import add_certificate_commands
from server.config import (
    PIN_ENV,
    ConfigError,
    ResponderConfig,
    SignerConfig,
    TlsFiles,
    hsm_config,
    load_toml,
    merge,
    parse_duration,
    tls_files,
)
from server.ledger import LedgerError
from server.ocsp_keys import RenewPolicy
from server.registry_cli import add_registry_group
from server.report_cli import add_report_commands
from server.responder_app import PortTaken, serve
from server.signer_app import start_signer
from server.verifier_cli import add_token_commands, add_verifier_commands

EXIT_USAGE = 2


def _add_hsm_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("HSM (PKCS#11)")
    group.add_argument("--hsm-module", help=f"PKCS#11 module (default {hsm.DEFAULT_MODULE})")
    group.add_argument("--hsm-token", help="token label")
    group.add_argument("--hsm-pin-env", help=f"environment variable with the PIN ({PIN_ENV})")
    group.add_argument("--hsm-pin-file", help="file whose first line is the PIN")
    group.add_argument("--softhsm2-conf", help="SOFTHSM2_CONF for the embedded SoftHSM2")


def _hsm_from(args: argparse.Namespace, file_values: dict[str, Any]) -> hsm.HsmConfig:
    table = file_values.get("hsm", {})
    token = args.hsm_token or table.get("token_label")
    if not token:
        raise ConfigError("--hsm-token is required")
    return hsm_config(
        module=args.hsm_module or table.get("module") or hsm.DEFAULT_MODULE,
        token_label=token,
        pin_env=args.hsm_pin_env or table.get("pin_env"),
        pin_file=args.hsm_pin_file or table.get("pin_file"),
        softhsm2_conf=args.softhsm2_conf or table.get("softhsm2_conf"),
    )


def _add_publishing_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "snapshots and retention (保存期間; durations: 5s, 24h, 3650d)"
    )
    group.add_argument(
        "--full-interval", metavar="DURATION", help="between full snapshots (default 24h)"
    )
    group.add_argument(
        "--delta-interval",
        metavar="DURATION",
        help="between delta snapshots while anything changed (default 5s; 0: on request)",
    )
    group.add_argument("--retention-issuance-record", metavar="DURATION")
    group.add_argument("--retention-loss-record", metavar="DURATION")
    group.add_argument("--retention-crl-file", metavar="DURATION")


def _add_tls_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("mTLS (required unless --insecure-loopback)")
    group.add_argument("--tls-cert", help="server certificate chain (PEM)")
    group.add_argument("--tls-key", help="server private key (PEM)")
    group.add_argument("--client-ca", help="CA certificates that issue client certificates (PEM)")


def _tls_from(args: argparse.Namespace, file_values: dict[str, Any]) -> TlsFiles | None:
    table = file_values.get("tls", {})
    return tls_files(
        args.tls_cert or table.get("cert"),
        args.tls_key or table.get("key"),
        args.client_ca or table.get("client_ca"),
    )


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
            "insecure_loopback": args.insecure_loopback or None,
            "bootstrap": args.bootstrap or None,
            "operator_certs": args.operator_cert,
            "sign_queue_limit": args.sign_queue_limit,
            "sign_queue_wait": args.sign_queue_wait,
            "metrics_port": args.metrics_port,
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
        "retention_issuance_record",
        "retention_loss_record",
        "retention_crl_file",
    ):
        if name in values:
            values[name] = parse_duration(values[name], name.replace("_", " "))
    values["operator_certs"] = tuple(Path(p) for p in values.get("operator_certs") or ())
    try:
        return SignerConfig(
            hsm=_hsm_from(args, file_values), tls=_tls_from(args, file_values), **values
        )
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def responder_config(args: argparse.Namespace) -> ResponderConfig:
    file_values = load_toml(args.config)
    values = merge(
        file_values,
        {
            "snapshot_dir": args.snapshots,
            "state_dir": args.state_dir,
            "trust_anchors": args.trust_anchor,
            "listen": args.listen,
            "workers": args.workers,
            "signer": args.signer,
            "insecure_loopback": args.insecure_loopback or None,
            "poll_interval": args.poll_interval,
            "crl_retention_days": args.crl_retention_days,
            "loopback_verifier": args.loopback_verifier,
            "http_listen": args.http_listen,
            "metrics_port": args.metrics_port,
            "max_message_bytes": args.max_message_bytes,
            "max_batch": args.max_batch,
            "max_stream_batches": args.max_stream_batches,
            "max_ocsp_request_bytes": args.max_ocsp_request_bytes,
            "max_ocsp_cert_ids": args.max_ocsp_cert_ids,
            "ocsp_cache_size": args.ocsp_cache_size,
            "ocsp_renew_at": args.ocsp_renew_at,
            "max_watches": args.max_watches,
        },
        ResponderConfig,
    )
    if "ocsp_renew_at" in values:
        try:
            values["ocsp_renew_at"] = RenewPolicy.parse(str(values["ocsp_renew_at"]))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    values.pop("tls", None)
    for required, flag in (("snapshot_dir", "--snapshots"), ("state_dir", "--state-dir")):
        if required not in values:
            raise ConfigError(f"{flag} is required")
    values["snapshot_dir"] = Path(values["snapshot_dir"])
    values["state_dir"] = Path(values["state_dir"])
    values["trust_anchors"] = tuple(Path(p) for p in values.get("trust_anchors") or ())
    try:
        return ResponderConfig(tls=_tls_from(args, file_values), **values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def run_signer(args: argparse.Namespace) -> int:
    app = start_signer(signer_config(args))
    print(f"signer listening on port {app.port}", flush=True)
    try:
        app.wait()
    except KeyboardInterrupt:
        pass
    finally:
        app.stop()
    return 0


def run_responder(args: argparse.Namespace) -> int:
    config = responder_config(args)
    serve(config, ready=lambda port: print(f"responder listening on port {port}", flush=True))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    return demo.run(
        args.dir, args.port, stop=threading.Event(), reset=args.reset, http_port=args.http_port
    )


def _add_http_metrics_and_limits(responder: argparse.ArgumentParser) -> None:
    responder.add_argument(
        "--http-listen", help="HOST:PORT for HTTP OCSP and CRLs (loopback; default off)"
    )
    responder.add_argument("--metrics-port", type=int, help="Prometheus /metrics on 127.0.0.1")
    limits = responder.add_argument_group("limits")
    limits.add_argument("--max-message-bytes", type=int, help="largest gRPC message accepted")
    limits.add_argument("--max-batch", type=int, help="requests per CheckStream batch")
    limits.add_argument("--max-stream-batches", type=int, help="batches per CheckStream")
    limits.add_argument("--max-ocsp-request-bytes", type=int, help="largest OCSP request")
    limits.add_argument("--max-ocsp-cert-ids", type=int, help="CertIDs per OCSP request")
    limits.add_argument(
        "--ocsp-cache-size", type=int, help="signed OCSP responses kept per worker (0: none)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jpki-va",
        description="Validation authority for JPKI-style personal certificates.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="set up and run everything on loopback")
    demo.add_argument("--dir", type=Path, default=Path("jpki-va-demo"))
    demo.add_argument("--port", type=int, default=50051, help="responder gRPC port")
    demo.add_argument(
        "--http-port", type=int, default=8080, help="responder HTTP port (OCSP, CRLs)"
    )
    demo.add_argument("--reset", action="store_true", help="recreate the directory")
    demo.set_defaults(func=run_demo)

    signer = sub.add_parser("signer", help="run the signer (registry + HSM signatures)")
    signer.add_argument("--config", type=Path, help="TOML file with these settings")
    signer.add_argument("--data-dir", help="registry and snapshots live here")
    signer.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:50052)")
    signer.add_argument("--base-url", help="public URL of the responder's HTTP endpoint")
    _add_publishing_options(signer)
    signer.add_argument("--bootstrap", action="store_true", help="create a missing CA hierarchy")
    signer.add_argument("--insecure-loopback", action="store_true", help="plaintext on loopback")
    _add_tls_options(signer)
    signer.add_argument(
        "--operator-cert", action="append", metavar="FILE",
        help="client certificate (PEM) allowed registry operations; repeatable (with mTLS)",
    )  # fmt: skip
    signer.add_argument(
        "--sign-queue-limit", type=int, help="requests that may wait for the HSM (default 8)"
    )
    signer.add_argument(
        "--sign-queue-wait", type=float, help="seconds a request may wait for the HSM (default 5)"
    )
    signer.add_argument("--metrics-port", type=int, help="Prometheus /metrics on 127.0.0.1")
    _add_hsm_options(signer)
    signer.set_defaults(func=run_signer)

    responder = sub.add_parser("responder", help="run the responder (gRPC status, OCSP)")
    responder.add_argument("--config", type=Path, help="TOML file with these settings")
    responder.add_argument("--snapshots", help="directory the signer publishes snapshots in")
    responder.add_argument("--state-dir", help="index and OCSP key live here")
    responder.add_argument(
        "--trust-anchor", action="append", help="root certificate (PEM/DER); repeatable"
    )
    responder.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:50051)")
    responder.add_argument("--workers", type=int, help="gRPC worker processes (default: CPUs)")
    responder.add_argument("--signer", help="signer HOST:PORT for OCSP-signer certificates")
    responder.add_argument("--poll-interval", type=float, help="seconds between snapshot scans")
    responder.add_argument("--insecure-loopback", action="store_true", help="plaintext on loopback")
    responder.add_argument(
        "--ocsp-renew-at",
        help="renew the delegated OCSP signer at this fraction of its life (0.5, the "
        "default) or this long before it expires (36h, 2d)",
    )
    responder.add_argument(
        "--max-watches", type=int,
        help="open revocation watches per worker, each holding a gRPC thread (default 8)",
    )  # fmt: skip
    responder.add_argument(
        "--crl-retention-days", type=float, help="keep CRL files this long (default 365)"
    )
    responder.add_argument(
        "--loopback-verifier", metavar="ID",
        help="with --insecure-loopback: the verifier of calls without x-jpki-verifier",
    )  # fmt: skip
    _add_tls_options(responder)
    _add_http_metrics_and_limits(responder)
    responder.set_defaults(func=run_responder)

    add_commands(sub)
    add_hsm_commands(sub)
    registry = add_registry_group(sub)
    add_verifier_commands(registry)
    add_certificate_commands(registry)
    add_token_commands(sub)
    add_report_commands(sub)
    add_bench_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        code = args.func(args)
    except (ConfigError, LedgerError, PortTaken, hsm.HsmError) as exc:
        print(f"jpki-va {args.command}: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        code = 130  # interrupted before the command could shut down by itself
    sys.exit(code)


if __name__ == "__main__":
    main()
