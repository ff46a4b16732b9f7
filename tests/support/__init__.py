"""A real signer and responder on 127.0.0.1 for tests, and helpers to drive them.

Everything is real: the session's SoftHSM2 token, LMDB environments in a temporary
directory, gRPC servers on loopback ports, a spawned responder worker process.
"""

from __future__ import annotations

import itertools
import re
import select
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import lmdb
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp

from jpki_va import hsm
from jpki_va.core.clock import Clock, FixedClock, SystemClock
from jpki_va.core.domain import CertKind, LossCause, Role
from jpki_va.protos import signer_pb2, signer_pb2_grpc, va_pb2, va_pb2_grpc, verifiers_pb2
from jpki_va.server.app.config import ResponderConfig, SignerConfig
from jpki_va.server.app.responder_app import Responder
from jpki_va.server.app.signer_app import SignerApp, start_signer
from jpki_va.server.law.mobile_issuance import format_notice
from jpki_va.server.model.holder import Holder
from jpki_va.server.pki.cert_profile import throwaway_client_certificate
from jpki_va.server.registry.transactions import Registry
from jpki_va.server.responder.index_reader import Index, current_index
from jpki_va.server.signer.authority import AuthoritySettings
from jpki_va.server.signer.ceremony import bootstrap
from tests.support.ports import free_port as free_port
from tests.support.ports import free_port_pair as free_port_pair

T = TypeVar("T")

#: The repository's root: examples/, pyproject.toml and the five distributions.
REPO = Path(__file__).resolve().parents[2]
#: `jpki-va` run from the source tree, as a subprocess argv prefix.
JPKI_VA = (sys.executable, "-m", "jpki_va.server.cmd.main")


ALL_ROLES_VERIFIER = "test-all-roles"

HolderKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def fresh_key() -> ec.EllipticCurvePrivateKey:
    """A new holder key pair: every certificate needs its own, and P-256 is quick to make."""
    return ec.generate_private_key(ec.SECP256R1())


def spki_of(key: HolderKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


#: The four basic items every test holder has unless a test says otherwise.
TARO = {"name": "試験 太郎", "birth_date": "1990-01-01", "sex": "男", "address": "千代田区1-1"}


def mobile_notice(kind: CertKind, signed_at: datetime, **items: str) -> bytes:
    """The notice of step one (第16条の2第2項): the kind, the four items, when signed."""
    return format_notice(kind, Holder(**{**TARO, **items}), signed_at)


def sign_notice(card_key: HolderKey, notice: bytes) -> bytes:
    """The CARD_SIGN key's signature over the notice, as `openssl dgst -sha256 -sign` makes it."""
    if isinstance(card_key, rsa.RSAPrivateKey):
        return card_key.sign(notice, padding.PKCS1v15(), hashes.SHA256())
    return card_key.sign(notice, ec.ECDSA(hashes.SHA256()))


def device_csr(key: HolderKey) -> bytes:
    """Step two's proof of possession: a PKCS#10 request signed with the device key."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def bootstrapped_registry(
    token: hsm.Hsm, path: Path, now: datetime, label: str, ca_age: timedelta = timedelta(days=30)
) -> Registry:
    """A registry at `path` with its CAs made on `token` `ca_age` before `now`, under
    key labels of their own (tests share the session's token)."""
    registry = Registry(path)
    bootstrap(
        token,
        registry,
        FixedClock(now - ca_age),
        AuthoritySettings(label_prefix=f"{label}-{uuid.uuid4().hex[:8]}"),
    )
    return registry


def throwaway_certificate(name: str) -> x509.Certificate:
    """A self-signed client certificate: in plaintext tests only its fingerprint matters."""
    return throwaway_client_certificate(name, timedelta(days=30))


def wait_for(predicate: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll until predicate returns a truthy value (bounded: fails after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def openssl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=check)


def check_request(kind: CertKind, serial: int) -> va_pb2.CheckRequest:
    """StatusService.Check of one certificate by kind and serial."""
    return va_pb2.CheckRequest(
        cert=va_pb2.CertRef(
            kind_serial=va_pb2.KindSerial(
                kind=int(kind),  # type: ignore[arg-type]
                serial=serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big"),
            )
        )
    )


def record_loss(
    stub: signer_pb2_grpc.SignerServiceStub,
    kind: CertKind,
    serial: int,
    cause: LossCause = LossCause.HOLDER_REQUEST,
) -> signer_pb2.RecordLossResponse:
    """Record a loss; returning at all means the signer acknowledged it."""
    return stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=int(kind),  # type: ignore[arg-type]
            serial=serial.to_bytes(8, "big"),
            cause=int(cause),  # type: ignore[arg-type]
        ),
        timeout=30,
    )


def request_der(issued: Issued, nonce: bytes | None = None) -> bytes:
    """A DER OCSP request (SHA-1 CertID, as openssl's) for one issued certificate."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        issued.certificate, issued.issuer, hashes.SHA1()
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def metric_value(url: str, name: str) -> float | None:
    """One sample of a Prometheus text exposition (the first, whatever its labels)."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)", line)
        if match:
            return float(match.group(1))
    return None


def preproduced_count(url: str, result: str) -> float:
    """jpki_va_ocsp_preproduced_total{result=...}, summed over the workers."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("jpki_va_ocsp_preproduced_total{") and f'result="{result}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def produced(responder: Responder) -> dict[str, Any]:
    """The OCSP producer's state once a pass over the live index has finished."""

    def done() -> dict[str, Any] | None:
        state = responder.preproduced()
        return state if state.get("done") and state.get("index") == state["live"] else None

    return wait_for(done, "a finished pass of the OCSP producer")


_STORE_ENTRY = """
import sys
from pathlib import Path
from jpki_va.server.responder.preproduced import PreproducedStore
store = PreproducedStore(Path(sys.argv[1]))
key = bytes.fromhex(sys.argv[2])
if len(sys.argv) > 3:
    store.put_many([(key, bytes.fromhex(sys.argv[3]))])
entry = store.get(key)
print("" if entry is None else entry.encode().hex())
"""


def preproduced_entry(state_dir: Path, key: bytes, put: bytes | None = None) -> bytes | None:
    """The encoded pre-produced entry under record `key` in a replica's store, after
    writing `put` there when given. In a process of its own: LMDB wants one environment
    per file per process, and the responder's supervisor may have its own open."""
    args = [sys.executable, "-c", _STORE_ENTRY, str(state_dir), key.hex()]
    out = subprocess.run(
        [*args, *([] if put is None else [put.hex()])],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    return bytes.fromhex(out) if out else None


_RESIDENTS = itertools.count(1)


def issue_through(
    stub: signer_pb2_grpc.SignerServiceStub,
    kind: CertKind,
    *,
    resident_code: str | None = None,
    municipality: str = "131016",
    key: HolderKey | None = None,
) -> Issued:
    """Issue a card kind through a SignerService stub (a resident code of its own
    unless given); mobile kinds take the two-step application (Pki.issue)."""
    assert not kind.is_mobile, "a mobile certificate needs the two-step application"
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    request = signer_pb2.IssueCertificateRequest(
        kind=int(kind),  # type: ignore[arg-type]
        resident_code=resident_code or f"{80000000000 + next(_RESIDENTS):011d}",
        municipality_code=municipality,
        holder=signer_pb2.HolderInfo(**TARO),
        public_key_der=spki_of(key),
    )
    reply = stub.IssueCertificate(request, timeout=30)
    return Issued(
        kind=kind,
        serial=int.from_bytes(reply.serial, "big"),
        certificate=x509.load_der_x509_certificate(reply.certificate_der),
        issuer=x509.load_der_x509_certificate(reply.issuer_certificate_der),
        key=key,
    )


@dataclass
class Issued:
    kind: CertKind
    serial: int
    certificate: x509.Certificate
    issuer: x509.Certificate
    key: HolderKey

    def pem_files(self, directory: Path, name: str) -> tuple[Path, Path]:
        cert = directory / f"{name}.pem"
        issuer = directory / f"{name}-issuer.pem"
        cert.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        issuer.write_bytes(self.issuer.public_bytes(serialization.Encoding.PEM))
        return cert, issuer


@dataclass
class Pki:
    """A running signer + responder pair and stubs to talk to them."""

    directory: Path
    signer: SignerApp
    responder: Responder
    signer_stub: signer_pb2_grpc.SignerServiceStub
    status_stub: va_pb2_grpc.StatusServiceStub
    root: x509.Certificate
    root_file: Path
    clock: Clock
    _channels: list[grpc.Channel] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _runner: threading.Thread | None = None
    _counter: int = 0

    @property
    def responder_address(self) -> str:
        return f"127.0.0.1:{self.responder.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.responder.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.responder.metrics_port}/metrics"

    def issue(
        self,
        kind: CertKind,
        *,
        resident_code: str | None = None,
        municipality: str = "131016",
        card: Issued | None = None,
        key: HolderKey | None = None,
    ) -> Issued:
        """Issue through SignerService; a mobile kind by the two-step application whose
        notice `card` (a CARD_SIGN) signs; `key` is the holder's key pair (a new RSA one
        when None; a key is certified only once)."""
        self._counter += 1
        key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind.is_mobile:
            assert card is not None, "a mobile certificate needs the CARD_SIGN that applies"
            application = self.begin_mobile(kind, card)
            reply = self.signer_stub.CompleteMobileApplication(
                signer_pb2.CompleteMobileApplicationRequest(
                    application_id=application.application_id, csr=device_csr(key)
                ),
                timeout=30,
            ).issued
        else:
            return issue_through(
                self.signer_stub,
                kind,
                resident_code=resident_code or f"{90000000000 + self._counter:011d}",
                municipality=municipality,
                key=key,
            )
        return Issued(
            kind=kind,
            serial=int.from_bytes(reply.serial, "big"),
            certificate=x509.load_der_x509_certificate(reply.certificate_der),
            issuer=x509.load_der_x509_certificate(reply.issuer_certificate_der),
            key=key,
        )

    def begin_mobile(
        self, kind: CertKind, card: Issued, **items: str
    ) -> signer_pb2.BeginMobileApplicationResponse:
        """Step one: the notice of the four items (`items` override TARO's), signed by `card`."""
        notice = mobile_notice(kind, self.clock.now(), **items)
        return self.signer_stub.BeginMobileApplication(
            signer_pb2.BeginMobileApplicationRequest(
                kind=int(kind),  # type: ignore[arg-type]
                notice=notice,
                notice_signature=sign_notice(card.key, notice),
                card_certificate_der=card.certificate.public_bytes(serialization.Encoding.DER),
            ),
            timeout=30,
        )

    def check(
        self, kind: CertKind, serial: int, as_of: datetime | None = None
    ) -> va_pb2.CertificateStatus:
        """The responder's answer through StatusService.Check."""
        request = check_request(kind, serial)
        if as_of is not None:
            request.as_of.FromDatetime(as_of)
        return self.status_stub.Check(request, timeout=10).status

    @contextmanager
    def live_index(self) -> Iterator[Index]:
        """The responder's live index, read in this process.

        LMDB allows one handle per environment and process, and the responder's
        housekeeping (in this process too) opens it briefly: retry until free.
        """

        def attempt() -> Index | None:
            try:
                return Index(current_index(self.responder.config.index_dir))  # type: ignore[arg-type]
            except lmdb.Error:
                return None

        index = wait_for(attempt, "the live index to be free", timeout=10)
        try:
            yield index
        finally:
            index.close()

    def publish_and_wait(self, *, full: bool = True) -> int:
        """Publish a full (or delta) snapshot and wait until the responder serves it."""
        reply = self.signer_stub.PublishSnapshot(
            signer_pb2.PublishSnapshotRequest(full=full), timeout=60
        )
        self.wait_sequence(reply.sequence)
        if full:
            self.wait_preproduced()
        return reply.sequence

    def wait_preproduced(self) -> None:
        """Until the OCSP producer has been over the live index (at once when it is
        off): nonce-less OCSP answers come pre-produced from then on, so the clients
        of the tests (openssl and the interop validators) judge those."""
        if self.responder.config.ocsp_preproduce:
            produced(self.responder)

    def wait_sequence(self, sequence: int) -> None:
        def served() -> bool:
            try:
                answer = self.status_stub.Check(
                    va_pb2.CheckRequest(
                        cert=va_pb2.CertRef(
                            kind_serial=va_pb2.KindSerial(
                                kind=va_pb2.CERT_KIND_CARD_SIGN, serial=b"\x01"
                            )
                        )
                    ),
                    timeout=5,
                )
            except grpc.RpcError:
                return False
            return answer.status.index_sequence >= sequence

        wait_for(served, f"responder to serve snapshot {sequence}")

    def close(self) -> None:
        self._stop.set()
        if self._runner is not None:
            self._runner.join()
        self.responder.shutdown()
        for channel in self._channels:
            channel.close()
        self.signer.stop()


def register_verifier(pki: Pki, name: str, roles: frozenset[Role] | None = None) -> None:
    """Add a verifier (all roles unless given) with a throwaway client certificate."""
    pki.signer_stub.AddVerifier(
        verifiers_pb2.AddVerifierRequest(
            id=name,
            roles=[int(r) for r in (roles or Role)],  # type: ignore[misc]
            client_certificate_der=[
                throwaway_certificate(name).public_bytes(serialization.Encoding.DER)
            ],
        ),
        timeout=30,
    )


def add_all_roles_verifier(stub: signer_pb2_grpc.SignerServiceStub) -> None:
    """Plaintext callers without an x-jpki-verifier header act as this verifier, which
    holds every role; entitlement tests name other verifiers explicitly."""
    stub.AddVerifier(
        verifiers_pb2.AddVerifierRequest(
            id=ALL_ROLES_VERIFIER,
            roles=[int(r) for r in Role],  # type: ignore[misc]
            client_certificate_der=[
                throwaway_certificate(ALL_ROLES_VERIFIER).public_bytes(serialization.Encoding.DER)
            ],
            agreement="TEST-AGREEMENT",
        ),
        timeout=30,
    )


def start_loopback_signer(
    data_dir: Path, token: hsm.HsmConfig, clock: Clock | None = None, **settings: Any
) -> SignerApp:
    """An in-process signer listening on a free loopback port, without TLS."""
    return start_signer(
        SignerConfig(
            data_dir=data_dir, hsm=token, listen="127.0.0.1:0", insecure_loopback=True, **settings
        ),
        clock,
    )


def start_pki(
    directory: Path,
    hsm_config: hsm.HsmConfig,
    *,
    workers: int = 1,
    clock: Clock | None = None,
    delta_interval: float = 0,
    http_port: int = 0,
    **signer_settings: Any,
) -> Pki:
    """A signer (publishing only on request unless delta_interval > 0) and a responder.

    With `http_port` and `base_url` (a signer setting) naming the same port, the URLs
    the certificates carry reach this responder's HTTP server."""
    signer = start_loopback_signer(
        directory / "signer",
        hsm_config,
        clock,
        delta_interval=delta_interval,
        bootstrap=True,
        **signer_settings,
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{signer.port}")
    signer_stub = signer_pb2_grpc.SignerServiceStub(channel)
    root_der = signer_stub.ListIssuers(va_pb2.ListIssuersRequest(), timeout=30)
    root = x509.load_der_x509_certificate(root_der.root_certificate_der)
    root_file = directory / "root.pem"
    root_file.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    add_all_roles_verifier(signer_stub)
    responder = Responder(
        ResponderConfig(
            snapshot_dir=signer.config.snapshot_dir,
            state_dir=directory / "responder",
            trust_anchors=(root_file,),
            listen="127.0.0.1:0",
            workers=workers,
            signer=f"127.0.0.1:{signer.port}",
            insecure_loopback=True,
            loopback_verifier=ALL_ROLES_VERIFIER,
            poll_interval=0.1,
            http_listen=f"127.0.0.1:{http_port}",
            metrics_port=0,
        )
    )
    responder.start()
    status_channel = grpc.insecure_channel(f"127.0.0.1:{responder.port}")
    pki = Pki(
        directory=directory,
        signer=signer,
        responder=responder,
        signer_stub=signer_stub,
        status_stub=va_pb2_grpc.StatusServiceStub(status_channel),
        root=root,
        root_file=root_file,
        clock=clock or SystemClock(),
        _channels=[channel, status_channel],
    )
    pki._runner = threading.Thread(target=responder.run, args=(pki._stop,), daemon=True)
    pki._runner.start()
    return pki


@contextmanager
def running_pki(
    directory: Path,
    hsm_config: hsm.HsmConfig,
    *,
    publish: bool = True,
    **settings: Any,
) -> Iterator[Pki]:
    """`start_pki` for a module fixture: published first (unless `publish` is False, for
    a fixture that registers verifiers before its first publish) and closed after."""
    running = start_pki(directory, hsm_config, **settings)
    try:
        if publish:
            running.publish_and_wait()
        yield running
    finally:
        running.close()


@dataclass
class ExtraResponder:
    """Another responder over a Pki's snapshots, with its own state and settings."""

    responder: Responder
    _stop: threading.Event
    _runner: threading.Thread

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.responder.port}"

    def close(self) -> None:
        self._stop.set()
        self._runner.join()
        self.responder.shutdown()


def start_responder(pki: Pki, state_dir: Path, **settings: Any) -> ExtraResponder:
    settings.setdefault("signer", f"127.0.0.1:{pki.signer.port}")
    return start_responder_over(
        pki.signer.config.snapshot_dir, pki.root_file, state_dir, **settings
    )


def start_responder_over(
    snapshots: Path, root_file: Path, state_dir: Path, **settings: Any
) -> ExtraResponder:
    """A responder in this process over a snapshot directory, ingesting in a thread."""
    config: dict[str, Any] = {
        "snapshot_dir": snapshots,
        "state_dir": state_dir,
        "trust_anchors": (root_file,),
        "listen": "127.0.0.1:0",
        "workers": 1,
        "poll_interval": 0.1,
    }
    config.update(settings)
    responder = Responder(ResponderConfig(**config))
    responder.start()
    stop = threading.Event()
    runner = threading.Thread(target=responder.run, args=(stop,), daemon=True)
    runner.start()
    return ExtraResponder(responder, stop, runner)


@dataclass
class CliResponder:
    """`jpki-va responder` run as its own process, its log (stderr) kept in a file."""

    proc: subprocess.Popen[str]
    port: int
    http_port: int
    log_file: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> str:
        """SIGTERM (workers drain and flush their logs), a clean exit; the whole log."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        assert self.proc.returncode == 0, self.log()[-4000:]
        return self.log()


def start_cli_responder(pki: Pki, state_dir: Path, log_file: Path) -> CliResponder:
    """One worker over `pki`'s snapshots, serving once it has loaded an index."""
    http_port = free_port()
    with log_file.open("w") as log:
        proc = subprocess.Popen(
            [*JPKI_VA, "responder", "--snapshots", str(pki.signer.config.snapshot_dir),
             "--state-dir", str(state_dir), "--trust-anchor", str(pki.root_file),
             "--workers", "1", "--insecure-loopback", "--loopback-verifier", ALL_ROLES_VERIFIER,
             "--poll-interval", "0.1", "--listen", "127.0.0.1:0",
             "--http-listen", f"127.0.0.1:{http_port}"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True,
        )  # fmt: skip
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("responder listening on port "):
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"responder did not start: {line!r}\n{log_file.read_text()[-4000:]}")
    running = CliResponder(proc, int(line.rsplit(" ", 1)[1]), http_port, log_file)
    with grpc.insecure_channel(running.address) as channel:
        stub = va_pb2_grpc.StatusServiceStub(channel)

        def serving() -> bool:
            try:
                stub.ListIssuers(va_pb2.ListIssuersRequest(), timeout=5)
            except grpc.RpcError:
                return False
            return True

        wait_for(serving, "the responder to load an index")
    return running
