"""Progressive (train-then-test) AUC of the online ranker against the batch ranker and a hashed-
embedding online variant, in one run, on real logs with timestamps.

    .venv/bin/python bench/progressive_auc.py [--datasets movielens,grocery] [--no-docs]

Protocol, per dataset:

1. **Events.** The interactions, sorted by time, become the event log a ranker understands. No
   public dataset records watch time, so the mapping is a stated convention:

   * MovieLens latest-small: every rating is a ``play`` of a nominal 60 s item with
     ``watch_ms = rating / 5 * 60 s``; a rating >= 4 also emits ``finish``, a rating >= 4.5 also
     ``like`` (same timestamp, after the play). So the ``finish`` label is rating >= 4, ``like``
     is rating >= 4.5, ``long_watch`` (watch ratio >= 0.5) is rating >= 2.5. Creator = the
     movie's first listed genre (MovieLens has no creator; a per-movie creator would only
     duplicate the item id); tags = the genres (not the users' free-text tags, which are often
     written after the ratings they would describe). ``created_at`` = 1 January of the release
     year in the title, or a day before the movie's first rating if that is earlier.
   * Grocery (ReChorus' Amazon Grocery_and_Gourmet_Food, the ``--grocery-last`` most recent
     purchases): every purchase is a ``play`` watched to the end plus ``finish`` and ``like``;
     next to it, one **sampled negative**: an item drawn from the purchases logged before it
     (popularity-proportional, point in time, never one the buyer already bought), logged at the
     same time as a 1 s ``play`` (a quick skip). So ``like`` = ``finish`` = ``long_watch`` =
     bought versus a popularity-sampled impression. Creator and tag = the item's category.
     ``created_at`` = a day before the first purchase in the window, for every item: an item's
     own first purchase would tell the model that this example is a purchase.

   ``fyp.models.ranker_data.build_examples`` turns each ``play`` into one example with point-in-
   time features (labels come from the later events). The base engagement rates that smooth the
   item-rate features come from the warm-up events only; the learned source's score
   (``als_score``) is left unset for every example (no ALS is fitted here).
2. **Warm-up.** The first 30 % of the examples (by time) train the batch ranker
   (``train_ranker``, default ``RankerConfig`` dimensions, at most ``--epochs`` passes; the epoch
   with the best loss on the warm-up's last tenth is kept).
3. **Stream.** The other 70 % arrive in consecutive chunks of ``--chunk`` examples. Each chunk is
   scored by every variant first, then the learning variants learn it:

   * *batch, frozen*: the warm-up ranker, never updated;
   * *batch, retrained*: retrained from scratch on every example seen so far every
     ``--retrain-every`` chunks (a periodic, "daily" retrain; same settings as the warm-up);
   * *online, collisionless*: ``OnlineRanker(base)`` with the default ``LearnerConfig``
     (collisionless tables, ``min_count`` 2, 30-day TTL), ``partial_fit`` on mini-batches of
     ``--batch`` examples; its clock is the stream's event time and expired rows are evicted
     after every chunk (the production trainer evicts at each publish);
   * *online, hashed*: the same learner with ``table_kind="hashed"``: hashed viewer and item
     tables of ``R`` rows each and creator and tag tables of 64 rows (those fields have tens of
     ids), ``R`` chosen so the four take the memory the collisionless tables held at the end of
     the stream (row arrays with optimizer state and doubling slack; the id maps not counted);
   * *batch retrained + online in between*: each retrained batch model continued by a fresh
     ``OnlineRanker`` until the next retrain, as the production trainer rebases on a new batch
     model (the retrains are shared with *batch, retrained*).

   Scores are the probabilities a variant gave a chunk *before* learning it, so every example is
   scored by a model that never trained on it. The variants run one after the other (they are
   independent), each on the same chunks in the same order.
4. **What else was tried** (online only, same protocol): a smaller chunk (fresher scores), the
   learner's own train-then-test predictions per mini-batch (``FitResult.predictions``), no
   admission filter, no TTL, larger sparse or dense learning rates, id rows all but frozen (only
   the dense part learns), hashed viewer and item tables with four times the rows. Each is
   compared, paired, with the default online learner.
5. **Metrics.** AUC of the ``like`` and ``finish`` heads against their labels, and of the
   ``watch_ratio`` head against ``long_watch``, pooled over the whole stream; 95 % confidence
   intervals by a block bootstrap over chunks (1,000 resamples of the ``--chunk`` blocks, the
   same resamples for every variant, so each difference to the frozen batch ranker is paired and
   has its own interval); AUC per tenth of the stream; wall time per variant (one torch thread).

Seeds are fixed. Writes the ``bench:progressive_auc`` section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import machine_info, write_section  # noqa: E402
from fyp.config import FypConfig, RankerConfig  # noqa: E402
from fyp.engine import fold_policy  # noqa: E402
from fyp.eval.metrics import auc  # noqa: E402
from fyp.models.ranker import Ranker, train_ranker  # noqa: E402
from fyp.models.ranker_data import (  # noqa: E402
    LABEL_NAMES,
    ExampleSet,
    LoggedEvent,
    base_rates,
    build_examples,
)
from fyp.online.embedding_table import collision_rate  # noqa: E402
from fyp.online.learner import FIELDS, LearnerConfig, OnlineRanker  # noqa: E402
from fyp.storage.roles import ItemRecord  # noqa: E402

START = "<!-- bench:progressive_auc:start -->"
END = "<!-- bench:progressive_auc:end -->"
DATA = REPO.parent / "shared" / "data"
DAY = 86_400.0
DURATION_S = 60.0
"""Nominal length of every item: the datasets have none."""
WARMUP_SHARE = 0.3
METRICS = (
    ("like", "like", "like"),
    ("finish", "finish", "finish"),
    ("long_watch", "watch_ratio", "watch_ratio head vs long_watch"),
)
"""(label, head that scores it, title)."""
BOOTSTRAP = 1000
F32 = npt.NDArray[np.float32]


@dataclass
class Stream:
    """One dataset as a time-ordered event log with its catalog."""

    name: str
    events: list[LoggedEvent]
    items: dict[str, ItemRecord]
    mapping: str
    """How the dataset's interactions became events (for the docs)."""
    facts: str


# ---- datasets as event logs ---------------------------------------------------------------------


def _item(item_id: str, creator: str, created_at: float, tags: tuple[str, ...]) -> ItemRecord:
    return ItemRecord(
        item_id=item_id,
        creator_id=creator,
        created_at=created_at,
        duration_s=DURATION_S,
        caption="",
        tags=tags,
        language=None,
        regions=(),
    )


def movielens_stream(directory: Path) -> Stream:
    ratings: list[tuple[float, str, str, float]] = []
    with (directory / "ratings.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            ratings.append(
                (float(row["timestamp"]), row["userId"], row["movieId"], float(row["rating"]))
            )
    ratings.sort(key=lambda r: r[0])  # stable: ratings in the same second keep the file's order
    first_rating: dict[str, float] = {}
    for ts, _, movie, _ in ratings:
        first_rating.setdefault(movie, ts)
    year = re.compile(r"\((\d{4})\)\s*$")
    items: dict[str, ItemRecord] = {}
    with (directory / "movies.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            movie = row["movieId"]
            if movie not in first_rating:
                continue
            genres = tuple(
                g.lower() for g in row["genres"].split("|") if g and g != "(no genres listed)"
            )
            created = first_rating[movie] - DAY
            match = year.search(row["title"].strip())
            if match:
                released = datetime(int(match.group(1)), 1, 1, tzinfo=UTC).timestamp()
                created = min(released, created)
            creator = f"genre:{genres[0] if genres else 'none'}"
            items[f"m{movie}"] = _item(f"m{movie}", creator, created, genres)
    play_ms = DURATION_S * 1000.0
    events: list[LoggedEvent] = []
    for ts, user, movie, rating in ratings:
        u, m = f"u{user}", f"m{movie}"
        events.append(LoggedEvent(ts, u, m, "play", round(rating / 5.0 * play_ms)))
        if rating >= 4.0:
            events.append(LoggedEvent(ts, u, m, "finish", None))
        if rating >= 4.5:
            events.append(LoggedEvent(ts, u, m, "like", None))
    mapping = (
        "every rating is a `play` of a nominal 60 s item with `watch_ms = rating / 5 * 60 s`; a "
        "rating >= 4 also emits `finish`, >= 4.5 also `like` (so finish = rating >= 4, like = "
        "rating >= 4.5, long_watch = rating >= 2.5). Creator = the movie's first listed genre; "
        "tags = its genres; created_at = 1 January of the release year in the title (a day "
        "before the first rating if that is earlier)"
    )
    facts = f"{len(ratings):,} ratings by {len({r[1] for r in ratings}):,} users"
    return Stream("MovieLens latest-small", events, items, mapping, facts)


def grocery_stream(directory: Path, seed: int, last: int | None) -> Stream:
    rows: list[tuple[float, str, str]] = []
    with (directory / "train.csv").open(newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            rows.append((float(row["time"]), row["user_id"], row["item_id"]))
    rows.sort(key=lambda r: r[0])  # stable: purchases on the same day keep the file's order
    total = len(rows)
    if last is not None and last < total:
        rows = rows[-last:]  # the most recent purchases: keeps the run bounded
    category: dict[str, str] = {}
    with (directory / "item_meta.csv").open(newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            category[row["item_id"]] = row["i_category"].strip()
    # One creation time for every item: the item's own first purchase would leak its label.
    created = rows[0][0] - DAY
    items: dict[str, ItemRecord] = {}
    for _, _, item in rows:
        if f"g{item}" not in items:
            cat = f"category:{category.get(item) or 'none'}"
            items[f"g{item}"] = _item(f"g{item}", cat, created, (cat,))
    rng = np.random.default_rng(seed)
    play_ms = round(DURATION_S * 1000.0)
    events: list[LoggedEvent] = []
    past: list[str] = []  # one entry per earlier purchase: a uniform draw is by popularity
    bought: dict[str, set[str]] = {}
    for ts, user, item in rows:
        u, g = f"u{user}", f"g{item}"
        mine = bought.setdefault(u, set())
        events.append(LoggedEvent(ts, u, g, "play", play_ms))
        events.append(LoggedEvent(ts, u, g, "finish", None))
        events.append(LoggedEvent(ts, u, g, "like", None))
        if past:
            for _ in range(20):  # rejection sampling; a heavy buyer may exhaust the tries
                negative = past[int(rng.integers(len(past)))]
                if negative not in mine and negative != g:
                    events.append(LoggedEvent(ts, u, negative, "play", 1000))
                    break
        mine.add(g)
        past.append(g)
    mapping = (
        "every purchase is a `play` watched to the end plus `finish` and `like`; with it, one "
        "sampled negative: an item drawn from the purchases logged before it (popularity-"
        "proportional, never one the buyer already bought), logged at the same time as a 1 s "
        "`play` (a quick skip). So like = finish = long_watch = bought vs sampled, and only "
        "`like` is reported. Creator and tag = the item's category; created_at = a day before "
        "the window's first purchase for every item (an item's own first purchase would leak "
        "that label)"
    )
    facts = f"the {len(rows):,} most recent of {total:,} purchases, one sampled negative each"
    return Stream("Grocery (Amazon, ReChorus)", events, items, mapping, facts)


# ---- the variants -------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnlineSpec:
    """One online learner setting and how it is evaluated."""

    name: str
    config: LearnerConfig
    chunk: int | None = None
    """Score-then-learn granularity; ``None``: the run's ``--chunk``."""
    fit_predictions: bool = False
    """Score with ``partial_fit``'s own pre-update predictions, per mini-batch."""


@dataclass
class Run:
    """What one variant scored over the stream and what that cost."""

    scores: F32
    seconds: float
    notes: dict[str, Any] = field(default_factory=dict)


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def run_frozen(base: Ranker, stream: ExampleSet) -> Run:
    started = time.perf_counter()
    scores = base.predict_examples(stream)
    return Run(scores, time.perf_counter() - started)


def run_retrained(
    base: Ranker,
    examples: ExampleSet,
    warm: int,
    chunks: list[tuple[int, int]],
    every: int,
    config: RankerConfig,
) -> tuple[Run, list[tuple[int, Ranker, float]]]:
    """The periodically retrained ranker; also returns each period's model as (first chunk,
    model, seconds its training took), for the variant that keeps learning online between
    retrains."""
    started = time.perf_counter()
    periods: list[tuple[int, Ranker, float]] = [(0, base, 0.0)]
    parts: list[F32] = []
    for c, (s, e) in enumerate(chunks):
        if c and c % every == 0:
            t0 = time.perf_counter()
            model = train_ranker(examples.subset(np.arange(warm + s)), base.rates, config)
            periods.append((c, model, time.perf_counter() - t0))
        model = periods[-1][1]
        parts.append(model.predict_examples(examples.subset(np.arange(warm + s, warm + e))))
    retrains = [seconds for _, _, seconds in periods[1:]]
    notes = {"retrains": len(retrains), "mean_retrain_s": float(np.mean(retrains or [0.0]))}
    return Run(np.concatenate(parts), time.perf_counter() - started, notes), periods


def run_rebased(
    periods: list[tuple[int, Ranker, float]],
    stream: ExampleSet,
    chunks: list[tuple[int, int]],
    batch: int,
) -> Run:
    """Each period's batch model, continued online over the chunks until the next retrain: what
    the production trainer does when a new batch model arrives (it starts a fresh learner from
    it). The retrains are the retrained variant's; their time is counted here too."""
    started = time.perf_counter()
    parts: list[F32] = []
    steps = 0
    bounds = [first for first, _, _ in periods[1:]] + [len(chunks)]
    for (first, model, _), stop in zip(periods, bounds, strict=True):
        s, e = chunks[first][0], chunks[stop - 1][1]
        run = run_online(
            model,
            stream.subset(np.arange(s, e)),
            OnlineSpec("rebased", LearnerConfig()),
            chunks[0][1] - chunks[0][0],
            batch,
        )
        parts.append(run.scores)
        steps += int(run.notes["steps"])
    online_s = time.perf_counter() - started
    retrain_s = sum(seconds for _, _, seconds in periods)
    return Run(
        np.concatenate(parts),
        online_s + retrain_s,
        {"steps": steps, "online_seconds": online_s, "retrain_seconds": retrain_s},
    )


def run_online(
    base: Ranker, stream: ExampleSet, spec: OnlineSpec, chunk_size: int, batch: int
) -> Run:
    config = spec.config
    # Event time drives admission and expiry: a row unused for the TTL is a row unused for that
    # long in the log, not during the few minutes this run takes.
    now = [float(stream.ts[0])]
    learner = OnlineRanker(base, config, base_version="warm-up", clock=lambda: now[0])
    collisionless = config.table_kind == "collisionless"
    started = time.perf_counter()
    parts: list[F32] = []
    losses: list[float] = []
    evicted = 0
    for s, e in _chunks(len(stream), spec.chunk or chunk_size):
        chunk = stream.subset(np.arange(s, e))
        if not spec.fit_predictions:
            parts.append(learner.predict(chunk))
        for b in range(0, len(chunk), batch):
            rows = np.arange(b, min(b + batch, len(chunk)))
            now[0] = float(chunk.ts[rows[-1]])
            fit = learner.partial_fit(chunk.subset(rows))
            losses.append(fit.loss)
            if spec.fit_predictions:
                parts.append(fit.predictions)
        if collisionless:
            evicted += learner.evict_expired()
    tenth = max(len(losses) // 10, 1)
    notes: dict[str, Any] = {
        "steps": learner.steps,
        "loss_first_tenth": float(np.mean(losses[:tenth])),
        "loss_last_tenth": float(np.mean(losses[-tenth:])),
        "memory_bytes": learner.memory_bytes(),
        "dim": learner.dim,
    }
    if collisionless:
        notes["evicted"] = evicted
        notes["rows"] = {f: learner.ids(f) for f in FIELDS}
    return Run(np.concatenate(parts), time.perf_counter() - started, notes)


# ---- metrics ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ranked:
    """Scores sorted once, so a bootstrap resample's AUC is a few bincounts."""

    run: npt.NDArray[np.int64]
    """Index of each example's run of tied scores, in sorted order."""
    positive: npt.NDArray[np.float64]
    block: npt.NDArray[np.int64]
    runs: int


def rank(labels: npt.NDArray[Any], scores: npt.NDArray[Any], block: npt.NDArray[Any]) -> Ranked:
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    run = np.cumsum(np.r_[True, s[1:] != s[:-1]]) - 1
    return Ranked(run, labels[order].astype(np.float64), block[order], int(run[-1]) + 1)


def weighted_auc(r: Ranked, block_weight: npt.NDArray[np.float64]) -> float:
    """Mann-Whitney AUC with each example weighted by its block's weight (ties count half);
    with unit weights it is the plain AUC."""
    w = block_weight[r.block]
    pos = np.bincount(r.run, weights=w * r.positive, minlength=r.runs)
    neg = np.bincount(r.run, weights=w * (1.0 - r.positive), minlength=r.runs)
    below = np.cumsum(neg) - neg
    denominator = pos.sum() * neg.sum()
    if denominator <= 0:
        return float("nan")
    return float((pos * (below + 0.5 * neg)).sum() / denominator)


def _ci(values: npt.NDArray[np.float64]) -> tuple[float, float]:
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def distinct_labels(stream: ExampleSet) -> list[tuple[str, str, str]]:
    """The metrics whose label has both classes and differs from every earlier one."""
    out: list[tuple[str, str, str]] = []
    seen: list[npt.NDArray[np.float32]] = []
    for label, head, title in METRICS:
        y = stream.label(label)
        if not stream.known[:, LABEL_NAMES.index(label)].all():
            raise ValueError(f"{label} is unknown for some examples")
        if y.min() == y.max() or any(np.array_equal(y, other) for other in seen):
            continue
        seen.append(y)
        out.append((label, head, title))
    return out


def evaluate(
    stream: ExampleSet,
    runs: dict[str, Run],
    tasks: tuple[str, ...],
    chunks: list[tuple[int, int]],
    labels: list[tuple[str, str, str]],
    seed: int,
) -> dict[str, Any]:
    n = len(stream)
    block = np.zeros(n, dtype=np.int64)
    for c, (s, e) in enumerate(chunks):
        block[s:e] = c
    rng = np.random.default_rng(seed)
    # The same resamples of chunks for every variant: differences are paired.
    resamples = rng.multinomial(
        len(chunks), np.full(len(chunks), 1.0 / len(chunks)), BOOTSTRAP
    ).astype(np.float64)
    deciles = np.array_split(np.arange(n), 10)
    ones = np.ones(len(chunks))
    out: dict[str, Any] = {}
    for label, head, _ in labels:
        y = stream.label(label)
        column = tasks.index(head)
        per: dict[str, Any] = {}
        boot: dict[str, npt.NDArray[np.float64]] = {}
        for name, result in runs.items():
            scores = result.scores[:, column].astype(np.float64)
            ranked = rank(y, scores, block)
            boot[name] = np.array([weighted_auc(ranked, w) for w in resamples])
            value = weighted_auc(ranked, ones)
            assert abs(value - auc(y, scores)) < 1e-9  # same statistic as fyp.eval.metrics
            per[name] = {
                "auc": value,
                "ci": _ci(boot[name]),
                "boot": boot[name],
                "deciles": [auc(y[d], scores[d]) if 0 < y[d].mean() < 1 else None for d in deciles],
            }
        out[label] = {
            "head": head,
            "positive_rate": float(y.mean()),
            "decile_positive_rate": [float(y[d].mean()) for d in deciles],
            "variants": per,
        }
    return out


def paired(metric: dict[str, Any], name: str, reference: str) -> tuple[float, float, float]:
    """AUC of ``name`` minus that of ``reference``, with the 95 % interval of the difference over
    the same bootstrap resamples."""
    a, b = metric["variants"][name], metric["variants"][reference]
    lo, hi = _ci(a["boot"] - b["boot"])
    return a["auc"] - b["auc"], lo, hi


def seen_before(ids: Sequence[str], start: int, size: int) -> float:
    """Share of the examples from ``start`` on whose id occurs in an earlier block of ``size``
    examples (counted from ``start``; everything before ``start`` is one earlier block): the
    examples a learner that scores a block before learning it could have learned something
    about that id for."""
    first: dict[str, int] = {}
    for k, i in enumerate(ids):
        first.setdefault(i, k)
    hits = sum(
        first[i] < start + (k - start) // size * size for k, i in enumerate(ids) if k >= start
    )
    return hits / max(len(ids) - start, 1)


# ---- one dataset --------------------------------------------------------------------------------

FROZEN = "batch, frozen"
ONLINE = "online, collisionless"
REBASED = "batch retrained + online in between"


SMALL_ROWS = 64
"""Rows of each hashed creator and tag table (those fields have tens of ids)."""


def _rows(field: str, big: int) -> int:
    return SMALL_ROWS if field in ("creators", "tags") else big


def sensitivity_specs(hashed_rows: int) -> list[OnlineSpec]:
    default = LearnerConfig()
    hashed = LearnerConfig(
        table_kind="hashed", hashed_rows=4 * hashed_rows, hashed_small_rows=SMALL_ROWS
    )
    return [
        OnlineSpec("chunks of 256 (scored and learned 4x as often)", default, chunk=256),
        OnlineSpec(
            "train-then-test per mini-batch (`FitResult.predictions`)",
            default,
            fit_predictions=True,
        ),
        OnlineSpec("min_count 1 (no admission filter)", replace(default, min_count=1)),
        OnlineSpec("no TTL", replace(default, ttl_s=None)),
        OnlineSpec("sparse_lr 0.2 (default 0.05)", replace(default, sparse_lr=0.2)),
        OnlineSpec("dense_lr 3e-3 (default 1e-3)", replace(default, dense_lr=3e-3)),
        OnlineSpec(
            "sparse_lr 1e-6: id rows all but frozen, only the dense part learns",
            replace(default, sparse_lr=1e-6),
        ),
        OnlineSpec(f"hashed, 4x rows ({4 * hashed_rows:,} per viewer/item table)", hashed),
    ]


def run_dataset(data: Stream, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    policy = fold_policy(FypConfig())
    config = RankerConfig(epochs=args.epochs, seed=args.seed)
    plays = [k for k, e in enumerate(data.events) if e.type == "play"]
    warm = int(len(plays) * WARMUP_SHARE)
    # Events before the first stream play are the warm-up's; only they set the base rates.
    rates = base_rates(data.events[: plays[warm]], data.items)
    examples = build_examples(
        data.events,
        data.items,
        policy,
        rates,
        prior_plays=config.prior_plays,
        label_window_s=config.label_window_s,
    )
    assert len(examples) == len(plays)
    build_s = time.perf_counter() - t0
    stream = examples.subset(np.arange(warm, len(examples)))
    chunks = _chunks(len(stream), args.chunk)
    t1 = time.perf_counter()
    base = train_ranker(examples.subset(np.arange(warm)), rates, config)
    warm_s = time.perf_counter() - t1
    print(
        f"{data.name}: {len(examples):,} examples built in {build_s:.1f} s; warm-up ranker "
        f"trained in {warm_s:.1f} s",
        flush=True,
    )

    def timed(name: str, run: Run) -> Run:
        print(f"  {name}: {run.seconds:.1f} s", flush=True)
        return run

    runs: dict[str, Run] = {FROZEN: timed(FROZEN, run_frozen(base, stream))}
    runs[ONLINE] = timed(
        ONLINE,
        run_online(base, stream, OnlineSpec(ONLINE, LearnerConfig()), args.chunk, args.batch),
    )
    # Equal memory: the collisionless tables' bytes at the end, spent on hashed tables whose rows
    # are a float32 weight vector and its Adagrad accumulator: SMALL_ROWS rows each for the few
    # creators and tags, the rest split between the viewer and the item table.
    dim = int(runs[ONLINE].notes["dim"])
    row_bytes = dim * 4 * 2
    hashed_rows = args.hashed_rows or max(
        1, int((runs[ONLINE].notes["memory_bytes"] / row_bytes - 2 * SMALL_ROWS) / 2)
    )
    hashed_name = f"online, hashed ({hashed_rows:,} rows per viewer/item table)"
    hashed_spec = OnlineSpec(
        hashed_name,
        LearnerConfig(table_kind="hashed", hashed_rows=hashed_rows, hashed_small_rows=SMALL_ROWS),
    )
    runs[hashed_name] = timed(
        hashed_name, run_online(base, stream, hashed_spec, args.chunk, args.batch)
    )
    if args.retrain_every > 0:
        name = f"batch, retrained every {args.retrain_every} chunks"
        retrained, periods = run_retrained(base, examples, warm, chunks, args.retrain_every, config)
        runs[name] = timed(name, retrained)
        runs[REBASED] = timed(REBASED, run_rebased(periods, stream, chunks, args.batch))
    main_names = list(runs)
    extra: dict[str, Run] = {}
    if args.sensitivity:
        for spec in sensitivity_specs(hashed_rows):
            extra[spec.name] = timed(
                spec.name, run_online(base, stream, spec, args.chunk, args.batch)
            )
    labels = distinct_labels(stream)
    metrics = evaluate(stream, {**runs, **extra}, base.tasks, chunks, labels, args.seed)
    ids = {
        "users": set(examples.user_ids),
        "items": set(examples.item_ids),
        "creators": set(examples.creator_ids),
        "tags": {t for tags in examples.tags for t in tags},
    }
    warm_users, warm_items = set(examples.user_ids[:warm]), set(examples.item_ids[:warm])
    return {
        "name": data.name,
        "mapping": data.mapping,
        "facts": data.facts,
        "events": len(data.events),
        "examples": len(examples),
        "warm": warm,
        "stream": len(stream),
        "chunks": len(chunks),
        "warm_span": (float(examples.ts[0]), float(examples.ts[warm - 1])),
        "stream_span": (float(stream.ts[0]), float(stream.ts[-1])),
        "build_seconds": build_s,
        "warm_seconds": warm_s,
        "warm_epochs": (base.stats.epochs, base.stats.best_epoch) if base.stats else None,
        "users": {"warm": len(warm_users), "all": len(ids["users"])},
        "items": {"warm": len(warm_items), "all": len(ids["items"])},
        "new_user_share": float(np.mean([u not in warm_users for u in stream.user_ids])),
        "new_item_share": float(np.mean([i not in warm_items for i in stream.item_ids])),
        "user_seen_before": {
            size: seen_before(examples.user_ids, warm, size) for size in (args.chunk, args.batch)
        },
        "item_seen_before": {
            size: seen_before(examples.item_ids, warm, size) for size in (args.chunk, args.batch)
        },
        "hashed": {
            "name": hashed_name,
            "rows": hashed_rows,
            "distinct_ids": {f: len(ids[f]) for f in FIELDS},
            "collision_rate": {f: collision_rate(ids[f], _rows(f, hashed_rows)) for f in FIELDS},
            "collision_rate_4x": {
                f: collision_rate(ids[f], _rows(f, 4 * hashed_rows)) for f in FIELDS
            },
        },
        "labels": labels,
        "main": main_names,
        "extra": list(extra),
        "runs": {
            name: {"seconds": r.seconds, "notes": r.notes} for name, r in {**runs, **extra}.items()
        },
        "metrics": metrics,
        "seconds": time.perf_counter() - t0,
    }


# ---- report -------------------------------------------------------------------------------------


def _date(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _auc_cell(v: dict[str, Any]) -> str:
    lo, hi = v["ci"]
    return f"{v['auc']:.4f} [{lo:.4f}, {hi:.4f}]"


def _diff_cell(diff: tuple[float, float, float]) -> str:
    return f"{diff[0]:+.4f} [{diff[1]:+.4f}, {diff[2]:+.4f}]"


def _verdict(diff: tuple[float, float, float]) -> str:
    value, lo, hi = diff
    if lo > 0:
        return f"higher by {value:.4f} [{lo:.4f}, {hi:.4f}]"
    if hi < 0:
        return f"lower by {-value:.4f} [{-hi:.4f}, {-lo:.4f}]"
    return f"not resolved ({value:+.4f}, interval [{lo:+.4f}, {hi:+.4f}] includes 0)"


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def _retrained_name(d: dict[str, Any]) -> str | None:
    return next((n for n in d["main"] if n.startswith("batch, retrained")), None)


def reading(d: dict[str, Any]) -> list[str]:
    """Sentences on the paired differences that matter, worded from the numbers themselves."""
    label = d["labels"][0][0]
    m = d["metrics"][label]
    hashed = d["hashed"]["name"]
    retrained = _retrained_name(d)
    lines = [
        f"- online (collisionless) vs frozen batch, {label} AUC: "
        f"{_verdict(paired(m, ONLINE, FROZEN))}",
        f"- online hashed vs online collisionless: {_verdict(paired(m, hashed, ONLINE))}",
    ]
    if retrained:
        lines += [
            f"- {retrained} vs frozen: {_verdict(paired(m, retrained, FROZEN))}",
            f"- online (collisionless) vs {retrained}: {_verdict(paired(m, ONLINE, retrained))}",
            f"- {REBASED} vs {retrained}: {_verdict(paired(m, REBASED, retrained))}",
        ]
    return [f"Paired differences in {label} AUC (95 % intervals):", "", *lines, ""]


def dataset_section(d: dict[str, Any]) -> list[str]:
    labels = d["labels"]
    diff_labels = labels[:2]
    chunk, batch = list(d["user_seen_before"])
    out = [
        f"### {d['name']}",
        "",
        f"Data: {d['facts']}. Events: {d['mapping']}.",
        "",
        f"{d['events']:,} events, {d['examples']:,} examples. Warm-up: {d['warm']:,} examples "
        f"({_date(d['warm_span'][0])} to {_date(d['warm_span'][1])}; {d['users']['warm']:,} "
        f"users, {d['items']['warm']:,} items; trained in {d['warm_seconds']:.1f} s, "
        f"{d['warm_epochs'][0]} epochs, best {d['warm_epochs'][1]}). Stream: {d['stream']:,} "
        f"examples in {d['chunks']} chunks ({_date(d['stream_span'][0])} to "
        f"{_date(d['stream_span'][1])}); {d['new_user_share']:.0%} of its examples are by users "
        f"and {d['new_item_share']:.0%} on items the warm-up never saw. What a learner that "
        "scores a block before learning it can know: the viewer of "
        f"{d['user_seen_before'][chunk]:.0%} of the stream's examples appeared in an earlier "
        f"chunk of {chunk:,} (or the warm-up), {d['user_seen_before'][batch]:.0%} in an earlier "
        f"block of {batch}; the item: {d['item_seen_before'][chunk]:.0%} and "
        f"{d['item_seen_before'][batch]:.0%}. Positive rates over the stream: "
        + ", ".join(f"{label} {d['metrics'][label]['positive_rate']:.1%}" for label, _, _ in labels)
        + ".",
        "",
    ]
    titles = [f"{title} AUC [95 % CI]" for _, _, title in labels]
    titles += [f"Δ {label} vs frozen [95 % CI]" for label, _, _ in diff_labels]
    out += [
        "| variant | " + " | ".join(titles) + " | time |",
        "|---|" + "---:|" * (len(titles) + 1),
    ]
    for name in d["main"]:
        cells = [_auc_cell(d["metrics"][label]["variants"][name]) for label, _, _ in labels]
        cells += [
            "(reference)"
            if name == FROZEN
            else _diff_cell(paired(d["metrics"][label], name, FROZEN))
            for label, _, _ in diff_labels
        ]
        out.append(f"| {name} | {' | '.join(cells)} | {d['runs'][name]['seconds']:.1f} s |")
    online = d["runs"][ONLINE]["notes"]
    hashed = d["hashed"]
    retrained = _retrained_name(d)
    notes = [
        f"Online, collisionless: {online['steps']:,} steps; rows at the end "
        + ", ".join(f"{f} {n:,}" for f, n in online["rows"].items())
        + f" ({online['evicted']:,} evicted by the TTL along the way); tables "
        f"{_mib(online['memory_bytes'])} (allocated capacity); mean loss "
        f"{online['loss_first_tenth']:.3f} over the first tenth of the steps, "
        f"{online['loss_last_tenth']:.3f} over the last. Online, hashed: {hashed['rows']:,} rows "
        f"in the viewer and the item table, {SMALL_ROWS} in the creator and the tag table "
        f"({_mib(d['runs'][hashed['name']]['notes']['memory_bytes'])});"
        " ids sharing a row with another id: "
        + ", ".join(
            f"{f} {hashed['collision_rate'][f]:.0%} of {hashed['distinct_ids'][f]:,}"
            for f in FIELDS
        )
        + " (with 4x rows: "
        + ", ".join(f"{f} {hashed['collision_rate_4x'][f]:.0%}" for f in FIELDS)
        + ")."
    ]
    if retrained:
        r = d["runs"][retrained]["notes"]
        rb = d["runs"][REBASED]["notes"]
        notes.append(
            f"Batch, retrained: {r['retrains']} retrains, {r['mean_retrain_s']:.1f} s each on "
            f"average. {REBASED.capitalize()}: the same batch models, each continued by a fresh "
            f"`OnlineRanker` until the next retrain (as the trainer rebases on a new batch "
            f"model); its time is the retrains ({rb['retrain_seconds']:.1f} s, warm-up "
            f"excluded) plus {rb['online_seconds']:.1f} s of online learning."
        )
    out += ["", " ".join(notes), "", *reading(d)]
    for label, _, title in labels[:2]:
        m = d["metrics"][label]
        out += [
            f"{title} AUC per tenth of the stream (the tenth's positive rate in brackets):",
            "",
            "| variant | "
            + " | ".join(f"{k + 1} ({p:.0%})" for k, p in enumerate(m["decile_positive_rate"]))
            + " |",
            "|---|" + "---:|" * 10,
        ]
        for name in d["main"]:
            values = m["variants"][name]["deciles"]
            cells = ["n/a" if v is None else f"{v:.3f}" for v in values]
            out.append(f"| {name} | {' | '.join(cells)} |")
        out.append("")
    if d["extra"]:
        titles = [f"{label} AUC" for label, _, _ in diff_labels]
        titles += [f"Δ {label} vs online default [95 % CI]" for label, _, _ in diff_labels]
        out += [
            "What else was tried, online only; each row changes one thing from *online, "
            "collisionless* and is compared with it (paired):",
            "",
            "| online setting | " + " | ".join(titles) + " | time |",
            "|---|" + "---:|" * (len(titles) + 1),
        ]
        for name in [ONLINE, *d["extra"]]:
            cells = [
                f"{d['metrics'][label]['variants'][name]['auc']:.4f}" for label, _, _ in diff_labels
            ]
            cells += [
                "(reference)"
                if name == ONLINE
                else _diff_cell(paired(d["metrics"][label], name, ONLINE))
                for label, _, _ in diff_labels
            ]
            shown = "default (as above)" if name == ONLINE else name
            out.append(f"| {shown} | {' | '.join(cells)} | {d['runs'][name]['seconds']:.1f} s |")
        out.append("")
    return out


def section(results: dict[str, Any], command: str) -> str:
    m = results["machine"]
    out = [
        START,
        "## Progressive AUC: online vs batch ranker (`bench/progressive_auc.py`)",
        "",
        f"Command: `{command}`  ",
        f"Date: {results['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, fyp {m['fyp']} "
        f"(commit {m['git']}); one torch thread; a shared machine, so treat times as indicative  ",
        f"Whole run: {results['seconds']:.0f} s",
        "",
        "Protocol (the script's docstring has it in full): the log sorted by time becomes fyp "
        "events and point-in-time ranker examples (`build_examples`); the first 30 % of the "
        "examples train the batch ranker (`train_ranker`, default dimensions); the other 70 % "
        f"arrive in chunks of {results['chunk']:,}. Every chunk is scored by every variant "
        "*before* any of them learns it: *batch, frozen* never learns; "
        + (
            "*batch, retrained* is retrained from scratch on everything seen so far every "
            f"{results['retrain_every']} chunks; "
            if results["retrain_every"]
            else ""
        )
        + "the online variants (`OnlineRanker`, default `LearnerConfig`, mini-batches of "
        f"{results['batch']}, the stream's event time as their clock, TTL evictions after every "
        "chunk) learn each chunk after scoring it. The hashed variant is the same learner with "
        '`table_kind="hashed"`, 64 rows for creators and tags and the viewer and item tables '
        "sized so the four take the memory the collisionless tables held at the end. AUC is "
        "pooled over the stream; the 95 % "
        f"intervals are a block bootstrap over the chunks ({BOOTSTRAP:,} resamples), the "
        "differences to the frozen ranker paired on the same resamples.",
        "",
    ]
    for d in results["datasets"]:
        out += dataset_section(d)
    out += [
        "Notes:",
        "",
        "- The online learners' clock is the log's event time, so the default 30-day TTL drops a "
        "row after 30 days of log without its id. These logs are sparse in time (MovieLens: 610 "
        "users over 22 years; Grocery: half of a buyer's returns come more than 30 days after "
        "their previous purchase), so most rows expire "
        "between uses (the evicted counts above); the *no TTL* rows show what that costs here. "
        "The collisionless tables' memory is their allocated capacity, which eviction does not "
        "shrink.",
        "- `FitResult.predictions` are the learner's own train-then-test scores: each "
        "mini-batch scored before the learner steps on it and before its ids are counted for "
        "admission (a newly admitted row starts at its field's unknown vector, so admission "
        "does not move an id's score). The main tables score each chunk with `predict()` "
        "before learning it; the row that uses `FitResult.predictions` scores at the finer "
        "mini-batch granularity.",
        "- Grocery's `like` is a sampled-negative task (bought vs a popularity-sampled "
        "impression), not an engagement rate: its AUC is not comparable with MovieLens'.",
        END,
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--datasets", default="movielens,grocery")
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--retrain-every", type=int, default=10, help="0: no retrained variant")
    parser.add_argument("--hashed-rows", type=int, default=0, help="0: equal memory")
    parser.add_argument("--grocery-last", type=int, default=60_000)
    parser.add_argument("--no-sensitivity", dest="sensitivity", action="store_false")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    loaders: dict[str, Callable[[], Stream]] = {
        "movielens": lambda: movielens_stream(DATA / "movielens-latest-small"),
        "grocery": lambda: grocery_stream(DATA / "grocery", args.seed, args.grocery_last),
    }
    datasets = [run_dataset(loaders[name](), args) for name in args.datasets.split(",")]
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(REPO),
        "datasets": datasets,
        "chunk": args.chunk,
        "batch": args.batch,
        "retrain_every": args.retrain_every,
        "seconds": time.perf_counter() - started,
    }
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join([".venv/bin/python bench/progressive_auc.py", *given])
    text = section(results, command)
    print(text)
    if args.docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", START, END, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
