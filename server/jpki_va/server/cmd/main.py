"""`jpki-va`: one command, with subcommands for every role.

argv -> a validated Config -> the role's composition root. Errors in input are one
line on stderr and exit code 2; nothing prints a traceback at a user.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from jpki_va.client._cli import add_commands as add_client_commands
from jpki_va.hsm._cli import add_commands as add_hsm_commands
from jpki_va.hsm._config import DEFAULT_MODULE
from jpki_va.server.app.config import PIN_ENV, ConfigError
from jpki_va.server.cmd.authority import RegistryKeyUse, add_authority_commands
from jpki_va.server.cmd.bench import add_bench_command
from jpki_va.server.cmd.certificates import add_certificate_commands
from jpki_va.server.cmd.lazy import lazy
from jpki_va.server.cmd.notices import add_notice_commands
from jpki_va.server.cmd.report import add_report_commands
from jpki_va.server.cmd.signer_client import add_registry_group
from jpki_va.server.cmd.verifiers import add_token_commands, add_verifier_commands

EXIT_USAGE = 2


def _add_hsm_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("HSM (PKCS#11)")
    group.add_argument("--hsm-module", help=f"PKCS#11 module (default {DEFAULT_MODULE})")
    group.add_argument("--hsm-token", help="token label")
    group.add_argument("--hsm-pin-env", help=f"environment variable with the PIN ({PIN_ENV})")
    group.add_argument("--hsm-pin-file", help="file whose first line is the PIN")
    group.add_argument("--softhsm2-conf", help="SOFTHSM2_CONF for the embedded SoftHSM2")


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
    group.add_argument(
        "--retention-project-record",
        metavar="DURATION",
        help="the ledger, audit trail, withdrawn consents and sent notices",
    )
    group.add_argument(
        "--retention",
        action="append",
        metavar="TYPE=DURATION",
        help="one record type's own period, e.g. loss.record-error.card-auth=3650d "
        "(types: issuance.KIND, loss.CAUSE.KIND, crl.KIND, ledger, audit, consent, notice)",
    )
    _add_notice_options(parser)


def _add_notice_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("notices to holders (第15条第2項 and its twins)")
    group.add_argument(
        "--notice-webhook", metavar="URL", help="POST each notice as JSON here (else spool)"
    )
    group.add_argument(
        "--notice-spool", metavar="DIR", help="printable notices (default DATA_DIR/notices)"
    )
    group.add_argument(
        "--notice-interval", metavar="DURATION", help="between delivery rounds (default 10s)"
    )


def _add_tls_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("mTLS (required unless --insecure-loopback)")
    group.add_argument("--tls-cert", help="server certificate chain (PEM)")
    group.add_argument("--tls-key", help="server private key (PEM)")
    group.add_argument("--client-ca", help="CA certificates that issue client certificates (PEM)")


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
    limits.add_argument(
        "--grpc-max-connections", type=int,
        help="gRPC connections per worker (default: half of what its open files limit leaves)",
    )  # fmt: skip
    limits.add_argument(
        "--http-max-connections", type=int,
        help="HTTP connections per worker; past it the longest idle is closed (default: half "
        "of what its open files limit leaves)",
    )  # fmt: skip


def _add_stream_options(responder: argparse.ArgumentParser) -> None:
    streams = responder.add_argument_group(
        "streams (CheckStream, watches, CRL downloads, Health.Watch) per worker"
    )
    streams.add_argument(
        "--max-streams", type=int, help="open streams per worker, on threads of their own (32)"
    )
    streams.add_argument(
        "--max-streams-per-caller", type=int,
        help="open streams of one verifier (plaintext loopback: one connection) per worker (8)",
    )  # fmt: skip
    streams.add_argument(
        "--stream-idle", metavar="DURATION",
        help="end a stream that moves no message for this long (default 60s)",
    )  # fmt: skip
    streams.add_argument(
        "--max-watches", type=int,
        help="open revocation watches per worker, within --max-streams (default 8)",
    )  # fmt: skip


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
        "--http-port",
        type=int,
        help="responder HTTP port (OCSP, CRLs); default 8080, a reused demo keeps its own",
    )
    demo.add_argument("--reset", action="store_true", help="recreate the directory")
    demo.set_defaults(func=lazy("jpki_va.server.cmd.roles:run_demo"))

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
    signer.set_defaults(func=lazy("jpki_va.server.cmd.roles:run_signer"))

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
    _add_stream_options(responder)
    responder.add_argument(
        "--crl-retention-days", type=float, help="keep CRL files this long (default 365)"
    )
    responder.add_argument(
        "--loopback-verifier", metavar="ID",
        help="with --insecure-loopback: the verifier of calls without x-jpki-verifier",
    )  # fmt: skip
    _add_tls_options(responder)
    _add_http_metrics_and_limits(responder)
    responder.set_defaults(func=lazy("jpki_va.server.cmd.roles:run_responder"))

    add_client_commands(sub)
    add_authority_commands(add_hsm_commands(sub, RegistryKeyUse()))
    registry = add_registry_group(sub)
    add_verifier_commands(registry)
    add_notice_commands(registry)
    add_certificate_commands(registry)
    add_token_commands(sub)
    add_report_commands(sub)
    add_bench_command(sub)
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
    except ConfigError as exc:
        print(f"jpki-va {args.command}: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        code = 130  # interrupted before the command could shut down by itself
    sys.exit(code)


if __name__ == "__main__":
    main()
