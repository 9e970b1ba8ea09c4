"""The pipeline trace: what each stage did to the candidate set, and how long it took.

The trace is the single source of explanations. Reasons shown to a viewer are derived from the
candidates' recorded sources, anchors and selector actions, and the full trace can be returned with
a feed (``?trace=true``) so an operator can see exactly where any item was found or dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class StepRecord:
    stage: str
    component: str
    ms: float
    candidates_in: int | None = None
    candidates_out: int | None = None
    removed: dict[str, int] = field(default_factory=dict)
    """Removal reason -> how many candidates it removed."""
    error: str | None = None
    """Set when a fail-open component failed and the feed went on without it."""
    over_budget: bool = False
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stage": self.stage,
            "component": self.component,
            "ms": round(self.ms, 3),
        }
        if self.candidates_in is not None:
            out["in"] = self.candidates_in
        if self.candidates_out is not None:
            out["out"] = self.candidates_out
        if self.removed:
            out["removed"] = dict(self.removed)
        if self.error:
            out["error"] = self.error
        if self.over_budget:
            out["over_budget"] = True
        if self.note:
            out["note"] = self.note
        return out


@dataclass(slots=True)
class Trace:
    steps: list[StepRecord] = field(default_factory=list)
    removed_items: dict[str, str] = field(default_factory=dict)
    """Item id -> ``<filter>:<reason>`` for every candidate a filter removed."""

    def add(self, step: StepRecord) -> None:
        self.steps.append(step)

    def record_removed(self, filter_name: str, removed: list[tuple[str, str]]) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for item_id, reason in removed:
            self.removed_items[item_id] = f"{filter_name}:{reason}"
            counts[reason] += 1
        return dict(counts)

    @property
    def fallbacks(self) -> list[str]:
        return [s.component for s in self.steps if s.error]

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": [s.to_json() for s in self.steps],
            "removed": dict(self.removed_items),
        }
