"""`jpki-va bench report`: results JSON -> BENCHMARKS.md and a PNG chart.

Every jpki-va figure stands beside its ceiling or peer with the ratio, and every
target of the issue with whether it was met and by how much it was missed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHART = "benchmarks.png"

# (name, figure getter, comparison, target) ; comparison ">=" or "<="
TARGETS: list[tuple[str, str, str, float]] = [
    ("unary Check / trivial gRPC server", "grpc.check.ratio_to_trivial", ">=", 0.9),
    ("CheckStream / trivial stream", "grpc.stream.ratio_to_trivial", ">=", 0.6),
    ("Ocsp over gRPC / trivial gRPC server", "grpc.ocsp.ratio_to_trivial", ">=", 0.8),
    ("HTTP OCSP / cfssl ocspserve", "http_ocsp.ratio_to_cfssl", ">=", 3.0),
    ("full index build, seconds, at 10 M holders", "derived.index_build_at_10m", "<=", 60),
    (
        "delta apply, seconds (largest delta)",
        "freshness.delta_apply.largest_apply_seconds",
        "<=",
        1,
    ),
    ("registry commit to answer, seconds (max)", "freshness.commit_to_answer_max", "<=", 10.0),
    (
        "fleet: registry commit to answer, p99 on every replica, seconds",
        "fleet.freshness.p99_worst_replica_seconds",
        "<=",
        2.0,
    ),
    (
        "worker private (anonymous) RSS after gRPC load, MB",
        "rss_after_load.max_rss_anon_mb",
        "<=",
        100,
    ),
    (
        "worker private (anonymous) RSS after HTTP load, MB",
        "rss_after_http.max_rss_anon_mb",
        "<=",
        100,
    ),
    ("start to serving, seconds", "start_to_serving_seconds", "<=", 3.0),
]


def derive(results: dict[str, Any]) -> dict[str, Any]:
    """Figures computed from others: the index build scaled to 10 M holders.

    Measured directly when the data set, or one of the scale runs (`scale`), has 10 M
    holders; otherwise scaled linearly by record count (the build is one pass over the
    records), and marked as such.
    """
    measured = [
        run
        for run in results.get("scale", [])
        if lookup(run, "dataset.holders") == 10_000_000
        and lookup(run, "ingest.total_seconds") is not None
    ]
    source = measured[0] if measured else results
    holders = lookup(source, "dataset.holders")
    build = lookup(source, "ingest.total_seconds")
    if not holders or build is None:
        return {}
    factor = 10_000_000 / holders
    return {
        "index_build_at_10m": round(build * factor, 1),
        "index_build_scaled": holders != 10_000_000,
        "index_build_scale_factor": round(factor, 2),
    }


def lookup(results: dict[str, Any], dotted: str) -> Any:
    node: Any = results
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def rounds_lines(rounds: list[dict[str, Any]] | None) -> list[str]:
    """Each round of the trivial server then jpki-va; the rows above are the median's."""
    if not rounds:
        return []
    lines = [
        f"Rounds, each the trivial server then jpki-va (the rows above are the median "
        f"round's of {len(rounds)}):",
        "",
        "| round | trivial | jpki-va | ratio | server CPU µs/item, trivial / jpki-va |"
        " jpki-va CPU s by worker |",
        "|---|---|---|---|---|---|",
    ]
    for turn, pair in enumerate(rounds, 1):
        t, j = pair["trivial"], pair["jpki-va"]
        by_worker = " / ".join(_fmt(s, 1) for s in j.get("server_cpu_seconds_by_process", []))
        lines.append(
            f"| {turn} | {_fmt(t['rate'], 0)} | {_fmt(j['rate'], 0)} |"
            f" {_fmt(pair['ratio_to_trivial'], 3)} |"
            f" {_fmt(t['server_cpu_us_per_item'], 1)} / {_fmt(j['server_cpu_us_per_item'], 1)} |"
            f" {by_worker or '-'} |"
        )
    return [*lines, ""]


_LOAD_HEADER = (
    "| server | throughput | p50 ms | p90 ms | p99 ms | max ms | errors | server CPU µs/item |"
)
_LOAD_SEP = "|---|---|---|---|---|---|---|---|"


def grpc_lines(grpc: dict[str, Any] | None) -> list[str]:
    """Each interface's trivial server and responder rows, ratio and rounds."""
    header, sep = _LOAD_HEADER, _LOAD_SEP
    lines: list[str] = []
    for interface, unit in (("check", "calls/s"), ("stream", "statuses/s"), ("ocsp", "calls/s")):
        figures = (grpc or {}).get(interface)
        if not figures:
            continue
        lines += [f"### {interface}", "", header, sep]
        lines.append(_load_row("trivial gRPC server (transport ceiling)", figures["trivial"], unit))
        lines.append(_load_row("jpki-va responder", figures["jpki-va"], unit))
        lines += ["", f"Ratio to the ceiling: **{_fmt(figures.get('ratio_to_trivial'), 3)}**", ""]
        lines += rounds_lines(figures.get("rounds"))
    return lines


def tls_lines(grpc_tls: dict[str, Any] | None) -> list[str]:
    """The gRPC step over mTLS (suite.tls_figures), and its calls step when it ran."""
    if not grpc_tls:
        return []
    return [
        "## gRPC over mTLS (the `tls` step)",
        "",
        "The same load with both servers speaking only mTLS: one throwaway server",
        "certificate and client CA, the client presenting a certificate registered as a",
        "verifier. The responder names its caller by that certificate, as in production;",
        "the plaintext step above names it by a claimed id.",
        "",
        *grpc_lines(grpc_tls.get("grpc")),
        *calls_lines(grpc_tls.get("calls"), heading="###"),
    ]


def _load_row(name: str, fig: dict[str, Any], unit: str) -> str:
    if "skipped" in fig:
        return f"| {name} | skipped: {fig['skipped']} | | | | | | |"
    lat = fig["latency_ms"]
    cpu = fig.get("server_cpu_us_per_item")
    return (
        f"| {name} | {_fmt(fig['rate'], 0)} {unit} | {_fmt(lat['p50'], 2)} | {_fmt(lat['p90'], 2)}"
        f" | {_fmt(lat['p99'], 2)} | {_fmt(lat['max'], 2)} | {fig['error_count']}"
        f" | {_fmt(cpu, 1)} |"
    )


_LADDER_UNITS = {"check": "calls/s", "stream": "statuses/s", "ocsp": "calls/s"}


def ladder_lines(ladder: dict[str, list[dict[str, Any]]] | None) -> list[str]:
    """Each interface's cost, rung by rung (bench/ladder.py), with what each rung adds."""
    if not ladder:
        return []
    lines = [
        "## Where the time goes: the cost ladder (bench/ladder.py)",
        "",
        "Each rung adds one layer of the responder to the trivial server; the last rung is",
        "the responder itself. Worker CPU per item is what each layer costs.",
        "",
    ]
    for interface, rows in ladder.items():
        unit = _LADDER_UNITS.get(interface, "items/s")
        lines += [
            f"### {interface}",
            "",
            f"| rung | {unit} | ratio to trivial | worker CPU µs/item | added µs/item | errors |",
            "|---|---|---|---|---|---|",
        ]
        previous = None
        for row in rows:
            cpu = row.get("cpu_us_per_item")
            added = "" if previous is None or cpu is None else _fmt(cpu - previous, 1)
            lines.append(
                f"| {row['rung']} | {_fmt(row['rate'], 0)} | {_fmt(row['ratio_to_trivial'], 3)}"
                f" | {_fmt(cpu, 1)} | {added} | {_fmt(row.get('errors'), 0)} |"
            )
            previous = cpu
        lines.append("")
    return lines


def instruction_ladder_lines(ladder: dict[str, list[dict[str, Any]]] | None) -> list[str]:
    """Each unary interface's instructions per call, rung by rung (the instruction-ladder
    step), with what each rung adds over the one below."""
    if not ladder:
        return []
    lines = [
        "## Where the instructions go: the cost ladder counted (bench/ladder.py)",
        "",
        "The ladder's rungs, one worker each under callgrind with the instructions step's",
        "load; the last rung is the responder itself. A count, not a time: it does not move",
        "with the machine's speed. It moves by a few thousand instructions with the calls",
        "counted, over which the work of a worker's background threads is spread.",
        "",
    ]
    for interface, rows in ladder.items():
        lines += [
            f"### {interface}",
            "",
            "| rung | instructions per call | added | ratio to trivial | calls counted |",
            "|---|---|---|---|---|",
        ]
        previous = None
        for row in rows:
            count = row["instructions_per_call"]
            added = "" if previous is None else f"{count - previous:+,}"
            lines.append(
                f"| {row['rung']} | {count:,} | {added} | {_fmt(row['ratio_to_trivial'], 3)}"
                f" | {row['calls']:,} |"
            )
            previous = count
        lines.append("")
    return lines


def calls_lines(
    calls: dict[str, dict[str, Any]] | None, shown: int = 10, heading: str = "##"
) -> list[str]:
    """Python calls per served call on each server (bench/calls.py), and the functions
    whose counts differ most; `heading`, the section's level."""
    if not calls:
        return []
    lines = [
        f"{heading} Where the time goes: Python calls per served call (bench/calls.py)",
        "",
        "Counted in one worker of each server under the same load; exact, unlike the",
        "ratios. A served call costs about a microsecond of worker CPU per Python call.",
        "",
        "| call | trivial: Python / C calls | jpki-va: Python / C calls | extra Python calls |"
        " jpki-va: OCSP cache misses per call |",
        "|---|---|---|---|---|",
    ]
    for interface, figures in calls.items():
        t, j = figures["trivial"], figures["jpki-va"]
        lines.append(
            f"| {interface} | {_fmt(t['python_calls'])} / {_fmt(t['c_calls'])}"
            f" | {_fmt(j['python_calls'])} / {_fmt(j['c_calls'])}"
            f" | {_fmt(figures['extra_python_calls'])} | {_fmt(j.get('misses'), 2)} |"
        )
    lines.append("")
    for interface, figures in calls.items():
        python = [(name, d) for name, d in figures["differences"] if not name.startswith("C:")]
        lines += [f"Python functions most different per {interface} call (jpki-va less trivial):"]
        lines += [""] + [f"- `{name}`: {_fmt(float(d), 2)}" for name, d in python[:shown]]
        lines.append("")
    return lines


def miss_lines(miss: dict[str, Any] | None) -> list[str]:
    """CPU per OCSP cache miss in one process (bench/miss.py)."""
    if not miss:
        return []
    answered = ", ".join(f"{_fmt(n)} {how}" for how, n in sorted(miss["answered"].items()))
    return [
        "## An OCSP cache miss in one process (bench/miss.py)",
        "",
        "The gated path of a request the worker's cache does not hold, without a transport,",
        "over the replica's index, OCSP key and pre-produced store: the figure a change to",
        "that path moves, without the scatter of a loaded machine's gRPC rounds.",
        "",
        f"- CPU per miss: **{_fmt(miss['cpu_us_per_miss_min'], 2)} µs** (the least of"
        f" {miss['passes']} passes over {_fmt(miss['requests'])} distinct requests; median"
        f" {_fmt(miss['cpu_us_per_miss_median'], 2)} µs)",
        f"- answered: {answered}",
        "",
    ]


def _comparison_lines(
    figures: dict[str, Any],
    total: str,
    show: Callable[[float], str],
    gap: Callable[[float], str],
    functions: tuple[str, Callable[[float], str]],
    shown: int,
    ratio: bool = False,
) -> list[str]:
    """The rows by library and the functions that differ most of `profile.compare`'s
    comparisons (one per interface): `total`, each side's figure per call; `show` and
    `gap`, how a figure and a difference are written; `functions`, the heading (with
    `{interface}`) and how a function's figure is written."""
    lines = []
    for interface, compared in figures.items():
        theirs, mine = compared["trivial"], compared["jpki-va"]
        label = f"all (ratio {_fmt(compared['ratio_to_trivial'], 3)})" if ratio else "all"
        lines.append(
            f"| {interface} | {label} | {show(theirs[total])} | {show(mine[total])}"
            f" | {gap(mine[total] - theirs[total])} |"
        )
        for name, over in compared["over_trivial"].items():
            lines.append(
                f"| | {name} | {show(theirs['by_library'].get(name, 0.0))}"
                f" | {show(mine['by_library'].get(name, 0.0))} | {gap(over)} |"
            )
    lines.append("")
    heading, write = functions
    for interface, compared in figures.items():
        lines += [heading.format(interface=interface), ""]
        lines += [
            f"- {library} `{name}`: {write(theirs)} → {write(mine)}"
            for library, name, theirs, mine in compared["functions"][:shown]
        ]
        lines.append("")
    return lines


def profile_lines(profile: dict[str, Any] | None, shown: int = 5) -> list[str]:
    """Worker CPU per call by library on both servers (bench/profile.py)."""
    if not profile:
        return []
    return [
        "## Where a served call's CPU goes, by library (bench/profile.py)",
        "",
        "Each server's worker CPU per call, as the load measured it, split by the shared",
        "object perf's samples (cpu-clock) fell in; both servers under the same load.",
        "",
        "| call | library | trivial µs | jpki-va µs | jpki-va over trivial |",
        "|---|---|---|---|---|",
        *_comparison_lines(
            profile,
            "cpu_us_per_item",
            _fmt,
            lambda value: f"{value:+.1f}",
            (
                "Functions whose cost per {interface} call differs most (µs, trivial → jpki-va):",
                lambda value: _fmt(value, 2),
            ),
            shown,
        ),
    ]


def instructions_lines(figures: dict[str, Any] | None, shown: int = 5) -> list[str]:
    """Instructions per served call on both servers (bench/instructions.py)."""
    if not figures:
        return []
    return [
        "## Instructions per served call (bench/instructions.py)",
        "",
        "Each server's worker under callgrind while a light load runs on it: the",
        "instructions it executed per call served, by library. A count, not a time: it",
        "does not move with the machine's load, and it leaves out the kernel's work and",
        "waits on memory, so its ratio is below the CPU ratio of the gRPC step.",
        "",
        "| call | library | trivial | jpki-va | jpki-va over trivial |",
        "|---|---|---|---|---|",
        *_comparison_lines(
            figures,
            "instructions_per_call",
            lambda value: f"{round(value):,}",
            lambda value: f"{round(value):+,}",
            ("Functions whose instructions per {interface} call differ most:", "{:,}".format),
            shown,
            ratio=True,
        ),
    ]


def lookup_lines(lookup: dict[str, Any] | None) -> list[str]:
    """A stream status's own work in one process (bench/lookup.py)."""
    if not lookup:
        return []

    def part(key: str) -> str:
        return f"{_fmt(lookup[key], 2)} µs (median {_fmt(lookup[key + '_median'], 2)})"

    waiting = lookup["cpu_us_per_key_random"] - lookup["cpu_us_per_key_hot"]
    compiled = lookup.get("compiled", True)
    encoding = "compiled" if compiled else "pure Python: the compiled module is missing"
    reading = "its keys from its bytes" if compiled else "parsed by protobuf"
    walk = {
        True: "a batch's lookups walked side by side over the mapped file",
        False: "LMDB's get: the compiled page walk is missing",
        None: "LMDB's get",  # a run from before the page walk
    }[lookup.get("walked")]
    by_get = (
        [
            "- the same random keys read by LMDB's `get`, one after another (the reference):"
            f" {part('cpu_us_per_key_lmdb_get')}"
        ]
        if "cpu_us_per_key_lmdb_get" in lookup
        else []  # a run from before the page walk
    )
    return [
        "## A stream status's own work in one process (bench/lookup.py)",
        "",
        "What a CheckStream status costs the responder beyond the transport, part by part,",
        f"without one: {_fmt(lookup['keys'])} record keys drawn at random from the index's"
        f" {_fmt(lookup['records'])},",
        f"in batches of {lookup['batch']}; CPU per key or status, the least of"
        f" {lookup['passes']} passes.",
        "",
        f"- index read, keys drawn at random ({walk}): **{part('cpu_us_per_key_random')}**",
        f"- index read, the same {lookup['batch']} keys again and again:"
        f" {part('cpu_us_per_key_hot')}; the difference, {_fmt(waiting, 2)} µs a key, is"
        " waiting for memory",
        *by_get,
        f"- encoding an answer ({encoding}): {part('cpu_us_per_status_encode')}",
        f"- reading the usual request ({reading}): {part('cpu_us_per_request_read')}",
        "",
    ]


def render(  # noqa: PLR0912, PLR0915 (a document template, section by section)
    results: dict[str, Any], chart: str | None, commands: list[str]
) -> str:
    ds = results.get("dataset", {})
    m = results.get("machine", {})
    s = results.get("settings", {})
    lines = [
        "# jpki-va benchmarks",
        "",
        "Generated by `jpki-va bench report` from the results of `jpki-va bench all`; do not",
        "edit by hand. Every jpki-va figure stands beside its ceiling (what this machine and",
        "transport allow at all) or a peer loaded by the same client in the same run.",
        "",
        "## Machine and run",
        "",
        f"- CPU: {m.get('cpu', '?')} x {m.get('cpus', '?')}; memory {m.get('memory_gb', '?')} GB;"
        f" {m.get('platform', '?')}",
        f"- Python {m.get('python', '?')}, grpcio {m.get('grpcio', '?')};"
        f" {m.get('openssl', 'openssl ?')}; wrk {m.get('wrk', 'not installed')};"
        f" cfssl {m.get('cfssl', 'not installed')}",
        f"- load average when the run started: {m.get('load_average_at_start', '?')}"
        " (clients and servers share these cores)",
        f"- run: {results.get('started_at', '?')} to {results.get('finished_at', '?')}",
        f"- data set: {_fmt(ds.get('holders'))} holders, {_fmt(ds.get('certificate_total'))}"
        f" certificates, {_fmt(ds.get('loss_total'))} losses, {_fmt(ds.get('partitions'))}"
        f" partitions, seed {ds.get('seed')}",
        f"- settings: {s.get('workers')} responder workers (and trivial-server workers),"
        f" {s.get('processes')} client processes x {s.get('concurrency')} unary calls in flight"
        f" ({s.get('stream_concurrency')} streams of {s.get('batch')}), {s.get('duration')} s"
        f" per figure, gRPC in {s.get('grpc_rounds', 1)} round(s);"
        f" HTTP: wrk {s.get('http', {}).get('threads')} threads,"
        f" {s.get('http', {}).get('connections')} connections,"
        f" {s.get('http', {}).get('duration')} s",
        "",
        "Commands:",
        "",
        "```sh",
        *commands,
        "```",
        "",
        "## Targets",
        "",
        "| target | goal | measured | met |",
        "|---|---|---|---|",
    ]
    results = {**results, "derived": derive(results)}
    for label, path, op, goal in TARGETS:
        value = lookup(results, path)
        name = label
        if path == "derived.index_build_at_10m" and results["derived"].get("index_build_scaled"):
            name += (
                f" (scaled x{results['derived']['index_build_scale_factor']} from"
                f" {_fmt(ds.get('holders'))} holders)"
            )
        if value is None:
            met = "not measured"
        elif op == ">=":
            met = "yes" if value >= goal else f"no ({value / goal:.2f} x the goal)"
        else:
            met = "yes" if value <= goal else f"no ({value / goal:.2f} x the goal)"
        lines.append(f"| {name} | {op} {_fmt(goal)} | {_fmt(value, 2)} | {met} |")
    lines += ["", "## gRPC (same client, same workers, same run)", ""]
    lines += grpc_lines(results.get("grpc"))
    lines += tls_lines(results.get("grpc_tls"))
    lines += ladder_lines(results.get("ladder"))
    lines += calls_lines(results.get("calls"))
    lines += profile_lines(results.get("profile"))
    lines += instructions_lines(results.get("instructions"))
    lines += instruction_ladder_lines(results.get("instruction_ladder"))
    lines += miss_lines(results.get("ocsp_miss"))
    lines += lookup_lines(results.get("status_lookup"))
    store = results.get("store")
    if store:
        raw = store["raw_lmdb_get"]
        src = store["status_source"]
        stream = lookup(results, "grpc.stream.jpki-va.rate")
        lines += [
            "## Store ceiling (same index, same serial mix)",
            "",
            "| path | lookups/s | per process |",
            "|---|---|---|",
            f"| raw LMDB `get`, one read txn ({raw['processes']} processes) |"
            f" {_fmt(raw['per_second'], 0)} | {_fmt(raw['per_process_per_second'], 0)} |",
            f"| `IndexStatusSource.status` ({src['processes']} processes) |"
            f" {_fmt(src['per_second'], 0)} | {_fmt(src['per_process_per_second'], 0)} |",
            "",
        ]
        if stream:
            lines.append(
                f"CheckStream answers {stream / raw['per_second']:.3f} x the raw store ceiling"
                f" and {stream / src['per_second']:.3f} x the in-process status path."
            )
            lines.append("")
    http = results.get("http_ocsp")
    if http:
        lines += [
            "## OCSP over HTTP (wrk, POST, same requests for every server)",
            "",
            f"Requests: {http.get('requests')}",
            "",
            _LOAD_HEADER,
            _LOAD_SEP,
        ]
        for name, label in (
            ("jpki-va-warmup", "jpki-va, unmeasured cache warm-up (signs on each miss)"),
            ("jpki-va", "jpki-va responder (cached signed responses)"),
            ("cfssl", "cfssl ocspserve (pre-signed)"),
            ("openssl", "openssl ocsp -multi 2 (signs each)"),
        ):
            if name in http:
                lines.append(_load_row(label, http[name], "responses/s"))
        lines += [
            "",
            f"Ratio to cfssl: **{_fmt(http.get('ratio_to_cfssl'), 3)}**;"
            f" to openssl: **{_fmt(http.get('ratio_to_openssl'), 3)}**",
            "",
        ]
    lines += ["## Ingest, freshness, memory, start", ""]
    ing = results.get("ingest")
    if ing:
        lines.append(
            f"- full index from snapshot `{ing['snapshot']}` ({_fmt(ing['records'])} records,"
            f" {_fmt(ing['crls'])} CRLs, {_fmt(ing['crl_entries'])} entries):"
            f" verify {ing['verify_seconds']} s + build {ing['build_seconds']} s ="
            f" **{ing['total_seconds']} s**; index {ing['index_bytes'] / 1e6:,.0f} MB"
            + (
                f"; then {ing['deltas_after']} later deltas applied in {ing['deltas_seconds']} s"
                if ing.get("deltas_after")
                else ""
            )
        )
    fresh = results.get("freshness")
    if fresh:
        lines.append(
            f"- registry commit to first answer reflecting it (delta snapshots every"
            f" {fresh['delta_interval_seconds']} s, responder polls every"
            f" {fresh['poll_interval_seconds']} s): {fresh['commit_to_answer_seconds']} s"
        )
        losses = fresh.get("losses")
        if losses:
            lines.append(
                f"- {losses['count']} losses: recorded through the signer in"
                f" {losses['record_seconds']} s; last commit to answer"
                f" **{losses['last_commit_to_answer_seconds']} s**; sampled answers all"
                f" REVOKED: {losses['all_sampled_revoked']}"
            )
        deltas = fresh.get("delta_apply")
        if deltas and deltas.get("deltas"):
            shown = "; ".join(
                f"#{d['sequence']}: {d['losses']} losses, verify {d['verify_seconds']} s,"
                f" apply {d['apply_seconds']} s"
                for d in deltas["deltas"]
            )
            lines.append(f"- the deltas those losses made, applied to a copy of the index: {shown}")
    lines += _fleet_lines(results.get("fleet"))
    for key, label in (
        ("rss_idle", "idle"),
        ("rss_after_load", "after the gRPC load"),
        ("rss_after_http", "after the HTTP OCSP load"),
    ):
        r = results.get(key)
        if r:
            line = (
                f"- worker RSS {label}: max VmRSS {r['max_vmrss_mb']} MB = anonymous"
                f" {r['max_rss_anon_mb']} MB (the worker's own)"
            )
            if "max_rss_file_mb" in r:  # runs before the split was measured lack these
                line += (
                    f" + file-backed {r['max_rss_file_mb']} MB (the mapped index and"
                    f" libraries: page cache shared by all workers); Pss {r['max_pss_mb']} MB,"
                    f" private {r['max_private_mb']} MB"
                )
            lines.append(line)
    if "start_to_serving_seconds" in results:
        lines.append(
            f"- start to serving with an existing index: {results['start_to_serving_seconds']} s"
        )
    pre = results.get("preproduce")
    if pre:
        counts = ", ".join(f"{k} {v:,}" for k, v in pre["counts"].items())
        lines.append(
            f"- OCSP pre-production before the load steps: waited {pre['wait_seconds']} s;"
            f" the pass took {pre['pass_seconds']} s and {pre['cpu_seconds']} CPU-s"
            f" at a share of {pre['share']} CPU ({counts})"
        )
    timings = ds.get("timings")
    if timings:
        lines.append(
            "- data generation: "
            + ", ".join(f"{k} {v} s" for k, v in timings.items())
            + f" (total {sum(timings.values()):.1f} s)"
        )
    lines.append("")
    if results.get("scale"):
        lines += scale_lines([results, *results["scale"]])
    notes = results.get("notes")
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    if chart:
        lines += ["## Chart", "", f"![throughput and latency]({chart})", ""]
    return "\n".join(lines)


def _fleet_lines(fleet: dict[str, Any] | None) -> list[str]:
    """The fleet step: balancer against one replica, freshness per replica, failover."""
    if not fleet:
        return []
    lines = [
        f"- fleet of {fleet['replicas']} replicas ({fleet['workers_per_replica']} worker each)"
        f" behind Envoy: unary Check through the balancer"
        f" **{_fmt(fleet['balancer']['rate'])}/s**, one replica direct"
        f" {_fmt(fleet['one_replica']['rate'])}/s"
    ]
    if fleet.get("preproduce_wait_seconds"):
        lines.append(
            f"- measured after every replica's first OCSP pre-production pass:"
            f" waited {fleet['preproduce_wait_seconds']} s for them"
        )
    fresh = fleet.get("freshness")
    if fresh:
        per = ", ".join(
            f"replica {n}: p50 {fresh['p50_seconds'][n]} s, p99 {p99} s"
            for n, p99 in fresh["p99_seconds"].items()
        )
        lines.append(
            f"- registry commit to answer on every replica ({fresh['samples']} losses): {per};"
            f" worst p99 **{fresh['p99_worst_replica_seconds']} s**"
        )
    blip = fleet.get("failover")
    if blip:
        lines.append(
            f"- one replica SIGKILLed under {blip['seconds']} s of load through Envoy:"
            f" gRPC {blip['grpc']['failed']} failed of {_fmt(blip['grpc']['calls'])},"
            f" HTTP OCSP {blip['http_ocsp']['failed']} failed of"
            f" {_fmt(blip['http_ocsp']['calls'])}; retried by Envoy on another replica"
            f" {blip['retried_by_envoy']}; restarted replica back in rotation after"
            f" {blip['restart_to_rejoined_seconds']} s"
        )
    return lines


def chart(results: dict[str, Any], path: Path) -> bool:
    """Throughput (as ratios to each ceiling/peer) and p50/p99 latency; False without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415 (optional: the bench extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    rows: list[tuple[str, dict[str, Any]]] = []
    for interface in ("check", "stream", "ocsp"):
        figures = lookup(results, f"grpc.{interface}")
        if figures:
            rows.append((f"gRPC {interface}\ntrivial", figures["trivial"]))
            rows.append((f"gRPC {interface}\njpki-va", figures["jpki-va"]))
    http = results.get("http_ocsp") or {}
    for name in ("jpki-va", "cfssl", "openssl"):
        fig = http.get(name)
        if fig and "skipped" not in fig:
            rows.append((f"HTTP OCSP\n{name}", fig))
    if not rows:
        return False
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8))
    labels = [r[0] for r in rows]
    colors = ["#1f77b4" if "jpki-va" in r[0] else "#aaaaaa" for r in rows]
    top.bar(labels, [r[1]["rate"] for r in rows], color=colors)
    top.set_yscale("log")
    top.set_ylabel("per second (log)")
    top.set_title("Throughput: jpki-va (blue) beside ceilings and peers (grey)")
    top.tick_params(axis="x", labelsize=7)
    x = range(len(rows))
    bottom.bar([i - 0.2 for i in x], [r[1]["latency_ms"]["p50"] for r in rows], 0.4, label="p50")
    bottom.bar([i + 0.2 for i in x], [r[1]["latency_ms"]["p99"] for r in rows], 0.4, label="p99")
    bottom.set_xticks(list(x), labels, fontsize=7)
    bottom.set_ylabel("latency, ms")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# The scale curve's columns: (heading, figure getter, divisor, digits).
_SCALE_COLUMNS: list[tuple[str, str, float, int]] = [
    ("datagen, s", "datagen_seconds", 1, 0),
    ("datagen CPU, s", "datagen_cpu_seconds", 1, 0),
    ("first full publish, s", "dataset.timings.snapshot", 1, 0),
    ("first full publish CPU, s", "dataset.cpu_seconds.snapshot", 1, 0),
    ("index build (verify + build), s", "ingest.total_seconds", 1, 1),
    ("index build CPU, s", "index_build_cpu_seconds", 1, 1),
    ("worker private memory after gRPC load, MB", "rss_after_load.max_rss_anon_mb", 1, 0),
    ("registry, GB", "dataset.sizes.registry_bytes", 1e9, 2),
    ("full snapshot, GB", "dataset.sizes.snapshot_bytes", 1e9, 2),
    ("responder index, GB", "ingest.index_bytes", 1e9, 2),
]
NATIONAL = 100_000_000  # holders: My Number cards and smartphones, ~250 M certificates


def _scale_figures(run: dict[str, Any]) -> dict[str, Any]:
    """A results JSON with the sums the scale curve shows."""
    timings = lookup(run, "dataset.timings") or {}
    cpu = lookup(run, "dataset.cpu_seconds") or {}
    verify, build = (
        lookup(run, "ingest.verify_cpu_seconds"),
        lookup(run, "ingest.build_cpu_seconds"),
    )
    return {
        **run,
        "datagen_seconds": sum(timings.values()) if timings else None,
        "datagen_cpu_seconds": sum(cpu.values()) if cpu else None,
        "index_build_cpu_seconds": None if verify is None or build is None else verify + build,
    }


def scale_lines(runs: list[dict[str, Any]]) -> list[str]:
    """The scale curve: one row per data set size, a linear fit through the origin per
    million holders (least squares) and its value at national size. Wall times are
    upper bounds on a shared machine (its load average is in the last column); CPU
    times and sizes are not."""
    rows = sorted(
        (_scale_figures(r) for r in runs if lookup(r, "dataset.holders")),
        key=lambda r: int(lookup(r, "dataset.holders")),
    )
    if len(rows) < 2:
        return []
    head = ["holders", "certificates", *(c[0] for c in _SCALE_COLUMNS), "load average"]
    lines = [
        "## Scale curve",
        "",
        "One row per data set (`bench datagen`, then the ingest and gRPC steps of `bench all`);",
        "the fit is least squares through the origin, per million holders, extrapolated to",
        f"{NATIONAL // 1_000_000} M holders. Wall times are upper bounds when the load average",
        "was high; CPU times and sizes do not depend on the load.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [_fmt(lookup(r, "dataset.holders")), _fmt(lookup(r, "dataset.certificate_total"))]
        for _, path, divisor, digits in _SCALE_COLUMNS:
            value = lookup(r, path)
            cells.append("—" if value is None else _fmt(float(value) / divisor, digits))
        load = lookup(r, "machine.load_average_at_start")
        cells.append("—" if not load else _fmt(float(load[0]), 1))
        lines.append("| " + " | ".join(cells) + " |")
    fit: list[str] = ["per 1 M holders", ""]
    national: list[str] = [f"{NATIONAL // 1_000_000} M holders (fit)", ""]
    for _, path, divisor, digits in _SCALE_COLUMNS:
        points = [
            (int(lookup(r, "dataset.holders")) / 1e6, float(lookup(r, path)) / divisor)
            for r in rows
            if lookup(r, path) is not None
        ]
        if len(points) < 2 or path.startswith("rss"):  # memory does not follow the index
            fit.append("—")
            national.append("—")
            continue
        slope = sum(x * y for x, y in points) / sum(x * x for x, _ in points)
        fit.append(_fmt(slope, max(digits, 2)))
        national.append(_fmt(slope * NATIONAL / 1e6, digits))
    lines.append("| " + " | ".join([*fit, ""]) + " |")
    lines.append("| " + " | ".join([*national, ""]) + " |")
    return [*lines, ""]


def write_report(
    results_file: Path,
    out: Path,
    commands: list[str] | None = None,
    analysis: Path | None = None,
    soak: Path | None = None,
    scale: list[Path] | None = None,
) -> Path:
    """BENCHMARKS.md (and its chart beside it); `analysis` is a Markdown file appended as is
    (profiles and next steps written by whoever ran the benchmark); `scale`, results of
    other data set sizes (datagen, ingest and memory steps), make the scale curve."""
    results = json.loads(results_file.read_text())
    if scale:
        results["scale"] = [json.loads(path.read_text()) for path in scale]
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.parent / CHART
    has_chart = chart(results, png)
    text = render(results, CHART if has_chart else None, commands or _commands(results))
    if soak is not None:
        text += render_soak(json.loads(soak.read_text()))
    if analysis is not None:
        text += "\n## Analysis\n\n" + analysis.read_text().strip() + "\n"
    out.write_text(text)
    return out


def render_soak(soak: dict[str, Any]) -> str:
    """The Soak section: what ran, what was judged wrong, errors, memory."""
    st = soak["settings"]
    answers = soak["answers"]
    errors = soak["unexpected_errors"]
    slope = soak["private_memory_slope_mb_per_min"]
    lines = [
        "",
        "## Soak",
        "",
        f"`./tasks bench soak --dir DATA --duration {st['duration']:g}`: {soak['seconds']} s of "
        f"mixed load ({st['unary_threads']} unary Check clients, one CheckStream of "
        f"{st['stream_batch']}-item batches, HTTP OCSP, a revocation watch) while a loss was "
        f"recorded every {st['loss_every']:g} s, a verifier added or removed every "
        f"{st['churn_every']:g} s and one worker SIGKILLed; every answer judged against the "
        f"truth with a freshness bound of {st['bound']:g} s.",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| answers, {name} | {count:,} |" for name, count in sorted(answers.items())),
        f"| wrong answers (contradicting the truth) | {soak['wrong_answers']} |",
        f"| late answers (GOOD more than {st['bound']:g} s after the loss was acknowledged) | "
        f"{soak['late_answers']}; the latest {soak['latest_good_after_loss_seconds']} s after |",
        f"| late access decisions (the verifier admitted or refused more than {st['bound']:g} s "
        f"after its change) | {soak['late_verifier_decisions']}; the latest "
        f"{soak['latest_verifier_decision_seconds']} s after |",
        f"| errors within {st['fault_window']:g} s of the worker kill | "
        f"{soak['errors_at_faults']} |",
        f"| other errors | {sum(errors.values())} {dict(sorted(errors.items())) or ''} |",
        f"| losses recorded / delivered by the watch | {soak['losses_recorded']} / "
        f"{soak['losses_watched']} |",
        f"| verifier changes / worker kills | {soak['verifier_changes']} / "
        f"{soak['worker_kills']} |",
        f"| worker private memory slope, MB/min (each worker's second half; the steepest) | "
        f"{'n/a' if slope is None else f'{slope:+.3f}'} |",
        f"| worker private memory slope by worker, MB/min | {_by_worker(soak)} |",
        f"| worker private memory at the end, MB | "
        f"{', '.join(f'{v:g}' for v in soak['private_memory_last_mb'])} |",
        f"| worker private memory at its peak, MB | "
        f"{', '.join(f'{v:g}' for v in soak.get('private_memory_peak_mb', [])) or 'n/a'} |",
        "",
    ]
    for example in soak["wrong_examples"]:
        lines.append(f"- wrong: {example}")
    for example in soak.get("unexpected_error_examples", []):  # older results lack it
        lines.append(f"- error: {example}")
    return "\n".join(lines) + "\n"


def _by_worker(soak: dict[str, Any]) -> str:
    """Each worker's slope (pid: MB/min); a worker that lived too briefly has none."""
    slopes = soak.get("private_memory_slope_by_worker", {})
    return (
        ", ".join(
            f"{pid}: {'n/a' if slope is None else f'{slope:+.3f}'}" for pid, slope in slopes.items()
        )
        or "n/a"
    )


def _commands(results: dict[str, Any]) -> list[str]:
    ds = results.get("dataset", {})
    st = results.get("settings", {})
    return [
        "./tasks bench setup --install   # wrk, cfssl (Debian); numpy, matplotlib (bench extra)",
        f"./tasks bench all --dir DATA --holders {ds.get('holders', 'N')}"
        f" --duration {st.get('duration', 10)} --out bench-results.json",
        "./tasks bench report --results bench-results.json --out BENCHMARKS.md"
        " --analysis bench/analysis.md",
    ]
