"""crl_stream's readers refuse short and truncated input with ValueError (found by the
fuzz target tests/fuzz/test_crl_readers_fuzz.py): the index build falls back to
cryptography on ValueError, and an IndexError would end the build instead."""

from __future__ import annotations

import pytest

from jpki_va.server.pki.crl_stream import read_entries, tbs_certlist


@pytest.mark.parametrize(
    "data", [b"", b"\x30", b"\x30\x81", b"\x30\x82\x01", b"\x30\x02\x30", b"\x30\x01\x30"]
)
def test_tbs_certlist_of_truncated_input_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="DER"):
        tbs_certlist(data)


@pytest.mark.parametrize("data", [b"", b"\x30", b"\x30\x03\x02\x01\x01", b"\x30\x81"])
def test_read_entries_of_truncated_input_declines(data: bytes) -> None:
    assert read_entries(data) is None
