"""`jpki-va report annual|publish|audit`: the 第41条 report and the audit listing.

`annual` prints the report; `publish` writes it as HTML and CSV, each with a detached
CMS signature the signer makes with an HSM key (公表: anyone with the root checks it).
Both refuse when the ledgers given cannot make the whole report: the signer's (which
alone counts verifier tokens) and at least one responder's are needed.
"""

from __future__ import annotations

import argparse
import contextlib
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from jpki_va.core.cli import EXIT_OK, EXIT_USAGE, exit_codes_epilog
from jpki_va.core.domain import Provision
from jpki_va.protos import signer_pb2, signer_pb2_grpc
from jpki_va.server.app.config import ConfigError
from jpki_va.server.cmd.signer_client import (
    SubParsers,
    add_signer_connection,
    rpc_errors,
    signer_channel,
)
from jpki_va.server.ledger.report import (
    FORMATS,
    Period,
    annual_totals,
    audit_entries,
    render_annual,
    render_audit,
)

if TYPE_CHECKING:
    from jpki_va.server.ledger.provisions import LedgerSet


def add_report_commands(sub: SubParsers) -> None:
    report = sub.add_parser(
        "report",
        help="the annual provision report and the audit trail",
        epilog=exit_codes_epilog(EXIT_OK, EXIT_USAGE),
    )
    commands = report.add_subparsers(dest="report_command", required=True, metavar="REPORT")

    annual = commands.add_parser("annual", help="provisions by kind and verifier (第41条)")
    _report_options(annual)
    _common(annual)
    annual.set_defaults(func=run_annual)

    publish = commands.add_parser(
        "publish", help="the 第41条 report as signed HTML and CSV, for publication (公表)"
    )
    _report_options(publish)
    publish.add_argument(
        "--ledger", action="append", required=True, metavar="DIR",
        help="a ledger directory, as for annual; repeatable",
    )  # fmt: skip
    publish.add_argument(
        "--out-dir", required=True, metavar="DIR",
        help="writes report-PERIOD.html and .csv, a .p7s signature of each, signer.pem",
    )  # fmt: skip
    add_signer_connection(publish)
    publish.set_defaults(func=rpc_errors(run_publish))

    audit = commands.add_parser("audit", help="disclosures by verifier and period (証跡照会)")
    audit.add_argument("--from", dest="start", required=True, metavar="YYYY-MM-DD")
    audit.add_argument("--to", dest="end", required=True, metavar="YYYY-MM-DD", help="inclusive")
    audit.add_argument("--verifier", help="only this verifier")
    _common(audit)
    audit.set_defaults(func=run_audit)


def _report_options(parser: argparse.ArgumentParser) -> None:
    period = parser.add_mutually_exclusive_group(required=True)
    period.add_argument("--year", type=int, help="calendar year, Japan time")
    period.add_argument(
        "--fiscal-year", type=int, metavar="YEAR", help="fiscal year: April YEAR to March YEAR+1"
    )
    parser.add_argument(
        "--without-verifier-names",
        action="store_true",
        help="totals and the number of verifiers only, for publication",
    )


def _period(args: argparse.Namespace) -> Period:
    try:
        if args.fiscal_year is not None:
            return Period.fiscal_year(args.fiscal_year)
        return Period.calendar_year(args.year)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ledger", action="append", required=True, metavar="DIR",
        help="a ledger directory (the responder's STATE/ledger, the signer's DATA/ledger); "
        "with every worker's shard in it; repeatable: every replica's and the signer's are summed",
    )  # fmt: skip
    parser.add_argument("--format", choices=FORMATS, default="md")
    parser.add_argument("--output", metavar="FILE", help="write here (default stdout)")


def _ledgers(args: argparse.Namespace, stack: contextlib.ExitStack) -> list[LedgerSet]:
    # lmdb loads here, when a report runs, not with every `jpki-va` command's parser.
    from jpki_va.server.ledger.provisions import LedgerError, read_ledgers  # noqa: PLC0415

    ledgers = []
    for path in args.ledger:
        try:
            ledger = read_ledgers(Path(path))
        except LedgerError as exc:
            raise ConfigError(str(exc)) from None
        stack.callback(ledger.close)
        ledgers.append(ledger)
    return ledgers


def _whole_report_ledgers(args: argparse.Namespace, stack: contextlib.ExitStack) -> list[LedgerSet]:
    """The ledgers, refused unless they hold the signer's and a responder's: without
    either the report would print zeros for what was provided."""
    from jpki_va.server.ledger.provisions import is_signer_ledger  # noqa: PLC0415

    ledgers = _ledgers(args, stack)
    if not any(is_signer_ledger(ledger.path) for ledger in ledgers):
        raise ConfigError(
            "no signer's ledger among --ledger: the verifier tokens (第38条の3) would be "
            "reported as 0; add the signer's DATA/ledger"
        )
    if all(is_signer_ledger(ledger.path) for ledger in ledgers):
        raise ConfigError(
            "no responder's ledger among --ledger: the status, CRL, mapping and record "
            "provisions would be reported as 0; add each responder's STATE/ledger"
        )
    return ledgers


def _totals(args: argparse.Namespace, period: Period) -> dict[Provision, dict[str, int]]:
    with contextlib.ExitStack() as stack:
        return annual_totals(_whole_report_ledgers(args, stack), period)


def _write(args: argparse.Namespace, text: str) -> None:
    if args.output is None:
        print(text, end="")
        return
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--output {args.output}: {exc.strerror}") from None


def _day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not YYYY-MM-DD") from None


def run_annual(args: argparse.Namespace) -> int:
    period = _period(args)
    totals = _totals(args, period)
    names = not args.without_verifier_names
    _write(args, render_annual(totals, period, args.format, names=names))
    return 0


def run_publish(args: argparse.Namespace) -> int:
    period = _period(args)
    totals = _totals(args, period)
    names = not args.without_verifier_names
    out = Path(args.out_dir)
    documents = {
        f"report-{period.label}.{fmt}": render_annual(totals, period, fmt, names=names).encode()
        for fmt in ("html", "csv")
    }
    signed: dict[str, tuple[bytes, bytes]] = {}
    with signer_channel(args) as channel:
        stub = signer_pb2_grpc.SignerServiceStub(channel)
        for name, content in documents.items():
            reply = stub.SignReport(
                signer_pb2.SignReportRequest(content=content), timeout=args.timeout
            )
            signed[name] = (reply.signature_der, reply.signer_certificate_der)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, content in documents.items():
            signature, certificate = signed[name]
            (out / name).write_bytes(content)
            (out / f"{name}.p7s").write_bytes(signature)
        (out / "signer.pem").write_bytes(
            x509.load_der_x509_certificate(certificate).public_bytes(serialization.Encoding.PEM)
        )
    except OSError as exc:
        raise ConfigError(f"--out-dir {args.out_dir}: {exc.strerror}") from None
    for name in documents:
        print(f"{out / name} signed: {out / name}.p7s")
    return 0


def run_audit(args: argparse.Namespace) -> int:
    start, end = _day(args.start, "--from"), _day(args.end, "--to")
    if end < start:
        raise ConfigError("--to is before --from")
    with contextlib.ExitStack() as stack:
        entries = audit_entries(
            _ledgers(args, stack), start, date.fromordinal(end.toordinal() + 1), args.verifier
        )
    _write(args, render_audit(entries, args.format))
    return 0
