"""保存期間: how long each kind of record is kept, and so how long it is published.

The law fixes the start of each period and leaves its length to a cabinet order
(政令で定める期間), so the lengths are configuration, one per record type the law
names (`RECORD_TYPES`, each with its article):

* issuance records (発行記録: 第8条, 第16条の7, 第27条, 第35条の7) from the date of
  issue;
* loss records of each cause (失効申請等情報 第11条・第30条・第16条の10・第35条の10;
  異動等失効情報 第12条・第31条; 記録誤り等に係る情報 第13条・第32条・第16条の11・
  第35条の11; 発行者署名符号の漏えい等に係る情報 第14条・第33条・第16条の12・
  第35条の12; カード用電子証明書の失効に係る情報 第16条の13・第35条の13) from the
  date they are recorded;
* CRL files (失効情報ファイル: 第16条, 第16条の15, 第35条, 第35条の15) from the
  date they are created;

and the project's own records, which the law does not name: the provision ledger
(the 第41条 report's counts), the audit trail of disclosures, and consents (from
their withdrawal), and notices to holders (from when they were sent).

RFC 5280 §3.3 adds one constraint of its own: a revoked certificate stays on the
CRL until it expires, so a CRL entry leaves at the later of its certificate's
expiry and the end of its loss record's retention. And a loss record is served
through its certificate's issuance record, so `check` refuses periods under which
the issuance record would go first (issuance ≥ validity + loss, per kind). Nothing
past retention is published; `registry/purge.py` deletes it from the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from jpki_va.core.domain import CertKind, LossCause

# Instants as datetimes, or as the raw timestamps a bulk reader compares.
Instant = TypeVar("Instant", datetime, int)

# Placeholders until the cabinet order's lengths are configured.
DEFAULT_ISSUANCE_RECORD = timedelta(days=15 * 365)
DEFAULT_LOSS_RECORD = timedelta(days=10 * 365)
DEFAULT_CRL_FILE = timedelta(days=10 * 365)
DEFAULT_PROJECT_RECORD = timedelta(days=10 * 365)

ISSUANCE_ARTICLES = {
    CertKind.CARD_SIGN: "第8条",
    CertKind.MOBILE_SIGN: "第16条の7",
    CertKind.CARD_AUTH: "第27条",
    CertKind.MOBILE_AUTH: "第35条の7",
}
LOSS_ARTICLES = {
    (CertKind.CARD_SIGN, LossCause.HOLDER_REQUEST): "第11条",
    (CertKind.CARD_SIGN, LossCause.RESIDENT_CHANGE): "第12条",
    (CertKind.CARD_SIGN, LossCause.RECORD_ERROR): "第13条",
    (CertKind.CARD_SIGN, LossCause.ISSUER_KEY_COMPROMISE): "第14条",
    (CertKind.MOBILE_SIGN, LossCause.HOLDER_REQUEST): "第16条の10",
    (CertKind.MOBILE_SIGN, LossCause.RECORD_ERROR): "第16条の11",
    (CertKind.MOBILE_SIGN, LossCause.ISSUER_KEY_COMPROMISE): "第16条の12",
    (CertKind.MOBILE_SIGN, LossCause.CARD_CERT_LOST_EFFECT): "第16条の13",
    (CertKind.CARD_AUTH, LossCause.HOLDER_REQUEST): "第30条",
    (CertKind.CARD_AUTH, LossCause.RESIDENT_CHANGE): "第31条",
    (CertKind.CARD_AUTH, LossCause.RECORD_ERROR): "第32条",
    (CertKind.CARD_AUTH, LossCause.ISSUER_KEY_COMPROMISE): "第33条",
    (CertKind.MOBILE_AUTH, LossCause.HOLDER_REQUEST): "第35条の10",
    (CertKind.MOBILE_AUTH, LossCause.RECORD_ERROR): "第35条の11",
    (CertKind.MOBILE_AUTH, LossCause.ISSUER_KEY_COMPROMISE): "第35条の12",
    (CertKind.MOBILE_AUTH, LossCause.CARD_CERT_LOST_EFFECT): "第35条の13",
}
CRL_ARTICLES = {
    CertKind.CARD_SIGN: "第16条",
    CertKind.MOBILE_SIGN: "第16条の15",
    CertKind.CARD_AUTH: "第35条",
    CertKind.MOBILE_AUTH: "第35条の15",
}
PROJECT_RECORDS = ("ledger", "audit", "consent", "notice")


def issuance_type(kind: CertKind) -> str:
    return f"issuance.{kind.slug}"


def loss_type(kind: CertKind, cause: LossCause) -> str:
    return f"loss.{cause.slug}.{kind.slug}"


def crl_type(kind: CertKind) -> str:
    return f"crl.{kind.slug}"


#: Every record type with a period of its own, and where it comes from.
RECORD_TYPES: dict[str, str] = {
    **{issuance_type(k): a for k, a in ISSUANCE_ARTICLES.items()},
    **{loss_type(k, c): a for (k, c), a in LOSS_ARTICLES.items()},
    **{crl_type(k): a for k, a in CRL_ARTICLES.items()},
    "ledger": "provision counts (第41条 report; the project's own)",
    "audit": "audit trail of disclosures (the project's own)",
    "consent": "withdrawn consents, from withdrawal (the project's own)",
    "notice": "notices to holders, from sending (the project's own)",
}


@dataclass(frozen=True)
class RetentionPolicy:
    """The three broad defaults, and a period per record type that overrides them."""

    issuance_record: timedelta = DEFAULT_ISSUANCE_RECORD
    loss_record: timedelta = DEFAULT_LOSS_RECORD
    crl_file: timedelta = DEFAULT_CRL_FILE
    project_record: timedelta = DEFAULT_PROJECT_RECORD
    periods: Mapping[str, timedelta] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.periods) - set(RECORD_TYPES))
        if unknown:
            raise ValueError(
                f"no record type {unknown[0]!r} has a retention period "
                f"(known: {', '.join(RECORD_TYPES)})"
            )

    # the period of each record type ------------------------------------------------------
    def issuance(self, kind: CertKind) -> timedelta:
        return self.periods.get(issuance_type(kind), self.issuance_record)

    def loss(self, kind: CertKind, cause: LossCause) -> timedelta:
        return self.periods.get(loss_type(kind, cause), self.loss_record)

    def crl(self, kind: CertKind) -> timedelta:
        return self.periods.get(crl_type(kind), self.crl_file)

    def project(self, name: str) -> timedelta:
        return self.periods.get(name, self.project_record)

    def longest_loss(self, kind: CertKind) -> timedelta:
        return max(self.loss(k, c) for (k, c) in LOSS_ARTICLES if k is kind)

    def check(self, validity: Mapping[CertKind, timedelta]) -> None:
        """Refuse periods under which a record would stop being served too early."""
        broad = {
            "issuance records": self.issuance_record,
            "loss records": self.loss_record,
            "CRL files": self.crl_file,
            "project records": self.project_record,
        }
        for name, period in [*broad.items(), *self.periods.items()]:
            if period <= timedelta(0):
                raise ValueError(f"retention of {name} must be positive")
        for kind, valid in validity.items():
            issuance, loss = self.issuance(kind), self.longest_loss(kind)
            if issuance < valid + loss:
                # A loss recorded on the certificate's last day must be served for its
                # whole period, and it is served through the issuance record.
                raise ValueError(
                    f"retention of {kind.name} issuance records ({_days(issuance)}, "
                    f"{ISSUANCE_ARTICLES[kind]}) must be at least the validity period "
                    f"({_days(valid)}) plus the longest loss record retention "
                    f"({_days(loss)}): {_days(valid + loss)}"
                )

    def checked(self, validity: Mapping[CertKind, timedelta]) -> RetentionPolicy:
        self.check(validity)
        return self

    # the rules --------------------------------------------------------------------------
    def issuance_retained(self, kind: CertKind, issued_at: datetime, now: datetime) -> bool:
        return issued_at > self.issuance_cutoff(kind, now)

    def loss_retained(
        self,
        kind: CertKind,
        cause: LossCause,
        recorded_at: datetime,
        not_after: datetime,
        now: datetime,
    ) -> bool:
        return loss_kept(recorded_at, not_after, now, self.loss_cutoff(kind, cause, now))

    # The same rules as cut-off instants, for bulk readers that compare raw timestamps.
    def issuance_cutoff(self, kind: CertKind, now: datetime) -> datetime:
        """An issuance record is retained while it was issued after this instant."""
        return now - self.issuance(kind)

    def loss_cutoff(self, kind: CertKind, cause: LossCause, now: datetime) -> datetime:
        """A loss record is retained while recorded after this instant, or until its
        certificate expires (RFC 5280 §3.3), whichever is later."""
        return now - self.loss(kind, cause)

    def longest_crl_file(self) -> timedelta:
        """A snapshot holds CRL files of every kind: it is kept for the longest."""
        return max(self.crl(k) for k in CRL_ARTICLES)


def loss_kept(recorded_at: Instant, not_after: Instant, now: Instant, cutoff: Instant) -> bool:
    """The loss rule on instants of one kind, `cutoff` being `loss_cutoff(now)`: a loss
    stays until its certificate expires or its record's retention ends, the later."""
    return not_after > now or recorded_at > cutoff


def _days(period: timedelta) -> str:
    return f"{period.total_seconds() / 86400:g} days"
