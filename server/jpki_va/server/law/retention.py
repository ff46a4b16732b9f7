"""保存期間: how long each kind of record is kept, and so how long it is published.

The law fixes the start of each period and leaves its length to a cabinet order
(政令で定める期間), so the lengths are configuration:

* issuance records (発行記録: 第10条, 第16条の9, 第29条, 第35条の9) from the
  date of issue;
* loss records (失効申請等情報 etc.: 第11条〜第14条 and their mobile and auth
  counterparts) from the date they are recorded;
* CRL files (失効情報ファイル: 第16条, 第16条の16, 第35条, 第35条の16) from the
  date they are created.

RFC 5280 §3.3 adds one constraint of its own: a revoked certificate stays on the
CRL until it expires, so a CRL entry leaves at the later of its certificate's
expiry and the end of its loss record's retention. Nothing past retention is
published; the responder serves only what snapshots carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

# Instants as datetimes, or as the raw timestamps a bulk reader compares.
Instant = TypeVar("Instant", datetime, int)

# Placeholders until the cabinet order's lengths are configured.
DEFAULT_ISSUANCE_RECORD = timedelta(days=15 * 365)
DEFAULT_LOSS_RECORD = timedelta(days=10 * 365)
DEFAULT_CRL_FILE = timedelta(days=10 * 365)


@dataclass(frozen=True)
class RetentionPolicy:
    issuance_record: timedelta = DEFAULT_ISSUANCE_RECORD
    loss_record: timedelta = DEFAULT_LOSS_RECORD
    crl_file: timedelta = DEFAULT_CRL_FILE

    def check(self, longest_validity: timedelta) -> None:
        for name in ("issuance_record", "loss_record", "crl_file"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"retention of {name.replace('_', ' ')}s must be positive")
        if self.issuance_record < longest_validity:
            # Otherwise a certificate still in its validity period would be unknown.
            raise ValueError(
                "retention of issuance records must be at least the longest validity period"
            )

    def issuance_retained(self, issued_at: datetime, now: datetime) -> bool:
        return issued_at > self.issuance_cutoff(now)

    def loss_retained(self, recorded_at: datetime, not_after: datetime, now: datetime) -> bool:
        return loss_kept(recorded_at, not_after, now, self.loss_cutoff(now))

    # The same rules as cut-off instants, for bulk readers that compare raw timestamps.
    def issuance_cutoff(self, now: datetime) -> datetime:
        """An issuance record is retained while it was issued after this instant."""
        return now - self.issuance_record

    def loss_cutoff(self, now: datetime) -> datetime:
        """A loss record is retained while recorded after this instant, or until its
        certificate expires (RFC 5280 §3.3), whichever is later."""
        return now - self.loss_record

    def crl_file_retained(self, created_at: datetime, now: datetime) -> bool:
        return now < created_at + self.crl_file


def loss_kept(recorded_at: Instant, not_after: Instant, now: Instant, cutoff: Instant) -> bool:
    """The loss rule on instants of one kind, `cutoff` being `loss_cutoff(now)`: a loss
    stays until its certificate expires or its record's retention ends, the later."""
    return not_after > now or recorded_at > cutoff
