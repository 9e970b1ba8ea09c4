"""Staged exploration of new items: small audiences first, wider ones when the numbers say so.

A new item is shown, through the exploration slots, to growing pools of viewers in its region.
Each stage has a view budget and an audience share: the viewers whose stable hash of
``(item, viewer)`` falls below the share. When an item has used a stage's budget it is judged:
its engagement rate (finishes and likes per view, at most one per view) against the region's bar
(the same rate over every view in the region), with a Beta posterior: ``Beta(1 + s, 1 + v - s)``.

* promoted to the next stage when ``P(rate > bar) >= promote_confidence``;
* retired when ``P(rate > bar) < retire_confidence`` (judged as soon as it has
  ``min_views_to_judge`` views, so a clear dud stops early);
* otherwise held: it gets no more exploration exposure and competes on its score like any item.

After the last stage (``exploration_max_views`` views) the item has graduated. Among the items
that qualify for a viewer's slot, the slot goes to the highest draw from each item's posterior
(Thompson sampling), so promising items get more of the exploration traffic while uncertain ones
still get some. The decision reads only the region's counters, so every server process makes the
same one and nothing needs storing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum
from typing import Final

import numpy as np
from scipy.special import betaincc

from fyp.config import SelectorsConfig
from fyp.pipeline.cache import RegionTTLCache
from fyp.pipeline.contracts import Candidate, FeedQuery
from fyp.storage.roles import ItemStatsRecord

_HASH_SPACE: Final = float(2**64)


class Phase(Enum):
    EXPLORING = "exploring"
    HELD = "held"
    RETIRED = "retired"
    GRADUATED = "graduated"


@dataclass(frozen=True, slots=True)
class Standing:
    phase: Phase
    stage: int
    """Index of the stage being explored (or last judged)."""
    audience: float
    """Share of the region's viewers the item may be explored with now (0 unless exploring)."""
    p_above_bar: float


def successes(stats: ItemStatsRecord | None) -> tuple[int, int]:
    """``(views, engaged views)``: finishes plus likes, at most one per view."""
    if stats is None:
        return 0, 0
    return stats.views, min(stats.views, stats.finishes + stats.likes)


def p_above(engaged: int, views: int, bar: float) -> float:
    """``P(rate > bar)`` under the posterior ``Beta(1 + engaged, 1 + views - engaged)``."""
    return float(betaincc(1.0 + engaged, 1.0 + max(views - engaged, 0), min(max(bar, 0.0), 1.0)))


def audience_rank(item_id: str, user_id: str) -> float:
    """A stable, uniform number in [0, 1) for the pair: the viewer's place in the item's pools."""
    digest = hashlib.blake2b(f"{item_id}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SPACE


class ExplorationPolicy:
    def __init__(self, config: SelectorsConfig) -> None:
        self.stages = [
            (s.views, s.audience)
            for s in config.exploration_stages
            if s.views < config.exploration_max_views
        ]
        self.stages.append((config.exploration_max_views, 1.0))
        self.promote = config.exploration_promote_confidence
        self.retire = config.exploration_retire_confidence
        self.min_views = config.exploration_min_views_to_judge

    def standing(self, stats: ItemStatsRecord | None, bar: float) -> Standing:
        views, engaged = successes(stats)
        p = p_above(engaged, views, bar)
        if views >= self.min_views and p < self.retire:
            return Standing(Phase.RETIRED, 0, 0.0, p)
        for index, (budget, audience) in enumerate(self.stages):
            if views < budget:
                return Standing(Phase.EXPLORING, index, audience, p)
            if index == len(self.stages) - 1:
                break
            if p < self.promote:
                return Standing(Phase.HELD, index, 0.0, p)
        return Standing(Phase.GRADUATED, len(self.stages) - 1, 0.0, p)

    def admits(self, query: FeedQuery, cand: Candidate, bar: float) -> bool:
        standing = self.standing(cand.stats, bar)
        return (
            standing.phase is Phase.EXPLORING
            and audience_rank(cand.item_id, query.user_id) < standing.audience
        )

    @staticmethod
    def draws(query: FeedQuery, cands: list[Candidate]) -> list[float]:
        """One Thompson draw per candidate from its posterior, seeded by the request."""
        seed = int.from_bytes(hashlib.blake2b(query.request_id.encode(), digest_size=8).digest())
        rng = np.random.default_rng(seed)
        out = []
        for cand in cands:
            views, engaged = successes(cand.stats)
            out.append(float(rng.beta(1.0 + engaged, 1.0 + views - engaged)))
        return out


class RegionBar:
    """The region's engagement rate over every view, cached briefly per region (on the engine's
    clock, like every cache a page depends on, so a replayed stream gets the same pages)."""

    def __init__(self, ttl_s: float = 10.0) -> None:
        self._cache: RegionTTLCache[float] = RegionTTLCache(ttl_s)

    def get(self, query: FeedQuery) -> float:
        def load() -> float:
            views, engaged = successes(query.context.data.stats.totals())
            # A region with no views yet: half the views engaged is the neutral prior.
            return engaged / views if views else 0.5

        return self._cache.get(query.region, load, query.now)


@dataclass
class ExplorationCounters:
    """What this process's feeds spent on exploration (reported by the transparency report)."""

    pages: int = 0
    items: int = 0
    exploration_items: int = 0

    def share(self) -> float:
        return self.exploration_items / self.items if self.items else 0.0
