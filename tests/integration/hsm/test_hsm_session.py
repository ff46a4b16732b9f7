"""Session handling: login errors, reconnect, concurrency, SoftHSM2 token setup."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from jpki_va.hsm import (
    Hsm,
    HsmConfig,
    HsmConfigError,
    HsmError,
    KeyType,
    LoginFailed,
    PinSource,
    TokenNotFound,
    init_softhsm_token,
)
from tests.support import REPO


def _run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter: a process of its own gets its own SoftHSM2 state."""
    full_env = dict(os.environ)
    full_env.update(env)
    full_env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        check=False,
        timeout=120,
    )


def test_wrong_label_raises_token_not_found(softhsm_token: HsmConfig, hsm: Hsm) -> None:
    with pytest.raises(TokenNotFound):
        Hsm.open(replace(softhsm_token, token_label="no-such-token"))


def test_wrong_pin_in_process_raises_login_failed(
    softhsm_token: HsmConfig, hsm: Hsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The token is already logged in by `hsm`; a second Hsm must still not get in.
    monkeypatch.setenv("JPKI_TEST_WRONG_PIN", "definitely-wrong")
    with pytest.raises(LoginFailed) as info:
        Hsm.open(replace(softhsm_token, pin=PinSource(env="JPKI_TEST_WRONG_PIN")))
    assert "definitely-wrong" not in str(info.value)


def test_wrong_pin_rejected_by_token(softhsm_token: HsmConfig) -> None:
    # Fresh process, so the PIN is checked by C_Login itself.
    assert softhsm_token.softhsm2_conf is not None
    res = _run_python(
        f"""
        from jpki_va import hsm
        cfg = hsm.HsmConfig(token_label={softhsm_token.token_label!r},
                            pin=hsm.PinSource(env="JPKI_TEST_WRONG_PIN"),
                            softhsm2_conf={softhsm_token.softhsm2_conf!r})
        try:
            hsm.Hsm.open(cfg)
        except hsm.LoginFailed as exc:
            print("LoginFailed", exc)
        """,
        {"JPKI_TEST_WRONG_PIN": "definitely-wrong"},
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("LoginFailed"), res.stdout
    assert "PinIncorrect" in res.stdout
    assert "definitely-wrong" not in res.stdout + res.stderr


def test_second_hsm_shares_the_session(softhsm_token: HsmConfig, hsm: Hsm) -> None:
    with Hsm.open(softhsm_token) as other:
        assert other._session is hsm._session
        key = other.find_or_generate("shared-session", KeyType.EC_P256)
        key.public_key().verify(
            key.sign(b"x", ec.ECDSA(hashes.SHA256())), b"x", ec.ECDSA(hashes.SHA256())
        )
    assert hsm.key("shared-session").label == "shared-session"  # still logged in


def test_reconnect_after_session_closed_behind_our_back(softhsm_token: HsmConfig, hsm: Hsm) -> None:
    ticks = iter(dt.datetime(2030, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i) for i in range(9))
    with Hsm.open(softhsm_token, clock=lambda: next(ticks)) as h:
        key = h.find_or_generate("reconnect-session", KeyType.RSA_2048)
        key.sign(b"warm the handle cache", padding.PKCS1v15(), hashes.SHA256())
        session = h._session
        assert session is not None
        session.close()  # C_Logout + C_CloseSession
        sig = key.sign(b"data", padding.PKCS1v15(), hashes.SHA256())
        key.public_key().verify(sig, b"data", padding.PKCS1v15(), hashes.SHA256())
        assert h.reconnects == 1
        assert h.last_reconnect_at == dt.datetime(2030, 1, 1, 0, 0, 1, tzinfo=dt.UTC)
    assert hsm.key("reconnect-session").key_size == 2048  # the shared Hsm works too


def test_reconnect_after_library_finalized(softhsm_token: HsmConfig, hsm: Hsm) -> None:
    with Hsm.open(softhsm_token) as h:
        key = h.find_or_generate("reconnect-finalize", KeyType.EC_P256)
        h._lib.finalize()  # C_Finalize: every session of the process is gone
        sig = key.sign(b"data", ec.ECDSA(hashes.SHA256()))
        key.public_key().verify(sig, b"data", ec.ECDSA(hashes.SHA256()))
        assert h.reconnects == 1
        assert h.list_keys()


def test_concurrent_signing_from_8_threads(hsm: Hsm) -> None:
    rsa_key = hsm.find_or_generate("concurrent-rsa", KeyType.RSA_2048)
    ec_key = hsm.find_or_generate("concurrent-ec", KeyType.EC_P256)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(10):
                data = f"thread {n} message {i}".encode()
                if (n + i) % 2:
                    sig = rsa_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
                    rsa_key.public_key().verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
                else:
                    sig = ec_key.sign(data, ec.ECDSA(hashes.SHA256()))
                    ec_key.public_key().verify(sig, data, ec.ECDSA(hashes.SHA256()))
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors


def test_token_info_and_mechanisms(hsm: Hsm, softhsm_token: HsmConfig) -> None:
    info = hsm.token_info()
    assert info.label == softhsm_token.token_label
    assert info.manufacturer == "SoftHSM project"
    assert info.serial
    mechs = hsm.mechanisms()
    assert {"ECDSA", "RSA_PKCS", "SHA256_RSA_PKCS", "SHA256_RSA_PKCS_PSS"} <= mechs
    assert "ECDSA_SHA256" not in mechs  # why EC hashing happens on the host


def test_closed_hsm_refuses_work(softhsm_token: HsmConfig, hsm: Hsm) -> None:
    h = Hsm.open(softhsm_token)
    h.close()
    h.close()  # idempotent
    with pytest.raises(HsmError, match="closed"):
        h.list_keys()
    assert hsm.list_keys() is not None  # closing one user keeps the shared login


def test_init_token_refused_while_connections_open(hsm: Hsm, tmp_path: Path) -> None:
    with pytest.raises(HsmConfigError, match="one SoftHSM2 config"):
        init_softhsm_token(tmp_path, "other", so_pin="so-pin-1", user_pin="user-pin-1")


def test_init_softhsm_token_twice_in_one_process(tmp_path: Path) -> None:
    # Fresh process: the test session's own token must stay the active config here.
    res = _run_python(
        f"""

        from pathlib import Path
        from jpki_va import hsm
        base = Path({str(tmp_path)!r})
        for name in ("first", "second"):
            conf = hsm.init_softhsm_token(base / name, "tok-" + name, "so-" + name, "pin-" + name)
            pin = base / name / "pin"
            pin.write_text("pin-" + name)
            cfg = hsm.HsmConfig(token_label="tok-" + name, pin=hsm.PinSource(file=str(pin)),
                                softhsm2_conf=str(conf))
            with hsm.Hsm.open(cfg) as h:
                h.generate_key("k-" + name, hsm.KeyType.EC_P256)
                print(name, [k.label for k in h.list_keys()], h.token_info().label)
        """,
        {},
    )
    assert res.returncode == 0, res.stderr
    assert "first ['k-first'] tok-first" in res.stdout
    assert "second ['k-second'] tok-second" in res.stdout
    conf = (tmp_path / "second" / "softhsm2.conf").read_text()
    assert f"directories.tokendir = {tmp_path / 'second' / 'tokens'}" in conf
    assert "objectstore.backend = file" in conf
    assert "log.level = ERROR" in conf
