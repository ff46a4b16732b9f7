"""The lines BENCHMARKS.md gets from the in-process status read step (bench/lookup.py);
the step itself runs on a real index in the bench smoke test."""

from __future__ import annotations

from jpki_va.bench.report import lookup_lines


def test_the_report_states_each_part_and_what_of_a_read_is_waiting_for_memory() -> None:
    figures = {
        "keys": 50_000,
        "records": 2_499_768,
        "batch": 100,
        "passes": 5,
        "compiled": True,
        "walked": True,
        "cpu_us_per_key_random": 0.585,
        "cpu_us_per_key_random_median": 0.591,
        "cpu_us_per_key_hot": 0.191,
        "cpu_us_per_key_hot_median": 0.192,
        "cpu_us_per_key_lmdb_get": 1.725,
        "cpu_us_per_key_lmdb_get_median": 1.746,
        "cpu_us_per_status_encode": 0.559,
        "cpu_us_per_status_encode_median": 0.561,
        "cpu_us_per_request_read": 0.054,
        "cpu_us_per_request_read_median": 0.065,
    }
    text = "\n".join(lookup_lines(figures))
    assert "50,000 record keys drawn at random from the index's 2,499,768,\n" in text
    assert "batches of 100" in text and "least of 5 passes" in text
    assert (
        "keys drawn at random (a batch's lookups walked side by side over the mapped file):"
        " **0.58 µs (median 0.59)**" in text  # rounded
    )
    assert "the same 100 keys again and again: 0.19 µs (median 0.19)" in text
    assert "the difference, 0.39 µs a key, is waiting for memory" in text
    assert "read by LMDB's `get`, one after another (the reference): 1.73 µs (median 1.75)" in text
    assert "encoding an answer (compiled): 0.56 µs" in text
    assert "usual request (its keys from its bytes): 0.05 µs (median 0.07)" in text
    # An install without the compiled module: the figures say what it ran.
    pure = "\n".join(lookup_lines({**figures, "compiled": False}))
    assert "encoding an answer (pure Python: the compiled module is missing)" in pure
    assert "usual request (parsed by protobuf): 0.05 µs" in pure
    unwalked = "\n".join(lookup_lines({**figures, "walked": False}))
    assert "at random (LMDB's get: the compiled page walk is missing): **0.58" in unwalked
    # A run from before the page walk: LMDB's get served, and no reference line.
    earlier = {k: v for k, v in figures.items() if k != "walked" and "lmdb_get" not in k}
    earlier_text = "\n".join(lookup_lines(earlier))
    assert "at random (LMDB's get): **0.58" in earlier_text
    assert "the reference" not in earlier_text
    assert lookup_lines(None) == []  # a run without the step: no section
