"""responder/_ocsp_miss.pyx, the compiled twin of an OCSP cache miss's byte work, says
what its pure-Python references say on every case drawn.

- `usual_request` against `ocsp_wire.usual_request`: any bytes, and the usual form
  with its hashes, serial and octets changed; the same request (values and types)
  or None.
- `served` against `preproduced.py_served`: entries a producer writes (a random basis,
  validity and tbs, with the signer's id and the CertID where they belong or not),
  torn ones and random bytes; packed index values about `when` (its second and the
  microseconds either side), None or any 32 bytes; `when`, margin and certs size in
  and out of the compiled envelope. The same answer, or the same exception type; and
  the compiled code hands a case to its fallback only outside its envelope, always
  with the seven arguments it was given.

The compiled module is called directly, its fallback recorded, so a fall back to the
reference cannot hide a compiled bug. Each property also counts what it compared: a
property that compared only None with None would prove nothing, so a good share of
the cases drawn must be read or served.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from hypothesis import event, example, given
from hypothesis import strategies as st

from jpki_va.core.domain import CrlReason, LossCause
from jpki_va.server.pki import der, ocsp_wire
from jpki_va.server.pki.ocsp_wire import (
    CertId,
    CertStatus,
    OcspRequest,
    ResponseWriter,
    sha1_cert_id,
)
from jpki_va.server.responder import _ocsp_miss
from jpki_va.server.responder.preproduced import (
    SERVE_MARGIN_US,
    Basis,
    PreproducedEntry,
    Served,
    basis_of_value,
    py_served,
)
from jpki_va.server.snapshot.record_format import pack_value, unpack_fields
from tests.fuzz.strategies import integers
from tests.fuzz.test_ocsp_wire_fuzz import _mutate, _serials, _usual

# usual_request -----------------------------------------------------------------------


def _same_reading(data: bytes) -> bool:
    """The compiled reader reads `data` as `ocsp_wire.usual_request` does; whether it
    was read."""
    compiled = _ocsp_miss.usual_request(CertId, OcspRequest, data)
    expected = ocsp_wire.usual_request(data)
    assert compiled == expected
    if expected is None:
        return False
    # Equal named tuples could still be plain tuples: the types must be the same too.
    assert compiled is not None and type(compiled) is OcspRequest
    assert [type(cert_id) for cert_id in compiled.cert_ids] == [CertId]
    assert [type(f) for f in compiled.cert_ids[0]] == [bytes, str, bytes, bytes, int]
    assert (type(compiled.request_list), compiled.nonce) == (bytes, None)
    return True


_HASH = st.binary(min_size=20, max_size=20)
_USUAL = _usual(b"\x01" * 20, b"\x02" * 20, b"\x12\x34", True)


@given(st.binary(max_size=200))
@example(b"")
@example(_USUAL)
@example(_USUAL + b"\x00")
@example(_USUAL[:-1])
@example(_usual(b"\x01" * 20, b"\x02" * 20, b"\x00" + b"\xff" * 20, False))
def test_any_bytes_are_read_as_the_reference_reads_them(data: bytes) -> None:
    _same_reading(data)


def test_usual_requests_changed_or_not_are_read_as_the_reference_reads_them() -> None:
    read: Counter[bool] = Counter()

    @given(_HASH, _HASH, _serials, st.booleans(), st.booleans(), st.data())
    @example(b"\x01" * 20, b"\x02" * 20, b"\x00", True, False, None)  # serial zero
    @example(b"\x01" * 20, b"\x02" * 20, b"\x80", True, False, None)  # negative
    @example(b"\x01" * 20, b"\x02" * 20, b"\x00\x7f", True, False, None)  # not minimal
    @example(b"\x01" * 20, b"\x02" * 20, b"\x00" + b"\xff" * 20, False, False, None)
    @example(b"\x01" * 20, b"\x02" * 20, b"\x01" + b"\x00" * 20, True, False, None)
    def check(
        name_hash: bytes,
        key_hash: bytes,
        serial: bytes,
        null: bool,
        mutate: bool,
        data: st.DataObject | None,
    ) -> None:
        request = _usual(name_hash, key_hash, serial, null)
        if mutate and data is not None:
            request = _mutate(request, data)
        was_read = _same_reading(request)
        event("read" if was_read else "refused")
        read[was_read] += 1

    check()
    # Half the cases are the usual form unchanged, half their serials valid: about a
    # quarter reads (a mutated one reads when only a hash octet changed).
    assert read[True] >= sum(read.values()) // 6, read


# served -------------------------------------------------------------------------------

SECOND = 1_000_000
_INT64 = (-(1 << 63), (1 << 63) - 1)
_ENVELOPE_US = 1 << 62  # what the compiled code takes of `when` and the margin
_ENVELOPE_S = 9_000_000_000_000  # and of the index's times, in seconds
_T0 = 1_767_225_600 * SECOND  # 2026-01-01: around when responses are served
_KEY_HASH = bytes(range(20))
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
_RSA_SHA256 = bytes.fromhex("300d06092a864886f70d01010b0500")
# The algorithms the responder signs with (ocsp._prepare), and none at all. The reference
# frames by a table sized for those (ResponseWriter.body): an algorithm identifier of 32
# octets or more near a 4 kB response makes it fail, so none is drawn here.
_WRITERS = [
    ResponseWriter(_KEY_HASH, _ECDSA_SHA256),
    ResponseWriter(bytes(20), _RSA_SHA256),
    ResponseWriter(_KEY_HASH[:19] + b"\xff", _ECDSA_SHA256),  # the last octet differs
    ResponseWriter(_KEY_HASH, b""),
]
_THIS = datetime(2026, 1, 1, tzinfo=UTC)  # the times inside a real tbs: any will do
_CERT_IDS = [
    sha1_cert_id(b"\x11" * 20, b"\x22" * 20, 0x1234),
    sha1_cert_id(b"\x11" * 20, b"\x22" * 20, 0x1235),
    sha1_cert_id(b"\x33" * 20, b"\x22" * 20, (1 << 160) - 1),
]
# True seven times in eight: each part of an entry drawn right most of the time, so a
# good share of entries is right in every part and served.
_mostly = st.sampled_from((True, True, True, True, True, True, True, False))

Args = tuple[bytes, bytes | None, int, bytes, ResponseWriter, int, int]


def _int64(n: int) -> int:
    return min(max(n, _INT64[0]), _INT64[1])


# Inside the compiled envelope (what a responder meets), and anywhere: a case is drawn
# from the first mostly, so most cases are the compiled code's own answer.
_near = st.integers(-(10**15), 10**15).map(lambda d: _T0 + d)
_on_a_second = st.integers(-(10**6), 10**6).map(lambda s: _T0 + s * SECOND)
_whens_inside = st.one_of(
    _near,
    _on_a_second,
    st.sampled_from([0, -1, 1, _ENVELOPE_US - 1, 1 - _ENVELOPE_US]),
)
_whens_outside = st.one_of(
    st.sampled_from([_ENVELOPE_US, -_ENVELOPE_US, (1 << 63) - 1, 1 << 63, -(1 << 63)]),
    integers(-(1 << 64), 1 << 64),
)
_margins_inside = st.one_of(
    st.sampled_from([SERVE_MARGIN_US, 0, 1, _ENVELOPE_US - 1]),
    st.integers(0, 100_000),
    st.integers(0, 10**12),
)
_margins_outside = st.sampled_from([_ENVELOPE_US, -1, 1 << 64])
_certs_sizes_inside = st.one_of(
    st.integers(0, 100_000), st.sampled_from([0, 127, 128, 255, 256, 65_535, 65_536])
)


@st.composite
def _seconds(draw: st.DrawFn, when: int, far: bool) -> int:
    """A time of the index (seconds) about `when`: its second, or either side of it;
    or anywhere, past the envelope's ends too when `far`."""
    around = when // SECOND
    ends = [_ENVELOPE_S, -_ENVELOPE_S]
    if far:
        ends += [_ENVELOPE_S + 1, -_ENVELOPE_S - 1, *_INT64]
    second = draw(
        st.one_of(
            st.sampled_from([around - 1, around, around + 1]),
            st.sampled_from([around - 1, around, around + 1]),  # twice: the bounds matter
            st.integers(-(10**8), 10**8).map(lambda d: around + d),
            integers(-_ENVELOPE_S, _ENVELOPE_S),
            st.sampled_from(ends),
        )
    )
    if not far:  # `when` itself may be far out; its second then is not drawn
        return min(max(second, -_ENVELOPE_S), _ENVELOPE_S)
    return _int64(second)


@st.composite
def _values(draw: st.DrawFn, when: int, far: bool) -> bytes | None:
    """A packed index value (record_format), None (not held), or any 32 bytes when
    `far`."""
    kind = draw(st.sampled_from(("packed",) * 4 + ("none",) + ("random",) * far))
    if kind == "none":
        return None
    if kind == "random":
        return draw(st.binary(min_size=32, max_size=32))
    # No loss about half the time: the validity bounds decide then.
    cause = draw(st.sampled_from([0] * 5 + list(map(int, LossCause))) | st.integers(0, 255))
    reason = draw(st.sampled_from([int(r) for r in CrlReason]) | st.integers(0, 255))
    return pack_value(
        draw(_seconds(when, far)),
        draw(_seconds(when, far)),
        draw(st.integers(0, 999_999)),
        draw(st.integers(0, 0xFFFF)),
        draw(_seconds(when, far)),
        cause,
        reason,
    )


@st.composite
def _basis(draw: st.DrawFn, value: bytes | None, when: int) -> Basis:
    """What the entry states: mostly what the index says at `when`, else one field
    off, else anything."""
    right = basis_of_value(value, when)
    if not _INT64[0] <= right[1] <= _INT64[1]:  # a loss time the head cannot hold
        right = (right[0], -1, right[2], right[3])
    if draw(_mostly):
        return right
    status, lost, cause, reason = right
    field = draw(st.integers(0, 4))
    if field == 0:
        return ((status + 1) % 256, lost, cause, reason)
    if field == 1:
        return (status, _int64(draw(st.sampled_from([-1, lost + 1, lost - 1]))), cause, reason)
    if field == 2:
        return (status, lost, (cause + 1) % 256, reason)
    if field == 3:
        return (status, lost, cause, (reason + 1) % 256)
    return (
        draw(st.integers(0, 255)),
        draw(st.sampled_from([-1]) | st.integers(*_INT64)),
        draw(st.integers(0, 255)),
        draw(st.integers(0, 255)),
    )


@st.composite
def _tbs(draw: st.DrawFn, signer: ResponseWriter, cert_id: bytes) -> tuple[bytes, int]:
    """A tbs `signer` signs and where it names its CertID: the signer's id first and
    the CertID inside, each where it belongs or not."""
    kind = draw(st.sampled_from(("real",) * 4 + ("made",) * 3 + ("tiny",)))
    if kind == "tiny":  # under two octets: the reference fails at the signer check
        return draw(st.binary(max_size=1)), 0
    named = cert_id if draw(_mostly) else draw(st.sampled_from(_CERT_IDS) | st.binary())
    if kind == "real":  # as ResponseWriter writes it, for one certificate or several
        single = signer.single(named, CertStatus.GOOD, _THIS, _THIS)
        others = [signer.single(_CERT_IDS[1], CertStatus.UNKNOWN, _THIS, _THIS)]
        tbs = signer.tbs(_THIS, draw(st.sampled_from([[single], others * 3 + [single]])), None)
        at = tbs.rindex(named)
    else:
        before = draw(st.binary(max_size=40))  # producedAt and what precedes the CertID
        body = signer.responder_id + before + named + draw(st.binary(max_size=300))
        head = b"\x30" + der.length(len(body))
        if not draw(_mostly):  # a length octet of any value: the signer looked for elsewhere
            head = b"\x30" + draw(st.binary(min_size=1, max_size=3))
        tbs = head + body
        at = len(head) + len(signer.responder_id) + len(before)
    if not draw(_mostly):
        at = draw(st.integers(0, 0xFFFF) | st.integers(max(at - 2, 0), at + 2))
    return tbs, at


@st.composite
def _validity(draw: st.DrawFn, when: int, margin: int) -> tuple[int, int]:
    """thisUpdate and nextUpdate: around `when`, exactly on the bounds or off by one;
    mostly fresh at `when`, else not."""
    back = draw(st.one_of(st.just(0), st.integers(0, 10**12)))
    ahead = draw(st.one_of(st.just(1), st.integers(1, 10**12)))
    if not draw(_mostly):
        stale = draw(st.sampled_from(("early", "late", "any")))
        if stale == "early":  # thisUpdate after `when`
            back = -draw(st.one_of(st.just(1), st.integers(1, 10**6)))
        elif stale == "late":  # nextUpdate within the margin
            ahead = draw(st.one_of(st.just(0), st.integers(-(10**12), 0)))
        else:
            return draw(st.integers(*_INT64)), draw(st.integers(*_INT64))
    return _int64(when - back), _int64(when + margin + ahead)


@st.composite
def _raw(
    draw: st.DrawFn,
    value: bytes | None,
    when: int,
    margin: int,
    writer: ResponseWriter,
    cert_id: bytes,
) -> bytes:
    """An encoded entry, mostly as the producer writes one; or torn; or any bytes."""
    if not draw(_mostly):
        return draw(st.just(b"") | st.binary(max_size=119).map(lambda b: b"\x01" + b))
    signer = writer
    if not draw(_mostly):  # signed by another key (the writers of another key hash)
        others = [w for w in _WRITERS if w.responder_id != writer.responder_id]
        signer = draw(st.sampled_from(others))
    tbs, at = draw(_tbs(signer, cert_id))
    signature = draw(st.binary(max_size=80) | st.sampled_from([bytes(n) for n in (127, 128, 256)]))
    this_update, next_update = draw(_validity(when, margin))
    basis = draw(_basis(value, when))
    raw = PreproducedEntry(this_update, next_update, basis, at, tbs, signature).encode()
    if draw(_mostly):
        return raw
    torn = draw(st.sampled_from(("cut", "size", "format")))
    if torn == "cut":
        return raw[: draw(st.integers(0, len(raw)))]
    if torn == "size":  # the head's tbs length past the end or short of it
        return raw[:30] + draw(st.binary(min_size=2, max_size=2)) + raw[32:]
    return draw(st.integers(0, 255).filter(lambda b: b != 1)).to_bytes(1, "big") + raw[1:]


@st.composite
def _cases(draw: st.DrawFn) -> Args:
    """The seven arguments of `py_served`: mostly inside the compiled envelope, else
    anywhere (each of `when`, the margin, the value and the certs size may be out)."""
    far = not draw(_mostly)
    # (A one_of favours its first strategies: each part is taken out by a coin of its own.)
    when = draw(_whens_outside if far and draw(st.booleans()) else _whens_inside)
    margin = draw(_margins_outside if far and draw(st.booleans()) else _margins_inside)
    value = draw(_values(when, far))
    writer = draw(st.sampled_from(_WRITERS))
    cert_id = draw(st.sampled_from(_CERT_IDS))
    raw = draw(_raw(value, when, margin, writer, cert_id))
    certs_size = -1 if far and draw(st.booleans()) else draw(_certs_sizes_inside)
    return raw, value, when, cert_id, writer, certs_size, margin


def _outcome(function: Callable[..., Served | None], *args: Any) -> tuple[str, Any]:
    """What a call gave: ("value", result) or ("raised", the exception's type)."""
    try:
        return "value", function(*args)
    except Exception as exc:  # the reference's own errors: the twin must match the type
        return "raised", type(exc)


def _outside_early(args: Args) -> bool:
    """Whether a case is outside the compiled envelope before the entry is judged: the
    compiled code must hand it over whenever the entry is of its format."""
    _, value, when, _, _, certs_size, margin = args
    if not -_ENVELOPE_US < when < _ENVELOPE_US or not 0 <= margin < _ENVELOPE_US:
        return True
    if not 0 <= certs_size < _ENVELOPE_US:
        return True
    if value is None:
        return False
    if len(value) != 32:
        return True
    not_before, not_after, _, _, revoked_at, _, _ = unpack_fields(value)
    return any(abs(t) > _ENVELOPE_S for t in (not_before, not_after, revoked_at))


def _compare(args: Args) -> str:
    """The compiled `served` answers `args` as `py_served` does; what the case was."""
    handed: list[tuple[Any, ...]] = []

    def fallback(*given: Any) -> Served | None:
        handed.append(given)
        return py_served(*given)  # what the responder's dispatch (ocsp_miss) hands to

    compiled = _outcome(_ocsp_miss.served, fallback, *args)
    expected = _outcome(py_served, *args)
    assert compiled == expected
    raw = args[0]
    of_format = len(raw) >= 32 and raw[0] == 1
    if handed:
        assert handed == [args]
        # The tbs the entry holds: its head's length, or as much as there is.
        tbs_short = min(int.from_bytes(raw[30:32], "big"), len(raw) - 32) < 2
        assert _outside_early(args) or tbs_short, "handed over a case inside the envelope"
        return "fallback"
    assert not (of_format and _outside_early(args)), "answered a case outside the envelope"
    kind, result = compiled
    if kind == "raised":
        return "raised"
    if result is None:
        return "refused"
    assert [type(part) for part in result] == [type(part) for part in expected[1]]
    assert [type(part) for part in result[4]] == [int] * 4
    return "served"


_ENTRY_WRITER = _WRITERS[0]
_ENTRY_TBS = _ENTRY_WRITER.tbs(
    _THIS, [_ENTRY_WRITER.single(_CERT_IDS[0], CertStatus.GOOD, _THIS, _THIS)], None
)


def _case(
    when: int,
    value: bytes | None = None,
    validity: tuple[int, int] = (_T0, _T0 + 10**9),
    margin: int = SERVE_MARGIN_US,
    certs_size: int = 700,
) -> Args:
    """An entry that states what `value` says at `when`, valid over `validity`."""
    raw = PreproducedEntry(
        *validity, basis_of_value(value, when), _ENTRY_TBS.index(_CERT_IDS[0]), _ENTRY_TBS, b"s"
    ).encode()
    return raw, value, when, _CERT_IDS[0], _ENTRY_WRITER, certs_size, margin


_S0 = _T0 // SECOND


def test_served_answers_as_the_reference_on_drawn_entries() -> None:
    outcomes: Counter[str] = Counter()

    @given(_cases())
    # The bounds of the entry's validity, to the microsecond.
    @example(_case(_T0))
    @example(_case(_T0 - 1))
    @example(_case(_T0 + 10**9 - SERVE_MARGIN_US - 1))
    @example(_case(_T0 + 10**9 - SERVE_MARGIN_US))
    @example(_case(_T0, certs_size=70_000))
    @example(_case(_ENVELOPE_US - 1, validity=(_T0, _INT64[1]), margin=0))
    # And of the certificate's, on its second: the status rule's bounds.
    @example(_case(_T0, pack_value(_S0, _S0 + 9, 1, 1)))
    @example(_case(_T0, pack_value(_S0 - 9, _S0, 1, 1)))
    @example(_case(_T0 + 1, pack_value(_S0 - 9, _S0, 1, 1)))
    @example(_case(_T0, pack_value(_S0 - 9, _S0 + 9, 1, 1, _S0, 1, 1)))
    @example(_case(_T0 - 1, pack_value(_S0 - 9, _S0 + 9, 1, 1, _S0, 1, 1)))
    def check(args: Args) -> None:
        outcome = _compare(args)
        event(outcome)
        outcomes[outcome] += 1

    check()
    # A property that compared only refusals would prove nothing: the compiled code's
    # own serving must be a good share of what was drawn, and every path reached.
    assert outcomes["served"] >= sum(outcomes.values()) // 8, outcomes  # ~40% usually
    assert outcomes["refused"] and outcomes["fallback"], outcomes
