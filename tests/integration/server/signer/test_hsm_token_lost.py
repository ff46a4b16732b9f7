"""The signer's HSM token lost and restored (issue 15, item 7).

A real `jpki-va signer` process on a SoftHSM2 token made for this module (SoftHSM2
reads one config per process, so the token and the signer live in processes of their
own; the session's shared token is not touched). The token is lost by moving its
token directory away, as when the volume holding it goes, and restored by moving it
back; the signer is never restarted. The operator's side is the real `jpki-va
registry` command.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jpki_va.core.clock import SystemClock
from jpki_va.core.domain import CertKind, serial_hex
from jpki_va.protos import signer_pb2, signer_pb2_grpc, va_pb2
from jpki_va.server.cmd.main import main
from jpki_va.server.snapshot.manifest import snapshot_sequence
from jpki_va.server.snapshot.verify import SnapshotVerifier
from tests.support import JPKI_VA, free_port, wait_for

TOKEN = "jpki-va-lost"
PUBLISH_HEALTH = "jpki-va.publish"
DELTA_INTERVAL = "0.3"

_MAKE_TOKEN = """
import sys
from pathlib import Path
from jpki_va.hsm import init_softhsm_token
print(init_softhsm_token(Path(sys.argv[1]), sys.argv[2], so_pin=sys.argv[3], user_pin=sys.argv[4]))
"""


@dataclass
class Signer:
    """A signer process on its own token, and the token's directory to take away."""

    directory: Path
    tokens: Path
    away: Path
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    channel: grpc.Channel
    stub: signer_pb2_grpc.SignerServiceStub
    card_serial: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def lose_token(self) -> None:
        if self.tokens.exists():
            self.tokens.rename(self.away)

    def restore_token(self) -> None:
        if self.away.exists():
            self.away.rename(self.tokens)

    def metric(self, name: str) -> float | None:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        total = None
        for line in text.splitlines():
            match = re.fullmatch(rf"{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)", line)
            if match:
                total = (total or 0.0) + float(match.group(1))
        return total

    def health(self, service: str) -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        return int(reply.status)

    def sequences(self) -> list[int]:
        found = (snapshot_sequence(p) for p in (self.directory / "data" / "snapshots").iterdir())
        return sorted(s for s in found if s is not None)


def _start(directory: Path) -> Signer:
    pin = "4711"
    conf = subprocess.run(
        [sys.executable, "-c", _MAKE_TOKEN, str(directory / "hsm"), TOKEN, "1234", pin],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    pin_file = directory / "user.pin"
    pin_file.write_text(pin + "\n")
    pin_file.chmod(0o600)
    port, metrics_port = free_port(), free_port()
    out = (directory / "signer.out").open("wb")
    err = (directory / "signer.err").open("wb")
    argv = [
        *JPKI_VA, "signer", "--data-dir", str(directory / "data"),
        "--listen", f"127.0.0.1:{port}", "--insecure-loopback", "--bootstrap",
        "--hsm-token", TOKEN, "--hsm-pin-file", str(pin_file), "--softhsm2-conf", conf,
        "--metrics-port", str(metrics_port), "--delta-interval", DELTA_INTERVAL,
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=out, stderr=err)
    out.close()
    err.close()
    try:
        wait_for(
            lambda: (
                process.poll() is not None
                or b"listening" in (directory / "signer.out").read_bytes()
            ),
            "the signer to start",
            timeout=120,
        )
        assert process.poll() is None, (directory / "signer.err").read_text()
    except BaseException:
        _stop(process)
        raise
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return Signer(
        directory=directory,
        tokens=Path(conf).parent / "tokens",
        away=Path(conf).parent / "tokens-away",
        process=process,
        port=port,
        metrics_port=metrics_port,
        channel=channel,
        stub=signer_pb2_grpc.SignerServiceStub(channel),
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)


def _spki() -> bytes:
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signer]:
    running = _start(tmp_path_factory.mktemp("hsm-lost"))
    try:
        # While the token is there: a card certificate (lost later) and a first snapshot.
        reply = running.stub.IssueCertificate(
            signer_pb2.IssueCertificateRequest(
                kind=va_pb2.CERT_KIND_CARD_SIGN,
                resident_code="70000000001",
                municipality_code="131016",
                holder=signer_pb2.HolderInfo(
                    name="試験 花子", address="千代田区3-3", birth_date="1991-02-03", sex="女"
                ),
                public_key_der=_spki(),
            ),
            timeout=60,
        )
        running.card_serial = int.from_bytes(reply.serial, "big")
        running.stub.PublishSnapshot(signer_pb2.PublishSnapshotRequest(full=True), timeout=60)
        yield running
    finally:
        running.restore_token()
        running.channel.close()
        _stop(running.process)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


def registry(signer: Signer, *argv: str) -> list[str]:
    return ["registry", *argv, "--signer", signer.address, "--insecure-loopback"]


def _issue_argv(tmp_path: Path, code: str) -> list[str]:
    pub = tmp_path / "holder.pub.pem"
    key = serialization.load_der_public_key(_spki())
    pub.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return [
        "issue", "--kind", "card-auth", "--resident-code", code, "--municipality", "131016",
        "--name", "試験 一郎", "--address", "千代田区4-4", "--birth-date", "1980-04-04",
        "--sex", "男", "--pubkey", str(pub), "--out", str(tmp_path / "out.pem"),
    ]  # fmt: skip


def test_a_lost_token_is_reported_as_hsm_unavailable_not_as_an_unreachable_signer(
    signer: Signer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    signer.lose_token()

    code, _, err = run(capsys, *registry(signer, *_issue_argv(tmp_path, "70000000002")))
    assert code == 5, err
    assert "HSM unavailable" in err and "unreachable" not in err
    assert not (tmp_path / "out.pem").exists()

    code, _, err = run(capsys, *registry(signer, "publish", "--full"))
    assert code == 5, err
    assert "HSM unavailable" in err

    with pytest.raises(grpc.RpcError) as info:
        signer.stub.PublishSnapshot(signer_pb2.PublishSnapshotRequest(full=True), timeout=30)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert str(info.value.details()).startswith("HSM unavailable: ")
    # The signer itself is up: it still records changes (durably) and answers.
    assert signer.health("") == health_pb2.HealthCheckResponse.SERVING


def test_a_loss_recorded_while_publishing_fails_is_durable_and_says_it_is_not_published(
    signer: Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    signer.lose_token()
    serial = serial_hex(signer.card_serial)

    code, out, err = run(
        capsys,
        *registry(
            signer, "lose", "--kind", "card-sign", "--serial", serial,
            "--cause", "holder-request", "--json",
        ),
    )  # fmt: skip
    assert code == 0, err
    reply = json.loads(out)
    assert [c["serial"] for c in reply["changes"]] == [serial]
    assert reply["publishing"]["failing"] is True
    assert "HSM unavailable" in reply["publishing"]["error"]
    assert "not yet published" in err

    # Durable: recording it again is refused as already recorded.
    code, _, err = run(
        capsys,
        *registry(
            signer, "lose", "--kind", "card-sign", "--serial", serial, "--cause", "holder-request"
        ),
    )
    assert code == 3 and "FAILED_PRECONDITION" in err

    # The pending loss makes the periodic publisher try, and fail, again and again.
    wait_for(
        lambda: (signer.metric("jpki_va_publish_failures_total") or 0) >= 3,
        "three failed periodic publishes",
    )
    assert signer.metric("jpki_va_publish_failing") == 1
    age = signer.metric("jpki_va_publish_age_seconds")
    assert age is not None and age > 0
    assert signer.health(PUBLISH_HEALTH) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert signer.health("") == health_pb2.HealthCheckResponse.SERVING


def test_the_signer_recovers_by_itself_and_failed_publishes_take_no_sequence(
    signer: Signer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    signer.lose_token()
    # A change is pending (the loss above; recorded here too if run alone), so the
    # periodic publisher fails meanwhile too.
    run(
        capsys,
        *registry(
            signer, "lose", "--kind", "card-sign", "--serial", serial_hex(signer.card_serial),
            "--cause", "holder-request",
        ),
    )  # fmt: skip
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            signer.stub.PublishSnapshot(signer_pb2.PublishSnapshotRequest(full=True), timeout=30)
    before = signer.sequences()

    signer.restore_token()
    # No restart: the periodic publisher gets through once the token is back.
    wait_for(lambda: signer.sequences() != before, "a snapshot after the token is back", 45)
    assert signer.sequences()[len(before)] == before[-1] + 1

    code, out, err = run(capsys, *registry(signer, "publish", "--full", "--json"))
    assert code == 0, err
    published = json.loads(out)["snapshot"]
    # No failed attempt took a sequence number: they are consecutive from the first.
    sequences = signer.sequences()
    assert sequences == list(range(1, len(sequences) + 1))
    assert published["sequence"] == sequences[-1]

    # The loss recorded while the token was gone is on the CRL.
    issuers = signer.stub.ListIssuers(va_pb2.ListIssuersRequest(), timeout=30)
    root = x509.load_der_x509_certificate(issuers.root_certificate_der)
    snapshot = SnapshotVerifier([root], SystemClock()).verify(
        signer.directory / "data" / "snapshots" / published["name"]
    )
    on_crl = {
        entry.serial_number
        for vc in snapshot.crls
        if vc.info.kind is CertKind.CARD_SIGN
        for entry in vc.crl
    }
    assert signer.card_serial in on_crl

    code, _, err = run(capsys, *registry(signer, *_issue_argv(tmp_path, "70000000003")))
    assert code == 0, err
    wait_for(lambda: signer.metric("jpki_va_publish_failing") == 0, "publishing to be healthy")
    assert signer.health(PUBLISH_HEALTH) == health_pb2.HealthCheckResponse.SERVING
