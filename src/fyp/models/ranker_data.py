"""Viewings as ranker examples, with point-in-time features; the same features at serving time.

An *example* is one viewing: a ``play`` of an item by a viewer (its ``watch_ms`` gives the watch
ratio and the quick skip) together with the engagements on that item by that viewer that follow it
within ``label_window_s`` (``finish``, ``like``, ``share``, ``follow``, ``skip``,
``not_interested``). A later play of the same item opens a new viewing. Engagements with no play
before them (an app that only reports likes) update the features but are not examples.

**Point in time.** ``build_examples`` replays the log in time order and keeps the state a feed
request would have seen: the viewer's decayed creator and tag affinities (moved by every event with
the same weights as the online state, ``AffinityConfig``), whom they follow, and each item's
region counters (plays, finishes, likes, shares, skips, not-interested, watch-ratio sum, counted as
the region's item stats count them). An example's features are read *before* its own play is
applied, and its labels are filled in by the later events, so no label can leak into its features.

**Left out on purpose.** The page position: scoring happens before the page is ordered, so it is
unknown when the ranker runs. Which sources found a candidate: a logged viewing cannot say which
sources would have found it, so no weight for those scores could be learned. The learned source's
own score (viewer vector . item factor) is an input; ``fyp.models.ranker_retrieval`` fills it in
point in time.

**Serving.** ``serving_numeric`` computes the same numeric features from a candidate's catalog
record and region stats and the viewer's hydrated state, so the model sees at serving what it was
trained on. No torch here: this module is also what the evaluation and the tests import cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from fyp.config import RANKER_TASKS
from fyp.signals import QUICK_SKIP_MS, FoldPolicy, combine_decayed, decay_factor
from fyp.storage.roles import EventRecord, ItemRecord, ItemStatsRecord, UserStateSnapshot
from fyp.types import Event

NUMERIC_FEATURES: Final = (
    "log_duration",
    "log_age_hours",
    "log_item_plays",
    "item_finish_rate",
    "item_like_rate",
    "item_share_rate",
    "item_skip_rate",
    "item_not_interested_rate",
    "item_watch_ratio",
    "creator_affinity",
    "tag_affinity",
    "best_tag_affinity",
    "worst_tag_affinity",
    "follows_creator",
    "viewer_activity",
    "hour_sin",
    "hour_cos",
    "als_score",
    "has_als_score",
)
"""The numeric inputs of the ranker, in column order. ``als_score`` is the retrieval score of the
learned source (viewer vector . item factor); ``has_als_score`` says whether it is known."""

MAX_TAGS: Final = 8
"""Tags per item fed to the tag bag; further tags are ignored."""
AFFINITY_SCALE: Final = 3.0
"""Affinities enter as ``tanh(affinity / AFFINITY_SCALE)``, like the hand-weighted features."""
UNKNOWN_ROW: Final = 0
"""Row of the unknown id in the user, item and creator tables."""
TAG_PAD_ROW: Final = 0
TAG_UNKNOWN_ROW: Final = 1
EXTRA_LABELS: Final = ("not_interested", "long_watch")
"""Outcomes recorded for evaluation but not trained: not-interested, watch ratio >= 0.5."""
LONG_WATCH_RATIO: Final = 0.5


class LoggedEvent(NamedTuple):
    """The fields of an event the ranker reads, with the time as epoch seconds."""

    ts: float
    user_id: str
    item_id: str
    type: str
    watch_ms: int | None


def from_records(records: Iterable[EventRecord]) -> list[LoggedEvent]:
    return [LoggedEvent(r.ts, r.user_id, r.item_id, r.type, r.watch_ms) for r in records]


def from_events(events: Iterable[Event]) -> list[LoggedEvent]:
    return [LoggedEvent(e.ts.timestamp(), e.user_id, e.item_id, e.type, e.watch_ms) for e in events]


# ---- item engagement rates ----------------------------------------------------------------------


@dataclass(frozen=True)
class BaseRates:
    """Per-play engagement rates of the training log: what an item with no evidence is assumed."""

    finish: float = 0.2
    like: float = 0.05
    share: float = 0.01
    skip: float = 0.3
    not_interested: float = 0.005
    watch_ratio: float = 0.4

    def to_json(self) -> dict[str, float]:
        return {
            "finish": self.finish,
            "like": self.like,
            "share": self.share,
            "skip": self.skip,
            "not_interested": self.not_interested,
            "watch_ratio": self.watch_ratio,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BaseRates:
        return cls(**{k: float(v) for k, v in data.items()})


@dataclass(slots=True)
class _ItemCounts:
    plays: int = 0
    finishes: int = 0
    likes: int = 0
    shares: int = 0
    skips: int = 0
    not_interested: int = 0
    watch_ratio_sum: float = 0.0


def _watch_ratio(watch_ms: int | None, duration_s: float) -> float | None:
    if watch_ms is None or duration_s <= 0:
        return None
    return watch_ms / (duration_s * 1000.0)


def _count(counts: _ItemCounts, event: LoggedEvent, duration_s: float) -> None:
    """Mirror of the region's item-stats counters (``fyp.signals.fold``)."""
    kind = event.type
    if kind == "play":
        counts.plays += 1
        ratio = _watch_ratio(event.watch_ms, duration_s)
        if ratio is not None:
            counts.watch_ratio_sum += min(ratio, 2.0)
    elif kind == "finish":
        counts.finishes += 1
    elif kind == "like":
        counts.likes += 1
    elif kind == "share":
        counts.shares += 1
    elif kind == "skip":
        counts.skips += 1
    elif kind == "not_interested":
        counts.not_interested += 1


def base_rates(events: Iterable[LoggedEvent], items: Mapping[str, ItemRecord]) -> BaseRates:
    """Per-play rates over ``events`` (the training log), floored so none is zero."""
    total = _ItemCounts()
    for event in events:
        item = items.get(event.item_id)
        if item is not None:
            _count(total, event, item.duration_s)
    plays = max(total.plays, 1)
    return BaseRates(
        finish=max(total.finishes / plays, 1e-3),
        like=max(total.likes / plays, 1e-3),
        share=max(total.shares / plays, 1e-4),
        skip=max(total.skips / plays, 1e-3),
        not_interested=max(total.not_interested / plays, 1e-4),
        watch_ratio=max(total.watch_ratio_sum / plays, 1e-2),
    )


def _item_rates(
    plays: int,
    finishes: int,
    likes: int,
    shares: int,
    skips: int,
    not_interested: int,
    watch_ratio_sum: float,
    rates: BaseRates,
    prior: float,
) -> tuple[float, float, float, float, float, float, float]:
    """log1p(plays) and the six per-play rates, each smoothed toward ``rates`` with ``prior``."""
    denominator = plays + prior
    if denominator <= 0:
        return (
            0.0,
            rates.finish,
            rates.like,
            rates.share,
            rates.skip,
            rates.not_interested,
            rates.watch_ratio,
        )
    return (
        math.log1p(plays),
        (finishes + prior * rates.finish) / denominator,
        (likes + prior * rates.like) / denominator,
        (shares + prior * rates.share) / denominator,
        (skips + prior * rates.skip) / denominator,
        (not_interested + prior * rates.not_interested) / denominator,
        (watch_ratio_sum + prior * rates.watch_ratio) / denominator,
    )


def _numeric_row(
    item: ItemRecord,
    now: float,
    item_rates: tuple[float, float, float, float, float, float, float],
    creator_affinity: float,
    tag_affinities: Sequence[float],
    follows: bool,
    activity: int,
    als_score: float | None = None,
) -> list[float]:
    """One row of ``NUMERIC_FEATURES``: the single definition used by training and serving."""
    tanh = math.tanh
    if tag_affinities:
        tag_total = sum(tag_affinities) / math.sqrt(len(tag_affinities))
        best, worst = max(tag_affinities), min(tag_affinities)
    else:
        tag_total = best = worst = 0.0
    age_hours = max(now - item.created_at, 0.0) / 3600.0
    angle = 2.0 * math.pi * ((now % 86_400.0) / 86_400.0)
    return [
        math.log(max(item.duration_s, 0.1)),
        math.log1p(age_hours),
        *item_rates,
        tanh(creator_affinity / AFFINITY_SCALE),
        tanh(tag_total / AFFINITY_SCALE),
        tanh(best / AFFINITY_SCALE),
        tanh(worst / AFFINITY_SCALE),
        1.0 if follows else 0.0,
        math.log1p(activity),
        math.sin(angle),
        math.cos(angle),
        0.0 if als_score is None else als_score,
        0.0 if als_score is None else 1.0,
    ]


# ---- the point-in-time replay -------------------------------------------------------------------


@dataclass(slots=True)
class _Viewer:
    creators: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Creator -> (affinity, valid at ts); decayed on read, like the online state."""
    tags: dict[str, tuple[float, float]] = field(default_factory=dict)
    follows: set[str] = field(default_factory=set)


def affinity_delta(policy: FoldPolicy, event: LoggedEvent, item: ItemRecord) -> float:
    """What ``event`` adds to the viewer's affinity for the item's creator (and tags), exactly as
    ``FoldPolicy.affinity_delta`` computes it for the online state."""
    if event.type == "play":
        if event.watch_ms is not None and event.watch_ms < QUICK_SKIP_MS:
            return min(policy.affinity_weights.get("skip", 0.0), 0.0)
        ratio = _watch_ratio(event.watch_ms, item.duration_s)
        if ratio is None:
            return 0.0
        return policy.play_weight * (min(ratio, 2.0) - policy.neutral_watch_ratio)
    return policy.affinity_weights.get(event.type, 0.0)


@dataclass
class ExampleSet:
    """Viewings with their point-in-time features and labels, in time order."""

    ts: npt.NDArray[np.float64]
    user_ids: list[str]
    item_ids: list[str]
    creator_ids: list[str]
    tags: list[tuple[str, ...]]
    numeric: npt.NDArray[np.float32]
    """(n, len(NUMERIC_FEATURES))"""
    labels: npt.NDArray[np.float32]
    """(n, len(RANKER_TASKS) + len(EXTRA_LABELS)): the tasks' targets, then the extra outcomes."""
    known: npt.NDArray[np.bool_]
    """Same shape as ``labels``: False where a target is unknown (a play without ``watch_ms``)."""

    def __len__(self) -> int:
        return len(self.user_ids)

    def label(self, name: str) -> npt.NDArray[np.float32]:
        return self.labels[:, LABEL_NAMES.index(name)]

    def subset(self, rows: npt.NDArray[np.int64] | npt.NDArray[np.bool_]) -> ExampleSet:
        index = np.flatnonzero(rows) if rows.dtype == np.bool_ else rows
        picked = [int(i) for i in index]
        return ExampleSet(
            ts=self.ts[index],
            user_ids=[self.user_ids[i] for i in picked],
            item_ids=[self.item_ids[i] for i in picked],
            creator_ids=[self.creator_ids[i] for i in picked],
            tags=[self.tags[i] for i in picked],
            numeric=self.numeric[index],
            labels=self.labels[index],
            known=self.known[index],
        )


LABEL_NAMES: Final = (*RANKER_TASKS, *EXTRA_LABELS)
_COLUMN: Final = {name: i for i, name in enumerate(LABEL_NAMES)}
_LABEL_OF_EVENT: Final = {
    "finish": "finish",
    "like": "like",
    "share": "share",
    "follow": "follow",
    "skip": "quick_skip",
    "not_interested": "not_interested",
}


def build_examples(
    events: Sequence[LoggedEvent],
    items: Mapping[str, ItemRecord],
    policy: FoldPolicy,
    rates: BaseRates,
    *,
    prior_plays: float,
    label_window_s: float,
) -> ExampleSet:
    """Replay ``events`` in time order; every play becomes an example (see the module docstring).

    Events of items missing from ``items`` are ignored. Ties in time keep the given order (the
    log's sequence order), so a play is always read before the engagements it caused.
    """
    order = sorted(range(len(events)), key=lambda k: events[k].ts)
    half_life = policy.affinity_half_life_s
    viewers: dict[str, _Viewer] = {}
    counts: dict[str, _ItemCounts] = {}
    open_viewing: dict[tuple[str, str], tuple[int, float]] = {}
    ts_out: list[float] = []
    users: list[str] = []
    item_ids: list[str] = []
    creators: list[str] = []
    tags_out: list[tuple[str, ...]] = []
    numeric: list[list[float]] = []
    labels: list[list[float]] = []
    known: list[list[bool]] = []
    n_tasks = len(LABEL_NAMES)
    for k in order:
        event = events[k]
        item = items.get(event.item_id)
        if item is None:
            continue
        t = event.ts
        viewer = viewers.get(event.user_id)
        if viewer is None:
            viewer = viewers[event.user_id] = _Viewer()
        item_counts = counts.get(event.item_id)
        if item_counts is None:
            item_counts = counts[event.item_id] = _ItemCounts()
        key = (event.user_id, event.item_id)
        if event.type == "play":
            # Features first, from the state strictly before this play.
            c_aff = viewer.creators.get(item.creator_id)
            tag_affs = []
            for tag in item.tags:
                entry = viewer.tags.get(tag)
                tag_affs.append(entry[0] * decay_factor(t - entry[1], half_life) if entry else 0.0)
            numeric.append(
                _numeric_row(
                    item,
                    t,
                    _item_rates(
                        item_counts.plays,
                        item_counts.finishes,
                        item_counts.likes,
                        item_counts.shares,
                        item_counts.skips,
                        item_counts.not_interested,
                        item_counts.watch_ratio_sum,
                        rates,
                        prior_plays,
                    ),
                    c_aff[0] * decay_factor(t - c_aff[1], half_life) if c_aff else 0.0,
                    tag_affs,
                    item.creator_id in viewer.follows,
                    len(viewer.creators),
                )
            )
            row = [0.0] * n_tasks
            row_known = [True] * n_tasks
            ratio = _watch_ratio(event.watch_ms, item.duration_s)
            if ratio is None:
                row_known[_COLUMN["watch_ratio"]] = False
                row_known[_COLUMN["quick_skip"]] = False
                row_known[_COLUMN["long_watch"]] = False
            else:
                row[_COLUMN["watch_ratio"]] = min(ratio, 1.0)
                row[_COLUMN["finish"]] = 1.0 if ratio >= 1.0 else 0.0
                row[_COLUMN["long_watch"]] = 1.0 if ratio >= LONG_WATCH_RATIO else 0.0
                assert event.watch_ms is not None
                row[_COLUMN["quick_skip"]] = 1.0 if event.watch_ms < QUICK_SKIP_MS else 0.0
            open_viewing[key] = (len(labels), t)
            labels.append(row)
            known.append(row_known)
            ts_out.append(t)
            users.append(event.user_id)
            item_ids.append(event.item_id)
            creators.append(item.creator_id)
            tags_out.append(item.tags[:MAX_TAGS])
        else:
            label = _LABEL_OF_EVENT.get(event.type)
            viewing = open_viewing.get(key)
            if label is not None and viewing is not None and t - viewing[1] <= label_window_s:
                index = viewing[0]
                labels[index][_COLUMN[label]] = 1.0
                known[index][_COLUMN[label]] = True
            if event.type == "follow":
                viewer.follows.add(item.creator_id)
        # Then the event moves the state, exactly as ingestion moves the online state.
        delta = affinity_delta(policy, event, item)
        if delta:
            value, at = viewer.creators.get(item.creator_id, (0.0, t))
            viewer.creators[item.creator_id] = combine_decayed(value, at, delta, t, half_life)
            if item.tags:
                share = delta / math.sqrt(len(item.tags))
                for tag in item.tags:
                    value, at = viewer.tags.get(tag, (0.0, t))
                    viewer.tags[tag] = combine_decayed(value, at, share, t, half_life)
        _count(item_counts, event, item.duration_s)
    n_features = len(NUMERIC_FEATURES)
    return ExampleSet(
        ts=np.asarray(ts_out, dtype=np.float64),
        user_ids=users,
        item_ids=item_ids,
        creator_ids=creators,
        tags=tags_out,
        numeric=np.asarray(numeric, dtype=np.float32).reshape(-1, n_features),
        labels=np.asarray(labels, dtype=np.float32).reshape(-1, n_tasks),
        known=np.asarray(known, dtype=np.bool_).reshape(-1, n_tasks),
    )


# ---- serving ------------------------------------------------------------------------------------


def serving_numeric(
    items: Sequence[ItemRecord],
    stats: Sequence[ItemStatsRecord | None],
    viewer: UserStateSnapshot,
    now: float,
    rates: BaseRates,
    prior_plays: float,
    als_scores: Sequence[float | None] | None = None,
) -> npt.NDArray[np.float32]:
    """``NUMERIC_FEATURES`` of candidates for one viewer at ``now`` (same definitions as training).

    The viewer's affinities in ``viewer`` are already decayed to its ``as_of``; item counters come
    from the region's item stats; ``als_scores`` (one per item, ``None`` when unknown) from the
    serving model's viewer vector.
    """
    scores: Sequence[float | None] = als_scores if als_scores is not None else [None] * len(items)
    creator_affinity = viewer.creator_affinity
    tag_affinity = viewer.tag_affinity
    follows = viewer.follows
    activity = len(creator_affinity)
    empty = ItemStatsRecord()
    rows = []
    for item, record, als_score in zip(items, stats, scores, strict=True):
        s = record or empty
        rows.append(
            _numeric_row(
                item,
                now,
                _item_rates(
                    s.plays,
                    s.finishes,
                    s.likes,
                    s.shares,
                    s.skips,
                    s.not_interested,
                    s.watch_ratio_sum,
                    rates,
                    prior_plays,
                ),
                creator_affinity.get(item.creator_id, 0.0),
                [tag_affinity.get(tag, 0.0) for tag in item.tags],
                item.creator_id in follows,
                activity,
                als_score,
            )
        )
    return np.asarray(rows, dtype=np.float32).reshape(-1, len(NUMERIC_FEATURES))


def set_als_scores(
    examples: ExampleSet, rows: npt.NDArray[np.int64], scores: npt.NDArray[np.float64]
) -> None:
    """Set the retrieval score of the viewings ``rows`` (``fyp.models.ranker_retrieval``)."""
    examples.numeric[rows, NUMERIC_FEATURES.index("als_score")] = scores
    examples.numeric[rows, NUMERIC_FEATURES.index("has_als_score")] = 1.0


# ---- vocabularies -------------------------------------------------------------------------------


ERASED_ID_PREFIX: Final = "\x00erased:"
"""Placeholder for the slot of an erased id: not an id any API accepts."""


class Vocabulary:
    """An explicit id -> row map: one row per id, never two ids in one row (no hashing).

    The first ``reserved`` rows are not ids: row 0 is the unknown id (for tags, row 0 pads the tag
    bag and row 1 is the unknown tag). An id not in the vocabulary maps to the unknown row.
    """

    def __init__(self, ids: Iterable[str], *, unknown_row: int = UNKNOWN_ROW, reserved: int = 1):
        self.ids: list[str] = list(dict.fromkeys(ids))
        self.unknown_row = unknown_row
        self.reserved = reserved
        self._rows = {id_: reserved + i for i, id_ in enumerate(self.ids)}

    def __len__(self) -> int:
        """Rows in the embedding table, reserved rows included."""
        return self.reserved + len(self.ids)

    def row(self, id_: str) -> int:
        return self._rows.get(id_, self.unknown_row)

    def rows(self, ids: Sequence[str]) -> npt.NDArray[np.int64]:
        get, unknown = self._rows.get, self.unknown_row
        return np.fromiter((get(i, unknown) for i in ids), dtype=np.int64, count=len(ids))

    def live(self) -> list[tuple[str, int]]:
        """(id, row) of every id still mapped (erased ids' placeholder slots left out)."""
        return list(self._rows.items())

    def to_array(self) -> npt.NDArray[np.str_]:
        return np.asarray(self.ids, dtype=np.str_)

    def forget(self, id_: str) -> int | None:
        """Unmap ``id_`` (it then reads the unknown row); returns the row it had, if any.

        Its slot keeps a placeholder so the other ids keep their rows, and so a later save
        writes no trace of the id.
        """
        row = self._rows.pop(id_, None)
        if row is not None:
            self.ids[row - self.reserved] = f"{ERASED_ID_PREFIX}{row}"
        return row

    @classmethod
    def from_array(cls, array: npt.NDArray[Any], *, unknown_row: int, reserved: int) -> Vocabulary:
        return cls((str(x) for x in array), unknown_row=unknown_row, reserved=reserved)


@dataclass(frozen=True)
class Vocabularies:
    users: Vocabulary
    items: Vocabulary
    creators: Vocabulary
    tags: Vocabulary

    @classmethod
    def build(cls, examples: ExampleSet) -> Vocabularies:
        """One row per id seen in ``examples``, in first-seen order."""
        return cls(
            users=Vocabulary(examples.user_ids),
            items=Vocabulary(examples.item_ids),
            creators=Vocabulary(examples.creator_ids),
            tags=Vocabulary(
                (tag for tags in examples.tags for tag in tags),
                unknown_row=TAG_UNKNOWN_ROW,
                reserved=2,
            ),
        )

    def to_arrays(self, prefix: str) -> dict[str, npt.NDArray[Any]]:
        return {
            f"{prefix}vocab_users": self.users.to_array(),
            f"{prefix}vocab_items": self.items.to_array(),
            f"{prefix}vocab_creators": self.creators.to_array(),
            f"{prefix}vocab_tags": self.tags.to_array(),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[Any]], prefix: str) -> Vocabularies:
        return cls(
            users=Vocabulary.from_array(arrays[f"{prefix}vocab_users"], unknown_row=0, reserved=1),
            items=Vocabulary.from_array(arrays[f"{prefix}vocab_items"], unknown_row=0, reserved=1),
            creators=Vocabulary.from_array(
                arrays[f"{prefix}vocab_creators"], unknown_row=0, reserved=1
            ),
            tags=Vocabulary.from_array(
                arrays[f"{prefix}vocab_tags"], unknown_row=TAG_UNKNOWN_ROW, reserved=2
            ),
        )


@dataclass(frozen=True)
class EncodedBatch:
    """Model inputs as arrays: rows of each id table, the padded tag bag, numeric features."""

    users: npt.NDArray[np.int64]
    items: npt.NDArray[np.int64]
    creators: npt.NDArray[np.int64]
    tags: npt.NDArray[np.int64]
    """(n, MAX_TAGS), padded with ``TAG_PAD_ROW``."""
    numeric: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.users)


def encode_tags(vocab: Vocabulary, tags: Sequence[Sequence[str]]) -> npt.NDArray[np.int64]:
    out = np.full((len(tags), MAX_TAGS), TAG_PAD_ROW, dtype=np.int64)
    row = vocab.row
    for i, item_tags in enumerate(tags):
        for j, tag in enumerate(item_tags[:MAX_TAGS]):
            out[i, j] = row(tag)
    return out


def encode(vocabs: Vocabularies, examples: ExampleSet) -> EncodedBatch:
    return EncodedBatch(
        users=vocabs.users.rows(examples.user_ids),
        items=vocabs.items.rows(examples.item_ids),
        creators=vocabs.creators.rows(examples.creator_ids),
        tags=encode_tags(vocabs.tags, examples.tags),
        numeric=examples.numeric,
    )
