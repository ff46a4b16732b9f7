"""`jpki-va demo`: the whole loop on loopback, for a new user's first minutes.

Creates a SoftHSM2 token, the CA hierarchy, a few holders' certificates (some in
effect, some that lost effect by different causes), publishes a snapshot, starts
the signer and the responder, writes demo.json for scripts and serves until
interrupted.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from jpki_va import hsm
from jpki_va.core.clock import JST
from jpki_va.core.domain import CertKind, CrlReason, LossCause, Role
from jpki_va.protos import signer_pb2, signer_pb2_grpc, va_pb2, verifiers_pb2
from jpki_va.server.app.config import ConfigError, ResponderConfig, SignerConfig
from jpki_va.server.app.responder_app import Responder
from jpki_va.server.app.signals import stop_on_signals, wait_for_stop
from jpki_va.server.app.signer_app import SignerApp, start_signer
from jpki_va.server.base.private_files import private_dir, write_private
from jpki_va.server.law.mobile_issuance import format_notice
from jpki_va.server.model.holder import Holder
from jpki_va.server.pki.cert_profile import throwaway_client_certificate

log = logging.getLogger(__name__)

TOKEN_LABEL = "jpki-va-demo"  # noqa: S105 (a token label, not a secret)
DEMO_FILE = "demo.json"
DEFAULT_HTTP_PORT = 8080
# The demo's verifier holds every role, so every provision can be tried; plaintext
# callers without an x-jpki-verifier header are this verifier (responder option).
DEMO_VERIFIER = "demo"
DEMO_AGREEMENT = "DEMO-AGREEMENT-1"


@dataclass(frozen=True)
class DemoHolder:
    slug: str
    resident_code: str
    municipality: str
    name: str
    address: str
    birth_date: str
    sex: str


HOLDERS = (
    DemoHolder("taro", "12345678901", "131016", "山田 太郎", "千代田区1-1", "1980-04-01", "男"),
    DemoHolder("hanako", "23456789012", "271004", "佐藤 花子", "大阪市北区2-2", "1992-11-23", "女"),
    DemoHolder("jiro", "34567890123", "131016", "鈴木 次郎", "千代田区3-3", "1975-07-07", "男"),
)
CONSENTING = HOLDERS[0]  # consents to the demo verifier receiving the signing records
# (holder, kind, loss to record: (cause, reason) or None)
LOSSES = {
    ("hanako", CertKind.CARD_SIGN): (LossCause.HOLDER_REQUEST, CrlReason.KEY_COMPROMISE),
    ("jiro", CertKind.CARD_AUTH): (LossCause.RECORD_ERROR, None),
}


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class _Setup:
    """Issues the demo's certificates through the signer's gRPC API."""

    def __init__(self, directory: Path, stub: signer_pb2_grpc.SignerServiceStub) -> None:
        self.dir = directory
        self.stub = stub
        self.certs_dir = private_dir(directory / "certs")
        self.entries: list[dict[str, Any]] = []
        self.serials: dict[tuple[str, CertKind], bytes] = {}
        self.keys: dict[tuple[str, CertKind], rsa.RSAPrivateKey] = {}
        self.certificates: dict[tuple[str, CertKind], bytes] = {}

    def _issuer_file(self, der: bytes) -> str:
        cert = x509.load_der_x509_certificate(der)
        kid = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest.hex()[:8]
        path = self.certs_dir / f"issuer-{kid}.pem"
        write_private(path, _pem(cert))
        return path.relative_to(self.dir).as_posix()

    def issue(self, holder: DemoHolder, kind: CertKind) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        info = signer_pb2.HolderInfo(
            name=holder.name, address=holder.address, birth_date=holder.birth_date, sex=holder.sex
        )
        if kind.is_mobile:
            reply = self._mobile_application(holder, kind, key)
        else:
            reply = self.stub.IssueCertificate(
                signer_pb2.IssueCertificateRequest(
                    kind=int(kind),  # type: ignore[arg-type]
                    resident_code=holder.resident_code,
                    municipality_code=holder.municipality,
                    holder=info,
                    public_key_der=key.public_key().public_bytes(
                        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                    ),
                ),
                timeout=30,
            )
        name = f"{holder.slug}-{kind.slug}"
        cert = x509.load_der_x509_certificate(reply.certificate_der)
        write_private(self.certs_dir / f"{name}.pem", _pem(cert))
        write_private(
            self.certs_dir / f"{name}.key.pem",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        self.serials[(holder.slug, kind)] = reply.serial
        self.keys[(holder.slug, kind)] = key
        self.certificates[(holder.slug, kind)] = reply.certificate_der
        self.entries.append(
            {
                "name": name,
                "kind": kind.name,
                "serial": reply.serial.hex().upper(),
                "cert": f"certs/{name}.pem",
                "key": f"certs/{name}.key.pem",
                "issuer": self._issuer_file(reply.issuer_certificate_der),
                "expected": {"status": "GOOD", "cause": None, "reason": None},
            }
        )

    def _mobile_application(
        self, holder: DemoHolder, kind: CertKind, key: rsa.RSAPrivateKey
    ) -> signer_pb2.IssueCertificateResponse:
        """第16条の2, 第35条の2: the notice signed with the CARD_SIGN key, then the CSR."""
        card_key = self.keys[(holder.slug, CertKind.CARD_SIGN)]
        items = Holder(holder.name, holder.address, holder.birth_date, holder.sex)
        notice = format_notice(kind, items, datetime.now(UTC))
        begun = self.stub.BeginMobileApplication(
            signer_pb2.BeginMobileApplicationRequest(
                kind=int(kind),  # type: ignore[arg-type]
                notice=notice,
                notice_signature=card_key.sign(notice, padding.PKCS1v15(), hashes.SHA256()),
                card_certificate_der=self.certificates[(holder.slug, CertKind.CARD_SIGN)],
            ),
            timeout=30,
        )
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
        )
        return self.stub.CompleteMobileApplication(
            signer_pb2.CompleteMobileApplicationRequest(
                application_id=begun.application_id,
                csr=csr.public_bytes(serialization.Encoding.DER),
            ),
            timeout=30,
        ).issued

    def lose(self, holder: str, kind: CertKind, cause: LossCause, reason: CrlReason | None) -> None:
        reply = self.stub.RecordLoss(
            signer_pb2.RecordLossRequest(
                kind=int(kind),  # type: ignore[arg-type]
                serial=self.serials[(holder, kind)],
                cause=int(cause),  # type: ignore[arg-type]
                reason=int(reason) if reason is not None else 0,  # type: ignore[arg-type]
            ),
            timeout=30,
        )
        by_serial = {e["serial"]: e for e in self.entries}
        for change in reply.changes:
            entry = by_serial[change.serial.hex().upper()]
            entry["expected"] = {
                "status": "REVOKED",
                "cause": LossCause(change.cause).name,
                "reason": CrlReason(change.reason).name,
            }


def _create(directory: Path, port: int, signer_port: int, http_port: int) -> dict[str, Any]:
    """A fresh demo directory: token, hierarchy, certificates, first snapshot."""
    # The token, its PINs, holders' keys: the demo directory is its user's alone.
    private_dir(directory)
    token_dir = directory / "hsm"
    user_pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
    conf = hsm.init_softhsm_token(token_dir, TOKEN_LABEL, so_pin=so_pin, user_pin=user_pin)
    for name, pin in (("user.pin", user_pin), ("so.pin", so_pin)):
        write_private(token_dir / name, f"{pin}\n".encode())
    return {
        "responder": f"127.0.0.1:{port}",
        "signer": f"127.0.0.1:{signer_port}",
        "http": f"http://127.0.0.1:{http_port}",
        "root": "certs/root.pem",
        "hsm": {
            "module": hsm.DEFAULT_MODULE,
            "softhsm2_conf": conf.relative_to(directory).as_posix(),
            "token_label": TOKEN_LABEL,
            "pin_file": "hsm/user.pin",
        },
        "certs": [],
    }


def _start(
    directory: Path, info: dict[str, Any], bootstrap: bool, metrics_port: int | None = None
) -> SignerApp:
    hsm_info = info["hsm"]
    config = SignerConfig(
        data_dir=directory / "signer",
        hsm=hsm.HsmConfig(
            module=hsm_info["module"],
            token_label=hsm_info["token_label"],
            pin=hsm.PinSource(file=str(directory / hsm_info["pin_file"])),
            softhsm2_conf=str(directory / hsm_info["softhsm2_conf"]),
        ),
        listen=info["signer"],
        base_url=info["http"],
        insecure_loopback=True,
        delta_interval=2.0,
        bootstrap=bootstrap,
        metrics_port=metrics_port,
    )
    return start_signer(config)


def _populate(directory: Path, info: dict[str, Any], signer: SignerApp) -> None:
    with grpc.insecure_channel(info["signer"]) as channel:
        stub = signer_pb2_grpc.SignerServiceStub(channel)
        issuers = stub.ListIssuers(va_pb2.ListIssuersRequest(), timeout=30)
        certs_dir = private_dir(directory / "certs")
        root = x509.load_der_x509_certificate(issuers.root_certificate_der)
        write_private(certs_dir / "root.pem", _pem(root))
        setup = _Setup(directory, stub)
        for holder in HOLDERS:
            for kind in CertKind:
                setup.issue(holder, kind)
        for (holder_slug, kind), (cause, reason) in LOSSES.items():
            setup.lose(holder_slug, kind, cause, reason)
        _register_verifier(certs_dir, stub)
        # 第18条3項: taro consents to the demo verifier receiving his signing records.
        stub.RecordConsent(
            signer_pb2.RecordConsentRequest(
                resident_code=CONSENTING.resident_code, verifier=DEMO_VERIFIER, grant=True
            ),
            timeout=30,
        )
        stub.PublishSnapshot(signer_pb2.PublishSnapshotRequest(full=True), timeout=60)
        info["certs"] = setup.entries
    del signer


def _register_verifier(certs_dir: Path, stub: signer_pb2_grpc.SignerServiceStub) -> None:
    """The demo verifier, with a self-signed client certificate to show the identity."""
    cert = throwaway_client_certificate("jpki-va demo verifier", timedelta(days=365))
    write_private(certs_dir / "demo-verifier.pem", _pem(cert))
    stub.AddVerifier(
        verifiers_pb2.AddVerifierRequest(
            id=DEMO_VERIFIER,
            roles=[int(r) for r in Role],  # type: ignore[misc]
            client_certificate_der=[cert.public_bytes(serialization.Encoding.DER)],
            agreement=DEMO_AGREEMENT,
        ),
        timeout=30,
    )


def _print_help(directory: Path, info: dict[str, Any]) -> None:
    d = directory
    first = info["certs"][0]
    revoked = next(c for c in info["certs"] if c["expected"]["status"] == "REVOKED")
    sign = next(c for c in info["certs"] if c["name"] == f"{CONSENTING.slug}-card-sign")
    today = datetime.now(JST).date().isoformat()
    lines = [
        "",
        f"jpki-va demo is serving: responder {info['responder']} (gRPC) and "
        f"{info['http']} (HTTP OCSP, CRLs), signer {info['signer']}"
        + (
            f"; metrics {info['metrics']['responder']} and {info['metrics']['signer']}"
            if "metrics" in info
            else ""
        ),
        f"Everything lives in {d}/ (demo.json lists every certificate). Try:",
        "",
        f"  jpki-va check --server {info['responder']} --insecure-loopback "
        f"--cert {d}/{first['cert']}",
        f"  jpki-va check --server {info['responder']} --insecure-loopback "
        f"--kind {CertKind[revoked['kind']].slug} --serial {revoked['serial']} --json",
        f"  jpki-va check --server {info['responder']} --insecure-loopback "
        f"--cert {d}/{revoked['cert']} --ocsp-out resp.der",
        f"  openssl ocsp -respin resp.der -issuer {d}/{revoked['issuer']} "
        f"-cert {d}/{revoked['cert']} -CAfile {d}/{info['root']} -resp_text",
        f"  jpki-va check --server {info['responder']} --insecure-loopback "
        "--kind card-sign --serial 0123456789ABCDEF   # never issued: UNKNOWN",
        f"  jpki-va map --server {info['responder']} --insecure-loopback "
        f"--kind card-sign --serial {sign['serial']}",
        f"  jpki-va record --server {info['responder']} --insecure-loopback "
        f"--serial {sign['serial']}   # {CONSENTING.slug} consented to the demo verifier",
        f"  jpki-va watch --server {info['responder']} --insecure-loopback   # Ctrl-C ends it",
        f"  openssl ocsp -url {info['http']}/ocsp -issuer {d}/{first['issuer']} "
        f"-cert {d}/{first['cert']} -CAfile {d}/{info['root']}   # plain HTTP OCSP",
        f"  jpki-va token request --signer {info['signer']} --insecure-loopback "
        f"--verifier {DEMO_VERIFIER} --out token.jws",
        f"  jpki-va token verify --token token.jws --root {d}/{info['root']}",
        f"  jpki-va report annual --year {datetime.now(UTC).year} "
        f"--ledger {d}/responder/ledger --ledger {d}/signer/ledger",
        f"  jpki-va report audit --from {today} --to {today} --ledger {d}/responder/ledger",
        "",
        "Press Ctrl-C to stop.",
    ]
    print("\n".join(lines), flush=True)


def _open_directory(
    directory: Path, reset: bool, port: int, signer_port: int, http_port: int | None
) -> tuple[dict[str, Any], bool]:
    """Reuse a complete demo directory, or (re)create it; True when created.

    A reused demo keeps its HTTP port: its certificates and CRLs name that URL, so
    serving elsewhere would leave them pointing at nothing. Another --http-port is
    refused before anything starts.
    """
    if directory.exists() and not reset:
        try:
            info: dict[str, Any] = json.loads((directory / DEMO_FILE).read_text())
        except (OSError, ValueError):
            print(f"{directory} is incomplete; recreating it", file=sys.stderr)
        else:
            asked = None if http_port is None else f"http://127.0.0.1:{http_port}"
            if asked is not None and asked != info["http"]:
                raise ConfigError(
                    f"--http-port {http_port}: the demo in {directory} serves HTTP at "
                    f"{info['http']}, the URL its certificates and CRLs name; leave "
                    "--http-port out to reuse it, or add --reset to recreate the demo"
                )
            # Same token, registry and certificates; gRPC listens where asked this time.
            info["responder"] = f"127.0.0.1:{port}"
            info["signer"] = f"127.0.0.1:{signer_port}"
            print(f"reusing {directory} (--reset to recreate)", file=sys.stderr)
            return info, False
    if directory.exists():
        shutil.rmtree(directory)
    port_http = DEFAULT_HTTP_PORT if http_port is None else http_port
    return _create(directory, port, signer_port, port_http), True


def run(
    directory: Path,
    port: int,
    *,
    stop: threading.Event,
    reset: bool = False,
    signer_port: int | None = None,
    http_port: int | None = None,
    workers: int | None = None,
    ready: Callable[[dict[str, Any]], None] | None = None,
    metrics_port: int | None = None,
) -> int:
    """Serve until `stop`; `metrics_port` (0: any free ports) exposes the responder's
    /metrics there and the signer's on the next port."""
    stop_on_signals(stop)  # Ctrl-C or a service manager's TERM ends the demo in order
    directory = directory.resolve()
    state = directory / DEMO_FILE
    info, fresh = _open_directory(directory, reset, port, signer_port or port + 1, http_port)
    signer_metrics = None if metrics_port is None else metrics_port and metrics_port + 1
    signer = _start(directory, info, bootstrap=fresh, metrics_port=signer_metrics)
    responder: Responder | None = None
    runner: threading.Thread | None = None
    try:
        if fresh:
            _populate(directory, info, signer)
        sized: dict[str, Any] = {"workers": workers} if workers else {}
        responder = Responder(
            ResponderConfig(
                snapshot_dir=signer.config.snapshot_dir,
                state_dir=directory / "responder",
                trust_anchors=(directory / info["root"],),
                listen=info["responder"],
                signer=info["signer"],
                insecure_loopback=True,
                loopback_verifier=DEMO_VERIFIER,
                poll_interval=0.5,
                **sized,
                http_listen=info["http"].removeprefix("http://"),
                metrics_port=metrics_port,
            )
        )
        responder.start()
        info.pop("metrics", None)  # a reused demo's, from another run
        if metrics_port is not None:
            info["metrics"] = {
                "responder": f"http://127.0.0.1:{responder.metrics_port}/metrics",
                "signer": f"http://127.0.0.1:{signer.metrics_port}/metrics",
            }
        runner = threading.Thread(target=responder.run, args=(stop,), daemon=True)
        runner.start()
        tmp = state.with_suffix(".tmp")
        write_private(tmp, (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode())
        tmp.replace(state)  # scripts see a complete demo.json or none
        cwd = Path.cwd()
        shown = directory.relative_to(cwd) if directory.is_relative_to(cwd) else directory
        _print_help(shown, info)
        if ready is not None:
            ready(info)
        wait_for_stop(stop)
    finally:
        stop.set()
        if runner is not None:
            runner.join()
        if responder is not None:
            responder.shutdown()
        signer.stop()
    return 0
