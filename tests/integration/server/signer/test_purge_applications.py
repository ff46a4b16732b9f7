"""保存期間 and the smartphone application: an application holds the resident code and
the four items the applicant notified (第16条の2, 第35条の2), so the daily purge
deletes it a day after it expired, used or not, with its notice's digest; one that
can still be completed stays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from jpki_va.core.domain import CertKind
from jpki_va.server.law.retention import RetentionPolicy
from jpki_va.server.model.holder import Holder
from jpki_va.server.model.registry_values import MobileApplication
from jpki_va.server.registry.transactions import Registry
from jpki_va.server.signer.purge import APPLICATION_KEPT_AFTER_EXPIRY, purge

NOW = datetime(2027, 4, 1, 3, 0, tzinfo=UTC)


def _application(name: str, expires_at: datetime, completed: int | None) -> MobileApplication:
    return MobileApplication(
        id=name,
        kind=CertKind.MOBILE_SIGN,
        resident_code="12345678901",
        card_serial=7,
        holder=Holder("山田 花子", "東京都千代田区", "1990-01-01", "female"),
        begun_at=expires_at - timedelta(minutes=30),
        expires_at=expires_at,
        notice_digest=name.encode().ljust(32, b"\0"),
        completed_serial=completed,
    )


def test_expired_applications_leave_with_their_notices(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    long_ago = NOW - APPLICATION_KEPT_AFTER_EXPIRY - timedelta(seconds=1)
    old_used = _application("old-used", long_ago, completed=99)
    old_unused = _application("old-unused", long_ago, completed=None)
    recent = _application("recent", NOW - timedelta(hours=1), completed=None)
    open_one = _application("open", NOW + timedelta(minutes=20), completed=None)
    try:
        with registry.write() as tx:
            for application in (old_used, old_unused, recent, open_one):
                tx.put_mobile_application(application)
        purged = purge(registry, RetentionPolicy(), NOW)
        assert purged.applications == 2 and purged
        with registry.read() as tx:
            assert {a.id for a in tx.mobile_applications()} == {"recent", "open"}
            assert tx.notice_application(old_used.notice_digest) is None
            assert tx.notice_application(old_unused.notice_digest) is None
            assert tx.notice_application(open_one.notice_digest) == "open"
        assert not purge(registry, RetentionPolicy(), NOW)  # nothing more to do
    finally:
        registry.close()
