"""The feed's selectors, applied in the order ``fyp.pipeline.for_you`` lists them.

Every selector returns a subset of its input in some order, with no duplicates; the last two trim
to the page size ``n`` and return ``min(n, len(input))`` items: a rule that cannot be kept with the
candidates at hand bends rather than leaving the page short.
"""

from __future__ import annotations

import heapq
import threading
from collections import Counter

from fyp.config import FreshConfig, SelectorsConfig
from fyp.pipeline.contracts import Candidate, FeedQuery
from fyp.selectors.exploration import ExplorationCounters, ExplorationPolicy, RegionBar


class RankByScore:
    """Highest value-model score first; ties broken by item id for determinism."""

    name = "rank_by_score"

    def select(self, query: FeedQuery, candidates: list[Candidate]) -> list[Candidate]:
        return sorted(candidates, key=lambda c: (-c.score, c.item_id))


class DiversifyTags:
    """Greedy re-rank: each pick pays ``tag_repeat_penalty`` per earlier pick sharing a tag.

    Penalties only grow as the page fills, so a lazy priority queue gives the exact greedy order
    while re-scoring only the candidates that reach the top.
    """

    name = "diversify_tags"

    def __init__(self, config: SelectorsConfig) -> None:
        self.penalty = config.tag_repeat_penalty

    def select(self, query: FeedQuery, candidates: list[Candidate]) -> list[Candidate]:
        if self.penalty <= 0 or len(candidates) < 2:
            return list(candidates)
        window = min(len(candidates), max(query.n * 3, query.n + 20))
        head, tail = candidates[:window], candidates[window:]
        used: Counter[str] = Counter()

        def adjusted(c: Candidate) -> float:
            return c.score - self.penalty * sum(used[t] for t in c.tags)

        # Heap of (-adjusted score, original position, picks seen when scored).
        heap = [(-c.score, i, 0) for i, c in enumerate(head)]
        heapq.heapify(heap)
        out: list[Candidate] = []
        while heap:
            _, i, stamp = heapq.heappop(heap)
            if stamp != len(out):
                heapq.heappush(heap, (-adjusted(head[i]), i, len(out)))
                continue
            out.append(head[i])
            used.update(head[i].tags)
        return out + tail


class ReserveExploration:
    """At least ``exploration_slots`` new items under exploration on each page.

    With ``exploration_pools`` (the default) an item qualifies while it is younger than the
    fresh window and ``fyp.selectors.exploration`` has it exploring a stage whose audience
    includes this viewer; each slot goes to the highest Thompson draw among the
    ``exploration_shortlist`` best-scored qualifying items below the fold. Without pools an
    item qualifies while fresh and under ``exploration_max_views`` views, best-scored first.
    If the page's top ``n`` already holds enough qualifying items nothing moves; otherwise the
    chosen items are moved up to ``exploration_position`` (spread out when there are several
    slots) and marked as exploration so the viewer is told why they see them.
    """

    name = "reserve_exploration"

    def __init__(self, config: SelectorsConfig, fresh: FreshConfig) -> None:
        self.slots = config.exploration_slots
        self.max_views = config.exploration_max_views
        self.position = config.exploration_position
        self.max_age_s = fresh.max_age_hours * 3600.0
        self.policy = ExplorationPolicy(config) if config.exploration_pools else None
        self.shortlist = config.exploration_shortlist
        self.bar = RegionBar()
        self.counters = ExplorationCounters()
        self._lock = threading.Lock()

    def eligible(self, query: FeedQuery, cand: Candidate, bar: float | None = None) -> bool:
        if cand.item is None or query.now - cand.item.created_at > self.max_age_s:
            return False
        if self.policy is None:
            views = cand.stats.views if cand.stats else 0
            return views < self.max_views
        return self.policy.admits(query, cand, self.bar.get(query) if bar is None else bar)

    def select(self, query: FeedQuery, candidates: list[Candidate]) -> list[Candidate]:
        n = query.n
        if self.slots <= 0 or not candidates:
            return list(candidates)
        bar = self.bar.get(query) if self.policy is not None else None
        page, rest = list(candidates[:n]), list(candidates[n:])
        on_page = sum(1 for c in page if self.eligible(query, c, bar))
        needed = min(self.slots, n) - on_page
        qualifying = [c for c in rest if self.eligible(query, c, bar)] if needed > 0 else []
        if self.policy is not None and len(qualifying) > 1:
            # The best-scored few for this viewer, ordered by their posterior draws: exploration
            # learns about the items while still showing ones that suit the viewer.
            qualifying = qualifying[: max(needed, 0) * self.shortlist]
            draws = self.policy.draws(query, qualifying)
            order = sorted(range(len(qualifying)), key=lambda i: -draws[i])
            qualifying = [qualifying[i] for i in order]
        promoted = qualifying[: max(needed, 0)]
        self._count(n, on_page + len(promoted))
        if not promoted:
            return page + rest
        # Make room by moving the page's lowest-ranked ineligible items just below the fold.
        bumped: list[Candidate] = []
        for index in range(len(page) - 1, -1, -1):
            if len(bumped) == len(promoted):
                break
            if not self.eligible(query, page[index], bar):
                bumped.insert(0, page.pop(index))
        spacing = max(1, n // self.slots)
        for k, cand in enumerate(promoted):
            cand.exploration = True
            # len(page) < n before every insert, so the slot always lands on the page.
            page.insert(min(self.position + k * spacing, len(page)), cand)
        promoted_ids = {c.item_id for c in promoted}
        return page + bumped + [c for c in rest if c.item_id not in promoted_ids]

    def _count(self, n: int, exploring: int) -> None:
        with self._lock:
            self.counters.pages += 1
            self.counters.items += n
            self.counters.exploration_items += min(exploring, n)


class SpaceCreators:
    """No creator twice within ``creator_gap`` positions, while others are left; ``min(n, len)``
    items.

    Walks the ranking and takes the first candidate whose creator is not among the last
    ``creator_gap`` picks. When every remaining candidate's creator is that recent (a catalog
    or a candidate set of few creators), a full page beats the spacing: it takes the best-ranked
    candidate of the creator picked longest ago, so the repeat is as far apart as it can be.
    """

    name = "space_creators"

    def __init__(self, config: SelectorsConfig) -> None:
        self.gap = config.creator_gap

    def select(self, query: FeedQuery, candidates: list[Candidate]) -> list[Candidate]:
        pending = list(candidates)
        out: list[Candidate] = []
        while pending and len(out) < query.n:
            recent = {c.creator_id for c in out[-self.gap :]} if self.gap else set()
            index = next((i for i, c in enumerate(pending) if c.creator_id not in recent), None)
            if index is None:
                last_pick = {c.creator_id: position for position, c in enumerate(out)}
                index = min(range(len(pending)), key=lambda i: last_pick[pending[i].creator_id])
            out.append(pending.pop(index))
        return out


class TakeN:
    """The page: the first ``n`` candidates."""

    name = "take_n"

    def select(self, query: FeedQuery, candidates: list[Candidate]) -> list[Candidate]:
        return list(candidates[: query.n])
