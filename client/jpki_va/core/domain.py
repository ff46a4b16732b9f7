"""The vocabulary of the law as code: certificate kinds, loss causes, statuses.

Wire values (protobuf enums, CRL reason codes, the LossCause CRL-entry extension)
are the IntEnum values here, so translating is a plain int conversion.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Self, TypeVar

from cryptography import x509


class SluggedEnum(enum.IntEnum):
    """Wire enums that also have a lower-case, dashed name for CLIs, files and URLs."""

    @property
    def slug(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_slug(cls, text: str) -> Self:
        try:
            return cls[text.strip().upper().replace("-", "_")]
        except KeyError:
            names = ", ".join(member.slug for member in cls)
            what = _DESCRIPTIONS.get(cls.__name__, cls.__name__)
            raise ValueError(f"unknown {what} {text!r} (expected {names})") from None


_DESCRIPTIONS = {
    "CertKind": "certificate kind",
    "LossCause": "loss cause",
    "CrlReason": "CRL reason",
    "LinkType": "link type",
    "ResidentEvent": "resident event",
    "Role": "verifier role",
    "Provision": "provision",
}


class CertKind(SluggedEnum):
    """The four kinds of personal certificate (vocabulary: DESIGN §1)."""

    CARD_SIGN = 1
    CARD_AUTH = 2
    MOBILE_SIGN = 3
    MOBILE_AUTH = 4

    @property
    def is_signing(self) -> bool:
        return self in (CertKind.CARD_SIGN, CertKind.MOBILE_SIGN)

    @property
    def is_mobile(self) -> bool:
        return self in (CertKind.MOBILE_SIGN, CertKind.MOBILE_AUTH)


class LossCause(SluggedEnum):
    """Why a certificate lost effect, in the law's terms (DESIGN §1)."""

    HOLDER_REQUEST = 1
    RESIDENT_CHANGE = 2
    RECORD_ERROR = 3
    ISSUER_KEY_COMPROMISE = 4
    CARD_CERT_LOST_EFFECT = 5


class CrlReason(SluggedEnum):
    """RFC 5280 CRLReason with the RFC's own numbers."""

    UNSPECIFIED = 0
    KEY_COMPROMISE = 1
    CA_COMPROMISE = 2
    AFFILIATION_CHANGED = 3
    SUPERSEDED = 4
    CESSATION_OF_OPERATION = 5
    CERTIFICATE_HOLD = 6
    REMOVE_FROM_CRL = 8
    PRIVILEGE_WITHDRAWN = 9
    AA_COMPROMISE = 10

    def to_x509(self) -> x509.ReasonFlags:
        return _TO_X509[self]

    @classmethod
    def from_x509(cls, flag: x509.ReasonFlags) -> CrlReason:
        return _FROM_X509[flag]


_TO_X509 = {
    CrlReason.UNSPECIFIED: x509.ReasonFlags.unspecified,
    CrlReason.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
    CrlReason.CA_COMPROMISE: x509.ReasonFlags.ca_compromise,
    CrlReason.AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
    CrlReason.SUPERSEDED: x509.ReasonFlags.superseded,
    CrlReason.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
    CrlReason.CERTIFICATE_HOLD: x509.ReasonFlags.certificate_hold,
    CrlReason.REMOVE_FROM_CRL: x509.ReasonFlags.remove_from_crl,
    CrlReason.PRIVILEGE_WITHDRAWN: x509.ReasonFlags.privilege_withdrawn,
    CrlReason.AA_COMPROMISE: x509.ReasonFlags.aa_compromise,
}
_FROM_X509 = {v: k for k, v in _TO_X509.items()}


class LinkType(SluggedEnum):
    """Correspondences between a holder's certificates (DESIGN §1), and renewal."""

    CARD_SIGN_MOBILE_SIGN = 1  # 対応署名用電子証明書の発行の番号
    CARD_AUTH_CARD_SIGN = 2  # 対応証明書の発行の番号
    CARD_AUTH_MOBILE_AUTH = 3  # 対応利用者証明用電子証明書の発行の番号
    RENEWAL = 4  # old -> new certificate of the same kind and holder


@dataclass(frozen=True, slots=True, order=True)
class Link:
    """A directed link between two certificates; `a` is the card (or the old) one."""

    type: LinkType
    a_kind: CertKind
    a_serial: int
    b_kind: CertKind
    b_serial: int


class Status(enum.IntEnum):
    """What a verifier is told about one certificate at one time."""

    GOOD = 1
    REVOKED = 2
    UNKNOWN = 3
    EXPIRED = 4
    NOT_YET_VALID = 5


@dataclass(frozen=True, slots=True)
class Loss:
    """A recorded loss of effect. Loss is final (第15条 etc.): never undone."""

    time: datetime
    cause: LossCause
    reason: CrlReason


@dataclass(frozen=True, slots=True)
class StatusRecord:
    """What the index holds for one issued certificate: enough for one-get answers."""

    kind: CertKind
    serial: int
    not_before: datetime
    not_after: datetime
    partition: str
    issuer_key_id: bytes
    loss: Loss | None

    def status_at(self, when: datetime) -> Status:
        """The status at `when` (see `status_rule`)."""
        lost_at = None if self.loss is None else self.loss.time
        return status_rule(when, self.not_before, self.not_after, lost_at)


# Times as datetimes, or as integer microseconds since the epoch (the batch path).
_Time = TypeVar("_Time", datetime, int)


def status_rule(when: _Time, not_before: _Time, not_after: _Time, lost_at: _Time | None) -> Status:
    """The status at `when`; a loss recorded later than `when` does not count yet."""
    if lost_at is not None and lost_at <= when:
        return Status.REVOKED
    if when < not_before:
        return Status.NOT_YET_VALID
    if when > not_after:
        return Status.EXPIRED
    return Status.GOOD


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(when: datetime) -> int:
    """Microseconds since the epoch, exact (a naive datetime is taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    """The UTC datetime `value` microseconds after the epoch (inverse of `micros`)."""
    return _EPOCH + timedelta(microseconds=value)


def utcnow() -> datetime:
    return datetime.now(UTC)


def serial_from_bytes(data: bytes) -> int:
    """A serial number given as unsigned big-endian bytes; RFC 5280 allows 1..20 octets."""
    if not 1 <= len(data) <= 20:
        raise ValueError(f"serial must be 1 to 20 octets, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value == 0:
        raise ValueError("serial must be positive")
    return value


def serial_from_hex(text: str) -> int:
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        data = bytes.fromhex(cleaned if len(cleaned) % 2 == 0 else "0" + cleaned)
    except ValueError:
        raise ValueError(f"serial {text!r} is not hexadecimal") from None
    return serial_from_bytes(data)


def serial_to_bytes(serial: int) -> bytes:
    return serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")


def serial_hex(serial: int) -> str:
    return serial_to_bytes(serial).hex().upper()


def record_key(kind: CertKind, serial: int) -> bytes:
    """The key of a certificate in the registry and in the index.

    Fixed width, so byte order is (kind, numeric serial) order and bulk loads can
    append sorted keys.
    """
    return bytes([kind]) + serial.to_bytes(20, "big")


def parse_record_key(key: bytes) -> tuple[CertKind, int]:
    kind = KIND_BY_VALUE.get(key[0])
    if kind is None:
        kind = CertKind(key[0])  # raises, as it would for any value not a kind
    return kind, int.from_bytes(key[1:21], "big")


#: Each CertKind by its value (a record key's first octet, the wire's enum number), for
#: the hot paths: a dict lookup, where calling the enum is two Python calls.
KIND_BY_VALUE: dict[int, CertKind] = {kind.value: kind for kind in CertKind}


class Role(SluggedEnum):
    """What the law lets a verifier receive (DESIGN §7). A verifier may hold several."""

    SIGNING_VERIFIER = 1  # 署名検証者
    GROUP_SIGNING_VERIFIER = 2  # 団体署名検証者
    AUTH_VERIFIER = 3  # 利用者証明検証者
    SPECIFIC_AUTH_VERIFIER = 4  # 特定利用者証明検証者


class Provision(SluggedEnum):
    """The nine kinds of provision the annual report (第41条) covers, and what the
    ledger counts beside them (RENEWAL_MAPPING, no provision of the law)."""

    SIGNING_STATUS = 1  # 署名用電子証明書失効情報 (第18条1項)
    SIGNING_CRL = 2  # 署名用電子証明書失効情報ファイル (第18条2項)
    SIGNING_RECORD = 3  # 特定署名用電子証明書記録情報 (第18条3項)
    MAP_CARD_SIGN_MOBILE_SIGN = 4  # 対応署名用電子証明書の発行の番号 (第18条4項)
    MAP_CARD_AUTH_CARD_SIGN = 5  # 対応証明書の発行の番号 (第18条5項)
    AUTH_STATUS = 6  # 利用者証明用電子証明書失効情報 (第37条1項)
    AUTH_CRL = 7  # 利用者証明用電子証明書失効情報ファイル (第37条2項)
    MAP_CARD_AUTH_MOBILE_AUTH = 8  # 対応利用者証明用電子証明書の発行の番号 (第37条3項)
    VERIFIER_TOKEN = 9  # 特定利用者証明検証者証明符号 (第38条の3)
    # A renewal mapping (old -> new of the same kind) is no provision of the law: the
    # ledger counts it apart, and the report lists it outside the nine.
    RENEWAL_MAPPING = 10

    @property
    def in_law(self) -> bool:
        """One of the nine provisions 第41条 reports."""
        return self is not Provision.RENEWAL_MAPPING


@dataclass(frozen=True, slots=True)
class Verifier:
    """A verifier as the signer registered it: who it is and what it may receive.

    `cert_fingerprints` are SHA-256 fingerprints of the mTLS client certificates that
    identify it (several, so a certificate can be renewed without a gap). `agreement`
    is the reference of the 取決め that 第38条の3第3項 requires before a verifier token.
    """

    id: str
    roles: frozenset[Role]
    cert_fingerprints: tuple[bytes, ...]
    agreement: str | None = None
    agreement_date: str | None = None  # YYYY-MM-DD: concluded, and effective from
    agreement_terms: str | None = None  # the agreed terms, or a reference to them
    agreement_until: str | None = None  # YYYY-MM-DD: the last day in effect; None: open

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "roles": sorted(r.name for r in self.roles),
            "cert_fingerprints": [f.hex() for f in self.cert_fingerprints],
            "agreement": self.agreement,
            "agreement_date": self.agreement_date,
            "agreement_terms": self.agreement_terms,
            "agreement_until": self.agreement_until,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Verifier:
        roles = data["roles"]
        prints = data["cert_fingerprints"]
        if not isinstance(roles, list) or not isinstance(prints, list):
            raise ValueError("verifier roles and cert_fingerprints must be lists")
        agreement, agreement_date = data.get("agreement"), data.get("agreement_date")
        terms, until = data.get("agreement_terms"), data.get("agreement_until")
        return cls(
            id=str(data["id"]),
            roles=frozenset(Role[str(r)] for r in roles),
            cert_fingerprints=tuple(bytes.fromhex(str(f)) for f in prints),
            agreement=None if agreement is None else str(agreement),
            agreement_date=None if agreement_date is None else str(agreement_date),
            agreement_terms=None if terms is None else str(terms),
            agreement_until=None if until is None else str(until),
        )
