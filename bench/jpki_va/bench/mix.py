"""The serial mix the load draws: good, revoked and unknown; hot (repeated) and cold.

Cold draws are uniform over the pool (itself uniform over the whole data set), so
they touch the index everywhere; hot draws repeat a small set, as popular
certificates do. Sequences are drawn once, ahead of the load, from a seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from jpki_va.bench.dataset import CATEGORIES, Pool
from jpki_va.core.domain import CertKind

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Mix:
    good: float = 0.80
    revoked: float = 0.15
    unknown: float = 0.05
    hot: float = 0.30  # share of draws from the hot set
    hot_size: int = 100  # serials in the hot set

    def __post_init__(self) -> None:
        weights = (self.good, self.revoked, self.unknown)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError("category weights must be >= 0 and not all 0")
        if not 0 <= self.hot <= 1:
            raise ValueError("hot share must be between 0 and 1")
        if self.hot_size < 1:
            raise ValueError("hot set size must be at least 1")

    @classmethod
    def parse(cls, text: str) -> Mix:
        """From `good=0.8,revoked=0.15,unknown=0.05,hot=0.3,hot_size=100` (any subset)."""
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, raw = part.partition("=")
            if name not in ("good", "revoked", "unknown", "hot", "hot_size"):
                raise ValueError(f"unknown mix component {name!r}")
            try:
                values[name] = float(raw)
            except ValueError:
                raise ValueError(f"mix component {name!r} needs a number, got {raw!r}") from None
        if "hot_size" in values:
            values["hot_size"] = int(values["hot_size"])
        return cls(**values)  # type: ignore[arg-type]


def draw_sequence(
    pool: Pool, mix: Mix, count: int, rng: np.random.Generator
) -> list[tuple[CertKind, int, str]]:
    """`count` (kind, serial, category) draws."""
    # numpy is the optional bench extra: `jpki-va` must start without it.
    import numpy as np  # noqa: PLC0415

    weights = np.array([mix.good, mix.revoked, mix.unknown], dtype=float)
    available = np.array([len(pool.category(c)) > 0 for c in CATEGORIES])
    weights = np.where(available, weights, 0.0)
    if weights.sum() <= 0:
        raise ValueError("the pool has no serials for this mix")
    weights /= weights.sum()
    hot = {
        c: [pool.category(c)[i] for i in rng.permutation(len(pool.category(c)))[: mix.hot_size]]
        for c in CATEGORIES
    }
    categories = rng.choice(len(CATEGORIES), size=count, p=weights)
    is_hot = rng.random(count) < mix.hot
    uniform = rng.random(count)
    out = []
    for cat_i, hot_draw, u in zip(
        categories.tolist(), is_hot.tolist(), uniform.tolist(), strict=True
    ):
        name = CATEGORIES[cat_i]
        source = hot[name] if hot_draw and hot[name] else pool.category(name)
        kind, serial = source[int(u * len(source))]
        out.append((kind, serial, name))
    return out
