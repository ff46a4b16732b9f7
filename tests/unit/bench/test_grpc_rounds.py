"""The gRPC step's rounds: the median round is the figure, every round is reported."""

from __future__ import annotations

from typing import Any

import pytest

from jpki_va.bench.report import rounds_lines
from jpki_va.bench.suite import SuiteSettings, median_round


def _pair(trivial: float, jpki: float) -> dict[str, Any]:
    def side(rate: float) -> dict[str, Any]:
        return {"rate": rate, "server_cpu_us_per_item": round(1e6 / rate, 2), "calls": 1}

    return {
        "trivial": side(trivial),
        "jpki-va": side(jpki),
        "ratio_to_trivial": round(jpki / trivial, 3),
    }


def test_the_median_round_is_the_figure_and_every_round_is_kept() -> None:
    rounds = [_pair(5000, 4500), _pair(4000, 2400), _pair(6000, 4800)]  # 0.9, 0.6, 0.8
    figures = median_round(rounds)
    assert figures["ratio_to_trivial"] == 0.8
    assert figures["trivial"] is rounds[2]["trivial"]  # one measured pair, not a blend
    assert figures["jpki-va"] is rounds[2]["jpki-va"]
    assert [r["ratio_to_trivial"] for r in figures["rounds"]] == [0.9, 0.6, 0.8]
    assert figures["rounds"][1]["jpki-va"] == {"rate": 2400, "server_cpu_us_per_item": 416.67}


def test_an_even_count_takes_the_upper_median_and_one_round_lists_none() -> None:
    assert median_round([_pair(10, 5), _pair(10, 9)])["ratio_to_trivial"] == 0.9
    one = median_round([_pair(10, 7)])
    assert one["ratio_to_trivial"] == 0.7
    assert "rounds" not in one
    assert rounds_lines(one.get("rounds")) == []


def test_the_report_lists_each_round() -> None:
    lines = rounds_lines(median_round([_pair(5000, 4500), _pair(4000, 2400)])["rounds"])
    assert "| 1 | 5,000 | 4,500 | 0.900 | 200.0 / 222.2 | - |" in lines
    assert "| 2 | 4,000 | 2,400 | 0.600 | 250.0 / 416.7 | - |" in lines


def test_rounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rounds"):
        SuiteSettings(grpc_rounds=0)


def test_each_rounds_context_switches_are_kept_when_measured() -> None:
    switched = _pair(5000, 4000)
    switched["jpki-va"]["server_switches_per_item"] = {"voluntary": 2.5, "involuntary": 0.1}
    switched["jpki-va"]["server_major_faults_per_item"] = 0.0123
    switched["jpki-va"]["server_cpu_seconds_by_process"] = [6.35, 0.03]
    figures = median_round([switched, _pair(5000, 4500), _pair(5000, 3000)])
    assert "| 6.3 / 0.0 |" in "\n".join(rounds_lines(figures["rounds"]))
    assert figures["rounds"][0]["jpki-va"]["server_major_faults_per_item"] == 0.0123
    assert "server_major_faults_per_item" not in figures["rounds"][1]["jpki-va"]
    assert figures["rounds"][0]["jpki-va"]["server_switches_per_item"] == {
        "voluntary": 2.5,
        "involuntary": 0.1,
    }
    assert "server_switches_per_item" not in figures["rounds"][1]["jpki-va"]
