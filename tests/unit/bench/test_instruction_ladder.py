"""The instruction-ladder step's settings and report: rungs from the trivial one up,
each rung's instructions per call and what it adds over the rung below."""

from __future__ import annotations

import pytest

from jpki_va.bench import ladder
from jpki_va.bench.report import instruction_ladder_lines
from jpki_va.bench.suite import SuiteSettings


def _row(rung: str, count: int, ratio: float) -> dict[str, object]:
    return {"rung": rung, "calls": 1234, "instructions_per_call": count, "ratio_to_trivial": ratio}


def test_every_rung_then_the_responder_by_default() -> None:
    assert SuiteSettings().instruction_rungs == (*ladder.RUNGS, "jpki-va")
    chosen = ("trivial", "ledger", "jpki-va")
    assert SuiteSettings(instruction_rungs=chosen).instruction_rungs == chosen


@pytest.mark.parametrize("rungs", [(), ("ledger", "trivial"), ("trivial", "caching"), ("jpki-va",)])
def test_rungs_start_with_the_trivial_one_and_are_known(rungs: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="start with trivial"):
        SuiteSettings(instruction_rungs=rungs)


def test_a_worker_of_an_unknown_rung_is_refused() -> None:
    spec = ladder.RungSpec("index", "verifier", 4)
    with pytest.raises(ValueError, match="unknown rung 'caching'"):
        ladder.rung_worker("caching", spec, b"", b"")


def test_the_report_gives_what_each_rung_adds() -> None:
    lines = instruction_ladder_lines(
        {
            "check": [
                _row("trivial", 355_000, 1.0),
                _row("interceptors", 371_500, 0.956),
                _row("jpki-va", 428_100, 0.829),
            ]
        }
    )
    assert "### check" in lines
    assert "| trivial | 355,000 |  | 1.000 | 1,234 |" in lines
    assert "| interceptors | 371,500 | +16,500 | 0.956 | 1,234 |" in lines
    assert "| jpki-va | 428,100 | +56,600 | 0.829 | 1,234 |" in lines
    assert instruction_ladder_lines(None) == []
