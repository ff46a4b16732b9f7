"""The Grafana dashboard and the Prometheus alert rules against what the code exports.

A real signer and responder (SoftHSM2, LMDB, gRPC and HTTP on 127.0.0.1) serve
/metrics after real traffic; every metric a dashboard query or an alert rule names
must be one of theirs. promtool (Debian's prometheus package) checks the rules, unit-
tests them on synthetic series, and parses every dashboard query.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from prometheus_client.parser import text_string_to_metric_families

from jpki_va import hsm
from jpki_va.core.domain import CertKind
from jpki_va.protos import signer_pb2, va_pb2
from tests.support import REPO, Pki, start_pki, wait_for

DASHBOARD = REPO / "deploy" / "grafana" / "jpki-va.json"
RULES = REPO / "deploy" / "prometheus" / "jpki-va-alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "jpki-va-alerts.test.yml"
METRIC = re.compile(r"\bjpki_va_[a-z0-9_]+")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "info": ("_info",),
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    assert path is not None, "promtool is missing: ./tasks setup installs Debian's prometheus"
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=120, check=False)


def _scrape(url: str) -> set[str]:
    """Every sample name a scrape of `url` can carry, families without samples included."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, softhsm_token: hsm.HsmConfig
) -> Iterator[set[str]]:
    """What a signer and a responder export after issuing, a loss, gRPC and HTTP calls."""
    pki: Pki = start_pki(tmp_path_factory.mktemp("observed"), softhsm_token, metrics_port=0)
    try:
        issued = pki.issue(CertKind.CARD_AUTH)
        lost = pki.issue(CertKind.CARD_AUTH)
        pki.publish_and_wait()
        pki.signer_stub.RecordLoss(
            signer_pb2.RecordLossRequest(
                kind=va_pb2.CERT_KIND_CARD_AUTH,
                serial=lost.serial.to_bytes(8, "big"),
                cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
                reason=va_pb2.CRL_REASON_KEY_COMPROMISE,
            ),
            timeout=30,
        )
        pki.publish_and_wait(full=False)  # a delta: the freshness histogram counts the loss
        pki.check(CertKind.CARD_AUTH, issued.serial)
        der = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(issued.certificate, issued.issuer, hashes.SHA1())
            .build()
            .public_bytes(serialization.Encoding.DER)
        )
        request = urllib.request.Request(
            pki.http_url + "/ocsp",
            data=der,
            headers={"Content-Type": "application/ocsp-request"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 200

        # Workers write their metrics every 0.2 s.
        def flushed() -> set[str] | None:
            names = _scrape(pki.metrics_url)
            return names if "jpki_va_http_request_seconds_bucket" in names else None

        responder = wait_for(flushed, "the workers' HTTP metrics")
        assert pki.signer.metrics_port is not None
        signer = _scrape(f"http://127.0.0.1:{pki.signer.metrics_port}/metrics")
        yield responder | signer
    finally:
        pki.close()


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _queries() -> list[tuple[str, str]]:
    """(panel title, query) for every target of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in _dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def _rule_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def test_every_dashboard_query_names_an_exported_metric(exported: set[str]) -> None:
    queries = _queries()
    assert len(queries) >= 20
    unknown = {
        (title, name)
        for title, expr in queries
        for name in METRIC.findall(expr)
        if name not in exported
    }
    assert not sorted(unknown), f"dashboard queries name metrics nobody exports: {unknown}"
    # The signer and responder both show; so do the new series of issue 11.
    named = {name for _, expr in queries for name in METRIC.findall(expr)}
    for needed in (
        "jpki_va_http_request_seconds_bucket",
        "jpki_va_ocsp_signer_expiry_timestamp_seconds",
        "jpki_va_publishes_total",
        "jpki_va_publish_failures_total",
        "jpki_va_publish_age_seconds",
        "jpki_va_build_info",
        "jpki_va_hsm_sign_seconds_bucket",
        "jpki_va_in_rotation",
    ):
        assert needed in named


def test_every_alert_names_an_exported_metric(exported: set[str]) -> None:
    for alert, expr in _rule_exprs():
        names = set(METRIC.findall(expr))
        assert names, alert
        assert names <= exported, f"{alert} names metrics nobody exports: {names - exported}"


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool parses each query, with the dashboard's variables at their defaults."""
    values = {
        v["name"]: v.get("current", {}).get("value", v.get("query"))
        for v in _dashboard()["templating"]["list"]
    }
    rules = []
    for i, (_, query) in enumerate(_queries()):
        expr = query
        for name, value in values.items():
            expr = expr.replace(f"${name}", str(value))
        rules.append({"record": f"jpki_va:dashboard_query_{i}", "expr": expr})
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_grafana_shaped() -> None:
    board = _dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]


def test_alert_rules_check_and_unit_tests() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_alert_unit_tests_can_fail(tmp_path: Path) -> None:
    """A rule with the wrong bound fails its unit test: the tests judge the rules."""
    broken = RULES.read_text(encoding="utf-8").replace("- time() < 2 * 86400", "- time() < 60")
    assert broken != RULES.read_text(encoding="utf-8")
    (tmp_path / RULES.name).write_text(broken, encoding="utf-8")
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    tested = promtool("test", "rules", str(tmp_path / RULE_TESTS.name))
    assert tested.returncode != 0
    assert "JpkiVaOcspSignerNearExpiry" in tested.stdout + tested.stderr
