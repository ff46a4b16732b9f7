"""RFC 5280 partitioned and delta CRLs, judged by OpenSSL, and delta snapshots.

A full snapshot has one CRL per (kind, generation, municipality); a delta snapshot
has the certificates issued since the previous snapshot and a delta CRL
(deltaCRLIndicator = the full CRL's number, cumulative since it) for each partition
that lost a certificate since the previous snapshot. A replica keeps serving a
partition's delta CRL until a later delta brings another.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from jpki_va.core.clock import SystemClock
from jpki_va.core.domain import CertKind, serial_to_bytes
from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2, va_pb2
from jpki_va.server.app.responder_app import load_anchors
from jpki_va.server.responder.index_reader import Index, current_index
from jpki_va.server.responder.ingest import Ingester
from jpki_va.server.snapshot.verify import SnapshotVerifier
from tests.support import Issued, Pki, openssl, start_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig) -> Iterator[Pki]:
    running = start_pki(tmp_path_factory.mktemp("delta"), softhsm_token)
    try:
        yield running
    finally:
        running.close()


class World:
    def __init__(self, pki: Pki) -> None:
        self.good = pki.issue(CertKind.CARD_AUTH)
        self.revoked_later = pki.issue(CertKind.CARD_AUTH)
        self.other_city = pki.issue(CertKind.CARD_AUTH, municipality="271004")
        self.full = self._publish(pki, full=True)
        self.new_after_full = pki.issue(CertKind.CARD_AUTH)
        _lose(pki, self.revoked_later)
        self.delta1 = self._publish(pki, full=False)
        self.revoked_in_delta2 = pki.issue(CertKind.CARD_AUTH, municipality="271004")
        _lose(pki, self.revoked_in_delta2)
        self.delta2 = self._publish(pki, full=False)
        self.full2 = self._publish(pki, full=True)

    @staticmethod
    def _publish(pki: Pki, *, full: bool) -> Path:
        reply = pki.signer_stub.PublishSnapshot(
            signer_pb2.PublishSnapshotRequest(full=full), timeout=60
        )
        pki.wait_sequence(reply.sequence)
        return pki.signer.config.snapshot_dir / reply.name


def _lose(pki: Pki, issued: Issued) -> None:
    pki.signer_stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=int(issued.kind),  # type: ignore[arg-type]
            serial=serial_to_bytes(issued.serial),
            cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
        ),
        timeout=30,
    )


@pytest.fixture(scope="module")
def world(pki: Pki) -> World:
    return World(pki)


def _manifest(snapshot: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((snapshot / "manifest.json").read_bytes())  # type: ignore[no-any-return]


def _kid(issued: Issued) -> str:
    return x509.SubjectKeyIdentifier.from_public_key(issued.issuer.public_key()).digest.hex()


def _crl(snapshot: Path, issued: Issued, partition: str, tmp_path: Path, *, delta: bool) -> Path:
    suffix = "delta.crl" if delta else "crl"
    der = snapshot / "crls" / issued.kind.slug / _kid(issued)[:16] / f"{partition}.{suffix}"
    out = tmp_path / f"{snapshot.name}-{partition}.{suffix}.pem"
    openssl("crl", "-inform", "DER", "-in", str(der), "-out", str(out))
    return out


def _verify(pki: Pki, issued: Issued, tmp_path: Path, *crls: Path) -> tuple[int, str]:
    cert, issuer = issued.pem_files(tmp_path, f"c{issued.serial:x}")
    chain = tmp_path / "chain.pem"
    chain.write_bytes(pki.root_file.read_bytes() + issuer.read_bytes())
    args = ["verify", "-crl_check", "-use_deltas", "-CAfile", str(chain)]
    for crl in crls:
        args += ["-CRLfile", str(crl)]
    result = openssl(*args, str(cert), check=False)
    return result.returncode, result.stdout + result.stderr


def _ingester(pki: Pki, tmp_path: Path) -> tuple[Path, Ingester]:
    """An ingester of its own, reading snapshots the test copies into `incoming`."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    verifier = SnapshotVerifier(load_anchors(pki.responder.config), SystemClock())
    return incoming, Ingester(incoming, tmp_path / "index", verifier)


def test_manifests_say_full_or_delta_and_chain_the_deltas(world: World) -> None:
    full, d1, d2, full2 = (
        _manifest(p) for p in (world.full, world.delta1, world.delta2, world.full2)
    )
    assert [m["type"] for m in (full, d1, d2, full2)] == ["full", "delta", "delta", "full"]
    assert d1["base_sequence"] == d2["base_sequence"] == full["sequence"]
    assert d1["previous_sequence"] == full["sequence"]
    assert d2["previous_sequence"] == d1["sequence"]
    assert full2["base_sequence"] is None


def test_every_partition_and_delta_crl_verifies_with_openssl(
    pki: Pki, world: World, tmp_path: Path
) -> None:
    count = 0
    for snapshot in (world.full, world.delta1, world.delta2, world.full2):
        issuers = {
            x509.SubjectKeyIdentifier.from_public_key(c.public_key()).digest.hex()[:16]: c
            for c in x509.load_pem_x509_certificates((snapshot / "issuers.pem").read_bytes())
        }
        for crl in sorted(snapshot.glob("crls/**/*.crl")):
            path = tmp_path / "issuer.pem"
            path.write_bytes(issuers[crl.parent.name].public_bytes(serialization.Encoding.PEM))
            result = openssl(
                "crl", "-inform", "DER", "-in", str(crl), "-CAfile", str(path), "-noout", "-verify"
            )
            assert "verify OK" in result.stderr + result.stdout
            count += 1
    # Two partitions in each full with their empty deltas, and one delta CRL per delta.
    assert count == 2 * 2 + 1 + 1 + 2 * 2
    assert list(world.delta1.glob("crls/**/*.delta.crl"))


def test_delta_crls_cover_only_partitions_that_changed_since_the_previous_snapshot(
    world: World,
) -> None:
    d1 = _manifest(world.delta1)
    d2 = _manifest(world.delta2)
    assert {c["partition"] for c in d1["crls"]} == {"131016"}
    # 131016 lost nothing in delta 2: its delta CRL of delta 1 still holds.
    assert {c["partition"] for c in d2["crls"]} == {"271004"}
    full = {(c["kind"], c["partition"]): c for c in _manifest(world.full)["crls"]}
    for c in d1["crls"] + d2["crls"]:
        assert c["delta_base"] == full[(c["kind"], c["partition"])]["number"]
        assert c["file"].endswith(".delta.crl")


def test_crl_numbers_increase_per_partition_and_each_crl_is_in_one_snapshot(
    world: World,
) -> None:
    """Each CRL signed takes a new, higher number (RFC 5280 §5.2.3) and is published
    once, in the snapshot it was signed for."""
    seen: dict[tuple[str, str, str], list[tuple[int, bytes]]] = {}
    for snapshot in (world.full, world.delta1, world.delta2, world.full2):
        for c in _manifest(snapshot)["crls"]:
            der = (snapshot / c["file"]).read_bytes()
            seen.setdefault((c["kind"], c["issuer_key_id"], c["partition"]), []).append(
                (c["number"], der)
            )
    assert len(seen[("CARD_AUTH", _kid(world.good), "131016")]) == 3  # full, delta 1, full
    assert len(seen[("CARD_AUTH", _kid(world.good), "271004")]) == 3  # full, delta 2, full
    for crls in seen.values():
        numbers = [n for n, _ in crls]
        assert numbers == sorted(numbers)
        assert len(set(numbers)) == len(numbers)
        assert len({der for _, der in crls}) == len(crls)


def test_a_replica_serves_each_partitions_newest_delta_crl(
    pki: Pki, world: World, tmp_path: Path
) -> None:
    """After delta 2, 131016's delta CRL is still delta 1's: delta 2 left it out."""
    incoming, ingester = _ingester(pki, tmp_path)
    for snapshot in (world.full, world.delta1, world.delta2):
        shutil.copytree(snapshot, incoming / snapshot.name)
    ingester.poll_once()
    assert ingester.sequence == _manifest(world.delta2)["sequence"]
    kid = bytes.fromhex(_kid(world.good))
    index = Index(current_index(tmp_path / "index"))  # type: ignore[arg-type]
    try:
        for partition, snapshot in (("131016", world.delta1), ("271004", world.delta2)):
            served = index.delta_crl_der(CertKind.CARD_AUTH, kid, partition)
            (listed,) = (c for c in _manifest(snapshot)["crls"] if c["partition"] == partition)
            assert served == (snapshot / listed["file"]).read_bytes()
    finally:
        index.close()


def test_certificates_carry_freshest_crl_of_their_partition(world: World) -> None:
    freshest = world.good.certificate.extensions.get_extension_for_class(x509.FreshestCRL).value
    (point,) = freshest
    assert point.full_name is not None
    uri = point.full_name[0].value
    assert uri.endswith(f"/crl/card-auth/{_kid(world.good)[:16]}/131016.delta.crl")


def test_openssl_with_base_and_delta_crl(pki: Pki, world: World, tmp_path: Path) -> None:
    base = _crl(world.full, world.good, "131016", tmp_path, delta=False)
    delta = _crl(world.delta1, world.good, "131016", tmp_path, delta=True)
    code, out = _verify(pki, world.good, tmp_path, base, delta)
    assert code == 0, out
    # Revoked after the full CRL: only the delta CRL knows, and OpenSSL uses it.
    code, out = _verify(pki, world.revoked_later, tmp_path, base)
    assert code == 0, out
    code, out = _verify(pki, world.revoked_later, tmp_path, base, delta)
    assert code != 0
    assert "certificate revoked" in out
    # Another municipality's CRLs are out of scope, never "good".
    code, out = _verify(pki, world.other_city, tmp_path, base, delta)
    assert code != 0
    # Without extended CRL support OpenSSL scores a delta CRL as a candidate too and
    # keeps the newer of two equal scores: which message depends on whether the delta
    # was signed in a later second than the full CRL.
    assert "different CRL scope" in out or "unable to get certificate CRL" in out


def test_responder_applies_deltas_records_and_losses(pki: Pki, world: World) -> None:
    # Issued after the full: known through the delta's records, not UNKNOWN for a day.
    answer = pki.check(CertKind.CARD_AUTH, world.new_after_full.serial)
    assert answer.status == va_pb2.CERT_STATUS_GOOD
    assert pki.check(CertKind.CARD_AUTH, world.revoked_later.serial).status == (
        va_pb2.CERT_STATUS_REVOKED
    )
    assert pki.check(CertKind.CARD_AUTH, world.revoked_in_delta2.serial).status == (
        va_pb2.CERT_STATUS_REVOKED
    )
    with pki.live_index() as index:
        sequences = [e.sequence for e in index.events_since(0)]
        assert sequences == sorted(sequences) and len(sequences) == 2
        assert [e.serial for e in index.events_since(sequences[0])] == [
            world.revoked_in_delta2.serial
        ]


def test_a_delta_that_does_not_follow_waits_for_the_next_full(
    pki: Pki, world: World, tmp_path: Path
) -> None:
    incoming, ingester = _ingester(pki, tmp_path)
    shutil.copytree(world.full, incoming / world.full.name)
    assert ingester.poll_once() is not None
    shutil.copytree(world.delta2, incoming / world.delta2.name)  # delta 1 is missing
    assert ingester.poll_once() is None
    assert ingester.sequence == _manifest(world.full)["sequence"]
    # The missing one arrives: both apply, in order.
    shutil.copytree(world.delta1, incoming / world.delta1.name)
    result = ingester.poll_once()
    assert result is not None and result.type == "delta"
    assert ingester.sequence == _manifest(world.delta2)["sequence"]
    shutil.copytree(world.full2, incoming / world.full2.name)
    result = ingester.poll_once()
    assert result is not None and result.sequence == _manifest(world.full2)["sequence"]


def test_a_gap_that_never_fills_waits_for_the_next_full(
    pki: Pki, world: World, tmp_path: Path
) -> None:
    incoming, ingester = _ingester(pki, tmp_path)
    for snapshot in (world.full, world.delta2):
        shutil.copytree(snapshot, incoming / snapshot.name)
    ingester.poll_once()
    index = Index(current_index(tmp_path / "index"))  # type: ignore[arg-type]
    try:  # delta 2's loss is not applied without delta 1 before it
        record = index.get(CertKind.CARD_AUTH, world.revoked_in_delta2.serial)
        assert record is None
    finally:
        index.close()
    shutil.copytree(world.full2, incoming / world.full2.name)
    ingester.poll_once()
    assert ingester.sequence == _manifest(world.full2)["sequence"]
