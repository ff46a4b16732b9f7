"""The signed-response cache: what it keeps, for how long, and when it lets go."""

from __future__ import annotations

import os
import threading
import tracemalloc
from typing import cast

import pytest
from cryptography import x509

from jpki_va.core.domain import CertKind, Status
from jpki_va.server.responder.index_reader import IssuerEntry
from jpki_va.server.responder.ocsp_cache import Basis as BasisCall
from jpki_va.server.responder.ocsp_cache import OcspReply, ResponseCache, entry_cost
from jpki_va.server.responder.status import NotReady

HOUR = 3600.0


class Generation:
    """The (full sequence, sequence) of an index, set by the test."""

    def __init__(self) -> None:
        self.value = (1, 1)
        self.reads = 0

    def __call__(self) -> tuple[int, int]:
        self.reads += 1
        return self.value


def reply(
    name: str, this_update: float = 0.0, next_update: float = 10 * HOUR, basis: str = "good"
) -> OcspReply:
    return OcspReply(
        name.encode(),
        cacheable=True,
        this_update=this_update,
        next_update=next_update,
        etag=name,
        basis=(basis,),
    )


def got(
    cache: ResponseCache, key: bytes, now: float, basis: BasisCall | None = None
) -> OcspReply | None:
    """The kept reply `get` returns, if any."""
    kept = cache.get(key, now, basis)
    return None if kept is None else kept.reply


def test_hit_until_the_refresh_point() -> None:
    cache = ResponseCache(Generation(), refresh_margin=60)
    kept = reply("a")
    cache.put(b"k", kept, cache.generation())
    assert got(cache, b"k", 0.0) is kept
    # Life is 10 h: refreshed 10 % (1 h) before nextUpdate, since that beats 60 s.
    assert got(cache, b"k", 9 * HOUR - 1) is kept
    assert got(cache, b"k", 9 * HOUR) is None
    assert len(cache) == 0


def test_a_miss_reads_no_generation_and_a_hit_one() -> None:
    """The request a miss leaves is answered, which reads the generation then."""
    generation = Generation()
    cache = ResponseCache(generation)
    cache.put(b"k", reply("a"), cache.generation())
    before = generation.reads
    assert got(cache, b"other", 0.0) is None
    assert generation.reads == before
    assert got(cache, b"k", 0.0) is not None
    assert generation.reads == before + 1


def test_margin_wins_for_short_lives() -> None:
    cache = ResponseCache(Generation(), refresh_margin=600)
    cache.put(b"k", reply("a", next_update=3000), cache.generation())
    assert got(cache, b"k", 2399) is not None
    assert got(cache, b"k", 2400) is None


def test_a_new_full_index_drops_everything() -> None:
    generation = Generation()
    cache = ResponseCache(generation)
    cache.put(b"k", reply("a"), cache.generation())
    generation.value = (2, 2)
    assert got(cache, b"k", 0.0, lambda key, issuers: ("good",)) is None
    assert len(cache) == 0


def test_an_answer_signed_from_an_old_full_index_is_not_kept() -> None:
    generation = Generation()
    cache = ResponseCache(generation)
    signed_from = cache.generation()
    generation.value = (2, 2)
    cache.generation()  # someone else saw the new index meanwhile
    cache.put(b"k", reply("a"), signed_from)
    assert got(cache, b"k", 0.0) is None


ISSUER = IssuerEntry(CertKind.CARD_AUTH, b"\x01" * 20, cast(x509.Certificate, None))


def test_an_entry_keeps_the_issuers_and_a_delta_asks_with_them() -> None:
    generation = Generation()
    cache = ResponseCache(generation)
    cache.put(b"k", reply("a"), cache.generation(), (ISSUER, ISSUER))
    kept = cache.get(b"k", 0.0)
    assert kept is not None and kept.issuers == (ISSUER, ISSUER)
    generation.value = (1, 2)  # a delta: the basis is asked for this request and issuers
    basis = Basis("good")
    again = cache.get(b"k", 0.0, basis)
    assert basis.asked_with == [(b"k", (ISSUER, ISSUER))]
    assert again is not None and again.reply is kept.reply and again.issuers == kept.issuers


class Basis:
    """What the answers would say now, and how often it was asked."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.asked = 0
        self.asked_with: list[tuple[bytes, tuple[object, ...]]] = []

    def __call__(self, key: bytes, issuers: tuple[object, ...]) -> tuple[object, ...]:
        self.asked += 1
        self.asked_with.append((key, issuers))
        return (self.value,)


def test_a_delta_keeps_what_it_did_not_change_and_drops_what_it_did() -> None:
    generation = Generation()
    cache = ResponseCache(generation)
    kept, changed = reply("kept"), reply("changed")
    cache.put(b"kept", kept, cache.generation())
    cache.put(b"changed", changed, cache.generation())
    same = Basis("good")
    assert got(cache, b"kept", 0.0, same) is kept
    assert same.asked == 0  # no delta since it was signed: nothing to check
    generation.value = (1, 2)  # a delta
    assert got(cache, b"kept", 0.0, same) is kept
    assert got(cache, b"kept", 0.0, same) is kept
    assert same.asked == 1  # checked once per delta, then a plain hit
    assert got(cache, b"changed", 0.0, Basis("revoked")) is None
    assert len(cache) == 1  # the changed one is gone: signed afresh by the caller


def test_after_a_delta_an_entry_is_never_reused_unchecked() -> None:
    generation = Generation()
    cache = ResponseCache(generation)
    cache.put(b"k", reply("a"), cache.generation())
    generation.value = (1, 2)
    assert got(cache, b"k", 0.0) is None
    unvouched = OcspReply(b"a", cacheable=True, next_update=10 * HOUR)  # no basis
    cache.put(b"k", unvouched, cache.generation())
    generation.value = (1, 3)
    assert got(cache, b"k", 0.0, lambda key, issuers: ()) is None


def test_an_answer_read_before_a_delta_is_checked_after_it() -> None:
    generation = Generation()
    cache = ResponseCache(generation)
    signed_from = cache.generation()
    generation.value = (1, 2)
    cache.generation()  # a delta was applied while it was being signed
    cache.put(b"k", reply("a"), signed_from)
    assert got(cache, b"k", 0.0, Basis("revoked")) is None


def test_bounded_by_bytes_least_recently_used() -> None:
    cache = ResponseCache(Generation(), max_bytes=2 * entry_cost(b"a", reply("a")))
    generation = cache.generation()
    cache.put(b"a", reply("a"), generation)
    cache.put(b"b", reply("b"), generation)
    assert got(cache, b"a", 0.0) is not None  # a is now the most recent
    cache.put(b"c", reply("c"), generation)
    assert got(cache, b"b", 0.0) is None
    assert got(cache, b"a", 0.0) is not None and got(cache, b"c", 0.0) is not None
    assert cache.bytes_kept == 2 * entry_cost(b"a", reply("a"))
    # A larger response takes the room of as many small ones as it needs.
    big = OcspReply(b"x" * 3000, cacheable=True, next_update=10 * HOUR, etag="big")
    cache.put(b"big", big, generation)
    # Over the whole budget alone: not kept, and nothing is dropped for it.
    assert got(cache, b"big", 0.0) is None and len(cache) == 2
    cache = ResponseCache(Generation(), max_bytes=entry_cost(b"big", big) + 10)
    cache.put(b"a", reply("a"), cache.generation())
    cache.put(b"big", big, cache.generation())
    assert got(cache, b"a", 0.0) is None and got(cache, b"big", 0.0) is big
    assert cache.bytes_kept == entry_cost(b"big", big)


def test_replacing_and_dropping_keep_the_count_of_bytes() -> None:
    generation = Generation()
    cache = ResponseCache(generation)
    cache.put(b"k", reply("a"), cache.generation())
    cache.put(b"k", reply("b"), cache.generation())
    assert cache.bytes_kept == entry_cost(b"k", reply("b"))
    got(cache, b"k", 10 * HOUR)  # past its refresh point: dropped
    assert cache.bytes_kept == 0
    cache.put(b"k", reply("a"), cache.generation())
    cache.invalidate()
    assert cache.bytes_kept == 0


def test_the_charge_per_entry_covers_what_an_entry_really_holds() -> None:
    """The budget is memory: an entry's charge is at least what it allocates, and
    not far above it (a response the size of a real one: ≈ 330 bytes kept, its
    ≈ 720-byte certs field shared by all)."""
    count = 2000
    raw = [(os.urandom(75), os.urandom(330), os.urandom(16).hex()) for _ in range(count)]
    cache = ResponseCache(Generation(), max_bytes=10**9)
    generation = cache.generation()
    certs = os.urandom(720)
    issuer = ISSUER  # one per CA generation, shared by every entry of its certificates
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, (key, der, etag) in enumerate(raw):
            kept = OcspReply(
                der[:-1] + b"!",  # a new bytes object, as a signed response is
                cacheable=True,
                this_update=1e9 + i,
                next_update=2e9 + i,
                etag=etag[:-1] + "0",
                answers=(("good", ""),),
                basis=((Status.GOOD, None),),
                certs=certs,
            )
            cache.put(key[:-1] + b"!", kept, generation, (issuer,))
        real = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert real <= cache.bytes_kept <= 1.25 * real


def test_nonce_and_error_answers_are_never_kept() -> None:
    cache = ResponseCache(Generation())
    cache.put(b"k", OcspReply(b"fresh"), cache.generation())
    assert got(cache, b"k", 0.0) is None


def test_a_budget_of_zero_keeps_nothing() -> None:
    cache = ResponseCache(Generation(), max_bytes=0)
    cache.put(b"k", reply("a"), cache.generation())
    assert got(cache, b"k", 0.0) is None


@pytest.mark.parametrize(
    "kwargs", [{"max_bytes": -1}, {"refresh_margin": -1.0}, {"refresh_fraction": 1.0}]
)
def test_refuses_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        ResponseCache(Generation(), **kwargs)  # type: ignore[arg-type]


def test_a_new_signer_drops_everything_and_refuses_older_signatures() -> None:
    cache = ResponseCache(Generation())
    signed_from = cache.generation()
    cache.put(b"k", reply("a"), signed_from)
    cache.invalidate()
    assert got(cache, b"k", 0.0) is None
    cache.put(b"k", reply("old key"), signed_from)  # signing started before the switch
    assert got(cache, b"k", 0.0) is None
    cache.put(b"k", reply("new key"), cache.generation())
    assert got(cache, b"k", 0.0) is not None


class CountedIndex(Generation):
    """A generation that counts how often it is read, and can be not ready yet."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.ready = True

    def __call__(self) -> tuple[int, int]:
        self.reads += 1
        if not self.ready:
            raise NotReady("no index loaded yet")
        return self.value


def test_a_held_turn_reads_the_index_once_for_this_thread_only() -> None:
    index = CountedIndex()
    cache = ResponseCache(index)
    cache.put(b"k", reply("a"), cache.generation())
    cache.hold_generation()
    reads = index.reads
    for _ in range(5):
        assert got(cache, b"k", 0.0) is not None
    assert index.reads == reads  # the turn's requests share the read made when it began
    other = threading.Thread(target=cache.generation)
    other.start()
    other.join()
    assert index.reads == reads + 1  # another thread (gRPC's) reads for itself
    index.value = (1, 2)  # a delta during the turn: seen by the next turn
    assert cache.generation() == (1, 1, 0)
    cache.release_generation()
    assert cache.generation() == (1, 2, 0)
    assert got(cache, b"k", 0.0) is None  # no basis to check it against: not reused


def test_a_turn_held_before_any_index_reads_per_request() -> None:
    index = CountedIndex()
    index.ready = False
    cache = ResponseCache(index)
    with pytest.raises(NotReady):
        cache.hold_generation()  # no index yet: nothing is held
    with pytest.raises(NotReady):
        cache.generation()
    index.ready = True
    assert cache.generation() == (1, 1, 0)
