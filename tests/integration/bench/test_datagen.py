"""bench datagen: what it writes is what the signer and the responder read."""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path

import lmdb
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from jpki_va.bench import datagen
from jpki_va.bench.dataset import DataSet, DataSetError
from jpki_va.core.clock import SystemClock
from jpki_va.core.domain import CertKind, LossCause
from jpki_va.server.registry.transactions import Registry
from jpki_va.server.responder.index_build import build_index
from jpki_va.server.responder.index_reader import Index
from jpki_va.server.snapshot.verify import SnapshotVerifier
from tests.support import openssl


def test_population_is_deterministic_and_lawful() -> None:
    shape = datagen.Shape(partitions=50)
    a = datagen.draw_population(5000, 3, 2_000_000_000, shape)
    b = datagen.draw_population(5000, 3, 2_000_000_000, shape)
    c = datagen.draw_population(5000, 4, 2_000_000_000, shape)
    for kind in CertKind:
        assert np.array_equal(a.kinds[kind].serial, b.kinds[kind].serial)
        assert np.array_equal(a.kinds[kind].cause, b.kinds[kind].cause)
        assert not np.array_equal(a.kinds[kind].serial[:10], c.kinds[kind].serial[:10])
        k = a.kinds[kind]
        assert np.all(np.diff(k.serial.astype(np.float64)) > 0)  # key order
        lost = k.cause > 0
        assert np.all(k.lost_at[lost] >= k.not_before[lost])
        assert np.all(k.lost_at[lost] <= k.not_after[lost])
    sign, auth = a.kinds[CertKind.CARD_SIGN], a.kinds[CertKind.CARD_AUTH]
    assert len(sign.serial) == len(auth.serial) == 5000  # every holder has both cards
    # an address change ends signing certificates far more often than auth ones
    assert (sign.cause > 0).sum() > 3 * (auth.cause > 0).sum()
    # 第16条の13: a mobile signing certificate of a holder whose card one was lost
    # (while the mobile one was valid) carries CARD_CERT_LOST_EFFECT at the same time
    card_cause = np.zeros(5000, np.uint8)
    card_cause[sign.holder] = sign.cause
    card_at = np.zeros(5000, np.int64)
    card_at[sign.holder] = sign.lost_at
    ms = a.kinds[CertKind.MOBILE_SIGN]
    cascaded = ms.cause == LossCause.CARD_CERT_LOST_EFFECT
    assert cascaded.any()
    assert np.all(card_cause[ms.holder[cascaded]] > 0)
    assert np.all(card_at[ms.holder[cascaded]] == ms.lost_at[cascaded])
    all_serials = np.concatenate([a.kinds[k].serial for k in CertKind])
    assert len(np.unique(all_serials)) == len(all_serials)


def test_registry_and_index_agree(small_dataset: DataSet, tmp_path: Path) -> None:
    ds = small_dataset
    info = ds.info()
    anchors = x509.load_pem_x509_certificates(ds.root_pem.read_bytes())
    snapshot_path = next(ds.snapshot_dir.glob("snap-*"))
    snapshot = SnapshotVerifier(anchors, SystemClock()).verify(snapshot_path)
    index = Index(build_index(snapshot, tmp_path / "index"))
    registry = Registry(ds.registry_dir)
    try:
        with registry.read() as tx:
            records = list(tx.certificates())
            causes = Counter(r.loss.cause for r in records if r.loss is not None)
            for record in records:  # the JSON reads back and the index says the same
                assert index.get(record.kind, record.serial) == record.status_record()
            holder = tx.holder_certificates(f"{datagen.RESIDENT_BASE + 7:011d}")
            events = list(tx.events_since(0))
        assert len(records) == info["certificate_total"] == snapshot.manifest.record_count
        # Every phase timed twice: wall, and CPU (which the links process adds to).
        assert set(info["cpu_seconds"]) == set(info["timings"])
        assert info["cpu_seconds"]["snapshot"] > 0
        assert set(causes) == set(LossCause)  # every cause of the law appears
        assert sum(causes.values()) == info["loss_total"] == len(events)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert [e.loss.time for e in events] == sorted(e.loss.time for e in events)
        assert {r.kind for r in holder} >= {CertKind.CARD_SIGN, CertKind.CARD_AUTH}
        assert snapshot.manifest.event_sequence == len(events)
    finally:
        registry.close()
        index.close()


def test_sample_certificates_verify_with_openssl(small_dataset: DataSet) -> None:
    ds = small_dataset
    samples = ds.info()["samples"]
    assert {s["kind"] for s in samples} == {k.name for k in CertKind}
    registry = Registry(ds.registry_dir)
    try:
        for sample in samples:
            cert = ds.root / sample["file"]
            result = openssl(
                "verify",
                "-partial_chain",
                "-no_check_time",
                "-CAfile",
                str(ds.root / sample["issuer"]),
                str(cert),
            )
            assert result.stdout.strip().endswith("OK")
            parsed = x509.load_pem_x509_certificate(cert.read_bytes())
            with registry.read() as tx:
                record = tx.certificate(CertKind[sample["kind"]], parsed.serial_number)
            assert record is not None and record.certificate_der == parsed.public_bytes(
                Encoding.DER
            )
    finally:
        registry.close()


def test_refuses_to_overwrite(small_dataset: DataSet, softhsm_token) -> None:
    with pytest.raises(FileExistsError):
        datagen.generate(small_dataset.root, 10, seed=1, hsm_config=softhsm_token, hsm_info={})


def test_municipality_codes_are_six_digits_and_distinct() -> None:
    codes = datagen.municipality_codes(1700)
    assert len(set(codes)) == 1700
    assert all(10000 <= c <= 999999 for c in codes)


def test_peer_inputs(small_dataset: DataSet) -> None:
    peers = small_dataset.peers_dir
    requests = (peers / "requests.hex").read_text().split()
    assert len(requests) == 200
    index = (peers / "index.txt").read_text().splitlines()
    assert index and all(line[0] in "VR" for line in index)
    assert len((peers / "responses.b64").read_text().split()) == len(index)


def test_dataset_paths(tmp_path: Path) -> None:
    ds = DataSet(tmp_path)
    with pytest.raises(DataSetError, match="bench datagen"):
        ds.info()
    with pytest.raises(DataSetError):
        ds.pool()


def _dump(registry_dir: Path) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Every named database of an LMDB environment, key and value."""
    env = lmdb.open(str(registry_dir), readonly=True, max_dbs=64)
    try:
        with env.begin() as txn:
            names = [bytes(name) for name, _ in txn.cursor()]
            return {
                name: [(bytes(k), bytes(v)) for k, v in txn.cursor(db=env.open_db(name, txn=txn))]
                for name in names
            }
    finally:
        env.close()


def test_registry_written_with_a_helper_process_is_the_same(
    small_dataset: DataSet, tmp_path: Path
) -> None:
    """The helper process encodes every other chunk; the registry is byte for byte the
    one written by this process alone."""
    registry = Registry(small_dataset.registry_dir)
    try:
        with registry.read() as tx:
            issuers = {r.kind: r for r in tx.issuers() if r.kind is not None}
    finally:
        registry.close()
    pop = datagen.draw_population(700, 5, 2_000_000_000, datagen.Shape(partitions=8))
    sample = (CertKind.MOBILE_SIGN, int(pop.kinds[CertKind.MOBILE_SIGN].serial[2]))
    samples = {sample: {"der": base64.b64encode(b"a certificate").decode()}}
    total = sum(len(k.serial) for k in pop.kinds.values())
    dumps = []
    for name, helper in (("alone", False), ("helper", True)):
        ds = DataSet(tmp_path / name)
        datagen._write_registry(ds, pop, issuers, samples, total, chunk=97, helper=helper)
        dumps.append(_dump(ds.registry_dir))
    alone, with_helper = dumps
    assert len(alone[b"certs"]) == total > 97 * 4
    assert any(value.endswith(b"a certificate") for _, value in alone[b"certs"])
    assert with_helper == alone
