"""The `jpki-va check` subcommand (registered by server/cli.py through add_commands)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

import grpc
from cryptography import x509

from client._client import DEFAULT_TIMEOUT, VaClient, is_loopback_target
from client._errors import ClientError, DeadlineExceeded, Unavailable
from client._models import CertificateStatus
from client._ocsp import parse_certificate
from server.domain import CertKind, serial_from_hex, serial_hex

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_SERVER = 3
EXIT_UNREACHABLE = 4

_PROG = "jpki-va check"


class UsageError(Exception):
    """Bad options or unreadable input: exit code 2 with a one-line message."""


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check",
        help="ask a responder for the status of one certificate",
        description="Ask a jpki-va responder for the status of one certificate.",
        epilog=(
            "exit codes: 0 an answer (whatever the status), 2 usage or input error, "
            "3 the server answered with an error, 4 no answer from the server"
        ),
    )
    parser.add_argument("--server", required=True, metavar="HOST:PORT", help="responder address")
    name = parser.add_mutually_exclusive_group(required=True)
    name.add_argument("--cert", metavar="FILE", help="the certificate (PEM or DER)")
    name.add_argument(
        "--kind", choices=[k.slug for k in CertKind], help="certificate kind (with --serial)"
    )
    parser.add_argument("--serial", metavar="HEX", help="serial number in hex (with --kind)")
    parser.add_argument(
        "--issuer",
        metavar="FILE",
        help="issuer certificate for --ocsp-out with --cert (default: from the responder)",
    )
    parser.add_argument(
        "--as-of", metavar="ISO8601", help="status as of this time, with UTC offset or Z"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--ocsp-out", metavar="FILE", help="also fetch the DER OCSP response into FILE"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"deadline of each call (default {DEFAULT_TIMEOUT:g})",
    )
    tls = parser.add_argument_group("transport")
    tls.add_argument("--ca", metavar="FILE", help="PEM roots that the server must chain to")
    tls.add_argument("--client-cert", metavar="FILE", help="PEM client certificate chain (mTLS)")
    tls.add_argument("--client-key", metavar="FILE", help="PEM client private key (mTLS)")
    tls.add_argument(
        "--insecure-loopback",
        action="store_true",
        help="plaintext, only to 127.0.0.1, ::1 or localhost (demos and tests)",
    )
    tls.add_argument(
        "--verifier",
        metavar="ID",
        help="with --insecure-loopback: act as this registered verifier",
    )
    parser.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Run `jpki-va check`; returns the process exit code."""
    try:
        return _run(args)
    except UsageError as error:
        _fail(str(error))
        return EXIT_USAGE
    except (Unavailable, DeadlineExceeded) as error:
        _fail(f"no answer from {args.server}: {error.code.name}: {error.details}")
        return EXIT_UNREACHABLE
    except ClientError as error:
        _fail(f"server error {error.code.name}: {error.details}")
        return EXIT_SERVER


def _run(args: argparse.Namespace) -> int:
    certificate, kind, serial = _target_certificate(args)
    issuer = None
    if args.issuer is not None:
        if certificate is None:
            raise UsageError("--issuer goes with --cert")
        issuer = _read_certificate(args.issuer, "--issuer")
    as_of = _parse_as_of(args.as_of) if args.as_of is not None else None
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")

    with _connect(args) as client:
        if certificate is not None:
            answer = client.check(certificate=certificate, as_of=as_of)
        else:
            assert kind is not None and serial is not None
            answer = client.check(kind=kind, serial=serial, as_of=as_of)
        if args.json:
            print(json.dumps(answer.to_json(), ensure_ascii=False))
        else:
            print(_text(answer))
        if args.ocsp_out is not None:
            try:
                if certificate is not None:
                    result = client.ocsp_for(certificate=certificate, issuer=issuer)
                else:
                    # ocsp_for repeats the Check to learn the issuer: one cheap extra call
                    # keeps that lookup in one place.
                    result = client.ocsp_for(kind=kind, serial=serial)
            except (LookupError, TypeError) as error:
                # No listed issuer for the AKI/key id, or an issuer key type RFC 6960
                # hashing here does not cover.
                raise UsageError(f"cannot build an OCSP request: {error}") from None
            try:
                Path(args.ocsp_out).write_bytes(result.der)
            except OSError as error:
                raise UsageError(f"cannot write {args.ocsp_out}: {error.strerror}") from None
            print(
                f"wrote OCSP response ({len(result.der)} bytes, "
                f"{result.response.response_status.name}) to {args.ocsp_out}",
                file=sys.stderr,
            )
    return EXIT_OK


def _target_certificate(
    args: argparse.Namespace,
) -> tuple[x509.Certificate | None, CertKind | None, int | None]:
    if args.cert is not None:
        if args.serial is not None:
            raise UsageError("--serial goes with --kind, not --cert")
        return _read_certificate(args.cert, "--cert"), None, None
    if args.kind is None or args.serial is None:
        raise UsageError("name the certificate by --cert FILE or by --kind KIND --serial HEX")
    try:
        return None, CertKind.from_slug(args.kind), serial_from_hex(args.serial)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _read_certificate(path: str, option: str) -> x509.Certificate:
    data = _read(path, option)
    try:
        return parse_certificate(data)
    except ValueError:
        raise UsageError(f"{option} {path}: not a PEM or DER certificate") from None


def _read(path: str, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise UsageError(f"{option} {path}: {error.strerror}") from None


def _parse_as_of(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--as-of {text!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise UsageError(f"--as-of {text!r} needs a UTC offset (…Z or …+09:00)")
    return when


def _connect(args: argparse.Namespace) -> VaClient:
    tls_files = (args.ca, args.client_cert, args.client_key)
    if args.insecure_loopback:
        if any(f is not None for f in tls_files):
            raise UsageError(
                "--insecure-loopback cannot be combined with --ca/--client-cert/--client-key"
            )
        if not is_loopback_target(args.server):
            raise UsageError(
                f"--insecure-loopback only connects to 127.0.0.1, ::1 or localhost, "
                f"not {args.server}"
            )
        return VaClient(args.server, timeout=args.timeout, insecure=True, verifier=args.verifier)
    if args.verifier is not None:
        raise UsageError("--verifier goes with --insecure-loopback; TLS uses --client-cert")
    if (args.client_cert is None) != (args.client_key is None):
        raise UsageError("--client-cert and --client-key go together")
    root = _read(args.ca, "--ca") if args.ca is not None else None
    chain = _read(args.client_cert, "--client-cert") if args.client_cert is not None else None
    key = _read(args.client_key, "--client-key") if args.client_key is not None else None
    credentials = grpc.ssl_channel_credentials(root, key, chain)
    return VaClient(args.server, timeout=args.timeout, credentials=credentials)


def _text(answer: CertificateStatus) -> str:
    revocation = answer.revocation
    rows = [
        ("status", answer.status.name),
        ("kind", "-" if answer.kind is None else answer.kind.name),
        ("serial", serial_hex(answer.serial)),
        ("loss cause", revocation.cause.name if revocation else "-"),
        ("RFC 5280 reason", revocation.reason.name if revocation else "-"),
        ("revoked at", _when(revocation.time if revocation else None)),
        ("not before", _when(answer.not_before)),
        ("not after", _when(answer.not_after)),
        ("partition", answer.partition or "-"),
        ("issuer key id", answer.issuer_key_id.hex().upper() or "-"),
        ("as of", _when(answer.as_of)),
        ("index sequence", str(answer.index_sequence)),
    ]
    return "\n".join(f"{label + ':':<17}{value}" for label, value in rows)


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat()


def _fail(message: str) -> None:
    print(f"{_PROG}: error: {message}", file=sys.stderr)
