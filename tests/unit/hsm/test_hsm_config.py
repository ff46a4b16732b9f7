"""PinSource / HsmConfig validation (no token needed)."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

import pytest

from jpki_va.hsm import HsmConfig, HsmConfigError, PinSource

SECRET = "s3cret-pin-value"


def test_pin_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JPKI_TEST_PIN", SECRET)
    src = PinSource(env="JPKI_TEST_PIN")
    assert src.read() == SECRET
    assert SECRET not in repr(src)
    assert repr(src) == "PinSource(env:JPKI_TEST_PIN)"


def test_pin_from_file_first_line(tmp_path: Path) -> None:
    f = tmp_path / "pin"
    f.write_text(f"{SECRET}\r\nsecond line\n")
    src = PinSource(file=str(f))
    assert src.read() == SECRET
    assert SECRET not in repr(src)


@pytest.mark.parametrize(("env", "file"), [(None, None), ("A", "/b")])
def test_pin_source_needs_exactly_one(env: str | None, file: str | None) -> None:
    with pytest.raises(HsmConfigError):
        PinSource(env=env, file=file)


def test_pin_errors_do_not_leak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JPKI_TEST_UNSET", raising=False)
    with pytest.raises(HsmConfigError, match="JPKI_TEST_UNSET"):
        PinSource(env="JPKI_TEST_UNSET").read()
    with pytest.raises(HsmConfigError, match="does not exist"):
        PinSource(file=str(tmp_path / "missing")).read()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(HsmConfigError, match="empty"):
        PinSource(file=str(empty)).read()
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xffsecret\n")
    with pytest.raises(HsmConfigError) as info:
        PinSource(file=str(binary)).read()
    assert "secret" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_config_validation(tmp_path: Path) -> None:
    pin = PinSource(env="X")
    with pytest.raises(HsmConfigError, match="token_label"):
        HsmConfig(token_label="", pin=pin)
    with pytest.raises(HsmConfigError, match="module"):
        HsmConfig(module=str(tmp_path / "nope.so"), token_label="t", pin=pin)
    with pytest.raises(HsmConfigError, match="SoftHSM2 config"):
        HsmConfig(token_label="t", pin=pin, softhsm2_conf=str(tmp_path / "nope.conf"))


def test_prompted_pin_is_asked_once_and_only_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []

    def fake_getpass(prompt: str) -> str:
        asked.append(prompt)
        return "typed-pin"

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    source = PinSource(prompt="PIN: ")
    assert source.read() == "typed-pin"
    assert source.read() == "typed-pin"  # a reconnect does not ask again
    assert asked == ["PIN: "]
    assert "typed-pin" not in repr(source)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    with pytest.raises(HsmConfigError, match="not a terminal"):
        PinSource(prompt="PIN: ").read()
    with pytest.raises(HsmConfigError, match="exactly one"):
        PinSource(env="X", prompt="PIN: ")
