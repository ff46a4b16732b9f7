"""An OCSP cache miss judges a pre-produced entry by the basis of the index's packed
value (preproduced.basis_of_value), without decoding it into an Answer. It must say
exactly what the reference says: `basis_of` and `Answer.labels` of the Answer the
index source makes from the decoded record (record_format.unpack_value and the status
rule through `StatusRecord.status_at`), for any record, loss or none, at any instant.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import example, given
from hypothesis import strategies as st

from jpki_va.core.domain import CertKind, CrlReason, LossCause, Status, from_micros, record_key
from jpki_va.server.responder.preproduced import Basis, basis_of, basis_of_value
from jpki_va.server.responder.status import Answer, code_labels, label_code
from jpki_va.server.snapshot.record_format import pack_value, unpack_value
from tests.fuzz.strategies import integers

_SECONDS = (0, 253_402_300_799)  # 1970 to the end of 9999: what a datetime holds
_seconds = st.one_of(integers(*_SECONDS), st.sampled_from([0, 1, 1_800_000_000]))
_IDS = [bytes([n]) * 20 for n in range(3)]


def _labels(basis: Basis) -> tuple[str, str]:
    """The labels a served pre-produced response is counted by (`py_served`'s code)."""
    return code_labels(label_code(basis[0], basis[2]))


def _reference(value: bytes, when: int) -> Answer:
    """The Answer the index source (`status._index_answer`) makes of `value` at `when`."""
    key = record_key(CertKind.CARD_SIGN, 0x1234)
    record = unpack_value(key, value, _IDS)
    as_of = from_micros(when)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return Answer(
        record.kind, record.serial, record.status_at(as_of), record, as_of, 1, epoch, epoch
    )


@given(
    not_before=_seconds,
    not_after=_seconds,
    revoked_at=_seconds,
    cause=st.sampled_from([0, *map(int, LossCause)]),
    reason=st.sampled_from([int(r) for r in CrlReason]),
    when=st.one_of(
        integers(_SECONDS[0] * 10**6, _SECONDS[1] * 10**6),
        _seconds.map(lambda s: s * 10**6),  # on a boundary to the microsecond
        _seconds.map(lambda s: s * 10**6 - 1),
    ),
)
@example(not_before=10, not_after=20, revoked_at=15, cause=1, reason=1, when=15_000_000)
@example(not_before=10, not_after=20, revoked_at=15, cause=1, reason=1, when=14_999_999)
@example(not_before=10, not_after=20, revoked_at=0, cause=0, reason=0, when=20_000_001)
@example(not_before=10, not_after=20, revoked_at=0, cause=0, reason=0, when=9_999_999)
def test_the_basis_of_a_value_is_the_basis_of_its_answer(
    not_before: int, not_after: int, revoked_at: int, cause: int, reason: int, when: int
) -> None:
    # The index keeps no loss time, cause or reason without a loss (record_format).
    revoked_at, reason = (revoked_at, reason) if cause else (0, 0)
    value = pack_value(not_before, not_after, 7, 1, revoked_at, cause, reason)
    answer = _reference(value, when)
    basis = basis_of_value(value, when)
    assert basis == basis_of(answer)
    assert _labels(basis) == answer.labels


def test_a_certificate_not_held_has_the_basis_of_unknown() -> None:
    when = 1_800_000_000 * 10**6
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    unknown = Answer(
        CertKind.CARD_SIGN, 1, Status.UNKNOWN, None, from_micros(when), 1, epoch, epoch
    )
    assert basis_of_value(None, when) == basis_of(unknown)
    assert _labels(basis_of_value(None, when)) == unknown.labels
