"""The Node.js sample (examples/node): a verifier's @grpc/grpc-js client of jpki-va.

Its TypeScript stubs are generated from protos/ alone by buf with ts-proto and checked
in; they must be what the protos generate now. The sample, compiled with the pinned
TypeScript, calls Check and CheckStream against a real responder on 127.0.0.1.
`./tasks setup` installs Node (Debian's, when none is present) and the locked npm
packages; without them these tests fail rather than skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from jpki_va.core.domain import CertKind, Role, serial_hex, serial_to_bytes
from jpki_va.protos import signer_pb2, va_pb2, verifiers_pb2
from jpki_va.server.app.config import TlsFiles
from tests.support import REPO, Pki, start_responder, wait_for
from tests.support.buf import run_buf
from tests.support.tls import TlsCa, TlsIdentity

SAMPLE = REPO / "examples" / "node"
MODULES = SAMPLE / "node_modules"


def _node() -> str:
    node = shutil.which("node")
    if node is None or not (MODULES / ".bin" / "tsc").exists():
        pytest.fail("Node.js or the sample's npm packages are missing: run ./tasks setup")
    return node


def test_the_checked_in_stubs_are_what_the_protos_generate(tmp_path: Path) -> None:
    _node()
    result = run_buf(
        "generate",
        "--template",
        "buf.gen.yaml",
        "--output",
        str(tmp_path),
        "../../protos",
        cwd=SAMPLE,
    )
    assert result.returncode == 0, result.stderr
    fresh, kept = tmp_path / "src" / "gen", SAMPLE / "src" / "gen"
    produced = sorted(p.relative_to(fresh) for p in fresh.rglob("*.ts"))
    assert produced == sorted(p.relative_to(kept) for p in kept.rglob("*.ts"))
    for rel in produced:
        stale = f"{rel} is stale: run ./tasks proto"
        assert (fresh / rel).read_bytes() == (kept / rel).read_bytes(), stale


@pytest.fixture(scope="module")
def client_js(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample compiled (strict) into a temporary directory."""
    node = _node()
    out = tmp_path_factory.mktemp("node-sample")
    tsc = MODULES / "typescript" / "bin" / "tsc"
    built = subprocess.run(
        [node, str(tsc), "-p", "tsconfig.json", "--outDir", str(out)],
        cwd=SAMPLE,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return out / "client.js"


def _run(client_js: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_node(), str(client_js), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        # The compiled sample lives outside examples/node: resolve its packages there.
        env={**os.environ, "NODE_PATH": str(MODULES)},
    )


def test_the_node_client_calls_check_and_check_stream(pki: Pki, client_js: Path) -> None:
    good = pki.issue(CertKind.CARD_AUTH)
    lost = pki.issue(CertKind.CARD_AUTH)
    pki.signer_stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=va_pb2.CERT_KIND_CARD_AUTH,
            serial=serial_to_bytes(lost.serial),
            cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
        ),
        timeout=30,
    )
    sequence = pki.publish_and_wait()
    serials = [serial_hex(good.serial), serial_hex(lost.serial), "00", "7FFFFFFFFFFFFFFF"]
    run = _run(
        client_js,
        *("--target", pki.responder_address, "--insecure", "--kind", "card-auth"),
        *(arg for serial in serials for arg in ("--serial", serial)),
    )
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["call"] for line in lines] == ["Check"] + ["CheckStream"] * 4
    check, *stream = lines
    assert check["status"]["status"] == "CERT_STATUS_GOOD"
    assert check["status"]["kind"] == "CERT_KIND_CARD_AUTH"
    assert int(check["status"]["indexSequence"]) >= sequence
    assert [item.get("status", {}).get("status") for item in stream] == [
        "CERT_STATUS_GOOD",
        "CERT_STATUS_REVOKED",
        None,
        "CERT_STATUS_UNKNOWN",
    ]
    assert stream[1]["status"]["revocation"]["cause"] == "LOSS_CAUSE_HOLDER_REQUEST"
    assert stream[2]["errorCode"] == "CHECK_ERROR_CODE_INVALID_ARGUMENT"
    assert stream[2]["error"]


@pytest.fixture(scope="module")
def tls(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, TlsCa, TlsIdentity]]:
    """A responder over mTLS only, and a verifier that may receive auth statuses only."""
    base = tmp_path_factory.mktemp("node-mtls")
    ca = TlsCa(base / "tls")
    server = ca.issue("responder", server=True)
    identity = ca.issue("node-auth-verifier")
    pki.signer_stub.AddVerifier(
        verifiers_pb2.AddVerifierRequest(
            id="node-auth-verifier",
            roles=[int(Role.AUTH_VERIFIER)],  # type: ignore[list-item]
            client_certificate_der=[identity.der],
        ),
        timeout=30,
    )
    pki.publish_and_wait()
    responder = start_responder(
        pki,
        base / "state",
        tls=TlsFiles(server.cert, server.key, ca.cert_file),
        insecure_loopback=False,
    )
    try:
        yield responder.address, ca, identity
    finally:
        responder.close()


def test_the_node_client_speaks_mtls_as_a_registered_verifier(
    pki: Pki, client_js: Path, tls: tuple[str, TlsCa, TlsIdentity]
) -> None:
    address, ca, identity = tls
    auth = pki.issue(CertKind.CARD_AUTH)
    sequence = pki.publish_and_wait()
    mtls = ["--target", address, "--ca", str(ca.cert_file)]
    mtls += ["--cert", str(identity.cert), "--key", str(identity.key)]

    def answered() -> subprocess.CompletedProcess[str] | None:
        run = _run(client_js, *mtls, "--kind", "card-auth", "--serial", serial_hex(auth.serial))
        if run.returncode != 0:
            return None  # not serving yet, or refused: the last try's stderr tells
        served = int(json.loads(run.stdout.splitlines()[0])["status"]["indexSequence"])
        return run if served >= sequence else None

    run = wait_for(answered, "the TLS responder to serve the snapshot")
    check, streamed = (json.loads(line) for line in run.stdout.splitlines())
    assert check["status"]["status"] == streamed["status"]["status"] == "CERT_STATUS_GOOD"
    # A kind its role does not cover: the unary call is refused, one line, exit 1.
    refused = _run(client_js, *mtls, "--kind", "card-sign", "--serial", "01")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stdout == ""
    last = refused.stderr.splitlines()[-1]  # (Node may warn first: an IP as TLS name)
    assert last.startswith("jpki-va node client: PERMISSION_DENIED: "), refused.stderr
    # A certificate of the same TLS CA that no verifier registered.
    stranger = ca.issue("node-stranger")
    unknown = _run(
        client_js,
        *("--target", address, "--ca", str(ca.cert_file)),
        *("--cert", str(stranger.cert), "--key", str(stranger.key)),
        *("--kind", "card-auth", "--serial", "01"),
    )
    assert unknown.returncode == 1, unknown.stdout + unknown.stderr
    assert "is not a registered verifier" in unknown.stderr, unknown.stderr
