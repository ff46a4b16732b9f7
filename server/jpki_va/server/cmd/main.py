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
from jpki_va.core.cli import (
    DURATION_SYNTAX,
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    exit_codes_epilog,
    fail,
    host_port,
)
from jpki_va.hsm._cli import add_commands as add_hsm_commands
from jpki_va.hsm._cli import token_options
from jpki_va.server.app.config import ConfigError
from jpki_va.server.cmd.authority import RegistryKeyUse, add_authority_commands
from jpki_va.server.cmd.backup import add_backup_commands
from jpki_va.server.cmd.balancer import add_balancer_commands
from jpki_va.server.cmd.bench import add_bench_command
from jpki_va.server.cmd.certificates import add_certificate_commands
from jpki_va.server.cmd.health import add_health_command
from jpki_va.server.cmd.lazy import lazy
from jpki_va.server.cmd.notices import add_notice_commands
from jpki_va.server.cmd.report import add_report_commands
from jpki_va.server.cmd.signer_client import SubParsers, add_registry_group
from jpki_va.server.cmd.verifiers import add_token_commands, add_verifier_commands


def _add_log_format(parser: argparse.ArgumentParser, default: str | None) -> None:
    """--log-format, before the command (every command) or after a role's name; the
    role's SUPPRESS default keeps one given before."""
    parser.add_argument(
        "--log-format", choices=("auto", "text", "json"), default=default,
        help="text (local time with its offset) or JSON lines (UTC); default auto: text on "
        "a terminal, JSON otherwise; the responder's workers log alike",
    )  # fmt: skip


def _add_publishing_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "snapshots and retention (保存期間)", f"DURATION: {DURATION_SYNTAX}"
    )
    group.add_argument(
        "--full-interval", metavar="DURATION", help="between full snapshots (default 24h)"
    )
    group.add_argument(
        "--delta-interval",
        metavar="DURATION",
        help="the least time between delta snapshots; a registry commit brings one at once "
        "when the last is older (default 1s; 0: on request)",
    )
    _add_retention_options(group, ("issuance-record", "loss-record", "crl-file", "project-record"))
    group.add_argument(
        "--retention",
        action="append",
        metavar="TYPE=DURATION",
        help="one record type's own period, e.g. loss.record-error.card-auth=3650d "
        "(types: issuance.KIND, loss.CAUSE.KIND, crl.KIND, ledger, audit, consent, notice; "
        "project records: the ledger, audit trail, withdrawn consents and sent notices)",
    )
    _add_store_option(group, "publish snapshots to this ")
    group.add_argument(
        "--backup-interval",
        metavar="DURATION",
        help="between backups of the registry to the --store (default 1h; 0: on demand only)",
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
        "--notice-delivery-interval",
        metavar="DURATION",
        help="between delivery rounds (default 10s)",
    )


def _add_retention_options(group: argparse._ArgumentGroup, records: tuple[str, ...]) -> None:
    """`--retention-RECORD DURATION`: the 保存期間 of each record type, one spelling for
    every role that keeps such records."""
    for record in records:
        group.add_argument(
            f"--retention-{record}",
            metavar="DURATION",
            help=f"keep {record.replace('-', ' ')}s this long",
        )


def _add_tls_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("mTLS (required unless --insecure-loopback)")
    group.add_argument("--tls-cert", help="server certificate chain (PEM)")
    group.add_argument("--tls-key", help="server private key (PEM)")
    group.add_argument("--client-ca", help="CA certificates that issue client certificates (PEM)")


def _add_metrics_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Prometheus /metrics (default off)")
    group.add_argument("--metrics-port", type=int, help="/metrics on 127.0.0.1:PORT")
    group.add_argument(
        "--metrics-listen", metavar="HOST:PORT",
        help="/metrics here instead; beyond loopback only with --metrics-tls",
    )  # fmt: skip
    group.add_argument(
        "--metrics-tls", action="store_true",
        help="/metrics over TLS with --tls-cert/--tls-key; scrapers need a --client-ca certificate",
    )  # fmt: skip


def _add_http_metrics_and_limits(responder: argparse.ArgumentParser) -> None:
    _add_store_option(responder, "or read snapshots from this ")
    responder.add_argument(
        "--http-listen", help="HOST:PORT for HTTP OCSP and CRLs (loopback unless --http-tls)"
    )
    responder.add_argument(
        "--http-tls", action="store_true",
        help="HTTPS with --tls-cert/--tls-key; the --client-ca client certificate names the "
        "verifier, as on gRPC",
    )  # fmt: skip
    _add_metrics_options(responder)
    responder.add_argument(
        "--metrics-per-partition", action="store_true",
        help="a CRL nextUpdate series per partition too (about 1,900 a kind)",
    )  # fmt: skip
    limits = responder.add_argument_group("limits")
    limits.add_argument("--max-message-bytes", type=int, help="largest gRPC message accepted")
    limits.add_argument("--max-batch", type=int, help="requests per CheckStream batch")
    limits.add_argument("--max-stream-batches", type=int, help="batches per CheckStream")
    limits.add_argument("--max-ocsp-request-bytes", type=int, help="largest OCSP request")
    limits.add_argument("--max-ocsp-cert-ids", type=int, help="CertIDs per OCSP request")
    limits.add_argument(
        "--ocsp-cache-mb", type=int, help="MiB of signed OCSP responses kept per worker (0: none)"
    )
    limits.add_argument(
        "--ocsp-preproduce", action=argparse.BooleanOptionalAction, default=None,
        help="sign OCSP responses ahead, one per certificate (default: on)",
    )  # fmt: skip
    limits.add_argument(
        "--ocsp-preproduce-share", type=float,
        help="share of one CPU the OCSP producer may use (default 0.25)",
    )  # fmt: skip
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


def _add_store_option(parser: argparse._ActionsContainer, what: str) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        help=what + "snapshot store in S3-compatible object storage, s3://BUCKET[/PREFIX] "
        "(endpoint, credentials and CA from the standard AWS environment or config files)",
    )


#: What a long-running role's exit code says.
ROLE_EXIT_CODES = (EXIT_OK, EXIT_USAGE)
_ROLE_EPILOG = exit_codes_epilog(
    *ROLE_EXIT_CODES,
    words={EXIT_OK: "stopped cleanly (SIGTERM, SIGINT)", EXIT_USAGE: "cannot start: bad options, "
           "configuration or state (one line on stderr says which)"},
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jpki-va",
        description="Validation authority for JPKI-style personal certificates.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    _add_log_format(parser, default=None)
    parser.epilog = exit_codes_epilog(*EXIT_CODES) + "; each command's --help says which it uses"
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_signer(sub)
    _add_responder(sub)
    add_client_commands(sub)
    add_authority_commands(add_hsm_commands(sub, RegistryKeyUse()))
    registry = add_registry_group(sub)
    add_verifier_commands(registry)
    add_notice_commands(registry)
    add_certificate_commands(registry)
    add_token_commands(sub)
    add_report_commands(sub)
    add_balancer_commands(sub)
    add_health_command(sub)
    add_backup_commands(sub)
    add_bench_command(sub)
    return parser


def _add_demo(sub: SubParsers) -> None:
    demo = sub.add_parser("demo", help="set up and run everything on loopback", epilog=_ROLE_EPILOG)
    demo.add_argument(
        "--data-dir", type=Path, default=Path("jpki-va-demo"),
        help="everything the demo makes lives here (default ./jpki-va-demo)",
    )  # fmt: skip
    demo.add_argument("--dir", dest="data_dir", type=Path, help=argparse.SUPPRESS)  # old spelling
    demo.add_argument("--port", type=int, default=50051, help="responder gRPC port")
    demo.add_argument(
        "--http-port",
        type=int,
        help="responder HTTP port (OCSP, CRLs); default 8080, a reused demo keeps its own",
    )
    demo.add_argument(
        "--metrics-port", type=int,
        help="Prometheus /metrics of the responder on this port, the signer's on the next",
    )  # fmt: skip
    demo.add_argument("--reset", action="store_true", help="recreate the directory")
    _add_log_format(demo, default=argparse.SUPPRESS)
    demo.set_defaults(func=lazy("jpki_va.server.cmd.roles:run_demo"))


def _add_signer(sub: SubParsers) -> None:
    signer = sub.add_parser(
        "signer",
        help="run the signer (registry + HSM signatures)",
        parents=[token_options()],
        epilog=_ROLE_EPILOG,
    )
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
        "--sign-queue-wait", metavar="DURATION",
        help="how long a request may wait for the HSM (default 5s)",
    )  # fmt: skip
    _add_metrics_options(signer)
    _add_log_format(signer, default=argparse.SUPPRESS)
    signer.set_defaults(func=lazy("jpki_va.server.cmd.roles:run_signer"))


def _add_responder(sub: SubParsers) -> None:
    responder = sub.add_parser(
        "responder", help="run the responder (gRPC status, OCSP)", epilog=_ROLE_EPILOG
    )
    responder.add_argument("--config", type=Path, help="TOML file with these settings")
    responder.add_argument("--snapshots", help="directory the signer publishes snapshots in")
    responder.add_argument("--state-dir", help="index and OCSP key live here")
    responder.add_argument(
        "--trust-anchor", action="append", help="root certificate (PEM/DER); repeatable"
    )
    responder.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:50051)")
    responder.add_argument("--workers", type=int, help="gRPC worker processes (default: CPUs)")
    responder.add_argument(
        "--signer", type=host_port, metavar="HOST:PORT",
        help="the signer, for OCSP-signer certificates",
    )  # fmt: skip
    link = responder.add_argument_group("mTLS to the signer (beyond loopback)")
    link.add_argument("--signer-ca", metavar="FILE", help="PEM roots of the signer's TLS")
    link.add_argument(
        "--signer-client-cert", metavar="FILE",
        help="PEM client certificate, one of the signer's --operator-cert",
    )  # fmt: skip
    link.add_argument("--signer-client-key", metavar="FILE", help="PEM key of that certificate")
    responder.add_argument(
        "--poll-interval", metavar="DURATION", help="between snapshot scans (default 1s)"
    )
    responder.add_argument(
        "--notice-interval", metavar="DURATION",
        help="between reads of the store's pointer, which brings a scan early (default 200ms)",
    )  # fmt: skip
    responder.add_argument(
        "--max-lag", metavar="DURATION",
        help="behind the newest snapshot this long, health leaves rotation (default 30s)",
    )  # fmt: skip
    responder.add_argument("--insecure-loopback", action="store_true", help="plaintext on loopback")
    responder.add_argument(
        "--ocsp-renew-at",
        help="renew the delegated OCSP signer at this fraction of its life (0.5, the "
        "default) or this long before it expires (36h, 2d)",
    )
    _add_stream_options(responder)
    _add_retention_options(
        responder.add_argument_group("retention (保存期間)", f"DURATION: {DURATION_SYNTAX}"),
        ("crl-file", "ledger", "audit"),
    )
    # The spelling of earlier releases, in days.
    responder.add_argument("--crl-retention-days", type=float, help=argparse.SUPPRESS)
    responder.add_argument(
        "--loopback-verifier", metavar="ID",
        help="with --insecure-loopback: the verifier of calls without x-jpki-verifier",
    )  # fmt: skip
    _add_tls_options(responder)
    responder.add_argument(
        "--trusted-proxy-cert", action="append", metavar="FILE",
        help="the balancer's client certificate (PEM); on its connections the "
        "x-forwarded-client-cert header it sets names the verifier; repeatable",
    )  # fmt: skip
    _add_http_metrics_and_limits(responder)
    _add_log_format(responder, default=argparse.SUPPRESS)
    responder.set_defaults(func=lazy("jpki_va.server.cmd.roles:run_responder"))


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Here, not at the top: the parser alone (--help) loads nothing of the server.
    from jpki_va.server.app.logs import configure  # noqa: PLC0415

    configure(args.command, args.log_format, logging.DEBUG if args.verbose else logging.INFO)
    try:
        code = args.func(args)
    except ConfigError as exc:
        fail(f"jpki-va {args.command}", str(exc))
        code = EXIT_USAGE
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    sys.exit(code)


if __name__ == "__main__":
    main()
