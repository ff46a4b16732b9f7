"""RFC 6960 OCSP: a DER request in, a DER response out, signed by the delegated key.

Protocol code only: no I/O of its own. Status comes from a StatusSource, the
delegated OCSP-signer key and its certificates from a callable the composition
root wires to wherever they are kept. Signed answers to nonce-less requests are
kept in a ResponseCache by the request's bytes (`cached` finds one without parsing
the request); before signing one, the replica's store of pre-produced responses is
asked (responder/preproduced.py). A request with a nonce is always signed fresh.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from jpki_va.core.clock import Clock
from jpki_va.core.domain import CertKind, Status, micros, record_key
from jpki_va.server.pki import der, ocsp_wire
from jpki_va.server.pki.ocsp_wire import (
    CertStatus,
    MalformedRequest,
    ResponseStatus,
    ResponseWriter,
)
from jpki_va.server.responder.index_layout import issuer_lookup_keys
from jpki_va.server.responder.index_reader import IssuerEntry
from jpki_va.server.responder.ocsp_cache import NO_GENERATION, Kept, OcspReply, ResponseCache
from jpki_va.server.responder.ocsp_miss import served, usual_request
from jpki_va.server.responder.preproduced import (
    SERVE_MARGIN_US,
    Basis,
    PreproducedEntry,
    PreproducedStore,
    Served,
    basis_of,
    served_with,
)
from jpki_va.server.responder.status import (
    Answer,
    BadRequest,
    NotReady,
    PackedSource,
    Resolver,
    StatusSource,
    code_labels,
)

log = logging.getLogger(__name__)

_ECDSA_SHA256 = der.sequence(bytes.fromhex("06082a8648ce3d040302"))
_RSA_SHA256 = der.sequence(bytes.fromhex("06092a864886f70d01010b"), der.tlv(der.NULL, b""))

#: A signer certificate with less life left than this is "about to expire": not used.
MIN_SIGNER_REMAINING = timedelta(minutes=1)

#: A response's ETag: the last 16 bytes of its signature, in hex. The signature differs
#: whenever the signed bytes do, and its tail is as unpredictable as a hash of it
#: would be (ECDSA's s, an RSA signature's low bytes): no hash per signed answer.
_ETAG = slice(-16, None)


class _Unsuccessful(Exception):
    def __init__(self, status: ResponseStatus) -> None:
        self.status = status


@dataclass(frozen=True)
class DelegatedSigner:
    """The responder's OCSP key and, per issuer generation, the certificate for it."""

    key: CertificateIssuerPrivateKeyTypes
    certificates: dict[bytes, x509.Certificate]  # issuer key id -> delegated cert


@dataclass(frozen=True)
class OcspLimits:
    max_request_bytes: int = 16_384
    max_cert_ids: int = 64

    def __post_init__(self) -> None:
        if self.max_request_bytes < 64 or self.max_cert_ids < 1:
            raise ValueError("OCSP limits: request bytes >= 64 and CertIDs >= 1")


class OcspObserver(Protocol):
    """What the responder reports for metrics (the composition root wires it)."""

    def ocsp_answered(
        self, cache: str | None, preproduced: str | None, answers: tuple[tuple[str, str], ...]
    ) -> None:
        """One call per request answered, so the metrics take their lock once.

        `cache`: "hit", "miss" or "nonce" (None: no cache was asked); `preproduced`:
        "served", "stale" (signed live: not right now) or "missing" (signed live),
        None when the store was not asked; `answers`: (status, cause) per CertID
        answered, empty for an error status."""
        ...


class _Quiet:
    def ocsp_answered(
        self, cache: str | None, preproduced: str | None, answers: tuple[tuple[str, str], ...]
    ) -> None:
        pass


ERRORS = {status: ocsp_wire.unsuccessful(status) for status in ResponseStatus}


def _error(status: ResponseStatus) -> OcspReply:
    return OcspReply(ERRORS[status])


def malformed() -> OcspReply:
    """The answer to bytes `OcspResponder.read` could not read."""
    return _error(ResponseStatus.MALFORMED_REQUEST)


@dataclass(frozen=True, slots=True)
class _Delegated:
    """One delegated certificate as responses use it: its validity read once (each
    read of a certificate's dates builds new datetime objects) and its certs field."""

    not_before: datetime
    not_after: datetime
    certs: bytes  # the BasicOCSPResponse's certs [0] field carrying it


@dataclass(frozen=True)
class _Prepared:
    """Per delegated signer: what every response repeats, computed once."""

    signer: DelegatedSigner
    writer: ocsp_wire.ResponseWriter
    sign: Callable[[bytes], bytes]
    certificates: dict[bytes, _Delegated]  # issuer key id -> its delegated certificate


def _prepare(signer: DelegatedSigner) -> _Prepared:
    key = signer.key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = _ECDSA_SHA256
        ecdsa = ec.ECDSA(hashes.SHA256())

        def sign(data: bytes) -> bytes:
            return key.sign(data, ecdsa)

    elif isinstance(key, rsa.RSAPrivateKey):
        algorithm = _RSA_SHA256
        pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()

        def sign(data: bytes) -> bytes:
            return key.sign(data, pkcs1, sha256)

    else:
        raise TypeError(f"unsupported OCSP-signer key {type(key).__name__}")
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return _Prepared(
        signer,
        ocsp_wire.ResponseWriter(ocsp_wire.responder_key_hash(spki), algorithm),
        sign,
        {
            kid: _Delegated(
                c.not_valid_before_utc,
                c.not_valid_after_utc,
                ocsp_wire.certs_field([c.public_bytes(Encoding.DER)]),
            )
            for kid, c in signer.certificates.items()
        },
    )


def _single(cert_id: ocsp_wire.CertId, answer: Answer, next_update: datetime) -> bytes:
    """The SingleResponse of one answer, valid until `next_update`."""
    if answer.status is Status.GOOD:
        return ResponseWriter.single(cert_id.der, CertStatus.GOOD, answer.this_update, next_update)
    if answer.status is Status.REVOKED:
        assert answer.record is not None and answer.record.loss is not None
        loss = answer.record.loss
        return ResponseWriter.single(
            cert_id.der,
            CertStatus.REVOKED,
            answer.this_update,
            next_update,
            loss.time,
            int(loss.reason),
        )
    # Never issued, expired or not yet valid: OCSP has no word but "unknown", and an
    # expired certificate has lost effect, so it is never "good".
    return ResponseWriter.single(cert_id.der, CertStatus.UNKNOWN, answer.this_update, next_update)


def _basis(answers: list[Answer]) -> tuple[Basis, ...]:
    """What a response states about each certificate, times of validity aside."""
    return tuple([basis_of(a) for a in answers])


class OcspResponder:
    def __init__(
        self,
        source: StatusSource,
        resolver: Resolver,
        signer: Callable[[], DelegatedSigner | None],
        clock: Clock,
        *,
        cache: ResponseCache | None = None,
        store: PreproducedStore | None = None,
        limits: OcspLimits | None = None,
        observer: OcspObserver | None = None,
    ) -> None:
        self._source = source
        # Asked once (a runtime Protocol check costs microseconds): a source that hands
        # over index values lets a cache miss check a pre-produced entry without an Answer.
        self._packed = source if isinstance(source, PackedSource) else None
        self._resolver = resolver
        self._signer = signer
        self._clock = clock
        self._cache = cache
        self._store = store
        self._written: list[tuple[bytes, bytes]] = []  # live-signed, to write through
        self._issuer_hashes: dict[bytes, tuple[bytes, bytes]] = {}  # key id -> SHA-1 hashes
        self._limits = limits or OcspLimits()
        self._observer: OcspObserver = observer or _Quiet()
        self._prepared: _Prepared | None = None

    def read(self, data: bytes) -> ocsp_wire.OcspRequest | None:
        """The request in `data`, or None when it is oversized or malformed.

        Not remembered: a repeated request is found by its bytes in the cache
        (`cached`), and one that is not there is signed, which costs far more.
        """
        if len(data) > self._limits.max_request_bytes:
            return None
        usual = usual_request(data)  # compiled where it can be: most requests are this
        if usual is not None:
            return usual
        try:
            return ocsp_wire.parse_request(data, self._limits.max_cert_ids)
        except MalformedRequest as exc:
            log.debug("malformed OCSP request: %s", exc)
            return None

    def cached(self, data: bytes) -> Kept | None:
        """The kept answer to the DER request `data` while it is still true, with the
        issuer of each of its CertIDs (for the gate); None: read and answer it.

        `reuse` it once the caller may have it: it is counted as a hit only then.
        """
        cache = self._cache
        if cache is None or len(data) > self._limits.max_request_bytes:
            return None
        try:
            return cache.get(data, self._clock.now().timestamp(), self._basis_again)
        except NotReady:
            return None  # the path that reads the request says tryLater

    def reuse(self, kept: Kept) -> OcspReply:
        """The reply of what `cached` found, counted as a hit."""
        self._observer.ocsp_answered("hit", None, kept.reply.answers)
        return kept.reply

    def issuers(self, request: ocsp_wire.OcspRequest) -> tuple[IssuerEntry, ...]:
        """The issuer of each CertID of a request, in order, for `answer` to reuse.

        Empty when one is foreign: `answer` gives no status information then.
        """
        try:
            return self._resolve(request)
        except _Unsuccessful:
            return ()

    def respond(self, data: bytes) -> OcspReply:
        """The response to a DER OCSPRequest; never raises for bad input."""
        kept = self.cached(data)
        if kept is not None:
            return self.reuse(kept)
        request = self.read(data)
        return malformed() if request is None else self.answer(request, (), data)

    def answer(
        self,
        request: ocsp_wire.OcspRequest,
        issuers: tuple[IssuerEntry, ...] = (),
        data: bytes = b"",
    ) -> OcspReply:
        """The response to a request `read` returned; `issuers`, when given, what
        `issuers(request)` returned (each CertID is then not resolved again); `data`,
        the bytes it was read from, which key the cache (without them nothing is kept)
        and which `cached` was asked for first and did not find."""
        cache = self._cache if request.nonce is None and data else None
        now = self._clock.now()
        generation = NO_GENERATION
        result = None  # what the cache metric counts
        try:
            if cache is not None:
                # `cached(data)` missed just before: not asked again. The generation is
                # read before the statuses are, so `put` can tell whether a new full
                # index or signer came meanwhile.
                try:
                    generation = cache.generation()
                except NotReady:
                    raise _Unsuccessful(ResponseStatus.TRY_LATER) from None
                result = "miss"
            elif request.nonce is not None:
                result = "nonce"
            # One issuer answers for all of a request's CertIDs (`_issuer`).
            issuer = self._issuer(request, issuers)
            reply, produced = self._fresh(request, issuer, now)
        except _Unsuccessful as exc:
            self._observer.ocsp_answered(result, None, ())
            return _error(exc.status)
        self._observer.ocsp_answered(result, produced, reply.answers)
        if cache is not None and reply.cacheable:
            cache.put(data, reply, generation, (issuer,) * len(request.cert_ids))
        return reply

    def _resolve(self, request: ocsp_wire.OcspRequest) -> tuple[IssuerEntry, ...]:
        """Each CertID's issuer; unauthorized when one is foreign."""
        issuers = []
        try:
            for cert_id in request.cert_ids:
                found = self._resolver.issuer_by_hash(
                    cert_id.algorithm, cert_id.name_hash, cert_id.key_hash
                )
                if found is None:
                    raise _Unsuccessful(ResponseStatus.UNAUTHORIZED)
                issuers.append(found)
        except BadRequest:
            raise _Unsuccessful(ResponseStatus.MALFORMED_REQUEST) from None
        except NotReady:
            raise _Unsuccessful(ResponseStatus.TRY_LATER) from None
        return tuple(issuers)

    def _issuer(
        self, request: ocsp_wire.OcspRequest, issuers: tuple[IssuerEntry, ...]
    ) -> IssuerEntry:
        issuer: IssuerEntry | None = None
        for found in issuers or self._resolve(request):
            # One response has one signer, and a delegated signer speaks for the one
            # issuer that certified it (RFC 6960 §4.2.2.2): one issuer per request.
            if issuer is not None and found.key_id != issuer.key_id:
                log.info("OCSP request names CertIDs of several issuers")
                raise _Unsuccessful(ResponseStatus.UNAUTHORIZED)
            issuer = found
        assert issuer is not None
        return issuer

    def _prepared_signer(self) -> _Prepared | None:
        signer = self._signer()
        if signer is None:
            return None
        prepared = self._prepared
        if prepared is None or prepared.signer is not signer:
            prepared = self._prepared = _prepare(signer)
        return prepared

    def signer_id(self) -> bytes | None:
        """The ResponderID of the key it signs with now; None without one."""
        prepared = self._prepared_signer()
        return None if prepared is None else prepared.writer.responder_id

    def _answers(
        self, request: ocsp_wire.OcspRequest, issuer: IssuerEntry, now: datetime
    ) -> list[Answer]:
        """The source's answer about each CertID's certificate, `issuer` answering for all."""
        try:
            return [
                self._source.status(issuer.kind, cert_id.serial, now)
                for cert_id in request.cert_ids
            ]
        except BadRequest:
            raise _Unsuccessful(ResponseStatus.MALFORMED_REQUEST) from None
        except NotReady:
            raise _Unsuccessful(ResponseStatus.TRY_LATER) from None

    def _basis_again(self, data: bytes, issuers: tuple[IssuerEntry, ...]) -> tuple[object, ...]:
        """What a response to the kept request `data`, whose CertIDs `issuers` answer
        for, would say now; empty when none can be given. Read again (kept requests
        are not): once per entry after a delta, beside a status read per CertID."""
        request = self.read(data)
        if request is None:
            return ()
        try:
            issuer = self._issuer(request, issuers)
            return _basis(self._answers(request, issuer, self._clock.now()))
        except _Unsuccessful:
            return ()

    def _delegated(self, issuer: IssuerEntry, now: datetime) -> tuple[_Prepared, _Delegated]:
        """The current signer and its certificate for `issuer`, valid now."""
        prepared = self._prepared_signer()
        delegated = None if prepared is None else prepared.certificates.get(issuer.key_id)
        if (
            prepared is None
            or delegated is None
            or delegated.not_before > now
            or delegated.not_after - now < MIN_SIGNER_REMAINING
        ):
            # tryLater rather than a response whose signer certificate is expired, not
            # yet valid or about to expire: a verifier would reject it anyway.
            log.warning("no valid delegated OCSP-signer certificate for %s", issuer.key_id.hex())
            raise _Unsuccessful(ResponseStatus.TRY_LATER)
        return prepared, delegated

    def _fresh(
        self, request: ocsp_wire.OcspRequest, issuer: IssuerEntry, now: datetime
    ) -> tuple[OcspReply, str | None]:
        """The response to a request the per-worker cache did not answer: pre-produced
        when the store has a right one, otherwise signed now (and written through);
        and what the store was found to hold ("served", "stale", "missing"; None: not
        asked), for the metrics."""
        prepared, delegated = self._delegated(issuer, now)
        store = self._store
        key = b""
        answers = None
        produced = None
        if (
            store is not None
            and request.nonce is None
            and len(request.cert_ids) == 1
            and request.cert_ids[0].algorithm == "sha1"
        ):
            cert_id = request.cert_ids[0]
            key = record_key(issuer.kind, cert_id.serial)
            raw = store.raw(key)
            produced = "missing"
            if raw is not None:
                parts, answers = self._preproduced(
                    raw, key, request, issuer, prepared, delegated, now
                )
                if parts is not None:
                    # `served`'s parts: (body, thisUpdate µs, nextUpdate µs, signature,
                    # basis, label code); the body as below, without the certs field.
                    served_body, since, until, sealed, basis, code = parts
                    served_reply = OcspReply(
                        served_body,
                        cacheable=True,
                        this_update=since / 1_000_000,
                        next_update=until / 1_000_000,
                        etag=sealed[_ETAG].hex(),
                        answers=(code_labels(code),),
                        basis=(basis,),
                        certs=delegated.certs,
                    )
                    return served_reply, "served"
                produced = "stale"
        if answers is None:
            answers = self._answers(request, issuer, now)
        tbs, signature, this_update, next_update = self._signed(
            prepared, delegated, request.cert_ids, answers, now, request.nonce
        )
        body = prepared.writer.body(tbs, signature, len(delegated.certs))
        labels = tuple([a.labels for a in answers])
        if request.nonce is not None:
            return OcspReply(body + delegated.certs, answers=labels), produced
        if key:
            entry = _entry(
                tbs, signature, request.cert_ids[0].der, answers[0], this_update, next_update
            )
            self._written.append((key, entry.encode()))
        reply = OcspReply(
            # Without the certs field that ends it: kept in the cache, the delegated
            # certificate would be repeated in every entry (≈ 720 of ≈ 1,050 bytes).
            body,
            cacheable=True,
            this_update=this_update.timestamp(),
            next_update=next_update.timestamp(),
            etag=signature[_ETAG].hex(),
            answers=labels,
            basis=_basis(answers),
            certs=delegated.certs,
        )
        return reply, produced

    def _preproduced(
        self,
        raw: bytes,
        key: bytes,
        request: ocsp_wire.OcspRequest,
        issuer: IssuerEntry,
        prepared: _Prepared,
        delegated: _Delegated,
        now: datetime,
    ) -> tuple[Served | None, list[Answer] | None]:
        """The response the pre-produced entry `raw` makes about the one certificate
        `key` of `request`, when it is right now (`served`); and the answers, when
        they had to be made to judge it (they go on to be signed if it is not).

        Judged against the certificate's index value, undecoded, while no layer has
        to see the answer (no issuer compromise announced: `PackedSource.packed`);
        otherwise against the source's answer (a layer that counts answers, none of
        which is wired here today, counts them as it counts the source's)."""
        when = micros(now)
        certs_size = len(delegated.certs)
        cert_id = request.cert_ids[0].der
        writer = prepared.writer
        packed = self._packed
        try:
            batch = None if packed is None else packed.packed([key], when)
        except NotReady:
            raise _Unsuccessful(ResponseStatus.TRY_LATER) from None
        if batch is not None and not batch.observers:
            value = batch.values[0]
            return served(raw, value, when, cert_id, writer, certs_size, SERVE_MARGIN_US), None
        answers = self._answers(request, issuer, now)
        basis = basis_of(answers[0])
        return served_with(raw, basis, when, cert_id, writer, certs_size, SERVE_MARGIN_US), answers

    def written(self) -> list[tuple[bytes, bytes]]:
        """The live-signed answers since the last call, as store entries: for the
        worker's loop to write through in one transaction, off the request path."""
        written, self._written = self._written, []
        return written

    def preproduce(
        self,
        kind: CertKind,
        serial: int,
        issuers: Mapping[bytes, IssuerEntry],
        existing: PreproducedEntry | None,
        now: datetime,
        ahead: float,
    ) -> tuple[str, bytes | None]:
        """For the producer: ("kept", None) when `existing` is still right and not due,
        ("produced" or "stale", the new entry) when signed now, ("skipped", None) when
        no response can be made (not held, or no valid delegated certificate).

        Due: less than `ahead` seconds to its nextUpdate while the index now gives a
        later one (a re-signed CRL), so clients are never left with none to use.
        """
        try:
            answer = self._source.status(kind, serial, now)
        except (BadRequest, NotReady):
            return "skipped", None
        issuer = None if answer.record is None else issuers.get(answer.record.issuer_key_id)
        if issuer is None:
            return "skipped", None
        cert_id = self._cert_id(issuer, serial)
        try:
            prepared, delegated = self._delegated(issuer, now)
        except _Unsuccessful:
            return "skipped", None
        if (
            existing is not None
            and existing.basis == basis_of(answer)
            and existing.signed_by(prepared.writer.responder_id)
            and existing.names(cert_id)
        ):
            later = micros(min(answer.next_update, delegated.not_after)) > existing.next_update
            if not (later and existing.next_update - micros(now) < ahead * 1_000_000):
                return "kept", None
        ids = (ocsp_wire.CertId(cert_id, "sha1", b"", b"", serial),)
        tbs, signature, this_update, next_update = self._signed(
            prepared, delegated, ids, [answer], now, None
        )
        entry = _entry(tbs, signature, cert_id, answer, this_update, next_update)
        return ("produced" if existing is None else "stale"), entry.encode()

    def _cert_id(self, issuer: IssuerEntry, serial: int) -> bytes:
        hashes_ = self._issuer_hashes.get(issuer.key_id)
        if hashes_ is None:
            lookup = issuer_lookup_keys(issuer.certificate)[0]  # b"sha1:" + name + key
            hashes_ = self._issuer_hashes[issuer.key_id] = (lookup[5:25], lookup[25:45])
        return ocsp_wire.sha1_cert_id(*hashes_, serial)

    def _signed(
        self,
        prepared: _Prepared,
        delegated: _Delegated,
        cert_ids: tuple[ocsp_wire.CertId, ...],
        answers: list[Answer],
        now: datetime,
        nonce: bytes | None,
    ) -> tuple[bytes, bytes, datetime, datetime]:
        """(tbsResponseData, its signature, thisUpdate, nextUpdate) of the answers."""
        # A response is never valid longer than the certificate that vouches for it.
        not_after = delegated.not_after
        this_update = max(a.this_update for a in answers)
        next_update = min(a.next_update for a in answers)
        if max(a.next_update for a in answers) > not_after:
            # Renewal (ResponderConfig.ocsp_renew_at) runs early so this does not happen.
            log.warning("delegated OCSP-signer certificate expires before nextUpdate; clamped")
            next_update = min(next_update, not_after)
        singles = [
            _single(cert_id, answer, min(answer.next_update, not_after))
            for cert_id, answer in zip(cert_ids, answers, strict=True)
        ]
        tbs = prepared.writer.tbs(now, singles, nonce)
        return tbs, prepared.sign(tbs), this_update, next_update


def _entry(
    tbs: bytes,
    signature: bytes,
    cert_id: bytes,
    answer: Answer,
    this_update: datetime,
    next_update: datetime,
) -> PreproducedEntry:
    return PreproducedEntry(
        micros(this_update),
        micros(next_update),
        basis_of(answer),
        tbs.index(cert_id),
        tbs,
        signature,
    )
