"""第41条: the provision report, from the real responder's and signer's ledgers.

A renewal mapping is counted apart from the nine provisions; an HTTP 304 for a CRL is
no provision; the report refuses without a ledger it needs; fiscal years; a version
without verifier names; and the published report, signed by the signer's HSM key,
checked with nothing but openssl and the root.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509

from jpki_va.client import VaClient
from jpki_va.core.clock import JST
from jpki_va.core.domain import CertKind, Role
from jpki_va.hsm import HsmConfig
from tests.support import JPKI_VA, REPO, Issued, Pki, openssl, register_verifier, running_pki

VERIFIER = "v-report-41"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig) -> Iterator[Pki]:
    directory = tmp_path_factory.mktemp("report41")
    with running_pki(directory, softhsm_token, publish=False) as running:
        register_verifier(running, VERIFIER, frozenset({Role.SIGNING_VERIFIER}))
        yield running


def _get(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            reply.read()
            return reply.status, dict(reply.headers)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers)


def _report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*JPKI_VA, "report", *args], capture_output=True, text=True, cwd=REPO, check=False
    )


@pytest.fixture(scope="module")
def provided(pki: Pki) -> tuple[Issued, Issued]:
    """One renewal mapping and one CRL (fetched twice: 200, then 304) for VERIFIER."""
    code = "41000000001"
    old = pki.issue(CertKind.CARD_SIGN, resident_code=code)
    time.sleep(1.1)  # the renewal ends the old one a second later (whole seconds)
    new = pki.issue(CertKind.CARD_SIGN, resident_code=code)
    pki.publish_and_wait()
    with VaClient(pki.responder_address, insecure=True, verifier=VERIFIER) as va:
        renewed = va.map(kind=CertKind.CARD_SIGN, serial=old.serial, to=CertKind.CARD_SIGN)
    assert [m.status.serial for m in renewed] == [new.serial]
    points = new.certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    uri = next(
        n.value
        for p in points.value
        for n in (p.full_name or [])
        if isinstance(n, x509.UniformResourceIdentifier)
    )
    url = pki.http_url + urllib.parse.urlsplit(uri).path
    status, headers = _get(url, {"X-JPKI-Verifier": VERIFIER})
    assert status == 200
    again, _ = _get(url, {"X-JPKI-Verifier": VERIFIER, "If-None-Match": headers["ETag"]})
    assert again == 304
    return old, new


def _ledgers(pki: Pki) -> list[str]:
    return [
        "--ledger", str(pki.responder.config.ledger_dir),
        "--ledger", str(pki.signer.config.ledger_dir),
    ]  # fmt: skip


def test_article_41_counts_renewal_apart_and_no_304(pki: Pki, provided: object) -> None:
    year = str(datetime.now(JST).year)
    # The HTTP answers are committed once per turn of the event loop: wait for them.
    deadline = time.monotonic() + 10
    while True:
        result = _report("annual", "--year", year, *_ledgers(pki), "--format", "json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        rows = {r["provision"]: r for r in report["provisions"] + report["not_provisions"]}
        if rows["SIGNING_CRL"]["by_verifier"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # The renewal mapping: counted apart, not as a status provision; the status of the
    # successor that came with it is a status provision.
    assert [r["provision"] for r in report["not_provisions"]] == ["RENEWAL_MAPPING"]
    assert rows["RENEWAL_MAPPING"]["by_verifier"] == {VERIFIER: 1}
    assert rows["SIGNING_STATUS"]["by_verifier"].get(VERIFIER) == 1
    # The 304 provided nothing: one CRL provision for two fetches.
    assert rows["SIGNING_CRL"]["by_verifier"] == {VERIFIER: 1}
    assert report["period"] == year and report["from"] == f"{year}-01-01"
    # A fiscal year runs April to March.
    fiscal = _report("annual", "--fiscal-year", "2026", *_ledgers(pki), "--format", "json")
    assert fiscal.returncode == 0, fiscal.stderr
    body = json.loads(fiscal.stdout)
    assert (body["period"], body["from"], body["to"]) == ("FY2026", "2026-04-01", "2027-03-31")
    # Without verifier names: totals and how many verifiers, no name.
    anonymous = _report("annual", "--year", year, *_ledgers(pki), "--without-verifier-names")
    assert anonymous.returncode == 0, anonymous.stderr
    assert VERIFIER not in anonymous.stdout
    assert "| 署名用電子証明書失効情報ファイル (signing CRL files, 第18条2項) | 1 | 1 |" in (
        anonymous.stdout
    )


def test_article_41_refuses_without_a_ledger_it_needs(pki: Pki, provided: object) -> None:
    year = str(datetime.now(JST).year)
    responder_only = _report(
        "annual", "--year", year, "--ledger", str(pki.responder.config.ledger_dir)
    )
    assert responder_only.returncode == 2 and not responder_only.stdout
    assert "no signer's ledger among --ledger" in responder_only.stderr
    assert responder_only.stderr.count("\n") == 1
    signer_only = _report("annual", "--year", year, "--ledger", str(pki.signer.config.ledger_dir))
    assert signer_only.returncode == 2
    assert "no responder's ledger among --ledger" in signer_only.stderr
    both = _report("annual", "--year", "2026", "--fiscal-year", "2026", *_ledgers(pki))
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_article_41_published_report_is_signed_and_verifies_against_the_root(
    pki: Pki, provided: object, tmp_path: Path
) -> None:
    out = tmp_path / "published"
    year = str(datetime.now(JST).year)
    result = _report(
        "publish", "--year", year, *_ledgers(pki), "--without-verifier-names",
        "--out-dir", str(out), "--signer", f"127.0.0.1:{pki.signer.port}", "--insecure-loopback",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in (f"report-{year}.html", f"report-{year}.csv"):
        document = out / name
        assert VERIFIER not in document.read_text(encoding="utf-8")
        verified = openssl(
            "cms", "-verify", "-binary", "-inform", "DER", "-in", f"{document}.p7s",
            "-content", str(document), "-CAfile", str(pki.root_file), "-purpose", "any",
            "-out", "/dev/null", check=False,
        )  # fmt: skip
        assert verified.returncode == 0, verified.stderr
        assert "Verification successful" in verified.stderr
        # A changed report does not verify.
        forged = tmp_path / f"forged-{name}"
        forged.write_bytes(document.read_bytes() + b"\n")
        refused = openssl(
            "cms", "-verify", "-binary", "-inform", "DER", "-in", f"{document}.p7s",
            "-content", str(forged), "-CAfile", str(pki.root_file), "-purpose", "any",
            "-out", "/dev/null", check=False,
        )  # fmt: skip
        assert refused.returncode != 0
    assert (out / "signer.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE")


def test_article_18_4_mappings_go_to_the_audit_trail(
    pki: Pki, provided: tuple[Issued, Issued]
) -> None:
    old, new = provided
    today = datetime.now(JST).date().isoformat()
    result = _report(
        "audit", "--from", today, "--to", today, "--verifier", VERIFIER,
        "--ledger", str(pki.responder.config.ledger_dir), "--format", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    entries = [(e["provision"], e["subject"], e["detail"]) for e in json.loads(result.stdout)]
    # A serial mapping identifies a person: who was told which serial of whom, and when.
    assert ("RENEWAL_MAPPING", f"CARD_SIGN:{old.serial:X}", f"CARD_SIGN:{new.serial:X}") in (
        entries
    )
