"""The fixed-order feed runner. This file is where the stage order is written down:

    gates -> hydrators -> sources -> filters -> scorers -> selectors -> explain -> side_effects

Sources run in turn; their candidates are merged by item (keeping every source's score and anchor)
and hydrated with catalog records and regional item stats before the filters see them. Anyone
looking for where a candidate was found, dropped or moved reads ``FeedPipeline.run`` top to bottom.
Which components fill each slot for the For You feed is decided in ``fyp.pipeline.for_you``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Final, TypeVar

from fyp.pipeline.contracts import (
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

    def run(self, query: FeedQuery) -> FeedResult:
        for gate in self.gates:
            self._timed(query, "gates", gate.name, partial(gate.check, query))
        for hydrator in self.hydrators:
            self._timed(query, "hydrators", hydrator.name, partial(hydrator.hydrate, query))
        candidates = self._run_sources(query)
        for flt in self.filters:
            candidates = self._run_filter(query, flt, candidates)
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
