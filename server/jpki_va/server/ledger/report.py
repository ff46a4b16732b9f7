"""The annual provision report (第41条) and the audit listing (証跡照会).

The law leaves the report's form to a ministry ordinance; we report, for each of
the nine provision kinds of 第41条, the total and the count per verifier, summed
over every ledger given (each responder replica, with a shard per worker, and the
signer keep their own).
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING

from jpki_va.core.clock import JST
from jpki_va.core.domain import Provision

if TYPE_CHECKING:
    from jpki_va.server.ledger.provisions import Disclosure, LedgerReader

FORMATS = ("md", "csv", "json")


def year_bounds(year: int) -> tuple[date, date]:
    if not 2000 <= year <= 9999:
        raise ValueError(f"year {year} is out of range")
    return date(year, 1, 1), date(year + 1, 1, 1)


TITLES = {
    Provision.SIGNING_STATUS: "署名用電子証明書失効情報 (signing status, 第18条1項)",
    Provision.SIGNING_CRL: "署名用電子証明書失効情報ファイル (signing CRL files, 第18条2項)",
    Provision.SIGNING_RECORD: "特定署名用電子証明書記録情報 (signing records, 第18条3項)",
    Provision.MAP_CARD_SIGN_MOBILE_SIGN: "対応署名用電子証明書の発行の番号 (第18条4項)",
    Provision.MAP_CARD_AUTH_CARD_SIGN: "対応証明書の発行の番号 (第18条5項)",
    Provision.AUTH_STATUS: "利用者証明用電子証明書失効情報 (auth status, 第37条1項)",
    Provision.AUTH_CRL: "利用者証明用電子証明書失効情報ファイル (auth CRL files, 第37条2項)",
    Provision.MAP_CARD_AUTH_MOBILE_AUTH: "対応利用者証明用電子証明書の発行の番号 (第37条3項)",
    Provision.VERIFIER_TOKEN: "特定利用者証明検証者証明符号 (verifier tokens, 第38条の3)",
}


def annual_totals(ledgers: Sequence[LedgerReader], year: int) -> dict[Provision, dict[str, int]]:
    """provision -> verifier -> count for the calendar year (Japan time)."""
    start, end = year_bounds(year)
    totals: dict[Provision, dict[str, int]] = {p: defaultdict(int) for p in Provision}
    for ledger in ledgers:
        for count in ledger.counts(start, end):
            totals[count.provision][count.verifier_id] += count.count
    return {p: dict(sorted(v.items())) for p, v in totals.items()}


def render_annual(totals: dict[Provision, dict[str, int]], year: int, fmt: str) -> str:
    if fmt == "json":
        body = {
            "year": year,
            "time_zone": "Asia/Tokyo",
            "provisions": [
                {
                    "provision": p.name,
                    "title": TITLES[p],
                    "total": sum(totals[p].values()),
                    "by_verifier": totals[p],
                }
                for p in Provision
            ],
        }
        return json.dumps(body, ensure_ascii=False, indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["year", "provision", "verifier", "count"])
        for p in Provision:
            writer.writerow([year, p.name, "*", sum(totals[p].values())])
            for verifier_id, n in totals[p].items():
                writer.writerow([year, p.name, verifier_id, n])
        return out.getvalue()
    if fmt == "md":
        lines = [
            f"# 提供の状況に関する報告書 {year} (provision report, 第41条)",
            "",
            f"Period: {year}-01-01 to {year}-12-31, Japan time.",
            "",
            "| provision | total |",
            "|---|---:|",
        ]
        lines += [f"| {TITLES[p]} | {sum(totals[p].values())} |" for p in Provision]
        for p in Provision:
            if totals[p]:
                lines += ["", f"## {TITLES[p]}", "", "| verifier | count |", "|---|---:|"]
                lines += [f"| {v} | {n} |" for v, n in totals[p].items()]
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")


def audit_entries(
    ledgers: Sequence[LedgerReader], start: date, end: date, verifier_id: str | None
) -> list[Disclosure]:
    """Disclosures in [start, end) (Japan-time days), across ledgers, in time order."""
    begin = datetime.combine(start, datetime.min.time(), JST)
    stop = datetime.combine(end, datetime.min.time(), JST)
    found = [d for ledger in ledgers for d in ledger.disclosures(begin, stop, verifier_id)]
    return sorted(found, key=lambda d: d.time)


def render_audit(entries: Sequence[Disclosure], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([d.to_json() for d in entries], ensure_ascii=False, indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["time", "verifier", "provision", "subject", "detail"])
        for d in entries:
            writer.writerow(
                [d.time.isoformat(), d.verifier_id, d.provision.name, d.subject, d.detail]
            )
        return out.getvalue()
    if fmt == "md":
        lines = ["| time | verifier | provision | subject | detail |", "|---|---|---|---|---|"]
        lines += [
            f"| {d.time.isoformat()} | {d.verifier_id} | {d.provision.name} | {d.subject} "
            f"| {d.detail} |"
            for d in entries
        ]
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
