"""Types of the compiled page walk of an LMDB tree (_lmdb_pages.pyx)."""

from typing import Literal

from typing_extensions import Buffer

class Pages:
    def __init__(self, mapped: Buffer, psize: int) -> None: ...
    def release(self) -> None: ...
    def read(
        self, root: int, depth: int, keys: list[bytes]
    ) -> list[bytes | None] | Literal[False] | None: ...
