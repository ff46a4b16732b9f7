"""The annual provision report (第41条) and the audit listing (証跡照会).

The law leaves the report's form to a ministry ordinance; we report, for each of
the nine provision kinds of 第41条, the total and the count per verifier, summed
over every ledger given (each responder replica, with a shard per worker, and the
signer keep their own), for a calendar year or a fiscal year (April to March), both
in Japan time. Renewal mappings are no provision of the law: they are counted apart,
below the nine. Verifier names can be left out of a report that is published.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING

from jpki_va.core.clock import JST
from jpki_va.core.domain import Provision

if TYPE_CHECKING:
    from jpki_va.server.ledger.provisions import Disclosure, LedgerReader

FORMATS = ("md", "csv", "json", "html")


@dataclass(frozen=True)
class Period:
    """The days a report covers, [start, end) in Japan time, and how it is named."""

    label: str  # "2026" or "FY2026"
    start: date
    end: date  # exclusive

    @classmethod
    def calendar_year(cls, year: int) -> Period:
        _check_year(year)
        return cls(str(year), date(year, 1, 1), date(year + 1, 1, 1))

    @classmethod
    def fiscal_year(cls, year: int) -> Period:
        """The fiscal year `year` (年度): April `year` to March `year + 1`."""
        _check_year(year)
        return cls(f"FY{year}", date(year, 4, 1), date(year + 1, 4, 1))

    @property
    def last_day(self) -> date:
        return date.fromordinal(self.end.toordinal() - 1)


def _check_year(year: int) -> None:
    if not 2000 <= year <= 9998:
        raise ValueError(f"year {year} is out of range")


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
    Provision.RENEWAL_MAPPING: (
        "更新後の証明書の発行の番号 (renewal mappings: no provision of the law)"
    ),
}
_IN_LAW = [p for p in Provision if p.in_law]
_APART = [p for p in Provision if not p.in_law]


def annual_totals(
    ledgers: Sequence[LedgerReader], period: Period
) -> dict[Provision, dict[str, int]]:
    """provision -> verifier -> count over the period."""
    totals: dict[Provision, dict[str, int]] = {p: defaultdict(int) for p in Provision}
    for ledger in ledgers:
        for count in ledger.counts(period.start, period.end):
            totals[count.provision][count.verifier_id] += count.count
    return {p: dict(sorted(v.items())) for p, v in totals.items()}


def render_annual(
    totals: dict[Provision, dict[str, int]], period: Period, fmt: str, *, names: bool = True
) -> str:
    """The report in `fmt`; `names=False` gives totals and the number of verifiers only."""
    by_verifier = {p: (totals[p] if names else {}) for p in Provision}
    verifiers = {p: len(totals[p]) for p in Provision}
    span = f"{period.start.isoformat()} to {period.last_day.isoformat()}, Japan time"
    if fmt == "json":
        body = {
            "period": period.label,
            "from": period.start.isoformat(),
            "to": period.last_day.isoformat(),
            "time_zone": "Asia/Tokyo",
            "provisions": [_json_row(p, totals, by_verifier, verifiers, names) for p in _IN_LAW],
            "not_provisions": [_json_row(p, totals, by_verifier, verifiers, names) for p in _APART],
        }
        return json.dumps(body, ensure_ascii=False, indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["period", "provision", "in_law", "verifier", "count", "verifiers"])
        for p in Provision:
            in_law = "yes" if p.in_law else "no"
            writer.writerow(
                [period.label, p.name, in_law, "*", sum(totals[p].values()), verifiers[p]]
            )
            for verifier_id, n in by_verifier[p].items():
                writer.writerow([period.label, p.name, in_law, verifier_id, n, ""])
        return out.getvalue()
    if fmt == "md":
        lines = [
            f"# 提供の状況に関する報告書 {period.label} (provision report, 第41条)",
            "",
            f"Period: {span}.",
            "",
            "| provision | total | verifiers |",
            "|---|---:|---:|",
        ]
        lines += [f"| {TITLES[p]} | {sum(totals[p].values())} | {verifiers[p]} |" for p in _IN_LAW]
        lines += ["", "Counted apart (no provision of the law):", "", "| | total | verifiers |",
                  "|---|---:|---:|"]  # fmt: skip
        lines += [f"| {TITLES[p]} | {sum(totals[p].values())} | {verifiers[p]} |" for p in _APART]
        for p in Provision:
            if by_verifier[p]:
                lines += ["", f"## {TITLES[p]}", "", "| verifier | count |", "|---|---:|"]
                lines += [f"| {v} | {n} |" for v, n in by_verifier[p].items()]
        return "\n".join(lines) + "\n"
    if fmt == "html":
        return _html(totals, by_verifier, verifiers, period, span)
    raise ValueError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")


def _json_row(
    p: Provision,
    totals: dict[Provision, dict[str, int]],
    by_verifier: dict[Provision, dict[str, int]],
    verifiers: dict[Provision, int],
    names: bool,
) -> dict[str, object]:
    row: dict[str, object] = {
        "provision": p.name,
        "title": TITLES[p],
        "total": sum(totals[p].values()),
        "verifiers": verifiers[p],
    }
    if names:
        row["by_verifier"] = by_verifier[p]
    return row


def _html(
    totals: dict[Provision, dict[str, int]],
    by_verifier: dict[Provision, dict[str, int]],
    verifiers: dict[Provision, int],
    period: Period,
    span: str,
) -> str:
    e = html.escape
    title = f"提供の状況に関する報告書 {period.label}"

    def rows(provisions: list[Provision]) -> str:
        return "".join(
            f"<tr><td>{e(TITLES[p])}</td><td>{sum(totals[p].values())}</td>"
            f"<td>{verifiers[p]}</td></tr>\n"
            for p in provisions
        )

    head = "<tr><th>provision</th><th>total</th><th>verifiers</th></tr>\n"
    parts = [
        '<!DOCTYPE html>\n<html lang="ja">\n<head><meta charset="utf-8">',
        f"<title>{e(title)}</title></head>\n<body>\n",
        f"<h1>{e(title)} (第41条)</h1>\n<p>Period: {e(span)}.</p>\n",
        f"<table>\n{head}{rows(_IN_LAW)}</table>\n",
        "<h2>Counted apart (no provision of the law)</h2>\n",
        f"<table>\n{head}{rows(_APART)}</table>\n",
    ]
    for p in Provision:
        if by_verifier[p]:
            parts.append(f"<h2>{e(TITLES[p])}</h2>\n<table>\n")
            parts.append("<tr><th>verifier</th><th>count</th></tr>\n")
            parts.extend(
                f"<tr><td>{e(v)}</td><td>{n}</td></tr>\n" for v, n in by_verifier[p].items()
            )
            parts.append("</table>\n")
    parts.append("</body>\n</html>\n")
    return "".join(parts)


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
