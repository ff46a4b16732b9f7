"""`jpki-va bench …`: argv -> the harness. Errors are one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hsm
from bench.dataset import DataSetError
from bench.mix import Mix

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
    return DataSetHsm(directory, info), info


def DataSetHsm(directory: Path, info: dict[str, Any]) -> hsm.HsmConfig:  # noqa: N802
    return hsm.HsmConfig(
        module=info["module"],
        token_label=info["token_label"],
        pin=hsm.PinSource(file=str(directory / info["pin_file"])),
        softhsm2_conf=str(directory / info["softhsm2_conf"]),
    )


def run_datagen(args: argparse.Namespace) -> int:
    from bench import datagen  # noqa: PLC0415 (numpy loads only for bench commands)

    out: Path = args.out.resolve()
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
    )
    summary = {k: result.info[k] for k in ("holders", "certificate_total", "loss_total")}
    print(json.dumps({**summary, "timings": result.timings}, indent=1))
    return 0


def add_commands(sub: Any) -> None:
    """Register `bench` and its subcommands on the `jpki-va` parser."""
    bench = sub.add_parser("bench", help="benchmark harness (data, load, ceilings, peers)")
    cmds = bench.add_subparsers(dest="bench_command", required=True, metavar="STEP")

    p = cmds.add_parser("datagen", help="generate a national-scale registry and snapshot")
    p.add_argument("--holders", type=_positive_int, required=True, help="card holders")
    p.add_argument("--out", type=Path, required=True, help="data set directory (new)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--samples", type=_positive_int, default=32, help="HSM-signed sample certs")
    p.add_argument("--pool", type=_positive_int, default=50_000, help="serials in the load pool")
    p.add_argument("--force", action="store_true", help="replace an existing directory")
    p.set_defaults(func=_guarded(run_datagen))


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input and a missing data set are one line on stderr, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (BenchError, DataSetError, FileExistsError, ValueError) as exc:
            print(f"jpki-va bench {args.bench_command}: {exc}", file=sys.stderr)
            return EXIT_USAGE

    return run
