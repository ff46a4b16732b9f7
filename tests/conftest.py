"""Shared pytest fixtures for the jpki-va test suite.

HSM fixtures (self-contained, real SoftHSM2, no mocks):

* ``softhsm_token`` (session): one SoftHSM2 token in a temporary directory, created
  with :func:`hsm.init_softhsm_token`; yields the :class:`hsm.HsmConfig` for it (user
  PIN in a 0600 file). One token per test session because SoftHSM2 can only use one
  config per process. Fails when SoftHSM2 is not installed.
* ``hsm`` (session): an open :class:`hsm.Hsm` on that token, closed at the end. The
  token is shared, so tests must use unique key labels.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Without this, a bare `pytest` (repo root not on sys.path) would import tests/hsm/ as a
# namespace package named `hsm`. `pythonpath = ["."]` in the pytest config also fixes it.
_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from jpki_va.hsm import DEFAULT_MODULE, Hsm, HsmConfig, PinSource, init_softhsm_token  # noqa: E402
from tests.support import Pki, start_pki  # noqa: E402

SOFTHSM_TEST_TOKEN_LABEL = "jpki-va-test"

_TESTS = Path(__file__).resolve().parent
#: Every test under one of these folders gets the marker, so `-m "not integration"`
#: selects the fast suite without each module having to say it.
_FOLDER_MARKERS = {
    _TESTS / "integration": "integration",
    _TESTS / "architecture": "architecture",
    _TESTS / "fuzz": "fuzz",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its folder: integration (real SoftHSM2, LMDB, gRPC, openssl),
    architecture (imports and packaging) and fuzz (hypothesis targets)."""
    for item in items:
        path = item.path.resolve()
        for folder, marker in _FOLDER_MARKERS.items():
            if path.is_relative_to(folder):
                item.add_marker(marker)


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HsmConfig]:
    """HsmConfig of a fresh SoftHSM2 token shared by the whole test session."""
    if not Path(DEFAULT_MODULE).is_file():
        # CI installs SoftHSM2; a missing module must fail loudly, never skip the HSM tests.
        pytest.fail(f"SoftHSM2 module {DEFAULT_MODULE} is not installed")
    base = tmp_path_factory.mktemp("softhsm")
    user_pin = secrets.token_hex(8)
    conf = init_softhsm_token(
        base, SOFTHSM_TEST_TOKEN_LABEL, so_pin=secrets.token_hex(8), user_pin=user_pin
    )
    pin_file = base / "user.pin"
    pin_file.touch(mode=0o600)
    pin_file.write_text(user_pin + "\n", encoding="utf-8")
    yield HsmConfig(
        token_label=SOFTHSM_TEST_TOKEN_LABEL,
        pin=PinSource(file=str(pin_file)),
        softhsm2_conf=str(conf),
    )


@pytest.fixture(scope="session")
def hsm(softhsm_token: HsmConfig) -> Iterator[Hsm]:
    """An open Hsm on ``softhsm_token``, logged in for the whole session."""
    with Hsm.open(softhsm_token) as opened:
        yield opened


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig) -> Iterator[Pki]:
    """A running signer and responder (one worker) on 127.0.0.1, per test module."""
    directory = tmp_path_factory.mktemp("pki")
    running = start_pki(directory, softhsm_token)
    try:
        yield running
    finally:
        running.close()
