"""SIGTERM and SIGINT stop every role cleanly: exit 0, no traceback, no orphan, state
intact (a restart on the same directories works). And one log format per process.

Each role runs as `jpki-va …` in a process of its own. The second start of each is a
shell's background job (SIGINT ignored, as `cmd &` leaves it), stopped by SIGINT: the
role must handle SIGINT itself rather than rely on what it inherited. The first start
logs JSON lines, the second text: every line the process and its workers write is in
that format, with the time zone.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

from jpki_va.hsm import HsmConfig
from jpki_va.server.registry.transactions import Registry
from tests.support import ALL_ROLES_VERIFIER, Pki, wait_for
from tests.support.processes import (
    RoleProcess,
    alive,
    children_of,
    start_responder_process,
    start_signer_process,
)

STOP_WITHIN = 30.0  # seconds: the drain's grace and the workers' join, with room
READY = re.compile(r"^(signer|responder) listening on port \d+$")  # stdout, not a log
TEXT = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) +"
    r"(?P<role>[a-z-]+)\[\d+\] \S+: "
)


def _log_roles(role: RoleProcess, log_format: str) -> set[str]:
    """The roles that logged; every line must be in ``log_format``."""
    roles = set()
    for line in role.text.splitlines():
        if READY.match(line):
            continue
        if log_format == "json":
            event = json.loads(line)
            assert event["time"].endswith("+00:00"), line
            roles.add(event["role"])
        else:
            match = TEXT.match(line)
            assert match, line
            roles.add(match["role"])
    return roles


def _stop_cleanly(role: RoleProcess, signum: signal.Signals) -> None:
    children = children_of(role.process.pid)
    role.process.send_signal(signum)
    code = role.wait_exit(STOP_WITHIN)
    wait_for(lambda: not any(alive(pid) for pid in children), "no orphan left", 15)
    assert code == 0, role.text
    assert "Traceback" not in role.text, role.text


def test_signer_stops_on_sigterm_and_sigint(tmp_path: Path, softhsm_token: HsmConfig) -> None:
    data = tmp_path / "signer"
    first = start_signer_process(data, softhsm_token, extra=("--log-format", "json"))
    try:
        _stop_cleanly(first.role, signal.SIGTERM)
    finally:
        first.role.stop()
    assert "signer stopping" in first.role.text
    assert _log_roles(first.role, "json") == {"signer"}
    registry = Registry(data / "registry")  # closed cleanly: it opens again
    try:
        with registry.read() as tx:
            assert tx.issuers()
    finally:
        registry.close()

    again = start_signer_process(
        data, softhsm_token, background=True, extra=("--log-format", "text")
    )
    try:
        _stop_cleanly(again.role, signal.SIGINT)
    finally:
        again.role.stop()
    assert _log_roles(again.role, "text") == {"signer"}


def test_responder_stops_on_sigterm_and_sigint(pki: Pki, tmp_path: Path) -> None:
    snapshots, state = pki.signer.config.snapshot_dir, tmp_path / "state"
    first = start_responder_process(
        snapshots, state, pki.root_file, ALL_ROLES_VERIFIER, extra=("--log-format", "json")
    )
    try:
        assert wait_for(lambda: len(first.children()) >= 2 or None, "the workers")
        _stop_cleanly(first.role, signal.SIGTERM)
    finally:
        first.role.stop()
    assert _log_roles(first.role, "json") == {"responder", "responder-worker"}

    again = start_responder_process(
        snapshots, state, pki.root_file, ALL_ROLES_VERIFIER, background=True,
        extra=("--log-format", "text"),
    )  # fmt: skip
    try:
        assert wait_for(lambda: len(again.children()) >= 2 or None, "the workers")
        _stop_cleanly(again.role, signal.SIGINT)
    finally:
        again.role.stop()
    assert _log_roles(again.role, "text") == {"responder", "responder-worker"}
