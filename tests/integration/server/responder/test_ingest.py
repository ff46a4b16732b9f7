"""The responder ingests nothing that fails verification and never goes back.

Each refusal is logged and the previous index keeps serving.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jpki_va.core.clock import SystemClock
from jpki_va.core.domain import CertKind
from jpki_va.server.responder.ingest import Ingester
from jpki_va.server.responder.status import IndexHolder, IndexStatusSource
from jpki_va.server.snapshot.manifest import MANIFEST, SIGNATURE, snapshot_dirname
from jpki_va.server.snapshot.verify import SnapshotVerifier
from tests.support import Pki


@pytest.fixture(scope="module")
def published(pki: Pki) -> list[Path]:
    """Two genuine snapshots from the signer, oldest first."""
    pki.issue(CertKind.CARD_SIGN)
    first = pki.publish_and_wait()
    pki.issue(CertKind.CARD_AUTH)
    second = pki.publish_and_wait()
    root = pki.signer.config.snapshot_dir
    return [root / snapshot_dirname(first), root / snapshot_dirname(second)]


@pytest.fixture
def ingester(pki: Pki, tmp_path: Path) -> Iterator[tuple[Ingester, Path, IndexHolder]]:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    verifier = SnapshotVerifier([pki.root], SystemClock())
    index_root = tmp_path / "index"
    holder = IndexHolder(index_root)
    yield Ingester(incoming, index_root, verifier), incoming, holder
    holder.close()


def _copy(src: Path, incoming: Path, sequence: int | None = None) -> Path:
    name = src.name if sequence is None else snapshot_dirname(sequence)
    return Path(shutil.copytree(src, incoming / name))


def _serving(holder: IndexHolder) -> int:
    holder.refresh()
    return holder.get().sequence


def test_genuine_snapshot_is_ingested_and_answers(
    published: list[Path], ingester: tuple[Ingester, Path, IndexHolder]
) -> None:
    ing, incoming, holder = ingester
    _copy(published[0], incoming)
    result = ing.poll_once()
    assert result is not None
    assert _serving(holder) == result.sequence
    answer = IndexStatusSource(holder).status(CertKind.CARD_SIGN, 1, SystemClock().now())
    assert answer.sequence == result.sequence


@pytest.mark.parametrize("tamper", ["signature", "manifest", "crl", "records", "extra_file"])
def test_tampered_snapshot_is_refused_and_previous_index_serves(
    published: list[Path],
    ingester: tuple[Ingester, Path, IndexHolder],
    tamper: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ing, incoming, holder = ingester
    _copy(published[0], incoming)
    assert ing.poll_once() is not None
    before = _serving(holder)
    bad = _copy(published[1], incoming)
    if tamper == "signature":
        sig = bytearray((bad / SIGNATURE).read_bytes())
        sig[-5] ^= 0x01
        (bad / SIGNATURE).write_bytes(bytes(sig))
    elif tamper == "manifest":
        text = (bad / MANIFEST).read_text()
        (bad / MANIFEST).write_text(text.replace('"record_count": ', '"record_count": 1'))
    elif tamper == "crl":
        crl = sorted(bad.glob("crls/**/*.crl"))[0]
        data = bytearray(crl.read_bytes())
        data[-3] ^= 0x01
        crl.write_bytes(bytes(data))
    elif tamper == "records":
        with (bad / "records.bin").open("ab") as f:
            f.write(b"\x00" * 43)
    else:
        (bad / "crls" / "smuggled.crl").write_bytes(b"x")
    with caplog.at_level(logging.ERROR, logger="jpki_va.server.responder.ingest"):
        assert ing.poll_once() is None
    assert f"refused snapshot {bad.name}" in caplog.text
    assert _serving(holder) == before
    # Refused once, not retried on every poll.
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="jpki_va.server.responder.ingest"):
        assert ing.poll_once() is None
    assert caplog.text == ""


def test_lower_sequence_arriving_later_is_refused(
    published: list[Path],
    ingester: tuple[Ingester, Path, IndexHolder],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ing, incoming, holder = ingester
    _copy(published[1], incoming)
    assert ing.poll_once() is not None
    live = _serving(holder)
    old = _copy(published[0], incoming)
    with caplog.at_level(logging.ERROR, logger="jpki_va.server.responder.ingest"):
        assert ing.poll_once() is None
    assert f"refused snapshot {old.name}" in caplog.text
    assert _serving(holder) == live


def test_renamed_snapshot_directory_is_refused(
    published: list[Path],
    ingester: tuple[Ingester, Path, IndexHolder],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A genuine older snapshot renamed to look newer does not pass as newer."""
    ing, incoming, holder = ingester
    _copy(published[1], incoming)
    assert ing.poll_once() is not None
    live = _serving(holder)
    disguised = _copy(published[0], incoming, sequence=live + 5)
    with caplog.at_level(logging.ERROR, logger="jpki_va.server.responder.ingest"):
        assert ing.poll_once() is None
    assert f"refused snapshot {disguised.name}" in caplog.text
    assert _serving(holder) == live


def test_snapshot_signed_by_foreign_root_is_refused(
    published: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Impostor Root")])
    now = SystemClock().now()
    foreign = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now.replace(year=now.year + 1))
        .sign(key, hashes.SHA256())
    )
    incoming = tmp_path / "in"
    incoming.mkdir()
    ing = Ingester(incoming, tmp_path / "idx", SnapshotVerifier([foreign], SystemClock()))
    _copy(published[0], incoming)
    with caplog.at_level(logging.ERROR, logger="jpki_va.server.responder.ingest"):
        assert ing.poll_once() is None
    assert "not issued by a trust anchor" in caplog.text
    assert ing.sequence == 0
