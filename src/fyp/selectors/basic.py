"""The feed's selectors, applied in the order ``fyp.pipeline.for_you`` lists them.

Every selector returns a subset of its input in some order, with no duplicates; the last two trim
to the page size ``n``. ``SpaceCreators`` guarantees its spacing rule on what it returns, dropping
candidates it cannot place rather than breaking the rule.
"""

from __future__ import annotations

import heapq
from collections import Counter

from fyp.config import FreshConfig, SelectorsConfig
from fyp.pipeline.contracts import Candidate, FeedQuery


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
    """At least ``exploration_slots`` fresh, under-exposed items on each page.

    An item qualifies while it is younger than the fresh window and has fewer than
    ``exploration_max_views`` views in the region. If the page's top ``n`` already holds enough
    qualifying items nothing moves; otherwise the best qualifying items from below the fold are
    moved up to ``exploration_position`` (and spread out when there are several slots), marked as
    exploration so the viewer is told why they see them.
    """

    name = "reserve_exploration"

    def __init__(self, config: SelectorsConfig, fresh: FreshConfig) -> None:
        self.slots = config.exploration_slots
        self.max_views = config.exploration_max_views
        self.position = config.exploration_position
        self.max_age_s = fresh.max_age_hours * 3600.0

    def eligible(self, query: FeedQuery, cand: Candidate) -> bool:
        if cand.item is None:
            return False
        views = cand.stats.views if cand.stats else 0
        return query.now - cand.item.created_at <= self.max_age_s and views < self.max_views

    def select(self, query: FeedQuery, candidates: list[Candidate]) -> list[Candidate]:
        n = query.n
        if self.slots <= 0 or not candidates:
            return list(candidates)
        page, rest = list(candidates[:n]), list(candidates[n:])
        needed = min(self.slots, n) - sum(1 for c in page if self.eligible(query, c))
        promoted = [c for c in rest if self.eligible(query, c)][: max(needed, 0)]
        if not promoted:
            return page + rest
        # Make room by moving the page's lowest-ranked ineligible items just below the fold.
        bumped: list[Candidate] = []
        for index in range(len(page) - 1, -1, -1):
            if len(bumped) == len(promoted):
                break
            if not self.eligible(query, page[index]):
                bumped.insert(0, page.pop(index))
        spacing = max(1, n // self.slots)
        for k, cand in enumerate(promoted):
            cand.exploration = True
            # len(page) < n before every insert, so the slot always lands on the page.
            page.insert(min(self.position + k * spacing, len(page)), cand)
        promoted_ids = {c.item_id for c in promoted}
        return page + bumped + [c for c in rest if c.item_id not in promoted_ids]


class SpaceCreators:
    """No creator twice within ``creator_gap`` positions; returns at most ``n`` items.

    Walks the ranking and takes the first candidate whose creator is not among the last
    ``creator_gap`` picks. Candidates that cannot be placed before the page is full are dropped.
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
                break
            out.append(pending.pop(index))
        return out


class TakeN:
    """The page: the first ``n`` candidates."""

    name = "take_n"

    def select(self, query: FeedQuery, candidates: list[Candidate]) -> list[Candidate]:
        return list(candidates[: query.n])
