"""Types of the compiled twin of batch_wire.py (_batch_wire.pyx)."""

from collections.abc import Callable
from typing import Any

def results_bytes(
    results: list[Any], item_error_type: type, fallback: Callable[[Any], bytes]
) -> bytes: ...
def packed_bytes(
    slots: list[Any] | None,
    keys: list[bytes],
    values: list[bytes | None],
    key_ids: list[bytes],
    when: int,
    sequence: int,
    item_error_type: type,
    fallback: Callable[[Any], bytes],
    tally: dict[int, int],
) -> bytes | None: ...
def check_bytes(
    key: bytes, value: bytes | None, key_ids: list[bytes], when: int, sequence: int
) -> tuple[bytes, int] | None: ...
def plain_key(raw: bytes) -> bytes | None: ...
def plain_key_or(parse: Callable[[bytes], Any], raw: bytes) -> Any: ...
def plain_keys(raw: bytes, kind_counts: list[int]) -> list[bytes | None] | None: ...
