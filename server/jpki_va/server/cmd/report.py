"""`jpki-va report annual|audit`: the 第41条 report and the audit listing, from ledgers."""

from __future__ import annotations

import argparse
import contextlib
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from jpki_va.core.cli import EXIT_OK, EXIT_USAGE, exit_codes_epilog
from jpki_va.server.app.config import ConfigError
from jpki_va.server.cmd.signer_client import SubParsers
from jpki_va.server.ledger.report import (
    FORMATS,
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
    annual.add_argument("--year", type=int, required=True, help="calendar year, Japan time")
    _common(annual)
    annual.set_defaults(func=run_annual)

    audit = commands.add_parser("audit", help="disclosures by verifier and period (証跡照会)")
    audit.add_argument("--from", dest="start", required=True, metavar="YYYY-MM-DD")
    audit.add_argument("--to", dest="end", required=True, metavar="YYYY-MM-DD", help="inclusive")
    audit.add_argument("--verifier", help="only this verifier")
    _common(audit)
    audit.set_defaults(func=run_audit)


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
    with contextlib.ExitStack() as stack:
        try:
            totals = annual_totals(_ledgers(args, stack), args.year)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    _write(args, render_annual(totals, args.year, args.format))
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
