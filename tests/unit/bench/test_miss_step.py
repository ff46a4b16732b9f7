"""The in-process OCSP miss step's parts that need no data set: the requests it reads
and the lines BENCHMARKS.md gets from its figures."""

from __future__ import annotations

from pathlib import Path

from jpki_va.bench.miss import peer_requests
from jpki_va.bench.report import miss_lines


def test_the_peers_requests_are_read_as_der_up_to_the_limit(tmp_path: Path) -> None:
    listed = tmp_path / "requests.hex"
    listed.write_text("3003020101\n3003020102\n3003020103\n")
    assert peer_requests(listed, limit=2) == [bytes.fromhex("3003020101"), b"0\x03\x02\x01\x02"]
    assert len(peer_requests(listed)) == 3


def test_the_report_states_the_least_pass_and_how_requests_were_answered() -> None:
    figures = {
        "requests": 5000,
        "passes": 15,
        "cpu_us_per_miss_min": 19.14,
        "cpu_us_per_miss_median": 19.62,
        "answered": {"served": 74990, "stale": 10},
    }
    text = "\n".join(miss_lines(figures))
    assert "**19.14 µs**" in text
    assert "15 passes over 5,000 distinct requests" in text
    assert "median 19.62 µs" in text
    assert "answered: 74,990 served, 10 stale" in text
    assert miss_lines(None) == []  # a run without the step: no section
