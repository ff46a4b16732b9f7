"""`jpki-va bench …`: argv -> the harness. Errors are one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jpki_va import hsm
from jpki_va.bench.dataset import DataSetError, hsm_config_from
from jpki_va.bench.mix import Mix
from jpki_va.core.cli import fail
from jpki_va.server.snapshot.manifest import SnapshotRejected

TOKEN_LABEL = "jpki-va-bench"  # noqa: S105 (a token label, not a secret)
EXIT_USAGE = 2


class BenchError(Exception):
    """A bench command cannot run as asked (one line for the user)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _mix(text: str) -> Mix:
    try:
        return Mix.parse(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def create_token(directory: Path) -> tuple[hsm.HsmConfig, dict[str, Any]]:
    """A SoftHSM2 token of the data set's own, PINs in 0600 files beside it."""
    user_pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
    conf = hsm.init_softhsm_token(directory / "hsm", TOKEN_LABEL, so_pin=so_pin, user_pin=user_pin)
    for name, pin in (("user.pin", user_pin), ("so.pin", so_pin)):
        path = directory / "hsm" / name
        path.touch(mode=0o600)
        path.write_text(pin + "\n")
    info = {
        "module": hsm.DEFAULT_MODULE,
        "softhsm2_conf": conf.relative_to(directory).as_posix(),
        "token_label": TOKEN_LABEL,
        "pin_file": "hsm/user.pin",
    }
    return hsm_config_from(directory, info), info


def run_datagen(args: argparse.Namespace) -> int:
    from jpki_va.bench import datagen  # noqa: PLC0415 (numpy loads only for bench commands)

    out: Path = args.out.resolve()
    if out.is_file():
        raise BenchError(f"{out} is a file, not a directory")
    if out.exists() and any(out.iterdir()):
        if not args.force:
            raise BenchError(f"{out} is not empty (use --force to replace it)")
        datagen.remove(out)
    out.mkdir(parents=True, exist_ok=True)
    config, info = create_token(out)
    result = datagen.generate(
        out,
        args.holders,
        seed=args.seed,
        hsm_config=config,
        hsm_info=info,
        samples=args.samples,
        pool_size=args.pool,
        shape=datagen.Shape(partitions=args.partitions),
    )
    summary = {k: result.info[k] for k in ("holders", "certificate_total", "loss_total")}
    print(json.dumps({**summary, "timings": result.timings}, indent=1))
    return 0


def _suite_settings(args: argparse.Namespace) -> Any:
    from jpki_va.bench.httpload import HttpSpec  # noqa: PLC0415
    from jpki_va.bench.suite import SuiteSettings  # noqa: PLC0415

    return SuiteSettings(
        workers=args.workers,
        duration=args.duration,
        grpc_rounds=args.rounds,
        grpc_threads=args.grpc_threads,
        processes=args.processes,
        concurrency=args.concurrency,
        stream_concurrency=args.streams,
        batch=args.batch,
        rate=args.rate,
        mix=args.mix,
        http=HttpSpec(
            duration=max(1, round(args.duration)),
            threads=args.http_threads,
            connections=args.http_connections,
        ),
        freshness_samples=args.freshness_samples,
        delta_losses=args.delta_losses,
        steps=tuple(args.steps.split(",")),
        ladder_duration=args.ladder_duration,
        fleet_replicas=args.fleet_replicas,
        fleet_samples=args.fleet_samples,
        ocsp_preproduce=args.ocsp_preproduce,
    )


def _print_summary(results: dict[str, Any]) -> None:
    from jpki_va.bench.report import TARGETS, derive, lookup  # noqa: PLC0415

    results = {**results, "derived": derive(results)}
    for name, path, op, goal in TARGETS:
        value = lookup(results, path)
        shown = "not measured" if value is None else f"{value:,.3f}"
        print(f"{name:<45} {shown:>14}   (target {op} {goal:,})")


def run_compare(args: argparse.Namespace) -> int:
    from jpki_va.bench.dataset import DataSet  # noqa: PLC0415
    from jpki_va.bench.suite import run_suite  # noqa: PLC0415

    ds = DataSet(args.dir.resolve())
    ds.info()  # a clear error before anything starts
    settings = _suite_settings(args)
    results = run_suite(
        ds, settings, progress=lambda text: print(f"bench: {text}", file=sys.stderr)
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    _print_summary(results)
    print(f"results: {args.out}")
    if getattr(args, "report", None):
        from jpki_va.bench.report import write_report  # noqa: PLC0415

        print(f"report: {write_report(args.out, args.report)}")
    return 0


def run_all(args: argparse.Namespace) -> int:
    from jpki_va.bench.dataset import DataSet  # noqa: PLC0415

    ds = DataSet(args.dir.resolve())
    if not ds.info_file.exists():
        datagen_args = argparse.Namespace(
            out=args.dir,
            holders=args.holders,
            seed=args.seed,
            samples=32,
            pool=50_000,
            force=False,
            partitions=1700,
        )
        run_datagen(datagen_args)
    elif ds.info()["holders"] != args.holders:
        raise BenchError(
            f"{args.dir} holds {ds.info()['holders']:,} holders, not {args.holders:,}"
            " (use another --dir)"
        )
    return run_compare(args)


def run_load(args: argparse.Namespace) -> int:
    from jpki_va.bench.dataset import DataSet  # noqa: PLC0415
    from jpki_va.bench.loadgen import LoadSpec, build_payloads  # noqa: PLC0415
    from jpki_va.bench.loadgen import run_load as load  # noqa: PLC0415
    from jpki_va.bench.suite import RunningVa, _issuers  # noqa: PLC0415

    ds = DataSet(args.dir.resolve())
    pool = ds.pool()
    payloads = build_payloads(args.interface, pool, args.mix, _issuers(ds), batch=args.batch)
    va = None
    target = args.target
    pids: list[int] = []
    try:
        if target is None:
            va = RunningVa(ds, args.workers)
            va.start()
            target, pids = va.target, va.responder.worker_pids
        spec = LoadSpec(
            target=target,
            interface=args.interface,
            duration=args.duration,
            processes=args.processes,
            concurrency=args.concurrency,
            rate=args.rate,
            batch=args.batch,
        )
        result = load(f"jpki-va {args.interface}", spec, payloads, server_pids=pids).to_json()
    finally:
        if va is not None:
            va.close()
    lat = result["latency_ms"]
    unit = "statuses/s" if args.interface == "stream" else "calls/s"
    print(
        f"{args.interface}: {result['rate']:,.0f} {unit}; latency ms p50 {lat['p50']:.2f}"
        f" p90 {lat['p90']:.2f} p99 {lat['p99']:.2f} max {lat['max']:.2f};"
        f" errors {result['error_count']}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["error_count"] == 0 else 1


def run_report(args: argparse.Namespace) -> int:
    from jpki_va.bench.report import write_report  # noqa: PLC0415

    if not args.results.is_file():
        raise BenchError(f"{args.results} does not exist (run `jpki-va bench compare` first)")
    for extra in (args.analysis, args.soak, *args.scale):
        if extra is not None and not extra.is_file():
            raise BenchError(f"{extra} does not exist")
    print(
        write_report(
            args.results, args.out, analysis=args.analysis, soak=args.soak, scale=args.scale
        )
    )
    return 0


def run_soak_step(args: argparse.Namespace) -> int:
    from jpki_va.bench.dataset import DataSet  # noqa: PLC0415
    from jpki_va.bench.soak import SoakSettings, run_soak  # noqa: PLC0415

    ds = DataSet(args.dir.resolve())
    ds.info()  # a clear error before anything starts
    settings = SoakSettings(
        duration=args.duration, workers=args.workers, kill_at=args.kill_at, bound=args.bound
    )
    results = run_soak(ds, settings, lambda text: print(f"bench: {text}", file=sys.stderr))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    print(
        f"soak: {sum(results['answers'].values()):,} answers in {results['seconds']} s, "
        f"{results['wrong_answers']} wrong, {results['late_answers']} late after"
        f" {results['losses_recorded']} losses, {results['errors_at_faults']} errors at the kill, "
        f"{sum(results['unexpected_errors'].values())} unexpected errors; private memory "
        f"slope {results['private_memory_slope_mb_per_min']} MB/min; results: {args.out}"
    )
    return 0 if not results["wrong_answers"] and not results["unexpected_errors"] else 1


SETUP_APT = ("wrk", "golang-cfssl")


def run_setup(args: argparse.Namespace) -> int:
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    missing = [
        pkg for pkg, tool in zip(SETUP_APT, ("wrk", "cfssl"), strict=True) if not shutil.which(tool)
    ]
    for tool in ("unshare", "ip", "openssl"):
        if not shutil.which(tool):
            print(f"missing: {tool} (util-linux, iproute2, openssl)")
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        print("missing: matplotlib (pip install 'jpki-va[bench]')")
    if not missing:
        print("wrk and cfssl are installed")
        return 0
    command = ["apt-get", "install", "-y", *missing]
    if not args.install:
        print("missing:", " ".join(missing), "- install with:", " ".join(command))
        return 1
    return subprocess.run(command, check=False).returncode


def _add_suite_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=_positive_int, default=2, help="responder workers (2)")
    p.add_argument("--duration", type=_positive_float, default=10.0, help="seconds per figure")
    p.add_argument(
        "--grpc-threads", type=_positive_int, default=16,
        help="unary gRPC threads per worker, the responder's and the trivial server's"
        " alike (default 16, the responder's own default)",
    )  # fmt: skip
    p.add_argument(
        "--rounds", type=_positive_int, default=3,
        help="gRPC step: rounds of the trivial server then jpki-va; the median round's "
        "ratio is the figure (default 3)",
    )  # fmt: skip
    p.add_argument("--processes", type=_positive_int, default=2, help="gRPC client processes")
    p.add_argument("--concurrency", type=_positive_int, default=32, help="unary calls in flight")
    p.add_argument("--streams", type=_positive_int, default=2, help="streams per client process")
    p.add_argument("--batch", type=_positive_int, default=100, help="CheckStream batch size")
    p.add_argument("--rate", type=_positive_float, help="open loop: unary calls per second")
    p.add_argument("--mix", type=_mix, default=Mix(), help="e.g. good=0.8,revoked=0.15,hot=0.3")
    p.add_argument("--http-threads", type=_positive_int, default=2, help="wrk threads")
    p.add_argument("--http-connections", type=_positive_int, default=32, help="wrk connections")
    p.add_argument("--freshness-samples", type=int, default=3, help="commit-to-answer samples")
    p.add_argument("--delta-losses", type=int, default=1000, help="losses in the batch step")
    p.add_argument(
        "--steps",
        default="ingest,store,grpc,http,freshness,fleet",
        help="comma-separated subset of ingest,store,grpc,http,freshness,fleet,ladder,calls,"
        "profile,instructions,instruction-ladder,miss,lookup,tls (ladder: each layer's cost,"
        " rung by rung; calls: Python calls per served call; profile: worker CPU per served"
        " call by library, sampled by perf; instructions: instructions per served call, each"
        " worker under callgrind; instruction-ladder: the ladder's rungs counted as the"
        " instructions step counts; miss: CPU per OCSP cache miss, in process; lookup: a"
        " stream status's index read, encoding and request reading, in process; tls: the"
        " gRPC step over mTLS; none of the eight in the default run)",
    )
    p.add_argument(
        "--ladder-duration", type=_positive_float, default=3.0, help="seconds per ladder rung"
    )
    p.add_argument(
        "--ocsp-preproduce", action=argparse.BooleanOptionalAction, default=True,
        help="pre-produced OCSP responses in the responder (default: on)",
    )  # fmt: skip
    p.add_argument("--fleet-replicas", type=int, default=3, help="responders behind Envoy")
    p.add_argument("--fleet-samples", type=int, default=20, help="losses timed on every replica")
    p.add_argument("--out", type=Path, default=Path("bench-results.json"), help="results JSON")
    p.add_argument("--report", type=Path, help="also write this BENCHMARKS.md")


def add_commands(sub: Any) -> None:
    """Register `bench` and its subcommands on the `jpki-va` parser."""
    bench = sub.add_parser("bench", help="benchmark harness (data, load, ceilings, peers)")
    cmds = bench.add_subparsers(dest="bench_command", required=True, metavar="STEP")

    p = cmds.add_parser("datagen", help="generate a national-scale registry and snapshot")
    p.add_argument("--holders", type=_positive_int, required=True, help="card holders")
    p.add_argument("--out", type=Path, required=True, help="data set directory (new)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--partitions", type=_positive_int, default=1700, help="municipalities")
    p.add_argument("--samples", type=_positive_int, default=32, help="HSM-signed sample certs")
    p.add_argument("--pool", type=_positive_int, default=50_000, help="serials in the load pool")
    p.add_argument("--force", action="store_true", help="replace an existing directory")
    p.set_defaults(func=_guarded(run_datagen))

    p = cmds.add_parser("load", help="load one gRPC interface of jpki-va")
    p.add_argument("--dir", type=Path, required=True, help="data set directory")
    p.add_argument("--interface", choices=("check", "stream", "ocsp"), default="check")
    p.add_argument("--target", help="HOST:PORT of a running responder (default: start one)")
    p.add_argument("--workers", type=_positive_int, default=2, help="responder workers")
    p.add_argument("--duration", type=_positive_float, default=10.0, help="seconds")
    p.add_argument("--processes", type=_positive_int, default=2, help="client processes")
    p.add_argument("--concurrency", type=_positive_int, default=32, help="in flight per process")
    p.add_argument("--rate", type=_positive_float, help="open loop: calls per second in total")
    p.add_argument("--batch", type=_positive_int, default=100, help="CheckStream batch size")
    p.add_argument("--mix", type=_mix, default=Mix(), help="e.g. good=0.8,revoked=0.15,hot=0.3")
    p.add_argument("--json", type=Path, help="write the result here")
    p.set_defaults(func=_guarded(run_load))

    p = cmds.add_parser("compare", help="every figure beside its ceiling or peer, one run")
    p.add_argument("--dir", type=Path, required=True, help="data set directory")
    _add_suite_options(p)
    p.set_defaults(func=_guarded(run_compare))

    p = cmds.add_parser("all", help="datagen (if needed), compare and report in one command")
    p.add_argument("--dir", type=Path, required=True, help="data set directory")
    p.add_argument("--holders", type=_positive_int, default=1_000_000, help="card holders")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    _add_suite_options(p)
    p.set_defaults(func=_guarded(run_all))

    _add_soak(cmds)

    p = cmds.add_parser("report", help="BENCHMARKS.md and its chart from a results JSON")
    p.add_argument("--results", type=Path, default=Path("bench-results.json"))
    p.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    p.add_argument("--analysis", type=Path, help="Markdown appended as the Analysis section")
    p.add_argument("--soak", type=Path, help="results of `bench soak`, as the Soak section")
    p.add_argument(
        "--scale",
        type=Path,
        nargs="*",
        default=[],
        help="results of other data set sizes (datagen, ingest, gRPC steps): the scale curve",
    )
    p.set_defaults(func=_guarded(run_report))

    p = cmds.add_parser("setup", help="check (and --install) wrk and cfssl from Debian")
    p.add_argument("--install", action="store_true", help="run apt-get install")
    p.set_defaults(func=_guarded(run_setup))


def _add_soak(cmds: Any) -> None:
    p = cmds.add_parser(
        "soak",
        help="mixed load for a long while under changes and a worker kill; every answer judged",
        epilog="exit codes: 0 no wrong answer and no unexpected error, 1 otherwise, 2 usage",
    )
    p.add_argument("--dir", type=Path, required=True, help="data set directory")
    p.add_argument("--duration", type=_positive_float, default=600.0, help="seconds (600)")
    p.add_argument("--workers", type=_positive_int, default=2, help="responder workers (2)")
    p.add_argument("--kill-at", type=_positive_float, help="seconds in (default: halfway)")
    p.add_argument("--bound", type=_positive_float, default=15.0, help="freshness bound, s")
    p.add_argument("--out", type=Path, default=Path("bench-soak.json"), help="results JSON")
    p.set_defaults(func=_guarded(run_soak_step))


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input and a missing data set are one line on stderr, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except ModuleNotFoundError as exc:
            fail(
                f"jpki-va bench {args.bench_command}",
                f"{exc.name} is missing: install the bench extra "
                "(pip install 'jpki-va[bench]', or ./tasks bench)",
            )
            return EXIT_USAGE
        except (BenchError, DataSetError, OSError, SnapshotRejected, ValueError) as exc:
            fail(f"jpki-va bench {args.bench_command}", str(exc))
            return EXIT_USAGE

    return run
