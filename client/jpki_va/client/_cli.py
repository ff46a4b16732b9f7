"""The verifier commands `check`, `map`, `record`, `watch`, `crl` and `token verify`.

They run as `jpki-va-client` (:func:`main`, this distribution's own script) and are
registered on `jpki-va` too (:func:`add_commands`); they share the connection options.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import grpc
from cryptography import x509

from jpki_va.client._client import DEFAULT_TIMEOUT, VaClient
from jpki_va.client._errors import ClientError, DeadlineExceeded, Unavailable
from jpki_va.client._models import CertificateStatus, IssuerCompromise, RevocationEvent
from jpki_va.client._ocsp import parse_certificate
from jpki_va.client._probe import mismatch, not_the_service
from jpki_va.core.cli import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SERVER,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    duration_seconds,
    exit_codes_epilog,
    fail,
    host_port,
    slug_choice,
)
from jpki_va.core.domain import CertKind, serial_from_hex, serial_hex
from jpki_va.core.loopback import is_loopback_target
from jpki_va.core.verifier_token import InvalidVerifierToken, verify_token

EXIT_INVALID = EXIT_FAILED  # token verify: the token is not valid


class UsageError(Exception):
    """Bad options or unreadable input: exit code 2 with a one-line message."""


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check",
        help="ask a responder for the status of one certificate",
        description="Ask a jpki-va responder for the status of one certificate.",
        epilog=exit_codes_epilog(
            EXIT_OK,
            EXIT_USAGE,
            EXIT_SERVER,
            EXIT_UNREACHABLE,
            words={EXIT_OK: "an answer (whatever the status)"},
        ),
    )
    name = parser.add_mutually_exclusive_group(required=True)
    name.add_argument("--cert", metavar="FILE", help="the certificate (PEM or DER)")
    name.add_argument("--kind", **slug_choice(CertKind), help="certificate kind (with --serial)")
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
    _add_connection_options(parser)
    parser.set_defaults(func=run_check)

    mapper = subparsers.add_parser(
        "map",
        help="the holder's corresponding certificates (第18条4項・5項, 第37条3項)",
        description=(
            "Ask for the serials of the holder's certificates that correspond to one "
            "certificate and whose validity period has not passed, with their status. "
            "--to of the same kind asks for the certificates that renewed it."
        ),
        epilog=_EXIT_CODES,
    )
    _add_kind_serial(mapper, list(CertKind))
    mapper.add_argument(
        "--to",
        **slug_choice(CertKind),
        help="only this kind (default: every mapping the verifier may receive)",
    )
    mapper.add_argument("--json", action="store_true", help="print one JSON object")
    _add_connection_options(mapper)
    mapper.set_defaults(func=_command("map", _run_map))

    record = subparsers.add_parser(
        "record",
        help="a signing record, with the holder's consent (第18条3項)",
        description=(
            "Ask for the signing record (serial, name, address, birth date, sex) of a "
            "signing certificate in effect whose holder consented to this verifier."
        ),
        epilog=_EXIT_CODES,
    )
    _add_kind_serial(record, [k for k in CertKind if k.is_signing], default="card-sign")
    record.add_argument("--json", action="store_true", help="print one JSON object")
    _add_connection_options(record)
    record.set_defaults(func=_command("record", _run_record))

    watch = subparsers.add_parser(
        "watch",
        help="print loss-of-effect events as they are published",
        description=(
            "Print the loss-of-effect feed, one line per event, from --since on; it "
            "reconnects and resumes by itself. Ctrl-C (SIGINT) or SIGTERM ends it and says "
            "where to resume."
        ),
        epilog=_EXIT_CODES,
    )
    watch.add_argument(
        "--since", type=int, default=0, metavar="N",
        help="events after this sequence number (default 0: every retained event)",
    )  # fmt: skip
    watch.add_argument(
        "--kind", action="append", **slug_choice(CertKind),
        help="only this kind; repeatable (default: every kind the verifier may receive)",
    )  # fmt: skip
    watch.add_argument("--limit", type=int, metavar="N", help="stop after N events")
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    _add_connection_options(watch)
    watch.set_defaults(func=_command("watch", _run_watch))

    crl = subparsers.add_parser(
        "crl",
        help="fetch a CRL file, or list the retained ones (第18条2項, 第37条2項)",
        description=(
            "Fetch the current CRL of a kind and partition (or a retained one by number "
            "or by the time it was in force) into --out, or --list the retained CRLs, or "
            "fetch the root's ARL (--arl) into --out."
        ),
        epilog=_EXIT_CODES,
    )
    crl.add_argument("--kind", **slug_choice(CertKind), help="required but with --arl")
    crl.add_argument("--partition", default="", metavar="CODE", help="municipality code")
    crl.add_argument(
        "--issuer-key-id", default="", metavar="HEX",
        help="the issuing-CA generation (default: the newest with a CRL); with --arl, the root's",
    )  # fmt: skip
    which = crl.add_mutually_exclusive_group()
    which.add_argument(
        "--arl", action="store_true",
        help="the root's authority revocation list (the issuing CAs it revoked, 第14条)",
    )  # fmt: skip
    which.add_argument("--list", action="store_true", help="list retained CRLs instead")
    which.add_argument("--number", type=int, metavar="N", help="a retained CRL by number")
    which.add_argument("--as-of", metavar="ISO8601", help="the CRL in force at that time")
    crl.add_argument("--out", metavar="FILE", help="write the DER CRL here")
    crl.add_argument("--json", action="store_true", help="print JSON")
    _add_connection_options(crl)
    crl.set_defaults(func=_command("crl", _run_crl))


def add_token_verify(token_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `token verify` on the `token` command group (the signer's CLI adds `request`)."""
    verify = token_commands.add_parser(
        "verify",
        help="check a token offline against the root",
        epilog=exit_codes_epilog(
            EXIT_OK, EXIT_FAILED, EXIT_USAGE, words={EXIT_OK: "valid", EXIT_FAILED: "invalid"}
        ),
    )
    verify.add_argument(
        "--token", dest="token_file", required=True, metavar="FILE", help="the token ('-': stdin)"
    )
    verify.add_argument("--root", required=True, metavar="FILE", help="root certificate (PEM)")
    verify.set_defaults(func=run_token_verify)


def run_token_verify(args: argparse.Namespace) -> int:
    """Check a verifier token offline: its signature chains to the root, and its period."""
    try:
        path = args.token_file
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        root = x509.load_pem_x509_certificate(Path(args.root).read_bytes())
    except (OSError, ValueError) as exc:
        fail("jpki-va token verify", f"cannot read the token or the root: {exc}")
        return EXIT_USAGE
    try:
        checked = verify_token(text, root)
    except InvalidVerifierToken as exc:
        fail("jpki-va token verify", f"invalid: {exc}")
        return EXIT_INVALID
    print(
        json.dumps(
            {
                "verifier": checked.verifier_id,
                "roles": sorted(r.slug for r in checked.roles),
                "agreement": checked.agreement,
                "not_before": checked.not_before.isoformat(),
                "not_after": checked.not_after.isoformat(),
                "bound_certificate_sha256": None
                if checked.cert_fingerprint is None
                else checked.cert_fingerprint.hex(),
            },
            ensure_ascii=False,
        )
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """`jpki-va-client`: the verifier commands alone, for a verifier's own machines."""
    parser = argparse.ArgumentParser(
        prog="jpki-va-client",
        description="Ask a jpki-va responder about certificates: status, correspondence, "
        "signing records, CRLs, the revocation feed; check verifier tokens offline.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(sub)
    token = sub.add_parser("token", help="verifier tokens (特定利用者証明検証者証明符号)")
    add_token_verify(token.add_subparsers(dest="token_command", required=True, metavar="ACTION"))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    sys.exit(code)


_EXIT_CODES = exit_codes_epilog(
    EXIT_OK, EXIT_USAGE, EXIT_SERVER, EXIT_UNREACHABLE, words={EXIT_OK: "an answer"}
)


def _add_kind_serial(
    parser: argparse.ArgumentParser, kinds: list[CertKind], default: str | None = None
) -> None:
    parser.add_argument(
        "--kind",
        **slug_choice(CertKind, kinds),
        required=default is None,
        default=default,
        help="certificate kind" + ("" if default is None else f" (default {default})"),
    )
    parser.add_argument("--serial", required=True, metavar="HEX", help="serial number in hex")


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", required=True, type=host_port, metavar="HOST:PORT", help="responder address"
    )
    parser.add_argument(
        "--timeout",
        type=duration_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="DURATION",
        help=f"deadline of each call (default {DEFAULT_TIMEOUT:g}s)",
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


def _command(
    name: str, run: Callable[[argparse.Namespace], int]
) -> Callable[[argparse.Namespace], int]:
    """`run` with the exit codes and one-line errors every client command shares."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            if args.timeout <= 0:
                raise UsageError("--timeout must be positive")
            return run(args)
        except UsageError as error:
            _fail(name, str(error))
            return EXIT_USAGE
        except (Unavailable, DeadlineExceeded) as error:
            said = None
            if isinstance(error, Unavailable):
                said = mismatch(args.server, used_tls=not args.insecure_loopback, role="responder")
            _fail(name, said or f"no answer from {args.server}: {error.code.name}: {error.details}")
            return EXIT_UNREACHABLE
        except ClientError as error:
            if error.code == grpc.StatusCode.UNIMPLEMENTED:
                _fail(name, not_the_service(args.server, "jpki-va status service", "responder",
                                            "signer"))  # fmt: skip
            else:
                _fail(name, f"server error {error.code.name}: {error.details}")
            return EXIT_SERVER

    return wrapped


def run_check(args: argparse.Namespace) -> int:
    """Run `jpki-va check`; returns the process exit code."""
    return _command("check", _run)(args)


def _run(args: argparse.Namespace) -> int:
    certificate, kind, serial = _target_certificate(args)
    issuer = None
    if args.issuer is not None:
        if certificate is None:
            raise UsageError("--issuer goes with --cert")
        issuer = _read_certificate(args.issuer, "--issuer")
    as_of = _parse_as_of(args.as_of) if args.as_of is not None else None

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


def _kind_and_serial(args: argparse.Namespace) -> tuple[CertKind, int]:
    try:
        return CertKind.from_slug(args.kind), serial_from_hex(args.serial)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _run_map(args: argparse.Namespace) -> int:
    kind, serial = _kind_and_serial(args)
    to = None if args.to is None else CertKind.from_slug(args.to)
    with _connect(args) as client:
        found = client.map(kind=kind, serial=serial, to=to)
    if args.json:
        body = {"kind": kind.name, "serial": serial_hex(serial), "certificates": found}
        print(json.dumps(body, default=lambda m: m.to_json(), ensure_ascii=False))
    elif not found:
        print("no corresponding certificate whose validity period has not passed")
    else:
        print(f"{'mapping':<24}{'kind':<13}{'serial':<18}{'status':<9}{'not after':<27}loss cause")
        for m in found:
            status, revocation = m.status, m.status.revocation
            print(
                f"{m.type.name:<24}{status.kind.name if status.kind else '-':<13}"
                f"{serial_hex(status.serial):<18}{status.status.name:<9}"
                f"{_when(status.not_after):<27}{revocation.cause.name if revocation else '-'}"
            )
    return EXIT_OK


def _run_record(args: argparse.Namespace) -> int:
    kind, serial = _kind_and_serial(args)
    with _connect(args) as client:
        record = client.signing_record(kind=kind, serial=serial)
    if args.json:
        print(json.dumps(record.to_json(), ensure_ascii=False))
        return EXIT_OK
    rows = [
        ("kind", record.kind.name),
        ("serial", serial_hex(record.serial)),
        ("name", record.name),
        ("address", record.address),
        ("birth date", record.birth_date),
        ("sex", record.sex),
        ("index sequence", str(record.index_sequence)),
    ]
    print("\n".join(f"{label + ':':<16}{value}" for label, value in rows))
    return EXIT_OK


def _run_crl(args: argparse.Namespace) -> int:
    try:
        key_id = bytes.fromhex(args.issuer_key_id)
    except ValueError:
        raise UsageError(f"--issuer-key-id {args.issuer_key_id!r} is not hexadecimal") from None
    if args.arl:
        return _run_arl(args, key_id)
    if args.kind is None:
        raise UsageError("--kind is required (but with --arl)")
    kind = CertKind.from_slug(args.kind)
    if args.list:
        with _connect(args) as client:
            found = client.crls(kind=kind, partition=args.partition, issuer_key_id=key_id)
        if args.json:
            print(json.dumps([c.to_json() for c in found]))
        for c in [] if args.json else found:
            mark = " (current)" if c.current else ""
            print(
                f"{c.kind.name} {c.partition} {c.issuer_key_id.hex()[:16]} #{c.number} "
                f"{_when(c.this_update)} .. {_when(c.next_update)} {c.size} bytes{mark}"
            )
        return EXIT_OK
    if not args.partition:
        raise UsageError("--partition is required to fetch a CRL")
    if args.out is None:
        raise UsageError("--out FILE is required to fetch a CRL")
    as_of = None if args.as_of is None else _parse_as_of(args.as_of)
    with _connect(args) as client:
        meta, der = client.crl(
            kind=kind, partition=args.partition, issuer_key_id=key_id, number=args.number,
            as_of=as_of,
        )  # fmt: skip
    _write_out(args.out, der)
    if args.json:
        print(json.dumps(meta.to_json()))
    else:
        print(f"wrote CRL #{meta.number} ({meta.size} bytes) of {kind.name} {meta.partition} "
              f"to {args.out}")  # fmt: skip
    return EXIT_OK


def _run_arl(args: argparse.Namespace, root_key_id: bytes) -> int:
    if args.kind is not None or args.partition:
        raise UsageError("--arl takes no --kind or --partition: the ARL is the root's")
    if args.out is None:
        raise UsageError("--out FILE is required to fetch the ARL")
    with _connect(args) as client:
        arl = client.authority_revocation_list(root_key_id=root_key_id)
    _write_out(args.out, arl.der)
    if args.json:
        print(json.dumps(arl.to_json()))
    else:
        print(f"wrote ARL #{arl.number} ({len(arl.der)} bytes) to {args.out}")
    return EXIT_OK


def _write_out(path: str, der: bytes) -> None:
    try:
        Path(path).write_bytes(der)
    except OSError as error:
        raise UsageError(f"cannot write {path}: {error.strerror}") from None


def _run_watch(args: argparse.Namespace) -> int:
    if args.since < 0:
        raise UsageError("--since must not be negative")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be positive")
    kinds = [CertKind.from_slug(k) for k in args.kind or ()]
    since, printed = args.since, 0
    with _connect(args) as client, _ended_by_signals():
        # Reconnects for about a minute before it gives up (exit code 4).
        updates = client.watch(since=since, kinds=kinds, resume=True, max_reconnects=10)
        try:
            for update in updates:
                for compromise in update.compromises:
                    print(_compromise_line(compromise, args.json), flush=True)
                for event in update.events:
                    print(_event_line(event, args.json), flush=True)
                    printed += 1
                    since = event.sequence
                    if printed == args.limit:
                        return EXIT_OK
                since = update.through
        except KeyboardInterrupt:
            pass
        finally:
            updates.close()
            print(f"resume with --since {since}", file=sys.stderr, flush=True)
    return EXIT_OK


@contextmanager
def _ended_by_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt meanwhile, whatever the process
    inherited: a shell starts a background job with SIGINT ignored, and `timeout` or a
    supervisor stops with SIGTERM; either way `watch` should still end by saying where
    to resume. Only the main thread may install handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    saved = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def _event_line(event: RevocationEvent, as_json: bool) -> str:
    if as_json:
        return json.dumps(event.to_json(), ensure_ascii=False)
    return (
        f"#{event.sequence} {event.kind.name} {serial_hex(event.serial)} lost effect at "
        f"{event.time.isoformat()}: {event.cause.name} ({event.reason.name}), "
        f"partition {event.partition}"
    )


def _compromise_line(compromise: IssuerCompromise, as_json: bool) -> str:
    if as_json:
        return json.dumps(compromise.to_json(), ensure_ascii=False)
    return (
        f"ISSUER KEY COMPROMISE {compromise.kind.name} generation "
        f"{compromise.issuer_key_id.hex().upper()} at {compromise.time.isoformat()}: "
        "everything it signed lost effect"
    )


def _fail(command: str, message: str) -> None:
    fail(f"jpki-va {command}", message)
