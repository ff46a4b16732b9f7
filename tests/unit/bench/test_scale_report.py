"""The scale curve of `bench report --scale`: rows per size, the fit, the 10 M target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jpki_va.bench.report import derive, scale_lines, write_report


def _run(holders: int, seconds: float, load: float) -> dict[str, Any]:
    m = holders / 1e6
    return {
        "dataset": {
            "holders": holders,
            "certificate_total": int(2.5 * holders),
            "timings": {"registry": 20 * m, "snapshot": 30 * m},
            "cpu_seconds": {"registry": 10 * m, "snapshot": 15 * m},
            "sizes": {"registry_bytes": int(0.76e9 * m), "snapshot_bytes": int(0.28e9 * m)},
        },
        "ingest": {
            "snapshot": "snap-000000000001",
            "records": int(2.5 * holders),
            "crls": 6800,
            "crl_entries": holders // 10,
            "verify_seconds": 0.1 * seconds,
            "build_seconds": 0.9 * seconds,
            "total_seconds": seconds,
            "verify_cpu_seconds": 0.5 * m,
            "build_cpu_seconds": 4.0 * m,
            "index_bytes": int(0.36e9 * m),
        },
        "rss_after_load": {"max_vmrss_mb": 90.0, "max_rss_anon_mb": 60.0},
        "machine": {"load_average_at_start": [load, 1.0, 1.0]},
    }


def test_scale_rows_fit_and_national_size() -> None:
    lines = scale_lines([_run(3_000_000, 20.0, 7.0), _run(1_000_000, 6.0, 0.5)])
    rows = [line for line in lines if line.startswith("| ")][1:]
    assert [r.split(" | ")[0] for r in rows] == [
        "| 1,000,000",
        "| 3,000,000",
        "| per 1 M holders",
        "| 100 M holders (fit)",
    ]
    fit = rows[2].split(" | ")
    national = rows[3].split(" | ")
    assert fit[2] == "50.00" and national[2] == "5,000"  # datagen wall: 50 s per million
    assert fit[3] == "25.00"  # its CPU
    assert fit[9] == "0.76" and national[9] == "76.00"  # registry, GB
    assert fit[8] == "—"  # worker memory is not fitted: it does not grow with the index
    assert rows[1].split(" | ")[-1] == "7.0 |"  # the load average beside the wall times
    assert scale_lines([_run(1_000_000, 6.0, 0.5)]) == []  # one size is no curve


def test_a_measured_10m_build_replaces_the_scaled_one(tmp_path: Path) -> None:
    main = _run(1_000_000, 6.0, 0.5)
    assert derive(main)["index_build_at_10m"] == 60.0
    assert derive(main)["index_build_scaled"] is True
    both = {**main, "scale": [_run(10_000_000, 52.5, 9.0)]}
    assert derive(both) == {
        "index_build_at_10m": 52.5,
        "index_build_scaled": False,
        "index_build_scale_factor": 1.0,
    }
    results, ten = tmp_path / "results.json", tmp_path / "ten.json"
    results.write_text(json.dumps(main))
    ten.write_text(json.dumps(_run(10_000_000, 52.5, 9.0)))
    text = write_report(results, tmp_path / "BENCHMARKS.md", scale=[ten]).read_text()
    assert "## Scale curve" in text and "| 10,000,000 | 25,000,000 |" in text
    assert "| full index build, seconds, at 10 M holders | <= 60 | 52.50 | yes |" in text
