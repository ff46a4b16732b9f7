"""The responder's watch on its store: a snapshot committed while it starts is not
left for the next poll period.

The supervisor scans the store once as it starts, then starts its workers, then
watches the store's pointer (responder/snapshot_notice.py). The pointer is read
before that first scan: a snapshot committed between the scan and the watch's first
read has moved it since, and is scanned for at once.
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc

from jpki_va.core.domain import CertKind
from jpki_va.protos import va_pb2, va_pb2_grpc
from jpki_va.server.app.config import ResponderConfig
from jpki_va.server.app.responder_app import Responder
from tests.support import ALL_ROLES_VERIFIER, Pki, check_request, wait_for


def test_a_snapshot_committed_while_the_responder_starts_is_scanned_for_at_once(
    pki: Pki, tmp_path: Path
) -> None:
    pki.publish_and_wait()  # the store holds a snapshot for the start's scan
    responder = Responder(
        ResponderConfig(
            snapshot_dir=pki.signer.config.snapshot_dir,
            state_dir=tmp_path / "responder",
            trust_anchors=(pki.root_file,),
            listen="127.0.0.1:0",
            workers=1,
            signer=f"127.0.0.1:{pki.signer.port}",
            insecure_loopback=True,
            loopback_verifier=ALL_ROLES_VERIFIER,
            poll_interval=3600.0,  # no scan by the clock in this test
            notice_interval=0.05,
        )
    )
    responder.start()
    stop = threading.Event()
    runner = threading.Thread(target=responder.run, args=(stop,), daemon=True)
    try:
        issued = pki.issue(CertKind.CARD_SIGN)
        pki.publish_and_wait()  # committed after the start's scan, before the watch
        runner.start()
        with grpc.insecure_channel(f"127.0.0.1:{responder.port}") as channel:
            stub = va_pb2_grpc.StatusServiceStub(channel)

            def good() -> bool:
                reply = stub.Check(check_request(issued.kind, issued.serial), timeout=10)
                return reply.status.status == va_pb2.CERT_STATUS_GOOD

            wait_for(good, "the snapshot committed while the responder started", 20)
    finally:
        stop.set()
        if runner.is_alive():
            runner.join(10)
        responder.shutdown()
