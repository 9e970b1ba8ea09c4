"""The fixed-order feed runner. This file is where the stage order is written down:

    gates -> hydrators -> sources -> filters -> backfill -> scorers -> selectors -> explain
          -> side_effects

Sources run in turn; their candidates are merged by item (keeping every source's score and anchor)
and hydrated with catalog records and regional item stats before the filters see them. When fewer
candidates than the page survive the filters, the backfill stage draws more from its sources in
batches, puts each batch through the same filters, and stops once the candidates fill the page
plus as many again to choose from (at most ``max_added`` beyond the page), or its sources are
spent; otherwise it records that it was not needed. So a page holds ``n`` items whenever ``n``
eligible items exist and the backfill's work bound is not reached. Anyone looking for where a
candidate was found, dropped or moved reads ``FeedPipeline.run`` top to bottom.
Which components fill each slot for the For You feed is decided in ``fyp.pipeline.for_you``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Final, TypeVar

from fyp.pipeline.contracts import (
    BackfillScan,
    BackfillSource,
    Candidate,
    CandidateSource,
    FeedGate,
    FeedQuery,
    FeedResult,
    Filter,
    Hydrator,
    Scorer,
    Selector,
    SideEffect,
)
from fyp.pipeline.explain import explain
from fyp.pipeline.trace import StepRecord

STAGE_ORDER: Final = (
    "gates",
    "hydrators",
    "sources",
    "filters",
    "backfill",
    "scorers",
    "selectors",
    "explain",
    "side_effects",
)

T = TypeVar("T")


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


@dataclass(frozen=True)
class FeedPipeline:
    gates: Sequence[FeedGate]
    hydrators: Sequence[Hydrator]
    sources: Sequence[CandidateSource]
    filters: Sequence[Filter]
    scorers: Sequence[Scorer]
    selectors: Sequence[Selector]
    side_effects: Sequence[SideEffect]
    backfill: Sequence[BackfillSource] = ()
    """Run between the filters and the scorers (last here only so that it may be omitted)."""

    def forget_viewer(self, region: str, user_id: str) -> None:
        """An erased viewer: components that keep anything about viewers between requests
        drop it."""
        for source in self.backfill:
            source.forget(region, user_id)

    def run(self, query: FeedQuery) -> FeedResult:
        for gate in self.gates:
            self._timed(query, "gates", gate.name, partial(gate.check, query))
        for hydrator in self.hydrators:
            self._timed(query, "hydrators", hydrator.name, partial(hydrator.hydrate, query))
        candidates = self._run_sources(query)
        for flt in self.filters:
            candidates = self._run_filter(query, flt, candidates)
        for source in self.backfill:
            candidates = self._run_backfill(query, source, candidates)
        for scorer in self.scorers:
            self._run_scorer(query, scorer, candidates)
        for selector in self.selectors:
            candidates = self._run_selector(query, selector, candidates)
        result = self._timed(query, "explain", "explain", partial(explain, query, candidates))
        for effect in self.side_effects:
            self._timed(query, "side_effects", effect.name, partial(effect.run, query, result))
        return result

    # ---- stages ---------------------------------------------------------------------------------

    @staticmethod
    def _timed(query: FeedQuery, stage: str, name: str, call: Callable[[], T]) -> T:
        start = time.perf_counter()
        out = call()
        query.trace.add(StepRecord(stage=stage, component=name, ms=_ms_since(start)))
        return out

    def _run_sources(self, query: FeedQuery) -> list[Candidate]:
        merged: dict[str, Candidate] = {}
        for source in self.sources:
            start = time.perf_counter()
            step = StepRecord(stage="sources", component=source.name, ms=0.0)
            try:
                found = source.fetch(query)
            except Exception as exc:
                if not source.fail_open:
                    raise
                found = []
                step.error = f"{type(exc).__name__}: {exc}"
            for cand in found:
                into = merged.get(cand.item_id)
                if into is None:
                    merged[cand.item_id] = cand
                else:
                    into.sources.update(cand.sources)
                    into.anchors.update(cand.anchors)
            step.ms = _ms_since(start)
            step.candidates_out = len(found)
            step.over_budget = step.ms > source.budget_ms
            query.trace.add(step)
        # Hydrate the merged set in two batched reads: catalog records, then regional stats.
        start = time.perf_counter()
        ids = list(merged)
        records = query.context.catalog.get_items(ids)
        stats = query.context.data.stats.stats(ids)
        hydrated: list[Candidate] = []
        missing: list[tuple[str, str]] = []
        for item_id, cand in merged.items():
            record = records.get(item_id)
            if record is None:
                missing.append((item_id, "not_in_catalog"))
                continue
            cand.item = record
            cand.stats = stats.get(item_id)
            hydrated.append(cand)
        query.trace.add(
            StepRecord(
                stage="sources",
                component="hydrate_candidates",
                ms=_ms_since(start),
                candidates_in=len(merged),
                candidates_out=len(hydrated),
                removed=query.trace.record_removed("hydrate_candidates", missing),
            )
        )
        return hydrated

    @staticmethod
    def _run_filter(query: FeedQuery, flt: Filter, candidates: list[Candidate]) -> list[Candidate]:
        start = time.perf_counter()
        result = flt.apply(query, candidates)
        removed = query.trace.record_removed(
            flt.name, [(cand.item_id, reason) for cand, reason in result.removed]
        )
        query.trace.add(
            StepRecord(
                stage="filters",
                component=flt.name,
                ms=_ms_since(start),
                candidates_in=len(candidates),
                candidates_out=len(result.kept),
                removed=removed,
            )
        )
        return result.kept

    def _run_backfill(
        self, query: FeedQuery, source: BackfillSource, candidates: list[Candidate]
    ) -> list[Candidate]:
        start = time.perf_counter()
        step = StepRecord(
            stage="backfill", component=source.name, ms=0.0, candidates_in=len(candidates)
        )
        short = query.n - len(candidates)
        if short <= 0:
            step.note = "not needed: the filtered candidates fill the page"
        else:
            # The page, and as many again (at most ``max_added``) for the scorers and selectors
            # to choose from.
            target = query.n + min(query.n, source.max_added)
            # Never offer again what the sources found or the filters removed this request.
            considered = {c.item_id for c in candidates}
            considered.update(query.trace.removed_items)
            removed: Counter[str] = Counter()
            added: list[Candidate] = []
            scan: BackfillScan | None = None
            try:
                scan = source.scan(query)
                while len(candidates) + len(added) < target and not scan.spent:
                    batch: list[Candidate] = []
                    for cand in scan.more(target - len(candidates) - len(added)):
                        if cand.item is not None and cand.item_id not in considered:
                            considered.add(cand.item_id)
                            batch.append(cand)
                    for flt in self.filters:
                        result = flt.apply(query, batch)
                        # Counted, not listed item by item: a walk past a long run of seen
                        # items would otherwise put thousands of ids in the trace.
                        removed.update(reason for _, reason in result.removed)
                        batch = result.kept
                    added.extend(batch[: target - len(candidates) - len(added)])
                scan.done(added)
            except Exception as exc:
                if not source.fail_open:
                    raise
                step.error = f"{type(exc).__name__}: {exc}"
            if added:
                # Item stats only for the survivors: the filters do not read them.
                stats = query.context.data.stats.stats([c.item_id for c in added])
                for cand in added:
                    cand.stats = stats.get(cand.item_id)
            candidates = candidates + added
            step.removed = dict(removed)
            walked = scan.summary() if scan is not None else "did not start"
            step.note = f"page short by {short} after the filters; {walked}; added {len(added)}"
        step.candidates_out = len(candidates)
        step.ms = _ms_since(start)
        step.over_budget = step.ms > source.budget_ms
        query.trace.add(step)
        return candidates

    @staticmethod
    def _run_scorer(query: FeedQuery, scorer: Scorer, candidates: list[Candidate]) -> None:
        start = time.perf_counter()
        step = StepRecord(stage="scorers", component=scorer.name, ms=0.0)
        try:
            scores = scorer.score(query, candidates)
            if len(scores) != len(candidates):
                raise RuntimeError(
                    f"scorer {scorer.name} returned {len(scores)} scores "
                    f"for {len(candidates)} candidates"
                )
        except Exception as exc:
            if not scorer.fail_open:
                raise
            scores = [0.0] * len(candidates)
            step.error = f"{type(exc).__name__}: {exc}"
        # Each scorer's output is kept as a feature; the last scorer (the value model) has the
        # final word on ``score``.
        for cand, value in zip(candidates, scores, strict=True):
            cand.features[scorer.name] = value
            cand.score = value
        step.ms = _ms_since(start)
        step.over_budget = step.ms > scorer.budget_ms
        query.trace.add(step)

    @staticmethod
    def _run_selector(
        query: FeedQuery, selector: Selector, candidates: list[Candidate]
    ) -> list[Candidate]:
        start = time.perf_counter()
        out = selector.select(query, candidates)
        query.trace.add(
            StepRecord(
                stage="selectors",
                component=selector.name,
                ms=_ms_since(start),
                candidates_in=len(candidates),
                candidates_out=len(out),
            )
        )
        return out
