"""The responder ingests nothing that fails verification and never goes back.

Each refusal is logged and the previous index keeps serving.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jpki_va.core.clock import SystemClock
from jpki_va.core.domain import CertKind, serial_to_bytes
from jpki_va.core.oids import ENV_ARC
from jpki_va.protos import signer_pb2, va_pb2
from jpki_va.server.responder.ingest import Ingester
from jpki_va.server.responder.status import IndexHolder, IndexStatusSource
from jpki_va.server.snapshot.manifest import (
    MANIFEST,
    SIGNATURE,
    snapshot_dirname,
    snapshot_sequence,
)
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


@pytest.fixture(scope="module")
def chain(pki: Pki) -> list[Path]:
    """A full snapshot, three genuine deltas each following the one before, a full again."""
    root = pki.signer.config.snapshot_dir
    pki.issue(CertKind.CARD_SIGN)
    snapshots = [root / snapshot_dirname(pki.publish_and_wait(full=True))]
    for _ in range(3):
        # A loss in each delta, so each carries a delta CRL as well as records.
        lost = pki.issue(CertKind.CARD_AUTH)
        pki.signer_stub.RecordLoss(
            signer_pb2.RecordLossRequest(
                kind=int(lost.kind),  # type: ignore[arg-type]
                serial=serial_to_bytes(lost.serial),
                cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
            ),
            timeout=30,
        )
        snapshots.append(root / snapshot_dirname(pki.publish_and_wait(full=False)))
    pki.issue(CertKind.CARD_AUTH)
    snapshots.append(root / snapshot_dirname(pki.publish_and_wait(full=True)))
    return snapshots


def _tamper(snapshot: Path, how: str) -> tuple[Path, bytes]:
    """Change one file of a snapshot on disk; returns the file and its genuine bytes."""
    files = {"records": "records.bin", "manifest": MANIFEST, "signature": SIGNATURE}
    target = sorted(snapshot.glob("crls/**/*.crl"))[0] if how == "crl" else snapshot / files[how]
    genuine = target.read_bytes()
    changed = bytearray(genuine)
    if how == "records":
        changed += b"\x00" * 43
    else:
        changed[-3] ^= 0x01
    target.write_bytes(bytes(changed))
    return target, genuine


def _refused_total(ing: Ingester) -> float:
    """jpki_va_snapshots_refused_total, as Prometheus would collect it."""
    return sum(
        sample.value
        for family in ing.metrics.refused.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


@pytest.mark.parametrize("how", ["records", "manifest", "signature", "crl"])
def test_a_refused_delta_restored_in_place_lets_its_successors_in(
    chain: list[Path],
    ingester: tuple[Ingester, Path, IndexHolder],
    how: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 15 item 8: a tampered delta 11 refused, then 11 restored and 12, 13 published:
    all are ingested, not ignored until the next full snapshot."""
    ing, incoming, holder = ingester
    full, first, second, third, _ = chain
    _copy(full, incoming)
    assert ing.poll_once() is not None
    bad = _copy(first, incoming)
    target, genuine = _tamper(bad, how)
    _copy(second, incoming)  # the genuine successor arrives while 11 is refused
    with caplog.at_level(logging.INFO, logger="jpki_va.server.responder.ingest"):
        assert ing.poll_once() is None
        assert ing.poll_once() is None
    refusals = [r for r in caplog.records if f"refused snapshot {bad.name}" in r.getMessage()]
    assert len(refusals) == 1  # said once, however often it polls
    assert _refused_total(ing) == 1
    assert ing.sequence == snapshot_sequence(full)
    target.write_bytes(genuine)  # the genuine 11 is put back
    result = ing.poll_once()
    assert result is not None and result.type == "delta"
    assert ing.sequence == snapshot_sequence(second)
    _copy(third, incoming)  # the next delta is published
    result = ing.poll_once()
    assert result is not None and result.sequence == snapshot_sequence(third)
    assert _refused_total(ing) == 1
    # LMDB allows one handle per environment and process: look only after the deltas.
    assert _serving(holder) == snapshot_sequence(third)


def test_a_refused_delta_replaced_by_a_new_directory_is_ingested(
    chain: list[Path], ingester: tuple[Ingester, Path, IndexHolder]
) -> None:
    ing, incoming, holder = ingester
    full, first, second, *_ = chain
    _copy(full, incoming)
    assert ing.poll_once() is not None
    bad = _copy(first, incoming)
    (bad / "crls" / "smuggled.crl").write_bytes(b"x")
    assert ing.poll_once() is None
    assert ing.refused_waiting == [bad.name]
    shutil.rmtree(bad)
    _copy(first, incoming)  # a genuine replacement under the same name
    _copy(second, incoming)
    result = ing.poll_once()
    assert result is not None and result.sequence == snapshot_sequence(second)
    assert ing.refused_waiting == []
    assert _serving(holder) == snapshot_sequence(second)


def test_a_restored_delta_never_takes_the_index_back(
    chain: list[Path], ingester: tuple[Ingester, Path, IndexHolder]
) -> None:
    """A full snapshot overtook the refused delta: restoring the delta changes nothing."""
    ing, incoming, holder = ingester
    full, first, *_, later_full = chain
    _copy(full, incoming)
    assert ing.poll_once() is not None
    bad = _copy(first, incoming)
    target, genuine = _tamper(bad, "records")
    assert ing.poll_once() is None
    assert ing.refused_waiting == [bad.name]
    _copy(later_full, incoming)
    result = ing.poll_once()
    assert result is not None and result.sequence == snapshot_sequence(later_full)
    assert ing.refused_waiting == []  # superseded: nothing waits for it any more
    target.write_bytes(genuine)
    assert ing.poll_once() is None
    assert ing.sequence == snapshot_sequence(later_full)
    assert _serving(holder) == snapshot_sequence(later_full)


_VERIFY_UNDER_ANOTHER_ARC = """
import sys
from pathlib import Path
from cryptography import x509
from jpki_va.core.clock import SystemClock
from jpki_va.server.snapshot.verify import SnapshotRejected, SnapshotVerifier
root = x509.load_pem_x509_certificate(Path(sys.argv[1]).read_bytes())
try:
    SnapshotVerifier([root], SystemClock()).verify(Path(sys.argv[2]))
except SnapshotRejected as exc:
    print(exc)
"""


def test_a_snapshot_made_under_another_oid_arc_is_refused(pki: Pki, published: list[Path]) -> None:
    """The loss causes of its CRLs sit under an OID this responder does not read."""
    env = {**os.environ, ENV_ARC: "1.2.392.200149.8"}
    out = subprocess.run(
        [sys.executable, "-c", _VERIFY_UNDER_ANOTHER_ARC, str(pki.root_file), str(published[0])],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # Its signer's EKU is the first thing under the arc that the verifier reads.
    assert "not for snapshot signing (EKU 1.2.392.200149.8.2, OID arc 1.2.392.200149.8" in out
