"""A pre-produced entry's format and the checks a worker makes before serving it;
the store itself is real LMDB in a temporary directory."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from jpki_va.server.pki import ocsp_wire
from jpki_va.server.responder.preproduced import PreproducedEntry, PreproducedStore

KEY_HASH = bytes(range(20))
CERT_ID = ocsp_wire.sha1_cert_id(b"\x01" * 20, b"\x02" * 20, 0x1234)


def _entry(writer: ocsp_wire.ResponseWriter) -> PreproducedEntry:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    single = writer.single(CERT_ID, ocsp_wire.CertStatus.GOOD, now, now)
    tbs = writer.tbs(now, [single], None)
    return PreproducedEntry(10_000_000, 100_000_000, (0, -1, 0, 0), tbs.index(CERT_ID), tbs, b"s")


def test_an_entry_reads_back_as_written_and_names_its_cert_id_and_signer() -> None:
    writer = ocsp_wire.ResponseWriter(KEY_HASH, b"")
    entry = _entry(writer)
    again = PreproducedEntry.decode(entry.encode())
    assert again == entry
    assert entry.names(CERT_ID)
    assert not entry.names(ocsp_wire.sha1_cert_id(b"\x01" * 20, b"\x02" * 20, 0x1235))
    assert entry.signed_by(writer.responder_id)
    assert not entry.signed_by(ocsp_wire.ResponseWriter(bytes(20), b"").responder_id)


def test_an_entry_is_fresh_only_inside_its_validity_less_the_margin() -> None:
    entry = _entry(ocsp_wire.ResponseWriter(KEY_HASH, b""))
    assert not entry.fresh_at(9_999_999, margin=1_000_000)  # before thisUpdate
    assert entry.fresh_at(10_000_000, margin=1_000_000)
    assert entry.fresh_at(98_999_999, margin=1_000_000)
    assert not entry.fresh_at(99_000_000, margin=1_000_000)  # within the margin of nextUpdate


def test_an_entry_of_another_format_is_not_read() -> None:
    raw = _entry(ocsp_wire.ResponseWriter(KEY_HASH, b"")).encode()
    assert PreproducedEntry.decode(b"\x02" + raw[1:]) is None
    assert PreproducedEntry.decode(raw[:5]) is None


def test_the_store_keeps_entries_and_the_producers_state_together(tmp_path: Path) -> None:
    store = PreproducedStore(tmp_path, map_size=1 << 24)
    try:
        entry = _entry(ocsp_wire.ResponseWriter(KEY_HASH, b""))
        assert store.get(b"k") is None and store.state() == {}
        store.put_many([(b"k", entry.encode())], {"done": False})
        assert store.get(b"k") == entry
        assert store.get_many([b"k", b"x"]) == [entry, None]
        assert store.state() == {"done": False}
        assert store.stat()[0] == 1
    finally:
        store.close()
