"""`jpki-va bench datagen`: a registry and a signed snapshot of national shape.

Holders are spread over ~1,700 municipality partitions of skewed sizes; each has
CARD_SIGN and CARD_AUTH, a share also MOBILE_SIGN and (of those) MOBILE_AUTH.
Losses follow the law: an address change ends the signing certificates only
(第12条), a deletion of the resident record ends both (第31条), a lost card both,
and each card loss cascades to the mobile certificate of the same purpose
(第16条の13, 第35条の13).

Scale comes from never doing per-certificate work twice: attributes are drawn as
numpy arrays, serials are drawn, de-duplicated and sorted once, and the registry is
written in its own value format with sorted `append=True` puts and one sync at the
end. Only what a verifier sees is signed through the HSM: the first full snapshot
is published by the signer's own Publisher (CRLs and manifest), plus a few sample
certificates and the delegated OCSP signer of the peers. The other certificates
exist as issuance records without a certificate body.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import multiprocessing
import resource
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import numpy.typing as npt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from jpki_va import hsm
from jpki_va.bench.dataset import POOL, DataSet, Pool
from jpki_va.client._ocsp import build_request, issuer_hashes
from jpki_va.core.clock import Clock, SystemClock
from jpki_va.core.domain import CertKind, CrlReason, LossCause, Role, Verifier, record_key
from jpki_va.server.base.progress import Progress
from jpki_va.server.law.issuer_compromise import CARD_OF
from jpki_va.server.law.loss_recording import DEFAULT_REASON
from jpki_va.server.model.holder import Holder
from jpki_va.server.model.registry_values import IssuerRecord
from jpki_va.server.pki import cert_profile
from jpki_va.server.pki.cert_profile import ProfileSettings
from jpki_va.server.registry.codec import (
    encode_certificate_value,
    encode_event_value,
    encode_holder_value,
)
from jpki_va.server.registry.transactions import Registry
from jpki_va.server.signer.authority import Authority, AuthoritySettings
from jpki_va.server.signer.ceremony import bootstrap
from jpki_va.server.signer.publisher import Publisher

log = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]

YEAR = 365 * 86400
CHUNK = 500_000
SECOND = 1_000_000  # registry times are microseconds
RESIDENT_BASE = 10_000_000_000  # resident codes are 11 digits

# Plaintext load on loopback acts as this verifier (the responder's --loopback-verifier);
# it holds every role, so every kind may be asked about.
BENCH_VERIFIER = "bench-load"

FAMILY = ("佐藤", "鈴木", "高橋", "田中", "伊藤", "渡辺", "山本", "中村", "小林", "加藤")
GIVEN = ("太郎", "花子", "一郎", "美咲", "翔太", "陽菜", "健", "結衣", "大輔", "さくら")
SEX = ("男", "女")


@dataclass(frozen=True)
class Shape:
    """How the population looks. Rates are shares of holders over the data set's life."""

    partitions: int = 1700
    mobile_sign: float = 0.27  # holders with MOBILE_SIGN
    mobile_auth: float = 0.85  # of those, also MOBILE_AUTH
    lifetime_years: float = 5.2  # notBefore spread; > validity leaves some expired
    # CARD_SIGN: an address (or name...) change ends it; so does everything else.
    address_change: float = 0.125
    card_lost: float = 0.025  # ends both card certificates (HOLDER_REQUEST)
    deletion_share: float = 0.06  # of resident changes: a deletion, which ends CARD_AUTH too
    record_error: float = 0.0005
    key_compromise: float = 0.0001
    phone_lost: float = 0.03  # of mobile holders: ends both mobile certificates
    validity: timedelta = field(default_factory=lambda: timedelta(days=5 * 365))


@dataclass
class _Kind:
    """One kind's records in key order."""

    kind: CertKind
    serial: npt.NDArray[np.uint64]
    holder: I64
    not_before: I64
    not_after: I64
    lost_at: I64  # 0: in effect
    cause: npt.NDArray[np.uint8]  # LossCause or 0


@dataclass(frozen=True)
class Population:
    holders: int
    partition_codes: npt.NDArray[np.int64]  # by partition index
    partition: npt.NDArray[np.int32]  # by holder: partition index
    family: npt.NDArray[np.int8]
    given: npt.NDArray[np.int8]
    sex: npt.NDArray[np.int8]
    birth_day: I64  # days since 1970
    kinds: dict[CertKind, _Kind]


def municipality_codes(count: int) -> list[int]:
    """`count` six-digit codes shaped like JIS X 0401/0402 (prefecture, city, check digit)."""
    codes = []
    per_prefecture = -(-count // 47)
    for i in range(count):
        prefecture = 1 + i // per_prefecture
        city = 100 + 2 * (i % per_prefecture)
        five = prefecture * 1000 + city
        digits = [int(d) for d in f"{five:05d}"]
        check = (11 - sum(d * w for d, w in zip(digits, (6, 5, 4, 3, 2), strict=True)) % 11) % 10
        codes.append(five * 10 + check)
    return codes


def _uniform_between(rng: np.random.Generator, low: I64, high: I64) -> I64:
    span = np.maximum(high - low, 0)
    drawn: I64 = low + (rng.random(len(low)) * span).astype(np.int64)
    return drawn


def draw_population(  # noqa: PLR0915 (one rule after another, in the law's order)
    holders: int, seed: int, now: int, shape: Shape
) -> Population:
    """Every holder's attributes and certificates, as arrays (no I/O, deterministic)."""
    if holders < 1:
        raise ValueError("holders must be at least 1")
    rng = np.random.default_rng(seed)
    partitions = min(shape.partitions, holders)
    codes = np.array(municipality_codes(partitions), dtype=np.int64)
    weights = rng.lognormal(0.0, 1.2, partitions)
    partition = rng.choice(partitions, size=holders, p=weights / weights.sum()).astype(np.int32)
    validity = int(shape.validity.total_seconds())

    card_nb = now - (rng.random(holders) * shape.lifetime_years * YEAR).astype(np.int64)
    card_na = card_nb + validity
    card_end = np.minimum(card_na, now)
    # Card signing: resident change, card lost, record error, issuer compromise.
    draw = rng.random(holders)
    edges = np.cumsum([shape.address_change, shape.card_lost, shape.record_error])
    sign_cause = np.zeros(holders, dtype=np.uint8)
    sign_cause[draw < edges[2]] = LossCause.RECORD_ERROR
    sign_cause[draw < edges[1]] = LossCause.HOLDER_REQUEST
    sign_cause[draw < edges[0]] = LossCause.RESIDENT_CHANGE
    sign_cause[(sign_cause == 0) & (rng.random(holders) < shape.key_compromise)] = (
        LossCause.ISSUER_KEY_COMPROMISE
    )
    # Every cause of the law appears, however small the data set.
    for rare in (LossCause.RECORD_ERROR, LossCause.ISSUER_KEY_COMPROMISE):
        free = np.nonzero(sign_cause == 0)[0]
        if not (sign_cause == rare).any() and len(free):
            sign_cause[free[rng.integers(0, len(free))]] = rare
    sign_at = np.where(sign_cause > 0, _uniform_between(rng, card_nb, card_end), 0)
    # Card auth: a lost card and a deletion end it with the signing one (same event);
    # an address change alone does not (第31条).
    deletion = (sign_cause == LossCause.RESIDENT_CHANGE) & (
        rng.random(holders) < shape.deletion_share
    )
    auth_cause = np.zeros(holders, dtype=np.uint8)
    auth_cause[deletion] = LossCause.RESIDENT_CHANGE
    auth_cause[sign_cause == LossCause.HOLDER_REQUEST] = LossCause.HOLDER_REQUEST
    own = (auth_cause == 0) & (rng.random(holders) < shape.record_error / 2)
    auth_cause[own] = LossCause.RECORD_ERROR
    auth_at = np.where(auth_cause > 0, sign_at, 0)
    auth_at[own] = _uniform_between(rng, card_nb[own], card_end[own])

    # Mobile: issued while both card certificates were in effect (第16条の2, 第35条の2).
    has_ms = rng.random(holders) < shape.mobile_sign
    has_ma = has_ms & (rng.random(holders) < shape.mobile_auth)
    mobile_end = card_end.copy()
    for at in (sign_at, auth_at):
        mobile_end = np.where(at > 0, np.minimum(mobile_end, at), mobile_end)
    mobile_nb = _uniform_between(rng, card_nb, mobile_end - 60)
    mobile_na = np.minimum(mobile_nb + validity, card_na)
    phone_lost = rng.random(holders) < shape.phone_lost
    phone_at = _uniform_between(rng, mobile_nb, np.minimum(mobile_end, mobile_na))

    def mobile(
        card_cause: npt.NDArray[np.uint8], card_at: I64
    ) -> tuple[I64, npt.NDArray[np.uint8]]:
        cause = np.zeros(holders, dtype=np.uint8)
        at = np.zeros(holders, dtype=np.int64)
        # The card's loss cascades while the mobile certificate is still valid.
        cascade = (card_cause > 0) & (card_at < mobile_na)
        cause[cascade] = LossCause.CARD_CERT_LOST_EFFECT
        at[cascade] = card_at[cascade]
        # A lost phone comes first: mobile_end is before any card loss.
        cause[phone_lost] = LossCause.HOLDER_REQUEST
        at[phone_lost] = phone_at[phone_lost]
        return at, cause

    ms_at, ms_cause = mobile(sign_cause, sign_at)
    ma_at, ma_cause = mobile(auth_cause, auth_at)
    per_kind = {
        CertKind.CARD_SIGN: (np.ones(holders, bool), card_nb, card_na, sign_at, sign_cause),
        CertKind.CARD_AUTH: (np.ones(holders, bool), card_nb, card_na, auth_at, auth_cause),
        CertKind.MOBILE_SIGN: (has_ms, mobile_nb, mobile_na, ms_at, ms_cause),
        CertKind.MOBILE_AUTH: (has_ma, mobile_nb, mobile_na, ma_at, ma_cause),
    }
    total = sum(int(v[0].sum()) for v in per_kind.values())
    serials = _unique_serials(rng, total)
    kinds: dict[CertKind, _Kind] = {}
    offset = 0
    for kind, (has, nb, na, at, cause) in per_kind.items():
        who = np.nonzero(has)[0].astype(np.int64)
        mine = serials[offset : offset + len(who)]
        offset += len(who)
        order = np.argsort(mine, kind="stable")
        h = who[order]
        kinds[kind] = _Kind(
            kind=kind,
            serial=mine[order],
            holder=h,
            not_before=nb[h],
            not_after=na[h],
            lost_at=at[h],
            cause=cause[h],
        )
    return Population(
        holders=holders,
        partition_codes=codes,
        partition=partition,
        family=rng.integers(0, len(FAMILY), holders, dtype=np.int8),
        given=rng.integers(0, len(GIVEN), holders, dtype=np.int8),
        sex=rng.integers(0, 2, holders, dtype=np.int8),
        birth_day=rng.integers(-20000, 12000, holders, dtype=np.int64),
        kinds=kinds,
    )


def _unique_serials(rng: np.random.Generator, count: int) -> npt.NDArray[np.uint64]:
    """`count` distinct 8-octet serials in random order, shaped like the signer's."""
    pool = np.empty(0, dtype=np.uint64)
    while len(pool) < count:
        more = rng.integers(1 << 62, 1 << 63, size=count - len(pool) + 16, dtype=np.int64)
        pool = _sorted_distinct(np.concatenate([pool, more.astype(np.uint64)]))
    return rng.permutation(pool)[:count]


def _sorted_distinct(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """np.unique's result by one sort: newer numpy's hash-based unique is ~10 x slower
    on tens of millions of random 64-bit values."""
    values = np.sort(values)
    if len(values) == 0:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    distinct: npt.NDArray[np.uint64] = values[keep]
    return distinct


def _dt(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass
class GenerateResult:
    info: dict[str, Any]
    timings: dict[str, float]


def _cpu() -> float:
    """CPU seconds of this process and of its helper processes that have ended (the
    registry's encoder, the links pass): on a shared machine wall time only bounds."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def phase(self, name: str) -> Callable[[], None]:
        start, start_cpu = time.perf_counter(), _cpu()

        def done() -> None:
            self.timings[name] = round(time.perf_counter() - start, 3)
            self.cpu[name] = round(_cpu() - start_cpu, 3)
            log.info(
                "datagen: %s took %.1f s (%.1f s of CPU)", name, self.timings[name], self.cpu[name]
            )

        return done


def generate(  # noqa: PLR0915 (the phases in order, each timed)
    out: Path,
    holders: int,
    *,
    seed: int,
    hsm_config: hsm.HsmConfig,
    hsm_info: dict[str, Any],
    label_prefix: str = "jpki-va",
    shape: Shape | None = None,
    samples: int = 32,
    pool_size: int = 50_000,
    http_requests: int = 20_000,
    clock: Clock | None = None,
    base_url: str = "http://127.0.0.1:8080",
) -> GenerateResult:
    """Write a complete data set into `out` (which must not hold one already)."""
    shape = shape or Shape()
    clock = clock or SystemClock()
    ds = DataSet(out)
    if ds.info_file.exists() or ds.registry_dir.exists():
        raise FileExistsError(f"{out} already holds a data set")
    timer = _Timer()
    now_dt = clock.now().replace(microsecond=0)
    now = int(now_dt.timestamp())
    settings = ProfileSettings(base_url=base_url)

    done = timer.phase("draw population")
    population = draw_population(holders, seed, now, shape)
    done()

    token = hsm.Hsm.open(hsm_config)
    try:
        registry = Registry(ds.registry_dir)
        try:
            done = timer.phase("key ceremony")
            bootstrap(token, registry, clock, AuthoritySettings(label_prefix=label_prefix))
            authority = Authority(token, registry)
            issuers = authority.issuers()
            root = authority.root()
            done()
        finally:
            registry.close()
        ds.root_pem.write_bytes(root.certificate.public_bytes(Encoding.PEM))
        issuer_of = {r.kind: r for r in issuers if r.kind is not None}

        done = timer.phase("sample certificates")
        sample_der = _sign_samples(ds, population, authority, issuer_of, settings, samples, now)
        done()

        done = timer.phase("registry")
        total = sum(len(k.serial) for k in population.kinds.values())
        _write_registry(ds, population, issuer_of, sample_der, total)
        done()

        done = timer.phase("snapshot")
        sequence = _publish(ds, token, clock, settings)
        done()

        done = timer.phase("pool and peers")
        rng = np.random.default_rng(seed + 1)
        pool = _pool(population, rng, pool_size)
        (ds.root / POOL).write_text(json.dumps(pool.to_json()))
        peer_files = _peer_inputs(
            ds, pool, authority, issuer_of[CertKind.CARD_SIGN], rng, http_requests, now_dt
        )
        done()
    finally:
        token.close()

    losses: dict[str, dict[str, int]] = {}
    for kind, k in population.kinds.items():
        causes = np.bincount(k.cause, minlength=6)
        losses[kind.name] = {LossCause(c).name: int(causes[c]) for c in range(1, 6) if causes[c]}
    info: dict[str, Any] = {
        "format": "jpki-va-bench-dataset/1",
        "holders": holders,
        "seed": seed,
        "created_at": now_dt.isoformat(),
        "partitions": len(population.partition_codes),
        "certificates": {k.name: len(v.serial) for k, v in population.kinds.items()},
        "certificate_total": total,
        "losses": losses,
        "loss_total": int(sum(int((v.cause > 0).sum()) for v in population.kinds.values())),
        "expired_total": int(
            sum(int((v.not_after < now).sum()) for v in population.kinds.values())
        ),
        "snapshot_sequence": sequence,
        "label_prefix": label_prefix,
        "hsm": hsm_info,
        "samples": [s for s in sample_der.values() if "file" in s],
        "peers": peer_files,
        "timings": timer.timings,
        "cpu_seconds": timer.cpu,
        "sizes": {
            "registry_bytes": _du(ds.registry_dir),
            "snapshot_bytes": _du(ds.snapshot_dir),
        },
    }
    ds.info_file.write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n")
    return GenerateResult(info, timer.timings)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _holder(pop: Population, h: int) -> Holder:
    code = int(pop.partition_codes[pop.partition[h]])
    birth = datetime(1970, 1, 1) + timedelta(days=int(pop.birth_day[h]))
    return Holder(
        name=f"{FAMILY[pop.family[h]]} {GIVEN[pop.given[h]]}",
        address=f"{code:06d} {1 + h % 9}-{1 + h % 31}-{1 + h % 17}",
        birth_date=birth.date().isoformat(),
        sex=SEX[pop.sex[h]],
    )


def _sign_samples(
    ds: DataSet,
    pop: Population,
    authority: Authority,
    issuer_of: dict[CertKind, IssuerRecord],
    settings: ProfileSettings,
    count: int,
    now: int,
) -> dict[tuple[CertKind, int], dict[str, Any]]:
    """Real certificates for a few records, signed by the HSM, for checks by certificate.

    They share one holder key: the load needs their bytes, not their keys.
    """
    ds.samples_dir.mkdir(parents=True, exist_ok=True)
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    out: dict[tuple[CertKind, int], dict[str, Any]] = {}
    per_kind = max(1, count // len(CertKind))
    with Progress("sample certificates", per_kind * len(CertKind)) as bar:
        for kind, k in pop.kinds.items():
            issuer = issuer_of[kind]
            key = authority.key(issuer)
            picks = np.linspace(
                0, len(k.serial) - 1, num=min(per_kind, len(k.serial)), dtype=np.int64
            )
            for j in picks.tolist():
                serial = int(k.serial[j])
                h = int(k.holder[j])
                code = int(pop.partition_codes[pop.partition[h]])
                cert = cert_profile.end_entity_certificate(
                    settings,
                    key,
                    issuer.certificate,
                    kind=kind,
                    public_key=public,
                    serial=serial,
                    holder=_holder(pop, h),
                    partition=f"{code:06d}",
                    not_before=_dt(int(k.not_before[j])),
                    not_after=_dt(int(k.not_after[j])),
                )
                der = cert.public_bytes(Encoding.DER)
                name = f"{kind.slug}-{serial:016X}.pem"
                (ds.samples_dir / name).write_bytes(cert.public_bytes(Encoding.PEM))
                lost = int(k.cause[j]) > 0
                expired = int(k.not_after[j]) < now
                out[(kind, serial)] = {
                    "kind": kind.name,
                    "serial": f"{serial:016X}",
                    "file": f"samples/{name}",
                    "expected": "REVOKED" if lost else "EXPIRED" if expired else "GOOD",
                    "der": base64.b64encode(der).decode(),
                }
                bar.advance()
    issuer_files = {}
    for kind, issuer in issuer_of.items():
        path = ds.samples_dir / f"issuer-{kind.slug}.pem"
        path.write_bytes(issuer.certificate.public_bytes(Encoding.PEM))
        issuer_files[kind.name] = path.name
    for entry in out.values():
        entry["issuer"] = f"samples/{issuer_files[entry['kind']]}"
    return out


def _write_registry(
    ds: DataSet,
    pop: Population,
    issuer_of: dict[CertKind, IssuerRecord],
    samples: dict[tuple[CertKind, int], dict[str, Any]],
    total: int,
    *,
    chunk: int = CHUNK,
    helper: bool = True,
) -> None:
    """Certificates, holders, loss events and counters, in the registry's value format.

    The values come from the registry's own encoders (from primitives, without
    dataclasses); the bulk load appends sorted keys with sync off and syncs once.
    """
    Registry(ds.registry_dir).close()  # creates every database the signer opens
    env = lmdb.open(
        str(ds.registry_dir), map_size=1 << 40, max_dbs=32, subdir=True, sync=False, metasync=False
    )
    try:
        dbs = {
            name: env.open_db(name.encode())
            for name in ("certs", "holders", "events", "meta", "issued")
        }
        partition_text = [f"{c:06d}".encode() for c in pop.partition_codes.tolist()]
        names = [[f"{f} {g}".encode() for g in GIVEN] for f in FAMILY]
        sex = [s.encode() for s in SEX]
        serial_of: dict[CertKind, npt.NDArray[np.uint64]] = {}
        cause_of: dict[CertKind, npt.NDArray[np.uint8]] = {}
        for kind, k in pop.kinds.items():
            serial_of[kind] = np.zeros(pop.holders, dtype=np.uint64)
            serial_of[kind][k.holder] = k.serial
            cause_of[kind] = np.zeros(pop.holders, dtype=np.uint8)
            cause_of[kind][k.holder] = k.cause
        encoding = _Encoding(partition_text, names, sex, _sample_ders(samples))
        chunks = [
            functools.partial(
                _cert_chunk, k, slice(start, start + chunk), pop, issuer_of[kind].key_id,
                serial_of, cause_of,
            )
            for kind, k in pop.kinds.items()
            for start in range(0, len(k.serial), chunk)
        ]  # fmt: skip
        with Progress("registry certificates", total) as bar:
            for items in _encoded(chunks, encoding, helper=helper and len(chunks) > 1):
                with env.begin(write=True, db=dbs["certs"]) as txn:
                    added = txn.cursor().putmulti(items, append=True)[1]
                bar.advance(added)
        columns = [serial_of[kind].tolist() for kind in CertKind]
        with Progress("registry holders", pop.holders) as bar:
            for start in range(0, pop.holders, CHUNK):
                stop = min(start + CHUNK, pop.holders)
                with env.begin(write=True, db=dbs["holders"]) as txn:
                    txn.cursor().putmulti(_holder_items(columns, start, stop), append=True)
                bar.advance(stop - start)
        del columns
        events = _event_order(pop)
        with Progress("registry loss events", len(events[0])) as bar:
            for start in range(0, len(events[0]), CHUNK):
                with env.begin(write=True, db=dbs["events"]) as txn:
                    txn.cursor().putmulti(
                        _event_items(
                            pop, events, start, issuer_of, partition_text, serial_of, cause_of
                        ),
                        append=True,
                    )
                bar.advance(min(CHUNK, len(events[0]) - start))
        # The issuance order (delta snapshots carry what was issued since): by notBefore.
        kinds = np.concatenate(
            [np.full(len(k.serial), int(kind), np.uint8) for kind, k in pop.kinds.items()]
        )
        serials = np.concatenate([k.serial for k in pop.kinds.values()])
        order = np.argsort(
            np.concatenate([k.not_before for k in pop.kinds.values()]), kind="stable"
        )
        with Progress("registry issuance order", total) as bar:
            for start in range(0, total, CHUNK):
                rows = order[start : start + CHUNK]
                with env.begin(write=True, db=dbs["issued"]) as txn:
                    pairs = zip(kinds[rows].tolist(), serials[rows].tolist(), strict=True)
                    txn.cursor().putmulti(
                        [
                            (
                                (start + n + 1).to_bytes(8, "big"),
                                bytes([kind]) + bytes(12) + serial.to_bytes(8, "big"),
                            )
                            for n, (kind, serial) in enumerate(pairs)
                        ],
                        append=True,
                    )
                bar.advance(len(rows))
        with env.begin(write=True, db=dbs["meta"]) as txn:
            txn.put(b"issued", str(total).encode())
            txn.put(b"event", str(len(events[0])).encode())
        env.sync(True)
    finally:
        env.close()


@dataclass(frozen=True)
class _Encoding:
    """What every chunk's values share (sent once to the helper process)."""

    partition_text: list[bytes]
    names: list[list[bytes]]
    sex: list[bytes]
    samples: dict[tuple[int, int], bytes]  # (kind, serial) -> certificate DER


@dataclass(frozen=True)
class _CertChunk:
    """One chunk of one kind's records in key order: the column slices its values need
    (numpy: cheap to send to the helper process, where they become Python values)."""

    kind: CertKind
    kid: bytes
    serials: npt.NDArray[np.uint64]
    holders: I64
    not_before: I64  # s
    not_after: I64
    lost: I64
    causes: npt.NDArray[np.uint8]
    partitions: npt.NDArray[np.int32]
    family: npt.NDArray[np.int8]
    given: npt.NDArray[np.int8]
    sex: npt.NDArray[np.int8]
    birth_day: I64
    card_kind: int  # 0: no card certificate
    card_serials: npt.NDArray[np.uint64] | None
    card_causes: npt.NDArray[np.uint8] | None


def _sample_ders(
    samples: dict[tuple[CertKind, int], dict[str, Any]],
) -> dict[tuple[int, int], bytes]:
    return {(int(k), serial): base64.b64decode(s["der"]) for (k, serial), s in samples.items()}


def _cert_chunk(
    k: _Kind,
    part: slice,
    pop: Population,
    kid: bytes,
    serial_of: dict[CertKind, npt.NDArray[np.uint64]],
    cause_of: dict[CertKind, npt.NDArray[np.uint8]],
) -> _CertChunk:
    who = k.holder[part]
    card = CARD_OF.get(k.kind)
    return _CertChunk(
        kind=k.kind,
        kid=kid,
        serials=k.serial[part],
        holders=who,
        not_before=k.not_before[part],
        not_after=k.not_after[part],
        lost=k.lost_at[part],
        causes=k.cause[part],
        partitions=pop.partition[who],
        family=pop.family[who],
        given=pop.given[who],
        sex=pop.sex[who],
        birth_day=pop.birth_day[who],
        card_kind=0 if card is None else int(card),
        card_serials=None if card is None else serial_of[card][who],
        card_causes=None if card is None else cause_of[card][who],
    )


_REASONS = [0] + [int(DEFAULT_REASON[LossCause(c)]) for c in range(1, 6)]
_CASCADE = int(LossCause.CARD_CERT_LOST_EFFECT)


def _cert_items(c: _CertChunk, e: _Encoding) -> list[tuple[bytes, bytes]]:
    """(key, registry value) of one chunk, by the registry's own encoder."""
    kind, kind_value = c.kind, int(c.kind)
    serials = c.serials.tolist()
    holders = c.holders.tolist()
    nb = (c.not_before * SECOND).tolist()
    na = (c.not_after * SECOND).tolist()
    lost = (c.lost * SECOND).tolist()
    causes = c.causes.tolist()
    parts = c.partitions.tolist()
    fam = c.family.tolist()
    giv = c.given.tolist()
    sx = c.sex.tolist()
    births = np.datetime_as_string(c.birth_day.astype("datetime64[D]")).tolist()
    card_serials = None if c.card_serials is None else c.card_serials.tolist()
    card_causes = None if c.card_causes is None else c.card_causes.tolist()
    items = []
    for i, serial in enumerate(serials):
        h = holders[i]
        p = e.partition_text[parts[i]]
        cause = causes[i]
        cascaded = cause == _CASCADE
        items.append(
            (
                record_key(kind, serial),
                encode_certificate_value(
                    kind=kind_value,
                    serial=serial,
                    issuer_key_id=c.kid,
                    partition=p,
                    not_before=nb[i],
                    not_after=na[i],
                    resident_code=b"%011d" % (RESIDENT_BASE + h),
                    name=e.names[fam[i]][giv[i]],
                    address=b"%s %d-%d-%d" % (p, 1 + h % 9, 1 + h % 31, 1 + h % 17),
                    birth_date=births[i].encode(),
                    sex=e.sex[sx[i]],
                    certificate_der=e.samples.get((kind_value, serial), b""),
                    loss_time=lost[i],
                    cause=cause,
                    reason=_REASONS[cause],
                    card_serial=None if card_serials is None else card_serials[i],
                    trigger_kind=c.card_kind if cascaded else 0,
                    trigger_serial=card_serials[i] if cascaded and card_serials else 0,
                    trigger_cause=card_causes[i] if cascaded and card_causes else 0,
                ),
            )
        )
    return items


_helper_encoding: _Encoding | None = None  # the helper process's copy


def _helper_start(encoding: _Encoding) -> None:
    global _helper_encoding  # noqa: PLW0603 (set once per helper process)
    _helper_encoding = encoding


def _helper_items(chunk: _CertChunk) -> list[tuple[bytes, bytes]]:
    assert _helper_encoding is not None
    return _cert_items(chunk, _helper_encoding)


def _encoded(
    chunks: Sequence[Callable[[], _CertChunk]], encoding: _Encoding, *, helper: bool
) -> Iterator[list[tuple[bytes, bytes]]]:
    """Each chunk's items, in order. With `helper`, a second process encodes every other
    chunk while this one encodes and writes the rest: the values are the same (one
    encoder, one order), the registry phase takes about half the encoding time."""
    if not helper:
        for make in chunks:
            yield _cert_items(make(), encoding)
        return
    # spawn, not fork: the HSM token's sessions must not be inherited.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, context, _helper_start, (encoding,)) as pool:
        pending: dict[int, Future[list[tuple[bytes, bytes]]]] = {}
        for i, make in enumerate(chunks):
            ahead = i + 1 if i % 2 == 0 else i + 2  # the helper's next (odd) chunk
            if ahead < len(chunks) and ahead not in pending:
                pending[ahead] = pool.submit(_helper_items, chunks[ahead]())
            yield pending.pop(i).result() if i % 2 else _cert_items(make(), encoding)


def _holder_items(columns: list[list[int]], start: int, stop: int) -> Iterator[tuple[bytes, bytes]]:
    """resident code -> the record keys of the holder's certificates, in kind order."""
    kinds = list(CertKind)
    for h in range(start, stop):
        keys = [
            record_key(kind, serials[h])
            for kind, serials in zip(kinds, columns, strict=True)
            if serials[h]
        ]
        yield b"%011d" % (RESIDENT_BASE + h), encode_holder_value(keys)


def _event_order(pop: Population) -> tuple[I64, npt.NDArray[np.uint8], I64]:
    """(kind, index in kind) of every loss, in the order the registry recorded them."""
    kinds, idx, times = [], [], []
    for kind, k in pop.kinds.items():
        lost = np.nonzero(k.cause > 0)[0]
        kinds.append(np.full(len(lost), int(kind), dtype=np.uint8))
        idx.append(lost.astype(np.int64))
        times.append(k.lost_at[lost])
    kind_a = np.concatenate(kinds) if kinds else np.zeros(0, np.uint8)
    idx_a = np.concatenate(idx) if idx else np.zeros(0, np.int64)
    time_a = np.concatenate(times) if times else np.zeros(0, np.int64)
    # A card loss and its cascade share a time; the card's event comes first.
    order = np.lexsort((idx_a, kind_a, time_a))
    return idx_a[order], kind_a[order], time_a[order]


def _event_items(
    pop: Population,
    events: tuple[I64, npt.NDArray[np.uint8], I64],
    start: int,
    issuer_of: dict[CertKind, IssuerRecord],
    partition_text: list[bytes],
    serial_of: dict[CertKind, npt.NDArray[np.uint64]],
    cause_of: dict[CertKind, npt.NDArray[np.uint8]],
) -> Iterator[tuple[bytes, bytes]]:
    """(sequence, registry loss event value); recorded at the time of the loss."""
    idx = events[0][start : start + CHUNK]
    kinds = events[1][start : start + CHUNK]
    times = (events[2][start : start + CHUNK] * SECOND).tolist()
    for n, (i, kind_value) in enumerate(zip(idx.tolist(), kinds.tolist(), strict=True)):
        kind = CertKind(kind_value)
        k = pop.kinds[kind]
        cause = LossCause(int(k.cause[i]))
        h = int(k.holder[i])
        card = CARD_OF.get(kind)
        cascaded = card is not None and cause is LossCause.CARD_CERT_LOST_EFFECT
        value = encode_event_value(
            kind=kind,
            serial=int(k.serial[i]),
            partition=partition_text[pop.partition[h]],
            issuer_key_id=issuer_of[kind].key_id,
            time=times[n],
            cause=cause,
            reason=DEFAULT_REASON[cause],
            recorded_at=times[n],
            trigger_kind=card if card is not None and cascaded else 0,
            trigger_serial=int(serial_of[card][h]) if card is not None and cascaded else 0,
            trigger_cause=int(cause_of[card][h]) if card is not None and cascaded else 0,
        )
        yield (start + n + 1).to_bytes(8, "big"), value


def _publish(ds: DataSet, token: hsm.Hsm, clock: Clock, settings: ProfileSettings) -> int:
    """The first full snapshot, by the signer's own publisher (CRLs and manifest in the HSM).

    The publisher also leaves its state in the registry, so the signer started on
    this data set goes on with delta snapshots from here.
    """
    registry = Registry(ds.registry_dir)
    try:
        with registry.write() as tx:
            tx.put_verifier(
                Verifier(
                    id=BENCH_VERIFIER,
                    roles=frozenset(Role),
                    cert_fingerprints=(hashlib.sha256(b"jpki-va bench load").digest(),),
                    agreement="BENCH",
                )
            )
        publisher = Publisher(
            registry, Authority(token, registry), ds.snapshot_dir, clock, settings
        )
        return publisher.publish_full().sequence
    finally:
        registry.close()


def _pool(pop: Population, rng: np.random.Generator, size: int) -> Pool:
    """Serials for the load: uniform over each category, plus never-issued ones."""
    good: list[tuple[CertKind, int]] = []
    revoked: list[tuple[CertKind, int]] = []
    for kind, k in pop.kinds.items():
        n = len(k.serial)
        share = max(1, size * n // sum(len(v.serial) for v in pop.kinds.values()))
        picks = np.unique(rng.integers(0, n, size=min(share, n)))
        for j in picks.tolist():
            item = (kind, int(k.serial[j]))
            (revoked if k.cause[j] else good).append(item)
    issued = np.sort(np.concatenate([k.serial for k in pop.kinds.values()]))
    unknown: list[tuple[CertKind, int]] = []
    candidates = rng.integers(1 << 62, 1 << 63, size=max(16, size // 10), dtype=np.int64)
    candidates_u = candidates.astype(np.uint64)
    # One vectorised search: a Python int per call made numpy convert all 25 M serials.
    at = np.minimum(np.searchsorted(issued, candidates_u), len(issued) - 1)
    taken = issued[at] == candidates_u
    for value, was_issued in zip(candidates_u.tolist(), taken.tolist(), strict=True):
        if not was_issued:
            unknown.append((CertKind(1 + len(unknown) % len(CertKind)), int(value)))
    return Pool(good=good, revoked=revoked, unknown=unknown)


def _peer_inputs(
    ds: DataSet,
    pool: Pool,
    authority: Authority,
    issuer: Any,
    rng: np.random.Generator,
    count: int,
    now: datetime,
) -> dict[str, Any]:
    """What the HTTP OCSP load and the peers need, for CARD_SIGN only (one CA).

    requests.hex: DER OCSP requests (SHA-1 CertIDs, no nonce: cacheable, RFC 5019),
    one per line, in load order (the good/revoked/unknown and hot/cold mix baked
    in); responses.b64: the pre-signed responses cfssl serves; index.txt: the same
    statuses in `openssl ocsp`'s CA database format; ocsp-signer.*: a delegated
    OCSP signer certified by the CARD_SIGN CA (in the HSM) for both peers.
    """
    from jpki_va.bench.mix import Mix, draw_sequence  # noqa: PLC0415 (avoid an import cycle)

    peers = ds.peers_dir
    peers.mkdir(parents=True, exist_ok=True)
    card = Pool(
        good=[x for x in pool.good if x[0] is CertKind.CARD_SIGN],
        revoked=[x for x in pool.revoked if x[0] is CertKind.CARD_SIGN],
        unknown=[(CertKind.CARD_SIGN, s) for _, s in pool.unknown],
    )
    sequence = draw_sequence(card, Mix(), count, rng)
    issuer_cert = issuer.certificate
    key = ec.generate_private_key(ec.SECP256R1())
    signer_cert = cert_profile.ocsp_signer_certificate(
        authority.key(issuer),
        issuer_cert,
        key.public_key(),
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "JPKI-VA bench peer OCSP")]),
        now - timedelta(minutes=5),
        now + timedelta(days=365),
    )
    (peers / "ocsp-signer.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (peers / "ocsp-signer.pem").write_bytes(signer_cert.public_bytes(Encoding.PEM))
    (peers / "issuer.pem").write_bytes(issuer_cert.public_bytes(Encoding.PEM))
    revoked = {s for _, s in card.revoked}
    good = {s for _, s in card.good}
    lines = [build_request(issuer=issuer_cert, serial=serial).hex() for _, serial, _ in sequence]
    (peers / "requests.hex").write_text("\n".join(lines) + "\n")
    distinct = sorted({serial for _, serial, _ in sequence if serial in good or serial in revoked})
    expiry = (now + timedelta(days=365)).strftime("%y%m%d%H%M%SZ")
    revoked_at = (now - timedelta(days=1)).strftime("%y%m%d%H%M%SZ")
    name_hash, key_hash = issuer_hashes(issuer_cert, "sha1")
    index_lines = []
    responses = []
    with Progress("peer OCSP responses", len(distinct)) as bar:
        for serial in distinct:
            is_revoked = serial in revoked
            subject = f"/C=JP/CN={serial:016X}"
            if is_revoked:
                index_lines.append(f"R\t{expiry}\t{revoked_at}\t{serial:016X}\tunknown\t{subject}")
            else:
                index_lines.append(f"V\t{expiry}\t\t{serial:016X}\tunknown\t{subject}")
            builder = (
                ocsp.OCSPResponseBuilder()
                .add_response_by_hash(
                    issuer_name_hash=name_hash,
                    issuer_key_hash=key_hash,
                    serial_number=serial,
                    algorithm=hashes.SHA1(),  # noqa: S303 (CertIDs name the issuer; RFC 5019 SHA-1)
                    cert_status=ocsp.OCSPCertStatus.REVOKED
                    if is_revoked
                    else ocsp.OCSPCertStatus.GOOD,
                    this_update=now,
                    next_update=now + timedelta(days=2),
                    revocation_time=now - timedelta(days=1) if is_revoked else None,
                    revocation_reason=CrlReason.UNSPECIFIED.to_x509() if is_revoked else None,
                )
                .responder_id(ocsp.OCSPResponderEncoding.HASH, signer_cert)
                .certificates([signer_cert])
            )
            der = builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)
            responses.append(base64.b64encode(der).decode())
            bar.advance()
    (peers / "index.txt").write_text("\n".join(index_lines) + "\n")
    (peers / "index.txt.attr").write_text("unique_subject = no\n")
    (peers / "responses.b64").write_text("\n".join(responses) + "\n")
    return {
        "requests": len(lines),
        "distinct_serials": len({serial for _, serial, _ in sequence}),
        "presigned_responses": len(responses),
    }


def remove(out: Path) -> None:
    """Delete a data set directory (bench datagen --force)."""
    shutil.rmtree(out, ignore_errors=True)
