"""Typed settings for the whole engine.

One :class:`FypConfig` describes a deployment: where data lives, which regions exist, and every
knob of the feed algorithm. It loads from ``<data_dir>/fyp.toml`` when that file exists (any
section may be omitted) and from a few ``FYP_*`` environment variables. Unknown keys are errors,
so a typo in a config file cannot silently fall back to a default.

The *algorithm* sections (sources, scoring, selectors, affinity, training, ranker) are hashed; the
hash travels with every feed response, logged impression and model snapshot, so any ranking can be
traced to the exact settings that produced it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from fyp.errors import ConfigError
from fyp.types import RegionName, Timestamp

DEFAULT_DATA_DIR: Final = Path("fyp-data")
CONFIG_FILE_NAME: Final = "fyp.toml"
BACKGROUND_TRAINING_ENV: Final = "FYP_BACKGROUND_TRAINING"
"""Set to ``0`` to keep server workers started by ``fyp serve --workers`` from retraining."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


# ---- storage and regions ------------------------------------------------------------------------


class RegionConfig(_Section):
    name: RegionName
    """Region name; users choose their home region by this name."""
    description: str = ""
    """Shown on /v1/regions and in the transparency report."""
    storage_url: str | None = None
    """Database URL for this region's personal data; default ``sqlite:///<data_dir>/region-<name>.db``."""
    audit_url: str | None = None
    """Database URL of the region's audit log; default ``storage_url`` when that is set, else
    ``sqlite:///<data_dir>/region-<name>-audit.db`` (a file of its own, so appends never wait
    behind data writes)."""
    bus_url: str | None = None
    """This region's bus for learning signal (impressions, events, joined examples: personal
    data, so it belongs in the region); default ``online.bus_url``."""
    policy_file: Path | None = None
    """This region's own access policy (TOML, like the shared one; a relative path is read from
    the data directory). Unset: the deployment's ``policy_file``, else the built-in policy. A
    malformed region policy stops only this region (quarantined); the others carry on."""


def _default_regions() -> list[RegionConfig]:
    return [
        RegionConfig(name="us", description="United States"),
        RegionConfig(name="eu", description="European Union"),
    ]


# ---- candidate sources --------------------------------------------------------------------------


class SourceConfig(_Section):
    enabled: bool = True
    """Whether this source contributes candidates."""
    k: int = Field(default=100, ge=1, le=5000)
    """How many candidates the source returns at most."""
    fail_open: bool = True
    """On an error the feed continues without this source (recorded in the trace)."""
    budget_ms: float = Field(default=50.0, gt=0)
    """Latency budget; exceeding it is recorded in the trace."""
    prior: float = Field(default=0.5, ge=0, le=1)
    """Worth of this source's best candidate relative to other sources' (retrieval feature)."""


class TrendingConfig(SourceConfig):
    prior: float = Field(default=0.45, ge=0, le=1)
    k: int = Field(default=100, ge=1, le=5000)
    half_life_hours: float = Field(default=24.0, gt=0)
    """Engagement loses half its weight in trending after this many hours."""
    engagement_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "play": 0.3,
            "finish": 1.0,
            "like": 2.0,
            "share": 3.0,
            "comment": 1.5,
            "follow": 1.5,
        }
    )
    """Trending weight per event type (a play counts by its watch ratio, at most 1)."""


class FreshConfig(SourceConfig):
    prior: float = Field(default=0.3, ge=0, le=1)
    k: int = Field(default=60, ge=1, le=5000)
    max_age_hours: float = Field(default=72.0, gt=0)
    """An item is fresh while younger than this."""


class CoEngagementConfig(SourceConfig):
    prior: float = Field(default=0.9, ge=0, le=1)
    k: int = Field(default=120, ge=1, le=5000)
    anchors: int = Field(default=10, ge=1, le=100)
    """How many of the viewer's most recent positive items seed the lookup."""
    per_anchor: int = Field(default=40, ge=1, le=500)
    """Neighbours taken per anchor item."""


class FollowingConfig(SourceConfig):
    prior: float = Field(default=0.8, ge=0, le=1)
    k: int = Field(default=60, ge=1, le=5000)
    per_creator: int = Field(default=10, ge=1, le=200)
    """Newest items taken per followed creator."""


class InterestTagsConfig(SourceConfig):
    prior: float = Field(default=0.7, ge=0, le=1)
    k: int = Field(default=100, ge=1, le=5000)
    top_tags: int = Field(default=5, ge=1, le=50)
    """The viewer's strongest tags (by online affinity) used as queries."""
    per_tag: int = Field(default=30, ge=1, le=1000)
    """Newest items taken per tag."""


class EmbeddingConfig(SourceConfig):
    prior: float = Field(default=1.0, ge=0, le=1)
    k: int = Field(default=150, ge=1, le=5000)
    history: int = Field(default=200, ge=1, le=10_000)
    """Most recent events used to fold the viewer into the embedding space at request time."""


class ContentTowerConfig(SourceConfig):
    prior: float = Field(default=0.9, ge=0, le=1)
    k: int = Field(default=100, ge=1, le=5000)
    history: int = Field(default=10, ge=1, le=200)
    """The viewer's most recent positive items pooled into their vector at request time."""
    dim: int = Field(default=48, ge=4, le=512)
    """Width of the towers' vectors."""
    epochs: int = Field(default=6, ge=1, le=100)
    id_dropout: float = Field(default=0.8, ge=0, lt=1)
    """Share of items whose ID embedding is switched off per training batch: the content path
    must then place them alone, which is what a new item's vector relies on."""
    max_train_seconds: float = Field(default=90.0, gt=0)
    """Training stops after the epoch in which this much time has passed."""
    min_positives: int = Field(default=1_000, ge=2)
    """A region with fewer positive events trains no towers (the other sources serve)."""
    max_examples: int = Field(default=300_000, ge=2)
    """At most this many of the region's most recent positive events train the towers."""
    max_text_items: int = Field(default=5_000, ge=0)
    """Items whose text is embedded per training run (most engaged first; new items extra).
    Text embedding is the slow part (a few hundred items a second on one core); items beyond
    the bound are placed by their ID embedding alone until a later run reaches them."""
    new_item_hours: float = Field(default=72.0, gt=0)
    """Items this young get a vector from their content alone, before anyone has watched them."""
    max_new_items: int = Field(default=2_000, ge=0)
    """Most new (content-only) items added per training run, or looked at per catalog sync."""
    new_items_per_sync: int = Field(default=64, ge=1)
    """Most new items a serving process embeds and places per sync round (every few seconds)."""


class MoreFromCatalogConfig(SourceConfig):
    """The backfill (``fyp.sources.more_from_catalog``): used only when fewer candidates than
    the page survive the filters, in the personalized and the non-personalized feed alike."""

    prior: float = Field(default=0.1, ge=0, le=1)
    """Low: the backfill vouches for nothing but the item being eligible."""
    k: int = Field(default=100, ge=0, le=5000)
    """Most candidates the backfill adds beyond those that fill the page: it aims at the page
    plus as many again, for the scorers and selectors to choose from."""
    popular_depth: int = Field(default=300, ge=0, le=100_000)
    """How far down the region's popularity list (the trending score) the backfill looks
    first, before it walks the catalog newest first."""
    max_examined: int = Field(default=10_000, ge=1, le=1_000_000)
    """Most popularity-list entries plus catalog rows examined per request: the bound on the
    backfill's work. Only a viewer who has seen or filtered out every one of them can get a
    short page (the trace then says the bound was reached)."""
    budget_ms: float = Field(default=100.0, gt=0)


class SourcesConfig(_Section):
    trending: TrendingConfig = TrendingConfig()
    """Time-decayed engagement in the viewer's region."""
    fresh: FreshConfig = FreshConfig()
    """Newest items in the catalog."""
    co_engagement: CoEngagementConfig = CoEngagementConfig()
    """Items engaged with by the same viewers as the viewer's recent positive items."""
    following: FollowingConfig = FollowingConfig()
    """New items from creators the viewer follows."""
    interest_tags: InterestTagsConfig = InterestTagsConfig()
    """New items carrying the viewer's strongest tags."""
    embedding: EmbeddingConfig = EmbeddingConfig()
    """Nearest items to the viewer in the learned (ALS) embedding space, through a faiss index."""
    content_tower: ContentTowerConfig = ContentTowerConfig()
    """Nearest items to the viewer in a two-tower model's space whose item tower reads each
    item's caption and tags (MiniLM sentence embeddings): new uploads are found from their
    content before anyone has watched them."""
    more_from_catalog: MoreFromCatalogConfig = MoreFromCatalogConfig()
    """Backfill: eligible items the other sources missed (popular in the region, then newest),
    only when the filtered candidates cannot fill the page."""

    def priors(self) -> dict[str, float]:
        return {name: getattr(self, name).prior for name in type(self).model_fields}


# ---- online affinity ----------------------------------------------------------------------------


class AffinityConfig(_Section):
    half_life_hours: float = Field(default=72.0, gt=0)
    """A viewer's creator and tag affinities halve after this many hours without reinforcement."""
    weights: dict[str, float] = Field(
        default_factory=lambda: {
            "finish": 1.0,
            "like": 2.0,
            "share": 2.5,
            "comment": 1.5,
            "follow": 2.0,
            "skip": -0.7,
            "not_interested": -6.0,
            "report": -8.0,
        }
    )
    """Affinity change per event type for the item's creator and (split across) its tags."""
    play_weight: float = 1.0
    """A play adds ``play_weight * (watch_ratio - neutral_watch_ratio)``; short plays subtract."""
    neutral_watch_ratio: float = Field(default=0.3, ge=0, le=1)
    """Watch ratio (watched / duration) at which a play neither raises nor lowers affinity."""
    creator_mute_hours: float = Field(default=168.0, ge=0)
    """After not-interested or report, the item's creator is left out of the feed this long."""
    recent_positives: int = Field(default=20, ge=1, le=200)
    """How many recent positive items are kept as short-term interest."""


# ---- scoring ------------------------------------------------------------------------------------


class ScoringConfig(_Section):
    """The first value model: a weighted sum of per-candidate features, each about [-1, 1]."""

    weights: dict[str, float] = Field(
        default_factory=lambda: {
            "retrieval": 1.0,
            "creator_affinity": 1.2,
            "tag_affinity": 1.5,
            "engagement": 0.8,
            "freshness": 0.3,
            "popularity": 0.4,
            "ranker": 1.5,
        }
    )
    """Weight of each feature in the final score; the transparency report publishes them."""
    prior_views: float = Field(default=20.0, ge=0)
    """Pseudo-views that pull a new item's engagement rates toward the region's average."""
    freshness_half_life_hours: float = Field(default=48.0, gt=0)
    """The freshness feature halves for every this many hours of item age."""
    affinity_scale: float = Field(default=3.0, gt=0)
    """Affinity is squashed by ``tanh(affinity / affinity_scale)`` into (-1, 1)."""

    @model_validator(mode="after")
    def _known_features(self) -> ScoringConfig:
        unknown = set(self.weights) - set(SCORING_FEATURES)
        if unknown:
            raise ValueError(
                f"unknown scoring features {sorted(unknown)}; known: {SCORING_FEATURES}"
            )
        return self


SCORING_FEATURES: Final = (
    "retrieval",
    "creator_affinity",
    "tag_affinity",
    "engagement",
    "freshness",
    "popularity",
    "ranker",
)


# ---- selectors ----------------------------------------------------------------------------------


class ExplorationStage(_Section):
    views: int = Field(ge=1)
    """The stage's view budget: the item is judged when it has this many views in the region."""
    audience: float = Field(gt=0, le=1)
    """Share of the region's viewers (a stable hash of item and viewer) it is explored with."""


class SelectorsConfig(_Section):
    creator_gap: int = Field(default=1, ge=0, le=20)
    """At least this many other items between two items of one creator (1 = never back to back)."""
    tag_repeat_penalty: float = Field(default=0.25, ge=0, le=10)
    """Score subtracted per earlier item on the page that shares a tag (diversity)."""
    exploration_slots: int = Field(default=1, ge=0, le=10)
    """Slots per page reserved for a fresh, under-exposed item."""
    exploration_max_views: int = Field(default=200, ge=0)
    """An item qualifies for exploration while it has fewer views than this in the region."""
    exploration_position: int = Field(default=3, ge=0)
    """Preferred page position (0-based) of the first exploration slot."""
    exploration_pools: bool = True
    """Explore new items in stages with growing audiences, promoted or retired by their numbers
    (``fyp.selectors.exploration``). Off: any fresh item under ``exploration_max_views`` views
    qualifies for every viewer, best-scored first."""
    exploration_stages: list[ExplorationStage] = Field(
        default_factory=lambda: [ExplorationStage(views=50, audience=0.2)], max_length=10
    )
    """Stages before the last one (which runs to ``exploration_max_views`` with everyone); a
    stage whose budget is not below ``exploration_max_views`` is never reached."""
    exploration_promote_confidence: float = Field(default=0.8, gt=0, lt=1)
    """Promote to the next stage when P(engagement rate > region's rate) reaches this."""
    exploration_retire_confidence: float = Field(default=0.1, gt=0, lt=1)
    """Retire when P(engagement rate > region's rate) falls below this."""
    exploration_min_views_to_judge: int = Field(default=20, ge=1)
    """No item is retired on fewer views than this."""
    exploration_shortlist: int = Field(default=5, ge=1, le=100)
    """Per slot, the best-scored qualifying items among which the posterior draws decide."""

    @model_validator(mode="after")
    def _stages_grow(self) -> SelectorsConfig:
        budgets = [s.views for s in self.exploration_stages]
        if budgets != sorted(set(budgets)):
            raise ValueError("exploration_stages need strictly increasing view budgets")
        if self.exploration_retire_confidence >= self.exploration_promote_confidence:
            raise ValueError("exploration_retire_confidence must be below the promote confidence")
        return self


# ---- training -----------------------------------------------------------------------------------


class TrainingConfig(_Section):
    factors: int = Field(default=64, ge=2, le=512)
    """Embedding size of the implicit-feedback matrix factorization (ALS)."""
    iterations: int = Field(default=15, ge=1, le=200)
    regularization: float = Field(default=0.05, ge=0)
    alpha: float = Field(default=4.0, gt=0)
    """Confidence = ``alpha * preference weight`` (the classic iALS confidence scaling)."""
    event_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "finish": 1.0,
            "like": 2.0,
            "share": 3.0,
            "comment": 1.5,
            "follow": 2.0,
            "skip": -0.5,
            "not_interested": -4.0,
            "report": -6.0,
        }
    )
    """Preference weight per event type, summed per (viewer, item); negative totals are dislikes."""
    play_weight: float = 1.0
    """A play contributes ``play_weight * min(watch_ratio, 2)``."""
    co_engagement_neighbors: int = Field(default=50, ge=1, le=1000)
    """Neighbours kept per item in the co-engagement table."""
    max_events: int = Field(default=5_000_000, ge=1)
    """At most this many most recent events of a region are used per training run."""
    min_events: int = Field(default=50, ge=1)
    """A region with fewer events is not trained (its feed uses the other sources)."""
    retrain_interval_s: float = Field(default=900.0, gt=0)
    """A running server retrains a region with new events at least this often."""
    retrain_min_new_events: int = Field(default=5_000, ge=1)
    """...or as soon as this many new events arrived since the last training."""
    check_interval_s: float = Field(default=30.0, gt=0)
    """How often the background retrainer looks for work."""
    seed: int = 0


RANKER_TASKS: Final = ("watch_ratio", "finish", "quick_skip", "like", "share", "follow")
"""The heads of the multi-task ranker; ``watch_ratio`` is watched / duration, clipped to [0, 1]."""


class RankerConfig(_Section):
    """The multi-task watch-time ranker (MMoE) and the value model that combines its heads."""

    enabled: bool = True
    """Train the ranker with the region's models and use it in the feed's scoring stage."""
    objective_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "watch_ratio": 1.0,
            "finish": 0.5,
            "quick_skip": -1.0,
            "like": 1.0,
            "share": 1.5,
            "follow": 1.0,
        }
    )
    """The ranker's value model: the ``ranker`` feature is the sum of weight * predicted head
    (published). A negative weight (quick skip) lowers what the viewer would swipe away."""
    watch_seconds_weight: float = Field(default=0.0, ge=0)
    """Weight of the predicted seconds watched (the ``watch_ratio`` head times the video's
    length, in minutes) in the ranker's value. The ratio heads alone favour short videos, which
    are finished more easily, over a longer one that would hold the viewer longer; 0 leaves the
    term out (published)."""
    embedding_dim: int = Field(default=16, ge=2, le=256)
    """Width of the user, item, creator and tag embeddings."""
    experts: int = Field(default=4, ge=1, le=32)
    """Shared experts of the MMoE; each task mixes them through its own gate."""
    expert_hidden: int = Field(default=64, ge=4, le=1024)
    """Width of each expert's hidden layer (its output is half as wide)."""
    epochs: int = Field(default=6, ge=1, le=200)
    """Passes over the training viewings at most; the epoch with the best validation loss wins."""
    max_train_seconds: float = Field(default=60.0, gt=0)
    """Training stops after the epoch that crosses this budget."""
    batch_size: int = Field(default=512, ge=8, le=65_536)
    learning_rate: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-6, ge=0)
    id_dropout: float = Field(default=0.1, ge=0, lt=1)
    """Share of training ids replaced by the unknown row, so that row learns what a new id is."""
    min_examples: int = Field(default=200, ge=1)
    """A region with fewer viewings is served without a ranker (the feature contributes 0)."""
    max_examples: int = Field(default=1_000_000, ge=1)
    """At most this many most recent viewings train the ranker."""
    recency_half_life_days: float | None = Field(default=None, gt=0)
    """Weight a training viewing by half for every this many days it is older than the newest
    one, so the ranker fits the traffic it serves now more than an old log served by another
    feed (an imported history); ``None`` weighs every viewing the same."""
    label_window_s: float = Field(default=1800.0, gt=0)
    """Engagement this long after a play still counts as that viewing's label."""
    prior_plays: float = Field(default=20.0, ge=0)
    """Pseudo-plays pulling an item's engagement-rate features toward the training log's average."""
    train_threads: int = Field(default=1, ge=1, le=64)
    """Torch threads while training (serving always uses one)."""
    seed: int = 0

    @model_validator(mode="after")
    def _known_tasks(self) -> RankerConfig:
        unknown = set(self.objective_weights) - set(RANKER_TASKS)
        if unknown:
            raise ValueError(f"unknown ranker tasks {sorted(unknown)}; known: {RANKER_TASKS}")
        return self


class LearnerArm(_Section):
    """A second learner trained on the same joined examples as the main one (its own consumer
    group on the bus): a shadow when ``serve_share`` is 0, an experiment arm served to that share
    of viewers (chosen by a stable hash) otherwise."""

    name: RegionName
    """Arm name (letters, digits, ``-``, ``_``); ``main`` is the default learner's arm."""
    learn: bool = True
    """False: no online updates at all, the arm serves the batch model only (batch-only)."""
    dense_lr: float | None = Field(default=None, gt=0)
    sparse_lr: float | None = Field(default=None, gt=0)
    min_count: int | None = Field(default=None, ge=1)
    serve_share: float = Field(default=0.0, ge=0.0, lt=1.0)


class OnlineConfig(_Section):
    """Learning while serving: feed impressions joined with the engagements that follow, and the
    ranker trained on them in mini-batches and re-served every few seconds (``fyp.online``)."""

    enabled: bool = True
    """Log impressions, join them and train the ranker online in a server that trains."""
    bus_url: str = "memory://"
    """Where learning signal travels: ``memory://`` (one process joins and trains) or
    ``redis://...`` (every server worker relays its impressions and events; the process that
    trains joins them and learns, and the other workers load what it publishes)."""
    bus_stream: str = Field(default="fyp", min_length=1)
    """Prefix of the Redis stream names: ``<prefix>:raw:<region>`` carries the impressions and
    events every server process relays, ``<prefix>:examples:<region>`` the joined examples."""
    bus_max_len: int = Field(default=50_000, ge=1_000)
    """Examples kept on the bus at most (oldest trimmed first; ~1 KB each in memory)."""
    window_s: float = Field(default=600.0, gt=0)
    """How long after an impression its engagements still count."""
    close_on_next_play: bool = True
    """A viewer's play of another item closes their earlier played impressions at once (they
    moved on), so the example trains within seconds instead of after ``window_s``. A skip then
    does not close a viewing by itself (a not-interested sent just after it still counts); only
    not-interested and report do."""
    lateness_s: float = Field(default=30.0, ge=0)
    """Events reaching the server this long after their window closed are counted late."""
    batch_size: int = Field(default=256, ge=1, le=65_536)
    behind_batch_size: int = Field(default=1024, ge=1, le=65_536)
    """Examples per step while the trainer is behind (a round took a full drain of the bus):
    four times fewer steps for a backlog, each cheaper per example, so it catches up sooner
    (docs/BENCHMARKS.md, *Online training*); at or below ``batch_size``, steps never grow."""
    publish_interval_s: float = Field(default=2.0, gt=0)
    """The learner is frozen and served at most this often (when it learned something)."""
    checkpoint_interval_s: float = Field(default=60.0, gt=0)
    max_busy_share: float = Field(default=0.5, gt=0, le=1)
    """At most this share of the wall clock goes to learning a backlog, so a burst of examples
    does not starve the feeds served by the same process; 1 learns flat out."""
    dense_lr: float = Field(default=1e-3, gt=0)
    sparse_lr: float = Field(default=0.05, gt=0)
    min_count: int = Field(default=2, ge=1)
    """Examples an id needs before it gets its own embedding row."""
    ttl_hours: float | None = Field(default=720.0, gt=0)
    """Embedding rows unused this long are evicted; ``None`` keeps them."""
    arms: list[LearnerArm] = Field(default_factory=list)
    """Learners compared with the main one on identical traffic (shadow training, A/B arms)."""
    experiment: str = Field(default="online-learners", min_length=1)
    """Name of the split of viewers into arms (a new name reshuffles every viewer)."""

    @model_validator(mode="after")
    def _arms_are_distinct(self) -> OnlineConfig:
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names) or "main" in names:
            raise ValueError("online arms need distinct names other than 'main'")
        if sum(arm.serve_share for arm in self.arms) >= 1.0:
            raise ValueError("online arms' serve_share must leave traffic for the main learner")
        return self


class IngestConfig(_Section):
    """The time window every stored time must fall in: an event's ``ts`` and an item's
    ``created_at``, however they arrive (``POST /v1/events``, ``PUT /v1/items``, ``fyp import``).

    Trending, freshness and affinity all decay from "now", so a time far in the future keeps
    its full weight for as long as it stays ahead: one like dated 9999 would top trending for
    everyone and pin the viewer's affinity. Times are compared with the server's clock (the
    engine's ``clock``); a simulation whose history runs ahead of the wall clock builds its
    engine with the simulation's clock, or raises ``max_future_skew_s`` for the import."""

    max_future_skew_s: float = Field(default=300.0, ge=0, allow_inf_nan=False)
    """How far ahead of the server's clock a time may be (a client whose clock runs fast)."""
    min_event_time: Timestamp = datetime(1990, 1, 1, tzinfo=UTC)
    """The earliest time accepted. Imported histories reach back to the 1990s (MovieLens 100k
    is 1997-98); an earlier time is nearly always a zero or a wrong unit."""

    def refusal(self, field: str, when: datetime, now: float) -> str | None:
        """Why the time ``when`` (of ``field``) is refused at server time ``now``, or ``None``
        when it is inside the window."""
        if when < self.min_event_time:
            return (
                f"{field}: {when.isoformat()} is before {self.min_event_time.isoformat()}, the "
                "earliest time accepted (ingest.min_event_time)"
            )
        ahead = when.timestamp() - now
        if ahead > self.max_future_skew_s:
            return (
                f"{field}: {when.isoformat()} is {ahead:,.0f} s ahead of the server clock "
                f"({datetime.fromtimestamp(now, UTC).isoformat()}); at most "
                f"{self.max_future_skew_s:g} s is allowed (ingest.max_future_skew_s)"
            )
        return None


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_concurrent_feeds: int = Field(default=2, ge=1, le=64)
    """Feeds computed at once per server process; more requests wait their turn. Feed ranking is
    CPU-bound Python, so more threads at once only interleave and slow every request down."""
    api_key: SecretStr | None = None
    """When set, every /v1 call needs ``Authorization: Bearer <key>`` (env ``FYP_API_KEY``)."""
    max_in_flight: int = Field(default=64, ge=1, le=10_000)
    """HTTP requests inside a server process at once (being served or waiting for a thread or a
    feed slot); the next one is answered 503 ``overloaded`` with ``Retry-After`` at once, before
    its body is read. This bounds what queued requests hold in memory."""


class FypConfig(_Section):
    data_dir: Path = DEFAULT_DATA_DIR
    """Directory holding the embedded databases and model snapshots."""
    regions: list[RegionConfig] = Field(default_factory=_default_regions, min_length=1)
    catalog_url: str | None = None
    """Database URL of the global item catalog; default ``sqlite:///<data_dir>/catalog.db``."""
    sources: SourcesConfig = SourcesConfig()
    affinity: AffinityConfig = AffinityConfig()
    scoring: ScoringConfig = ScoringConfig()
    selectors: SelectorsConfig = SelectorsConfig()
    training: TrainingConfig = TrainingConfig()
    ranker: RankerConfig = RankerConfig()
    server: ServerConfig = ServerConfig()
    ingest: IngestConfig = IngestConfig()
    online: OnlineConfig = OnlineConfig()
    sync_interval_s: float = Field(default=2.0, gt=0)
    """How often a serving process picks up catalog changes and models made by other processes."""
    policy_file: Path | None = None
    """The access policy (TOML, see ``fyp/governance/default_policy.toml``); a relative path is
    read from the data directory. Default: the built-in policy. Env ``FYP_POLICY_FILE``."""
    audit_sign_interval_s: float = Field(default=10.0, gt=0)
    """How often a serving process signs each region's audit tree head (when the log grew)."""
    audit_full_check: bool = True
    """Check every region's audit log in full (every entry and tree node) in the background
    after a server starts, quarantining a region that fails; the O(log n) startup check runs
    regardless. See ``fyp.governance.audit_watch``."""
    audit_witness_file: Path | None = None
    """A witness's HEADS file (``fyp audit witness``), kept where this deployment can read it
    but not write it: at start each region's log must still hold the latest head kept there
    for it, and the full check after start checks it against every one. A relative path is
    read from the data directory; a file not there yet means no heads yet."""
    serving_region: str | None = None
    """The region this deployment runs in. Unset (the embedded default), one process acts for
    every region as that region's own service. Set, the process is that region's service only:
    it trains and serves that region's models, and any request about a user who lives elsewhere
    is a cross-region access, an export, refused by the policy unless an exception allows it.
    Env ``FYP_SERVING_REGION``."""

    @model_validator(mode="after")
    def _unique_regions(self) -> FypConfig:
        names = [r.name for r in self.regions]
        if len(set(names)) != len(names):
            raise ValueError(f"region names must be unique, got {names}")
        if self.serving_region is not None and self.serving_region not in names:
            raise ValueError(f"serving_region {self.serving_region!r} is not one of {names}")
        return self

    @property
    def served_regions(self) -> list[str]:
        """The regions whose models this process trains, loads and serves."""
        return [self.serving_region] if self.serving_region else self.region_names

    @property
    def region_names(self) -> list[str]:
        return [r.name for r in self.regions]

    def region(self, name: str) -> RegionConfig:
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(name)

    def region_url(self, name: str) -> str:
        url = self.region(name).storage_url
        return url or f"sqlite:///{self.data_dir / f'region-{name}.db'}"

    def audit_url(self, name: str) -> str:
        region = self.region(name)
        if region.audit_url:
            return region.audit_url
        if region.storage_url:
            return region.storage_url
        return f"sqlite:///{self.data_dir / f'region-{name}-audit.db'}"

    def resolved_catalog_url(self) -> str:
        return self.catalog_url or f"sqlite:///{self.data_dir / 'catalog.db'}"

    def resolved_policy_file(self, region: str | None = None) -> Path | None:
        """The shared policy file, or with ``region`` that region's own (None: not set)."""
        path = self.policy_file if region is None else self.region(region).policy_file
        if path is None:
            return None
        return path if path.is_absolute() else self.data_dir / path

    def resolved_audit_witness_file(self) -> Path | None:
        path = self.audit_witness_file
        if path is None:
            return None
        return path if path.is_absolute() else self.data_dir / path

    def audit_key_path(self, region: str) -> Path:
        """The region's Ed25519 key for signing audit tree heads (created on first use)."""
        return self.data_dir / "keys" / f"audit-{region}.ed25519"

    def kek_path(self, region: str) -> Path:
        """The region's keyring of key-encryption keys (created on first use, mode 0600)."""
        return self.data_dir / "keys" / f"kek-{region}.json"

    def bus_url(self, region: str) -> str:
        """The region's learning-signal bus: its own ``bus_url``, else ``online.bus_url``."""
        return self.region(region).bus_url or self.online.bus_url

    def models_dir(self, region: str) -> Path:
        return self.data_dir / "models" / region

    def algorithm(self) -> dict[str, Any]:
        """The settings that decide what a viewer is shown, as plain data."""
        return self.model_dump(
            mode="json",
            include={"sources", "affinity", "scoring", "selectors", "training", "ranker"},
        )

    @functools.cached_property
    def algorithm_hash(self) -> str:
        canonical = json.dumps(self.algorithm(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def load_config(data_dir: Path | str | None = None, **overrides: Any) -> FypConfig:
    """Build the configuration: ``<data_dir>/fyp.toml`` if present, then env, then ``overrides``.

    ``data_dir`` defaults to ``$FYP_DATA_DIR`` or ``./fyp-data``. ``FYP_API_KEY`` sets the API key,
    ``FYP_POLICY_FILE`` the access policy, ``FYP_SERVING_REGION`` the region a deployment runs in.
    """
    directory = Path(data_dir or os.environ.get("FYP_DATA_DIR") or DEFAULT_DATA_DIR)
    raw: dict[str, Any] = {}
    config_file = directory / CONFIG_FILE_NAME
    if config_file.exists():
        try:
            raw = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file} is not valid TOML: {exc}") from exc
    raw["data_dir"] = directory
    policy_file = os.environ.get("FYP_POLICY_FILE")
    if policy_file:
        raw["policy_file"] = policy_file
    serving_region = os.environ.get("FYP_SERVING_REGION")
    if serving_region:
        raw["serving_region"] = serving_region
    api_key = os.environ.get("FYP_API_KEY")
    if api_key:
        raw.setdefault("server", {})["api_key"] = api_key
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}  # a section given in both: the override's keys win
        else:
            raw[key] = value
    try:
        return FypConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration ({config_file}): {exc}") from exc
