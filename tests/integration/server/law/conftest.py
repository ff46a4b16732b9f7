"""What the law's tests share: a signer clock the tests move."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from jpki_va.core.clock import FixedClock


@pytest.fixture(scope="module")
def clock() -> FixedClock:
    """Now, to the second; a module's tests move it forward."""
    return FixedClock(datetime.now(UTC).replace(microsecond=0))
