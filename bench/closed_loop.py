"""Closed-loop evaluation of learning while serving, with the demo world's simulated viewers.

One demo world, trained once, copied into three engines that differ only in how the model keeps
learning afterwards:

* **online**: the online trainer on; every ``--learn-every`` sessions and after every round
  ``Engine.learn_now()`` closes the finished viewings, trains the ranker on them and serves the
  result; plus the batch retraining below;
* **batch-only**: online training off (``online.enabled = false``), retrained with
  ``Engine.train()`` every ``--retrain-every`` rounds (the same schedule as the online arm);
* **off**: online training off and never retrained: the initial models serve to the end.

In every arm the viewer's own state (seen items, creator and tag affinities, the events the
retrieval folds in) still updates with each event: that is feature-level freshness, not learning
of model parameters.

The same seeded stream of sessions runs against each arm: per round, a sample of established
viewers (their history was imported and trained on) and the active newcomers (held-out viewers of
the world whose history was dropped; a cohort joins in each early round, created with
``put_users`` when they arrive, and comes back for ``--new-sessions`` rounds). A session asks for
at most ``--pages`` pages of 10; the world's viewer model watches each item in order (its events,
with the page's request id, are ingested after each page, before the next request), and leaves
once the leave hazards of the videos watched (``Viewer.leave_hazard``: higher for a video that
fits badly) add up to the session's budget, an Exp(1) draw per session (``--no-leave``: every
session watches all its pages). Reactions use common
random numbers: the draws for a (round, session, item) are the same in every arm, so an item shown
to the same viewer in two arms gets the same reaction and the arms' differences come from what
they serve. The simulated clock advances by the events' own spacing (the watch itself is not
waited out: viewers' sessions overlap in reality, here they run one after another), and between
rounds it jumps past the joiner's window, so every viewing of the round closes before
``learn_now``.

Reported per arm, with 95 % intervals (``fyp.online.arms``): watch time per session (normal
interval across sessions), and its *expected* value (each watched video's mean ``watch_ms`` under
the viewer model, ``Viewer.expected_watch_ms``, instead of its sampled one), finish and like
rate per video watched (Wilson), catalog coverage (distinct items shown / catalog; grouped
jackknife over sessions), the served pages' fit by the
hidden truth (``Viewer.fit`` over the viewer's best possible page), and how many requests a
newcomer needs before a page matches their taste (normal interval across newcomers; see
``MATCH``). The differences online - batch-only (and batch-only - off) come with Welch's
interval, and, because the sessions are paired by design, with the paired interval as well.

To explain the outcome, the end of the online arm measures how far the online learner moved from
the batch ranker it continues and what that changes on the page (``diagnose``). ``--set
section.key=value`` overrides the configuration of every arm (e.g. ``online.sparse_lr=0.5``,
``scoring.weights.ranker=3``); the library defaults are never changed.

**Scenarios** (``--scenario``). ``static`` (the default) is the run above: the world does not
change, so whatever the batch model learned from the history stays true. ``drift`` changes the
world in a way the batch model cannot know: at the start of round ``--drift-round`` a share
(``--drift-share``) of the established viewers who come back during the run change taste (their
three favourite topics move to three other topics: the taste vector is permuted, so they are as
focused as before, on other things). Identical in every arm (the same viewers, the same new
tastes, from the same round on; each arm starts from the original tastes). Two more settings make
the test one of learning while serving: the established viewers of the run are a returning pool
(``--active`` of them, so a drifted viewer comes back several times after the drift), and the
batch retrains are spaced so that several rounds pass between the drift and the first retrain
(``--retrain-every``; production retrains every 15 min or 5,000 events and takes minutes, online
publishes every 2 s). Reported on top of the static metrics: the same metrics restricted to the
drifted viewers' sessions after the drift (where online learning should show), split at the
first retrain after the drift, and for the viewers who did not drift as a control; page fit is
judged by the taste the viewer has at that moment. A drifted viewer's *requests to re-match* is
the number of requests after the drift until a page matches the new taste (as ``MATCH``). The
end of the drift window (just before that retrain) is diagnosed for the drifted viewers.

**Replications** (``--replications K``): the sessions of one run share a trajectory (viewer state,
items seen, region statistics), so intervals across them are too narrow (two identically
configured arms came out +9.2 s [+0.3, +18.0] apart in expected watch time). With ``K`` > 1 the
run is repeated with seeds ``--seed`` .. ``--seed + K - 1`` (each its own world, stream and draws;
``--jobs`` processes at a time) and the report's intervals are Student-t intervals across the
replications' differences: the verdict the static section states.

``--tuned section.key=value`` adds a fourth arm, ``online-tuned``: the online arm with those
overrides (a secondary, clearly labelled row; the ``online`` arm keeps the library defaults).

Writes a section of docs/BENCHMARKS.md (``--no-docs`` to only print): the static scenario the
``closed-loop`` section, the drift scenario the ``closed-loop-drift`` section. ``--json`` keeps a
run's raw numbers and ``--from-json`` renders its report again from them (nothing is run).
``bench/closed_loop_frontier.py`` runs this loop at several weights of the value model's seconds
term, to compare the learners along the trade-off between watch time and finishes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import shutil
import sys
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from bench_report import load_world, machine_info, write_section  # noqa: E402
from fyp.config import FypConfig, load_config  # noqa: E402
from fyp.engine import Engine  # noqa: E402
from fyp.models.ranker_data import ERASED_ID_PREFIX  # noqa: E402
from fyp.models.serving import ServingModel  # noqa: E402
from fyp.online.arms import Z95, ArmResults, Estimate  # noqa: E402
from fyp.pipeline.contracts import FeedContext, FeedQuery  # noqa: E402
from fyp.pipeline.trace import Trace  # noqa: E402
from fyp.sim.viewers import FOREIGN_LANGUAGE_FACTOR, Viewer  # noqa: E402
from fyp.sim.world import World, WorldConfig, build_world  # noqa: E402

START = "<!-- closed-loop:start -->"
END = "<!-- closed-loop:end -->"
DRIFT_START = "<!-- closed-loop-drift:start -->"
DRIFT_END = "<!-- closed-loop-drift:end -->"

ARMS = ("online", "batch-only", "off")
TUNED = "online-tuned"
FAVOURITES = 3
"""Topics that change in a drifting viewer's taste: their top three go to three other topics."""
SCENARIOS = {
    # scenario: defaults of (--active, --retrain-every)
    "static": (0, 4),
    "drift": (150, 7),
}
PAGE = 10
ORACLE_K = 10
JACKKNIFE_GROUPS = 20
LEAVE_KEY = 0x1EAF
"""Seeds a session's leaving budget apart from its reaction draws."""

MATCH = (
    "a page *matches* a viewer's taste when its normalized fit (the mean hidden fit "
    "`world.viewers[uid].fit(item)` of its items over the mean fit of the viewer's best "
    f"{ORACLE_K} items in their region) reaches the median normalized fit of established "
    "viewers' pages in the off arm; a newcomer's *requests to match* is the number of the "
    "first request whose page matches (1 = the very first page), counted as cap + 1 when no page "
    "within the cap did"
)


# ---- hidden truth, vectorized --------------------------------------------------------------------


class Oracle:
    """Every viewer's hidden fit for every item (as ``Viewer.fit``), and the best page possible."""

    def __init__(self, world: World) -> None:
        items = world.items
        self.index = {item.item_id: k for k, item in enumerate(items)}
        first = next(iter(world.viewers.values()))
        topic_index = {name: k for k, name in enumerate(first.topics)}
        self.topic = np.array([topic_index[world.item_topic[i.item_id]] for i in items])
        quality = np.array([world.item_quality[i.item_id] for i in items])
        self.quality_factor = 0.5 + 0.5 * quality
        self.language = [i.language for i in items]
        self.available = {
            region: np.array([i.available_in(region) for i in items])
            for region in world.config.regions
        }
        self.best: dict[str, float] = {
            uid: self.best_of(viewer) for uid, viewer in world.viewers.items()
        }

    def best_of(self, viewer: Viewer) -> float:
        """Mean fit of the viewer's best ``ORACLE_K`` items in their region."""
        fits = self.fits(viewer)[self.available[viewer.region]]
        return float(np.sort(fits)[-ORACLE_K:].mean())

    def fits(self, viewer: Viewer) -> np.ndarray:
        share = viewer.taste[self.topic] / viewer.taste.max()
        foreign = np.array(
            [lang is not None and lang not in viewer.languages for lang in self.language]
        )
        value = np.sqrt(share) * self.quality_factor
        value = np.where(foreign, value * FOREIGN_LANGUAGE_FACTOR, value)
        return np.clip(value, 0.0, 1.0)


# ---- the changing world --------------------------------------------------------------------------


@dataclass(frozen=True)
class Drift:
    """Viewers whose taste changes at the start of a round (the same in every arm)."""

    round: int
    """0-based index of the first round served with the new tastes."""
    tastes: dict[str, np.ndarray]
    """The new taste of each drifting viewer."""
    best: dict[str, float]
    """``Oracle.best`` under the new taste."""
    old_best: dict[str, float]


def drifted_taste(taste: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``taste`` with new favourites: its values, largest first, go to topics chosen so that the
    new top ``FAVOURITES`` are all outside the old top ``FAVOURITES`` (a permutation of the same
    values: the viewer is as focused as before, on other topics)."""
    n = len(taste)
    k = min(FAVOURITES, n // 2)
    order = np.argsort(-taste, kind="stable")
    old_top = {int(i) for i in order[:k]}
    others = [i for i in range(n) if i not in old_top]
    rng.shuffle(others)
    rest = others[k:] + sorted(old_top)
    rng.shuffle(rest)
    out = np.empty(n, dtype=np.float64)
    out[np.asarray(others[:k] + rest)] = taste[order]
    return out


def make_drift(
    world: World, oracle: Oracle, pool: list[str], share: float, first_round: int, seed: int
) -> Drift:
    chosen = sorted(random.Random(seed + 3).sample(pool, round(share * len(pool))))
    tastes, best, old_best = {}, {}, {}
    for uid in chosen:
        viewer = world.viewers[uid]
        rng = np.random.default_rng([seed, 7, zlib.crc32(uid.encode())])
        tastes[uid] = drifted_taste(np.asarray(viewer.taste), rng)
        best[uid] = oracle.best_of(dataclasses.replace(viewer, taste=tastes[uid], followed=set()))
        old_best[uid] = oracle.best[uid]
    return Drift(first_round, tastes, best, old_best)


def apply_drift(world: World, oracle: Oracle, drift: Drift) -> None:
    """Swap in the drifted viewers: a new ``Viewer`` (its derived fields recomputed) that keeps
    whom the old one follows; the truth the evaluation reads moves with it."""
    for uid, taste in drift.tastes.items():
        viewer = world.viewers[uid]
        world.viewers[uid] = dataclasses.replace(viewer, taste=taste, followed=viewer.followed)
        oracle.best[uid] = drift.best[uid]


# ---- the session stream --------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    round: int
    index: int
    """Position in the whole run (also the key of the paired comparison)."""
    user_id: str
    newcomer: bool


def schedule(
    established: list[str],
    newcomers: list[str],
    rounds: int,
    sessions: int,
    new_sessions: int,
    seed: int,
) -> tuple[list[list[Session]], dict[str, int]]:
    """Rounds of sessions (identical for every arm), and the round each newcomer joins."""
    rng = random.Random(seed)
    cohorts = max(1, rounds - new_sessions + 1)
    joins = {uid: k % cohorts for k, uid in enumerate(newcomers)}
    out: list[list[Session]] = []
    index = 0
    for r in range(rounds):
        users = [(uid, False) for uid in rng.sample(established, min(sessions, len(established)))]
        users += [(uid, True) for uid in newcomers if joins[uid] <= r < joins[uid] + new_sessions]
        rng.shuffle(users)
        batch = []
        for uid, new in users:
            batch.append(Session(r, index, uid, new))
            index += 1
        out.append(batch)
    return out, joins


# ---- one arm -------------------------------------------------------------------------------------


@dataclass
class ArmLog:
    session_watch_s: dict[int, float] = field(default_factory=dict)
    session_expected_watch_s: dict[int, float] = field(default_factory=dict)
    """The mean watch time the viewer model gives the session's watched videos
    (``Viewer.expected_watch_ms``): the same quantity without the reactions' sampling noise."""
    session_finish: dict[int, tuple[int, int]] = field(default_factory=dict)
    session_like: dict[int, tuple[int, int]] = field(default_factory=dict)
    session_items: dict[int, list[int]] = field(default_factory=dict)
    session_fit: dict[int, float] = field(default_factory=dict)
    """Mean normalized fit of the session's pages (what was served, judged by the truth)."""
    session_page_fits: dict[int, list[float]] = field(default_factory=dict)
    finishes: list[int] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    """Length of every served video, seconds."""
    likes: list[int] = field(default_factory=list)
    established_page_fit: list[float] = field(default_factory=list)
    newcomer_page_fit: dict[str, list[float]] = field(default_factory=dict)
    round_watch: list[list[float]] = field(default_factory=list)
    round_like: list[list[int]] = field(default_factory=list)
    trained_online: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    online_stats: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    window_diagnostics: dict[str, Any] = field(default_factory=dict)
    """``diagnose`` for the drifted viewers at the end of the drift window (drift scenario)."""
    model_versions: dict[str, str] = field(default_factory=dict)


def run_arm(
    arm: str,
    engine: Engine,
    world: World,
    oracle: Oracle,
    rounds: list[list[Session]],
    joins: dict[str, int],
    pages: int,
    retrain_every: int,
    learn_every: int,
    seed: int,
    clock: list[float],
    drift: Drift | None = None,
    leave: bool = True,
) -> ArmLog:
    log = ArmLog()
    learns = arm.startswith("online")
    gap = engine.config.online.window_s + engine.config.online.lateness_s + 1.0
    serve_s = learn_s = train_s = 0.0
    for r, batch in enumerate(rounds):
        joining = [uid for uid, j in joins.items() if j == r]
        if joining:
            engine.put_users([world.viewers[uid].to_user() for uid in joining])
        if drift is not None and r == drift.round:
            apply_drift(world, oracle, drift)
        round_watch: list[float] = []
        round_like: list[int] = []
        started = time.perf_counter()
        trained = 0
        learning = 0.0
        for k, session in enumerate(batch):
            viewer = world.viewers[session.user_id]
            best = oracle.best[session.user_id]
            watch_ms = finishes = likes = shown = 0
            expected_ms = 0.0
            items: list[int] = []
            page_fits: list[float] = []
            # The session's will to keep swiping (Viewer.leave_hazard): the same in every arm.
            budget = (
                float(
                    np.random.default_rng(
                        [seed, session.round, session.index, LEAVE_KEY]
                    ).exponential()
                )
                if leave
                else math.inf
            )
            used = 0.0
            for number in range(pages):
                if used >= budget:
                    break
                # A scripted request id: the page's own random draws (exploration) are then the
                # same in every arm that reaches this request in the same state.
                page = engine.feed(session.user_id, PAGE, request_id=f"s{session.index}-p{number}")
                events = []
                fits = []
                for entry in page.items:
                    if used >= budget:
                        # Served but never reached: an impression without a play, which the
                        # trainer leaves out; the page's fit still counts what was served.
                        fits.append(viewer.fit(world.item_by_id[entry.item_id]))
                        continue
                    item = world.item_by_id[entry.item_id]
                    rng = np.random.default_rng(
                        [seed, session.round, session.index, zlib.crc32(item.item_id.encode())]
                    )
                    reaction = viewer.react(item, clock[0], rng, request_id=page.request_id)
                    events.extend(reaction)
                    clock[0] = reaction[-1].ts.timestamp() + 1.0
                    kinds = {e.type for e in reaction}
                    watch_ms += reaction[0].watch_ms or 0
                    expected_ms += viewer.expected_watch_ms(item)
                    finished, liked = int("finish" in kinds), int("like" in kinds)
                    finishes += finished
                    likes += liked
                    shown += 1
                    log.finishes.append(finished)
                    log.durations.append(item.duration_s)
                    log.likes.append(liked)
                    round_like.append(liked)
                    items.append(oracle.index[item.item_id])
                    fits.append(viewer.fit(item))
                    used += viewer.leave_hazard(item)
                engine.ingest(events)
                page_fit = float(np.mean(fits)) / best if fits and best > 0 else 0.0
                page_fits.append(page_fit)
                if session.newcomer:
                    log.newcomer_page_fit.setdefault(session.user_id, []).append(page_fit)
                else:
                    log.established_page_fit.append(page_fit)
            log.session_watch_s[session.index] = watch_ms / 1000.0
            log.session_expected_watch_s[session.index] = expected_ms / 1000.0
            log.session_finish[session.index] = (finishes, shown)
            log.session_like[session.index] = (likes, shown)
            log.session_items[session.index] = items
            log.session_fit[session.index] = float(np.mean(page_fits))
            log.session_page_fits[session.index] = page_fits
            round_watch.append(watch_ms / 1000.0)
            if learns and learn_every > 0 and (k + 1) % learn_every == 0:
                tick = time.perf_counter()
                trained += sum(engine.learn_now().values())
                learning += time.perf_counter() - tick
        serve_s += time.perf_counter() - started - learning
        learn_s += learning
        log.round_watch.append(round_watch)
        log.round_like.append(round_like)
        # The round is over: past the joiner's window, every viewing of it has closed.
        clock[0] += gap
        if learns:
            started = time.perf_counter()
            log.trained_online.append(trained + sum(engine.learn_now().values()))
            learn_s += time.perf_counter() - started
        retrain = retrain_every > 0 and (r + 1) % retrain_every == 0 and r + 1 < len(rounds)
        if (
            learns
            and drift is not None
            and r >= drift.round
            and not log.window_diagnostics
            and (retrain or r + 1 == len(rounds))
        ):
            # The end of the drift window: what the online ranker does for the drifted viewers
            # before a retrain shows the batch model their new tastes.
            started = time.perf_counter()
            drifted = sorted(drift.tastes)
            log.window_diagnostics = diagnose(engine, world, oracle, drifted, focus=drifted)
            log.window_diagnostics["round"] = r + 1
            log.window_diagnostics["seconds"] = time.perf_counter() - started
        if arm != "off" and retrain:
            started = time.perf_counter()
            engine.train()
            train_s += time.perf_counter() - started
        print(
            f"  {arm}: round {r + 1}/{len(rounds)}: {len(batch)} sessions, "
            f"watch/session {np.mean(round_watch):.1f} s, like rate {np.mean(round_like):.4f}"
            + (f", online examples {log.trained_online[-1]}" if learns else ""),
            flush=True,
        )
    if learns:
        started = time.perf_counter()
        log.diagnostics = diagnose(engine, world, oracle, [s.user_id for s in rounds[-1]])
        log.diagnostics["seconds"] = time.perf_counter() - started
    log.seconds = {"serve": serve_s, "learn_now": learn_s, "train": train_s}
    log.online_stats = engine.online_stats()
    log.model_versions = engine.model_versions()
    return log


# ---- why: what online learning changed -----------------------------------------------------------


def _dry_page(engine: Engine, user_id: str, model: ServingModel | None) -> list[str]:
    """The page ``engine.feed`` would serve with ``model``, without its side effect (serving
    marks items seen, so two real feeds in a row could never show the same item)."""
    region = engine.gate.locate(user_id)
    assert region is not None
    handle = engine.gate.open(region, engine.service(region), "serve_feed")
    context = FeedContext(config=engine.config, catalog=engine.catalog, data=handle, model=model)
    query = FeedQuery(
        request_id=uuid.uuid4().hex,
        user_id=user_id,
        region=region,
        n=PAGE,
        now=engine.clock(),
        context=context,
        trace=Trace(),
    )
    pipeline = dataclasses.replace(engine.pipeline, side_effects=[])
    return [item.item_id for item in pipeline.run(query).items]


def _relative_change(after: np.ndarray, before: np.ndarray) -> float:
    scale = float(np.linalg.norm(before, axis=1).mean())
    return float(np.linalg.norm(after - before, axis=1).mean()) / scale if scale else math.nan


def diagnose(
    engine: Engine,
    world: World,
    oracle: Oracle,
    users: list[str],
    focus: list[str] | None = None,
) -> dict[str, Any]:
    """At the end of the online arm: how far the online learner moved from the batch ranker it
    continues (since its latest rebase), and what that does to pages. For each viewer of the last
    round, the page the served (online) ranker would give now, the page the batch ranker would
    give, and the page without any ranker, from the same state; compared by item overlap and by
    normalized fit (paired across viewers). With ``focus``, also how far those viewers' own
    embedding rows moved (``focus_users``; the batch model's rows of those of them it knows)."""
    out: dict[str, Any] = {"movement": {}}
    for region, trainer in engine.trainers.items():
        learner = trainer.learner
        model = engine.slots[region].current
        batch = model.batch_ranker if model is not None else None
        if learner is None or batch is None:
            continue
        skip = ("user.", "item.", "creator.", "tag.")
        before = {k: v for k, v in batch.network.state_dict().items() if not k.startswith(skip)}
        after = learner.network.state_dict()
        moved = math.sqrt(sum(float((after[k] - v).norm() ** 2) for k, v in before.items()))
        size = math.sqrt(sum(float(v.norm() ** 2) for v in before.values()))
        movement = {"dense": moved / size, "steps": learner.steps}
        for name, module in (("users", "user"), ("items", "item")):
            vocab = getattr(batch.vocabs, name)
            keep = [k for k, i in enumerate(vocab.ids) if not i.startswith(ERASED_ID_PREFIX)]
            ids = [vocab.ids[k] for k in keep]
            rows = getattr(batch.network, module).weight.detach().numpy()
            rows = rows[np.asarray(keep, dtype=np.int64) + vocab.reserved]
            movement[name] = _relative_change(learner.tables[name].lookup(ids), rows)
            if name == "users" and focus:
                wanted = set(focus)
                mine = [k for k, i in enumerate(ids) if i in wanted]
                movement["focus_users"] = (
                    _relative_change(
                        learner.tables[name].lookup([ids[k] for k in mine]), rows[mine]
                    )
                    if mine
                    else math.nan
                )
                movement["focus_n"] = len(mine)
        out["movement"][region] = movement
    overlap, fit_online, fit_batch, fit_none = [], [], [], []
    for user_id in users:
        region = engine.gate.locate(user_id)
        model = engine.slots[region].current if region is not None else None
        if model is None or model.ranker is None or model.batch_ranker is None:
            continue
        online = _dry_page(engine, user_id, model)
        batch_page = _dry_page(engine, user_id, model.with_ranker(model.batch_ranker, "batch"))
        none = _dry_page(engine, user_id, model.with_ranker(None, "none"))
        viewer, best = world.viewers[user_id], oracle.best[user_id]

        def fit(page: list[str], viewer: Viewer = viewer, best: float = best) -> float:
            return float(np.mean([viewer.fit(world.item_by_id[i]) for i in page])) / best

        overlap.append(len(set(online) & set(batch_page)) / max(len(online), 1))
        fit_online.append(fit(online))
        fit_batch.append(fit(batch_page))
        fit_none.append(fit(none))
    out["viewers"] = len(overlap)
    out["overlap"] = float(np.mean(overlap)) if overlap else math.nan
    out["online_minus_batch"] = _normal([a - b for a, b in zip(fit_online, fit_batch, strict=True)])
    out["batch_minus_none"] = _normal([a - b for a, b in zip(fit_batch, fit_none, strict=True)])
    out["fit_batch"] = float(np.mean(fit_batch)) if fit_batch else math.nan
    return out


# ---- the run -------------------------------------------------------------------------------------


def config_overrides(pairs: list[str]) -> dict[str, Any]:
    """``section.key=value`` (or ``section.key.sub=value`` into a dict field) as load_config
    overrides; values are JSON where they parse, else strings."""
    defaults = FypConfig().model_dump(mode="json")
    out: dict[str, Any] = {}
    for pair in pairs:
        path, _, raw = pair.partition("=")
        keys = path.split(".")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        section = out.setdefault(keys[0], {})
        if len(keys) == 2:
            section[keys[1]] = value
        elif len(keys) == 3:
            current = section.get(keys[1], dict(defaults[keys[0]][keys[1]]))
            current[keys[2]] = value
            section[keys[1]] = current
        else:
            raise SystemExit(f"--set wants section.key=value, got {pair!r}")
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    now = float(int(time.time()))
    world = build_world(
        WorldConfig(seed=args.seed, n_viewers=args.viewers, n_items=args.items, now=now)
    )
    oracle = Oracle(world)
    ids = [u.user_id for u in world.users]
    pick = random.Random(args.seed + 1)
    newcomers = sorted(pick.sample(ids, args.newcomers))
    held = set(newcomers)
    established = [uid for uid in ids if uid not in held]
    # The established viewers who come back during the run (all of them unless --active).
    pool = (
        sorted(random.Random(args.seed + 2).sample(established, args.active))
        if 0 < args.active < len(established)
        else established
    )
    rounds, joins = schedule(
        pool, newcomers, args.rounds, args.sessions, args.new_sessions, args.seed
    )
    drift = (
        make_drift(world, oracle, pool, args.drift_share, args.drift_round - 1, args.seed)
        if args.scenario == "drift"
        else None
    )
    originals = dict(world.viewers)
    original_best = dict(oracle.best)
    arms = [*args.arms, TUNED] if args.tuned else list(args.arms)
    followed = {uid: set(v.followed) for uid, v in world.viewers.items()}
    overrides = config_overrides(args.set)
    # The newcomers' past is dropped: they arrive with no history when they join.
    visible = without_history_of(world, held)
    history = visible.history
    logs: dict[str, ArmLog] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp) / "base"
        engine = Engine(load_config(base_dir, **overrides), clock=lambda: now)
        load_world(engine, visible)
        started = time.perf_counter()
        engine.train()
        initial_train_s = time.perf_counter() - started
        engine.close()
        setup_s = time.perf_counter() - t0
        print(f"world built, loaded and trained in {setup_s:.0f} s", flush=True)
        for arm in arms:
            # Every arm starts from the world before any drift.
            world.viewers.update(originals)
            oracle.best.update(original_best)
            for uid, viewer in world.viewers.items():
                viewer.followed = set(followed[uid])
            data_dir = Path(tmp) / arm
            shutil.copytree(base_dir, data_dir)
            arm_overrides = dict(overrides)
            if arm == TUNED:
                tuned = config_overrides(args.tuned)
                for key, value in tuned.items():
                    arm_overrides[key] = {**overrides.get(key, {}), **value}
            elif arm != "online":
                arm_overrides["online"] = {**overrides.get("online", {}), "enabled": False}
            clock = [now + 60.0]
            eng = Engine(load_config(data_dir, **arm_overrides), clock=lambda c=clock: c[0])
            logs[arm] = run_arm(
                arm,
                eng,
                world,
                oracle,
                rounds,
                joins,
                args.pages,
                args.retrain_every,
                args.learn_every,
                args.seed,
                clock,
                drift,
                args.leave,
            )
            eng.close()
            shutil.rmtree(data_dir, ignore_errors=True)
        world.viewers.update(originals)
        oracle.best.update(original_best)
    result = summarize(logs, world, rounds, args)
    if drift is not None:
        result["drift"] = drift_summary(
            logs,
            rounds,
            drift,
            retrain_rounds(len(rounds), args.retrain_every),
            result["bar"],
            result["cap"],
            len(world.items),
            args.seed,
        )
        result["drift"]["window_diagnostics"] = logs["online"].window_diagnostics
        if TUNED in logs:
            result["drift"]["window_diagnostics_tuned"] = logs[TUNED].window_diagnostics
        result["drift"]["favourites_moved"] = _favourites_moved(drift, originals)
    result.update(
        active=len(pool),
        viewers=args.viewers,
        items=args.items,
        newcomers=args.newcomers,
        established=len(established),
        events=len(history),
        initial_train_s=initial_train_s,
        setup_s=setup_s,
        total_s=time.perf_counter() - t0,
        overrides=args.set,
        tuned=args.tuned,
    )
    return result


def without_history_of(world: World, held: set[str]) -> World:
    """The world as the engine first sees it: ``held`` viewers (the newcomers) neither
    registered nor in the history; their viewer models stay, to join later."""
    return World(
        config=world.config,
        topics=world.topics,
        creators=world.creators,
        items=world.items,
        users=[u for u in world.users if u.user_id not in held],
        viewers=world.viewers,
        item_topic=world.item_topic,
        item_quality=world.item_quality,
        history=[e for e in world.history if e.user_id not in held],
    )


def retrain_rounds(rounds: int, every: int) -> list[int]:
    """The rounds (1-based) after which the learning arms retrain."""
    return [k for k in range(1, rounds) if k % every == 0] if every > 0 else []


def _favourites_moved(drift: Drift, originals: dict[str, Viewer]) -> dict[str, float]:
    """Share of the drifted viewers' taste on their old favourite topics, before and after."""
    before, after = [], []
    for uid, taste in drift.tastes.items():
        old = np.asarray(originals[uid].taste)
        top = np.argsort(-old, kind="stable")[:FAVOURITES]
        before.append(float(old[top].sum()))
        after.append(float(taste[top].sum()))
    return {"before": float(np.mean(before)), "after": float(np.mean(after))}


# ---- statistics ----------------------------------------------------------------------------------


def _normal(values: list[float]) -> Estimate:
    """Mean and 95 % normal interval. Computed here rather than with ``ArmResults``, which
    reads data of only 0s and 1s as a proportion and gives Wilson's interval: right for a rate,
    wrong for per-session differences that happen to be all 0 or 1."""
    n = len(values)
    if n == 0:
        return Estimate(0, math.nan, math.nan, math.nan)
    mean = float(np.mean(values))
    if n < 2:
        return Estimate(n, mean, math.nan, math.nan)
    half = Z95 * math.sqrt(float(np.var(values, ddof=1)) / n)
    return Estimate(n, mean, mean - half, mean + half)


def _coverage(
    items: list[list[int]], catalog: int, rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """Coverage, its standard error and 95 % normal interval: a grouped jackknife over sessions
    (``JACKKNIFE_GROUPS`` random groups, each left out in turn). A bootstrap would not do here:
    resampling with replacement repeats sessions and so biases a count of distinct items low."""
    arrays = [np.asarray(x, dtype=np.int64) for x in items]
    if not arrays:
        return math.nan, math.nan, math.nan, math.nan
    point = len(np.unique(np.concatenate(arrays))) / catalog
    groups = rng.permutation(len(arrays)) % JACKKNIFE_GROUPS
    left_out = []
    for g in range(JACKKNIFE_GROUPS):
        rest = [a for a, k in zip(arrays, groups, strict=True) if k != g]
        left_out.append(len(np.unique(np.concatenate(rest))) / catalog)
    theta = np.asarray(left_out)
    se = math.sqrt((JACKKNIFE_GROUPS - 1) / JACKKNIFE_GROUPS * ((theta - theta.mean()) ** 2).sum())
    return point, se, point - Z95 * se, point + Z95 * se


def _requests_to_match(fits: list[float], bar: float, cap: int) -> int:
    for k, value in enumerate(fits[:cap]):
        if value >= bar:
            return k + 1
    return cap + 1


def summarize(
    logs: dict[str, ArmLog], world: World, rounds: list[list[Session]], args: argparse.Namespace
) -> dict[str, Any]:
    watch = ArmResults("watch time per session (s)")
    xwatch = ArmResults("expected watch time per session (s)")
    finish = ArmResults("finish rate")
    like = ArmResults("like rate")
    fit = ArmResults("normalized page fit per session")
    to_match = ArmResults("requests to match")
    matched = ArmResults("newcomers matched")
    cap = args.match_cap
    # The off arm's pages set the bar (batch-only's when a script ran without the off arm).
    bar = float(np.median(logs["off" if "off" in logs else "batch-only"].established_page_fit))
    out: dict[str, Any] = {"arms": {}, "bar": bar, "cap": cap, "rounds_n": len(rounds)}
    rng = np.random.default_rng(args.seed)
    coverage: dict[str, tuple[float, float, float, float]] = {}
    for arm, log in logs.items():
        for value in log.session_watch_s.values():
            watch.add(arm, value)
        for value in log.session_expected_watch_s.values():
            xwatch.add(arm, value)
        for value in log.session_fit.values():
            fit.add(arm, value)
        for value in log.finishes:
            finish.add(arm, value)
        for value in log.likes:
            like.add(arm, value)
        per_newcomer = []
        curve: list[list[float]] = [[] for _ in range(cap)]
        for fits in log.newcomer_page_fit.values():
            n = _requests_to_match(fits, bar, cap)
            per_newcomer.append(n)
            to_match.add(arm, n)
            matched.add(arm, float(n <= cap))
            for k, value in enumerate(fits[:cap]):
                curve[k].append(value)
        coverage[arm] = _coverage(list(log.session_items.values()), len(world.items), rng)
        stats = {}
        for region, entry in log.online_stats.items():
            trainer = entry.get("trainer", {})
            joiner = entry.get("joiner", {})
            stats[region] = {
                "joined": int(joiner.get("emitted", 0)),
                "late_events": int(joiner.get("late_events", 0)),
                "trained": int(trainer.get("trained", 0)),
                "skipped": int(trainer.get("skipped", 0)),
                "steps": int(trainer.get("steps", 0)),
                "publishes": int(trainer.get("publishes", 0)),
                "rebases": int(trainer.get("rebases", 0)),
                "last_loss": trainer.get("last_loss"),
                # Train-then-test scores of the main learner and of the batch model it continues,
                # on the same examples (since the latest rebase).
                "progressive": entry.get("learners", {}).get("main", {}).get("progressive", {}),
            }
        out["arms"][arm] = {
            "sessions": len(log.session_watch_s),
            "impressions": len(log.likes),
            "watch": watch.estimate(arm),
            "xwatch": xwatch.estimate(arm),
            "finish": finish.estimate(arm),
            "like": like.estimate(arm),
            "fit": fit.estimate(arm),
            "duration": _normal(log.durations),
            "coverage": coverage[arm],
            "to_match": to_match.estimate(arm),
            "matched": matched.estimate(arm),
            "curve": [float(np.mean(c)) if c else math.nan for c in curve],
            "established_fit": _normal(log.established_page_fit),
            "round_watch": [float(np.mean(w)) for w in log.round_watch],
            "round_like": [float(np.mean(x)) for x in log.round_like],
            "trained_online": log.trained_online,
            "seconds": log.seconds,
            "online": stats,
            "versions": log.model_versions,
            "diagnostics": log.diagnostics,
        }
    diffs: dict[str, dict[str, Any]] = {}
    for treat, other in diff_pairs(logs):
        a, b = coverage[treat], coverage[other]
        half = Z95 * math.hypot(a[1], b[1])
        diffs[f"{treat} - {other}"] = {
            "watch": watch.difference(treat, other),
            "xwatch": xwatch.difference(treat, other),
            "finish": finish.difference(treat, other),
            "like": like.difference(treat, other),
            "fit": fit.difference(treat, other),
            "coverage": Estimate(0, a[0] - b[0], a[0] - b[0] - half, a[0] - b[0] + half),
            "to_match": to_match.difference(treat, other),
            "paired": _paired(logs[treat], logs[other]),
        }
    out["diffs"] = diffs
    return out


def diff_pairs(logs: dict[str, Any]) -> list[tuple[str, str]]:
    """(treatment, control) of the reported differences."""
    pairs = [("online", "batch-only")]
    if TUNED in logs:
        pairs.append((TUNED, "batch-only"))
    return [*pairs, ("batch-only", "off")] if "off" in logs else pairs


def _paired(a: ArmLog, b: ArmLog, only: set[int] | None = None) -> dict[str, Estimate]:
    """Per-session differences (the same session of the stream in both arms)."""
    keys = sorted(set(a.session_watch_s) & set(b.session_watch_s))
    if only is not None:
        keys = [k for k in keys if k in only]

    def rate(pair: tuple[int, int]) -> float:
        return pair[0] / pair[1] if pair[1] else 0.0

    return {
        "watch": _normal([a.session_watch_s[k] - b.session_watch_s[k] for k in keys]),
        "xwatch": _normal(
            [a.session_expected_watch_s[k] - b.session_expected_watch_s[k] for k in keys]
        ),
        "finish": _normal([rate(a.session_finish[k]) - rate(b.session_finish[k]) for k in keys]),
        "like": _normal([rate(a.session_like[k]) - rate(b.session_like[k]) for k in keys]),
        "fit": _normal([a.session_fit[k] - b.session_fit[k] for k in keys]),
    }


def group_summary(
    logs: dict[str, ArmLog], keys: set[int], catalog: int, seed: int
) -> dict[str, Any]:
    """The session metrics (watch, finish, like, coverage, page fit) over the sessions ``keys``
    only, per arm and as differences (Welch and paired)."""
    watch = ArmResults("watch time per session (s)")
    xwatch = ArmResults("expected watch time per session (s)")
    finish = ArmResults("finish rate")
    like = ArmResults("like rate")
    fit = ArmResults("normalized page fit per session")
    rng = np.random.default_rng(seed)
    coverage: dict[str, tuple[float, float, float, float]] = {}
    out: dict[str, Any] = {"arms": {}, "diffs": {}}
    for arm, log in logs.items():
        mine = [k for k in sorted(log.session_watch_s) if k in keys]
        impressions = 0
        for k in mine:
            watch.add(arm, log.session_watch_s[k])
            xwatch.add(arm, log.session_expected_watch_s[k])
            fit.add(arm, log.session_fit[k])
            for metric, (hits, shown) in (
                (finish, log.session_finish[k]),
                (like, log.session_like[k]),
            ):
                for _ in range(hits):
                    metric.add(arm, 1.0)
                for _ in range(shown - hits):
                    metric.add(arm, 0.0)
            impressions += log.session_finish[k][1]
        coverage[arm] = _coverage([log.session_items[k] for k in mine], catalog, rng)
        out["arms"][arm] = {
            "sessions": len(mine),
            "impressions": impressions,
            "watch": watch.estimate(arm),
            "xwatch": xwatch.estimate(arm),
            "finish": finish.estimate(arm),
            "like": like.estimate(arm),
            "fit": fit.estimate(arm),
            "coverage": coverage[arm],
        }
    for treat, other in diff_pairs(logs):
        a, b = coverage[treat], coverage[other]
        half = Z95 * math.hypot(a[1], b[1])
        out["diffs"][f"{treat} - {other}"] = {
            "watch": watch.difference(treat, other),
            "xwatch": xwatch.difference(treat, other),
            "finish": finish.difference(treat, other),
            "like": like.difference(treat, other),
            "fit": fit.difference(treat, other),
            "coverage": Estimate(0, a[0] - b[0], a[0] - b[0] - half, a[0] - b[0] + half),
            "paired": _paired(logs[treat], logs[other], keys),
        }
    return out


def drift_summary(
    logs: dict[str, ArmLog],
    rounds: list[list[Session]],
    drift: Drift,
    retrains: list[int],
    bar: float,
    cap: int,
    catalog: int,
    seed: int,
) -> dict[str, Any]:
    """The drift scenario's groups of sessions, the drifted viewers' requests to re-match their
    new taste, and their page fit by round."""
    drifted = set(drift.tastes)
    # The first retrain after the drift: after round ``first`` (1-based), i.e. before the round
    # of index ``first``.
    first = next((k for k in retrains if k > drift.round), None)
    sessions = [s for batch in rounds for s in batch]
    after = [s for s in sessions if s.round >= drift.round and not s.newcomer]
    groups: dict[str, set[int]] = {
        "drifted, after the drift": {s.index for s in after if s.user_id in drifted},
    }
    if first is not None:
        groups["drifted, before the first retrain after it"] = {
            s.index for s in after if s.user_id in drifted and s.round < first
        }
        groups["drifted, after that retrain"] = {
            s.index for s in after if s.user_id in drifted and s.round >= first
        }
    groups["not drifted (established), after the drift"] = {
        s.index for s in after if s.user_id not in drifted
    }
    groups["drifted, before the drift"] = {
        s.index for s in sessions if s.user_id in drifted and s.round < drift.round
    }
    out: dict[str, Any] = {
        "groups": {
            name: group_summary(logs, keys, catalog, seed + k)
            for k, (name, keys) in enumerate(groups.items())
        },
        "first_retrain": first,
        "drifted": len(drifted),
        "drifted_seen_after": len({s.user_id for s in after if s.user_id in drifted}),
    }
    # Requests to re-match: per drifted viewer with at least ``cap`` requests after the drift.
    order = sorted(after, key=lambda s: s.index)
    rematch = ArmResults("requests to re-match")
    rematched = ArmResults("drifted viewers re-matched")
    per_viewer: dict[str, dict[str, int]] = {}
    for arm, log in logs.items():
        fits: dict[str, list[float]] = {}
        for s in order:
            if s.user_id in drifted:
                fits.setdefault(s.user_id, []).extend(log.session_page_fits[s.index])
        for uid, values in sorted(fits.items()):
            if len(values) < cap:
                continue
            n = _requests_to_match(values, bar, cap)
            rematch.add(arm, n)
            rematched.add(arm, float(n <= cap))
            per_viewer.setdefault(arm, {})[uid] = n
    out["rematch"] = {arm: rematch.estimate(arm) for arm in logs}
    out["rematched"] = {arm: rematched.estimate(arm) for arm in logs}
    out["rematch_diffs"] = {}
    for treat, other in diff_pairs(logs):
        a, b = per_viewer.get(treat, {}), per_viewer.get(other, {})
        both = sorted(set(a) & set(b))
        out["rematch_diffs"][f"{treat} - {other}"] = {
            "welch": rematch.difference(treat, other),
            "paired": _normal([float(a[u] - b[u]) for u in both]),
        }
    out["rematch_viewers"] = len(per_viewer.get("online", {}))
    # Page fit of the drifted viewers' sessions by round (0 sessions: nan).
    out["round_fit"] = {}
    for arm, log in logs.items():
        row = []
        for batch in rounds:
            values = [log.session_fit[s.index] for s in batch if s.user_id in drifted]
            row.append(float(np.mean(values)) if values else math.nan)
        out["round_fit"][arm] = row
    out["round_sessions"] = [sum(s.user_id in drifted for s in batch) for batch in rounds]
    return out


# ---- the report ----------------------------------------------------------------------------------


def _ci(
    e: Estimate | tuple[float, ...] | list[float],
    digits: int = 1,
    scale: float = 1.0,
    unit: str = "",
) -> str:
    # (point, se, low, high): coverage's jackknife, a list once read back from --json
    if isinstance(e, tuple | list):
        mean, low, high = e[0], e[2], e[3]
    else:
        mean, low, high = e.mean, e.low, e.high
    if not math.isfinite(mean):
        return "n/a"
    f = f"{{:.{digits}f}}"
    return f"{f.format(mean * scale)}{unit} [{f.format(low * scale)}, {f.format(high * scale)}]"


def _signed(e: Estimate, digits: int = 1, scale: float = 1.0, unit: str = "") -> str:
    if not math.isfinite(e.mean):
        return "n/a"
    f = f"{{:+.{digits}f}}"
    return (
        f"{f.format(e.mean * scale)}{unit} [{f.format(e.low * scale)}, {f.format(e.high * scale)}]"
    )


VERDICT_METRICS = (
    ("xwatch", "expected watch time", 1),
    ("watch", "sampled watch time", 1),
    ("finish", "finish rate", 1),
    ("like", "like rate", 1),
    ("coverage", "coverage", 1),
    ("fit", "page fit", 1),
    ("to_match", "newcomer requests to match", -1),
)
"""(key, name, +1 when higher is better) of the metrics the verdict of one run reads."""

WITHIN_RUN_CAVEAT = (
    "Intervals within one run treat its sessions as independent, which they are not (each "
    "arm's sessions share one trajectory of viewer state, items seen and region statistics), "
    "so they are too narrow, the paired ones most of all; the static section's verdict rests "
    "on independent replications (`--replications`)."
)


def _verdict_text(judged: list[tuple[str, Estimate, int]], watch: Estimate, how: str) -> str:
    """The verdict sentence: the headline reads ``watch`` (expected watch time), then which of
    the ``judged`` metrics (name, estimate, +1 when higher is better) online wins, loses, ties."""
    wins, losses, ties = [], [], []
    for name, e, sign in judged:
        low, high = (e.low, e.high) if sign > 0 else (-e.high, -e.low)  # "better" is positive
        if low > 0:
            wins.append(name)
        elif high < 0:
            losses.append(name)
        else:
            ties.append(name)
    head = (
        "online beats batch-only on watch time"
        if watch.low > 0
        else "online does not beat batch-only on watch time"
    )
    parts = [
        f"wins on {', '.join(wins) or 'nothing'}",
        f"loses on {', '.join(losses) or 'nothing'}",
    ]
    if ties:
        parts.append(f"no difference (the interval contains 0) on {', '.join(ties)}")
    return f"{head}; {how} it {'; '.join(parts)}"


def verdict(d: dict[str, Any], names: dict[str, str] | None = None) -> str:
    """Which metrics online wins, loses and ties against batch-only within one run, by Welch's
    interval (``names`` renames metrics); the headline reads the expected watch time."""
    judged = [
        ((names or {}).get(key, default), d[key], sign) for key, default, sign in VERDICT_METRICS
    ]
    return _verdict_text(judged, d["xwatch"], "by Welch's interval within this run")


_ARM_COLUMNS = (
    "sessions / videos watched",
    "watch time per session, s",
    "expected watch time, s",
    "finish rate, %",
    "like rate, %",
    "coverage, %",
    "page fit",
)
_DIFF_COLUMNS = (
    "watch time, s",
    "watch time, paired",
    "expected watch, s",
    "expected watch, paired",
    "finish",
    "finish, paired",
    "like",
    "like, paired",
    "coverage",
    "page fit",
    "page fit, paired",
)


def _head(labels: tuple[str, ...], numeric: tuple[str, ...]) -> list[str]:
    """A markdown table's header and rule: ``labels`` left-aligned, ``numeric`` right-aligned."""
    cells = [*labels, *numeric]
    return ["| " + " | ".join(cells) + " |", "|" + "---|" * len(labels) + "---:|" * len(numeric)]


def _arm_head(*match: str) -> list[str]:
    """Header of a per-arm table (``_arm_row``), ending with the matching columns."""
    return _head(("arm",), (*_ARM_COLUMNS, *match))


def _diff_head(labels: tuple[str, ...], match: str | None) -> list[str]:
    """Header of a differences table (``_diff_row``), with the requests-to-match column if any."""
    return _head(labels, (*_DIFF_COLUMNS, *((match,) if match else ())))


def _arm_row(arm: str, a: dict[str, Any], match: tuple[Any, Any] | None) -> str:
    """A row of the per-arm table; ``match`` = (requests to (re-)match, share matched)."""
    row = (
        f"| {arm} | {a['sessions']:,} / {a['impressions']:,} | {_ci(a['watch'])} | "
        f"{_ci(a['xwatch'])} | "
        f"{_ci(a['finish'], 2, 100)} | {_ci(a['like'], 2, 100)} | "
        f"{_ci(a['coverage'], 1, 100)} | {_ci(a['fit'], 3)} |"
    )
    if match is not None:
        row += f" {_ci(match[0], 2)} | {_ci(match[1], 1, 100)} |"
    return row


def _diff_row(name: str, d: dict[str, Any], to_match: Estimate | None) -> str:
    p = d["paired"]
    row = (
        f"| {name} | {_signed(d['watch'])} | {_signed(p['watch'])} | "
        f"{_signed(d['xwatch'])} | {_signed(p['xwatch'])} | "
        f"{_signed(d['finish'], 2, 100)} | {_signed(p['finish'], 2, 100)} | "
        f"{_signed(d['like'], 2, 100)} | {_signed(p['like'], 2, 100)} | "
        f"{_signed(d['coverage'], 1, 100)} | {_signed(d['fit'], 3)} | {_signed(p['fit'], 3)} |"
    )
    if to_match is not None:
        row += f" {_signed(to_match, 2)} |"
    return row


def _overrides_text(r: dict[str, Any]) -> str:
    text = ", ".join(f"`{s}`" for s in r["overrides"]) or "none (library defaults)"
    if r.get("tuned"):
        text += f"; the secondary arm `{TUNED}` only: " + ", ".join(f"`{s}`" for s in r["tuned"])
    return text


def _header(r: dict[str, Any], command: str) -> list[str]:
    """Command, date, machine, runtime and overrides lines of a section."""
    m = machine_info(REPO)
    secs = {arm: a["seconds"] for arm, a in r["arms"].items()}
    overrides = _overrides_text(r)
    return [
        f"Command: `{command}`  ",
        f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, fyp {m['fyp']} "
        f"(commit {m['git']}); a shared machine, so treat times as indicative  ",
        f"Runtime: {r['total_s'] / 60:.1f} min (setup {r['setup_s']:.0f} s, of which initial "
        f"training {r['initial_train_s']:.0f} s; per arm serve / learn_now / train: "
        + "; ".join(
            f"{arm} {s['serve']:.0f} / {s['learn_now']:.0f} / {s['train']:.0f} s"
            for arm, s in secs.items()
        )
        + ")  ",
        f"Config overrides (all arms): {overrides}",
    ]


def _setup(r: dict[str, Any]) -> str:
    """The paragraph that describes the run."""
    retrains = retrain_rounds(r["rounds_n"], r["args"]["retrain_every"])
    return (
        f"Demo world of {r['items']:,} videos and {r['viewers']:,} viewers (seed "
        f"{r['args']['seed']}); {r['newcomers']} viewers held out as newcomers (their history "
        f"dropped), the other {r['established']:,} and their {r['events']:,} events imported "
        f"and trained on once; the trained data directory copied into each arm. Then "
        f"{r['rounds_n']} rounds, each of {r['args']['sessions']} sessions of established "
        + (
            f"viewers (drawn from a returning pool of {r['active']}) "
            if r["active"] < r["established"]
            else "viewers "
        )
        + "plus the active newcomers (a cohort joins in each of the first "
        f"{max(1, r['rounds_n'] - r['args']['new_sessions'] + 1)} rounds and comes back for "
        f"{r['args']['new_sessions']} rounds), "
        + (
            f"every session at most {r['args']['pages']} pages of {PAGE}: the viewer leaves "
            "after the video at which the leave hazards of the videos watched "
            "(`Viewer.leave_hazard`: 0.02 plus up to 0.10 for a video that fits not at all, "
            "over the viewer's patience) add up to the session's budget, an Exp(1) draw, so a "
            "feed that fits better keeps its viewers longer; "
            if r["args"].get("leave", False)
            else f"every session {r['args']['pages']} pages of {PAGE}; "
        )
        + "each page watched item by item by the world's viewer model and its events "
        "ingested before the next request; the same session stream, the same leaving budgets "
        "and the same reaction draws per (session, item) in every arm. The online arm calls "
        "`learn_now()` "
        + (
            f"after every {r['args']['learn_every']} sessions and "
            if r["args"]["learn_every"] > 0
            else ""
        )
        + "at the end of each round, when the clock has moved past the joiner's window "
        "(600 s + 30 s lateness) so that every viewing of the round has closed; "
        "the online and batch-only arms retrain (`Engine.train()`) after rounds "
        f"{', '.join(map(str, retrains)) or '(never)'}; the off arm never learns model "
        "parameters. Every arm keeps updating the viewer's own state (seen items, "
        "affinities, the events the retrieval folds in)."
    )


def _intervals(r: dict[str, Any]) -> str:
    """The paragraph that says how the intervals are computed."""
    return (
        "Intervals are 95 %: watch time per session (sum of the session's plays' `watch_ms`) "
        "normal across sessions; *expected* watch time per session (the sum over the videos "
        "watched of the mean `watch_ms` the viewer model gives each, "
        "`Viewer.expected_watch_ms`: the same quantity without the sampling noise of the "
        "reactions) likewise; finish and like rate per video watched, Wilson; coverage "
        "(distinct items shown / catalog) grouped jackknife over sessions (20 groups); "
        "requests to match normal across newcomers, matched share Wilson. Matching: "
        + MATCH
        + f" (bar = "
        f"{r['bar']:.3f}; cap = {r['cap']} requests). *Page fit*: the session's mean normalized "
        "page fit (what was served, judged by the hidden truth: less noisy than reactions), "
        "normal across sessions."
    )


def _trainer_text(online: dict[str, Any], arm: str = "online") -> str:
    stats = online["online"].values()
    trained = sum(s["trained"] for s in stats)
    skipped = sum(s["skipped"] for s in stats)
    joined = sum(s["joined"] for s in stats)
    late = sum(s["late_events"] for s in stats)
    publishes = sum(s["publishes"] for s in stats)
    rebases = sum(s["rebases"] for s in stats)
    who = "Online trainer" if arm == "online" else f"Online trainer of `{arm}`"
    return (
        f"{who} over the run (both regions): {joined:,} viewings joined, "
        f"{trained:,} trained on, {skipped:,} skipped, {publishes} publishes, {rebases} "
        f"rebases onto a new batch model, {late:,} events late for the joiner; examples "
        f"trained per round: {', '.join(map(str, online['trained_online']))}."
    )


def _movement_text(diag: dict[str, Any]) -> str:
    parts = []
    for region, m in diag["movement"].items():
        text = (
            f"{region}: dense weights {100 * m['dense']:.1f} %, viewer rows "
            f"{100 * m['users']:.2f} %, item rows {100 * m['items']:.2f} % ({m['steps']} steps)"
        )
        if "focus_users" in m:
            text += (
                f", the drifted viewers' own rows {100 * m['focus_users']:.2f} % "
                f"({m['focus_n']} of them in this region)"
            )
        parts.append(text)
    return "; ".join(parts)


def section(r: dict[str, Any], command: str) -> str:
    arms = r["arms"]
    rows = [_arm_row(arm, a, (a["to_match"], a["matched"])) for arm, a in arms.items()]
    diff_rows = [_diff_row(name, d, d["to_match"]) for name, d in r["diffs"].items()]
    cap = r["cap"]
    curve_rows = [
        f"| {arm} | " + " | ".join(f"{v:.3f}" for v in a["curve"]) + " |" for arm, a in arms.items()
    ]
    round_rows = [
        f"| {arm} | " + " | ".join(f"{v:.0f}" for v in a["round_watch"]) + " |"
        for arm, a in arms.items()
    ]
    online = arms["online"]
    headline = verdict(r["diffs"]["online - batch-only"])
    diag = online["diagnostics"]
    durations = ", ".join(f"{arm} {_ci(a['duration'])}" for arm, a in arms.items())
    per_session = ", ".join(
        f"{arm} {a['impressions'] / max(a['sessions'], 1):.1f}" for arm, a in arms.items()
    )
    movement = _movement_text(diag)
    return "\n".join(
        [
            START,
            "## Closed loop: learning while serving (`bench/closed_loop.py`)",
            "",
            *_header(r, command),
            "",
            _setup(r),
            "",
            _intervals(r),
            "",
            *_arm_head("newcomer requests to match", "newcomers matched, %"),
            *rows,
            "",
            "Differences (Welch's interval; *paired* = the same session in both arms, normal "
            "interval of the per-session differences; rates in percentage points):",
            "",
            *_diff_head(("difference",), "requests to match"),
            *diff_rows,
            "",
            f"**Verdict: {headline}.** {WITHIN_RUN_CAVEAT}",
            "",
            (
                "Watch time per session depends on how long viewers stay (a better fit keeps "
                "them longer) and on the length of the videos served; the ranker's value model "
                "weighs watch *ratio*, finishes and likes, not seconds. "
                if r["args"].get("leave", False)
                else "Sessions have a fixed length here (`--no-leave`), so watch time per "
                "session depends on the length of the videos served as well as on how well "
                "they fit; the ranker's value model weighs watch *ratio*, finishes and likes, "
                "not seconds. "
            )
            + f"Mean length of the served videos, s: {durations}; videos watched per session: "
            f"{per_session}.",
            "",
            "Newcomers' mean normalized page fit by request number (established median = "
            f"{r['bar']:.3f}):",
            "",
            "| arm | " + " | ".join(str(k + 1) for k in range(cap)) + " |",
            "|---|" + "---:|" * cap,
            *curve_rows,
            "",
            "Watch time per session by round, s:",
            "",
            "| arm | " + " | ".join(str(k + 1) for k in range(r["rounds_n"])) + " |",
            "|---|" + "---:|" * r["rounds_n"],
            *round_rows,
            "",
            _trainer_text(online),
            "",
            "Why, measured at the end of the online arm (since its latest rebase onto a batch "
            "model): how far the online learner moved from that batch ranker (relative L2 change; "
            f"{movement}); and for the {diag['viewers']} viewers of the last round, the page the "
            "online ranker would serve now against the page the batch ranker would serve from the "
            "same state (no side effects): "
            f"{100 * diag['overlap']:.0f} % of items in common, normalized page fit online - batch "
            f"{_signed(diag['online_minus_batch'], 4)}; for scale, the batch ranker against no "
            f"ranker at all: {_signed(diag['batch_minus_none'], 4)} (batch ranker's pages "
            f"{diag['fit_batch']:.3f}).",
            END,
        ]
    )


def _rounds_text(rounds: list[int]) -> str:
    return ", ".join(map(str, rounds)) or "(never)"


def drift_section(r: dict[str, Any], command: str) -> str:
    arms, d = r["arms"], r["drift"]
    args = r["args"]
    groups = d["groups"]
    start = args["drift_round"]
    first = d["first_retrain"]
    retrains = retrain_rounds(r["rounds_n"], args["retrain_every"])
    window = f"rounds {start}-{first}" if first is not None else f"rounds {start}-{r['rounds_n']}"
    moved = d["favourites_moved"]
    after = groups["drifted, after the drift"]
    rows = [_arm_row(arm, a, (a["to_match"], a["matched"])) for arm, a in arms.items()]
    diff_rows = [_diff_row(name, x, x["to_match"]) for name, x in r["diffs"].items()]
    drift_rows = [
        _arm_row(arm, a, (d["rematch"][arm], d["rematched"][arm]))
        for arm, a in after["arms"].items()
    ]
    drift_diff_rows = [
        _diff_row(name, x, d["rematch_diffs"][name]["welch"]) for name, x in after["diffs"].items()
    ]
    group_rows = []
    for name, g in groups.items():
        sessions = g["arms"]["online"]["sessions"]
        for pair, x in g["diffs"].items():
            group_rows.append(_diff_row(f"{name} ({sessions}) | {pair}", x, None))
    marks = dict.fromkeys(range(1, r["rounds_n"] + 1), "")
    marks[start] = " (drift)"
    for k in retrains:
        marks[k + 1] = marks[k + 1] + " (after a retrain)"
    fit_rows = [
        f"| {arm} | " + " | ".join(f"{v:.3f}" for v in row) + " |"
        for arm, row in d["round_fit"].items()
    ]
    online = arms["online"]
    wd = d["window_diagnostics"]
    verdict_drift = verdict(
        {
            **after["diffs"]["online - batch-only"],
            "to_match": d["rematch_diffs"]["online - batch-only"]["welch"],
        },
        {"to_match": "drifted viewers' requests to re-match"},
    )
    rematch_paired = "; ".join(
        f"{name}: {_signed(x['paired'], 2)}" for name, x in d["rematch_diffs"].items()
    )
    # Drifted viewers' page fit: the round before the drift, the drift round, the window's end.
    trajectory = []
    before_k, end_k = start - 2, (first if first is not None else r["rounds_n"]) - 1
    for arm, row in d["round_fit"].items():
        points = [row[k] for k in (before_k, start - 1, end_k) if 0 <= k < len(row)]
        trajectory.append(f"{arm} " + " -> ".join(f"{v:.3f}" for v in points))
    ends = {arm: row[end_k] for arm, row in d["round_fit"].items()}
    if all(abs(v - ends["off"]) < 0.02 for v in ends.values()):
        recovery = (
            " The off arm, which learns no model parameters, recovers as far by then: the "
            "recovery comes from the viewer state that every arm keeps updating."
        )
    else:
        recovery = ""
    window_name = "drifted, before the first retrain after it"
    in_window = groups.get(window_name)
    window_fit = (
        ", ".join(
            f"{pair} {_signed(x['paired']['fit'], 3)}" for pair, x in in_window["diffs"].items()
        )
        if in_window
        else "n/a"
    )
    tuned_lines: list[str] = []
    if TUNED in arms:
        tuned_lines = ["", _trainer_text(arms[TUNED], TUNED)]
        wdt = d.get("window_diagnostics_tuned") or {}
        if wdt:
            tuned_lines.append(
                f"`{TUNED}` at the end of the drift window: {_movement_text(wdt)}; page fit "
                f"online - batch ranker for the drifted viewers "
                f"{_signed(wdt['online_minus_batch'], 4)} ({100 * wdt['overlap']:.0f} % of items "
                "in common)."
            )
    return "\n".join(
        [
            DRIFT_START,
            "## Closed loop in a changing world: taste drift "
            "(`bench/closed_loop.py --scenario drift`)",
            "",
            *_header(r, command),
            "",
            f"**The change.** At the start of round {start}, {d['drifted']} of the "
            f"{r['active']} established viewers of the returning pool "
            f"({100 * args['drift_share']:.0f} %) change taste: their three favourite topics "
            "move to three other topics (the taste vector is permuted per viewer, seeded, so "
            "they are as focused as before); the share of their taste on their old favourite "
            f"topics falls from {100 * moved['before']:.0f} % to {100 * moved['after']:.1f} %. "
            "The same viewers get the same new tastes at the same moment in every arm (each arm "
            "starts from the original world). The learning arms retrain after rounds "
            f"{_rounds_text(retrains)} only, so in {window} no batch model has seen a drifted "
            "viewer's new taste: there only the online arm's ranker can learn it, while every "
            "arm's viewer state (affinities, the recent events the retrieval folds in) follows "
            f"it as events arrive. {d['drifted_seen_after']} of the drifted viewers came back "
            "after the drift.",
            "",
            _setup(r),
            "",
            _intervals(r)
            + " For the drifted viewers the normalization uses the best page for the taste "
            "they have at that moment. A drifted viewer's *requests to re-match*: the number "
            "of their requests after the drift until a page matches the new taste (same bar), "
            f"cap + 1 when none of the first {r['cap']} did; over the "
            f"{d['rematch_viewers']} drifted viewers with at least {r['cap']} requests after the "
            "drift.",
            "",
            "### All sessions",
            "",
            *_arm_head("newcomer requests to match", "newcomers matched, %"),
            *rows,
            "",
            "Differences (Welch's interval; *paired* = the same session in both arms; rates in "
            "percentage points):",
            "",
            *_diff_head(("difference",), "requests to match"),
            *diff_rows,
            "",
            f"All sessions: {verdict(r['diffs']['online - batch-only'])}.",
            "",
            f"### Drifted viewers after the drift (rounds {start}-{r['rounds_n']})",
            "",
            *_arm_head("requests to re-match", "re-matched, %"),
            *drift_rows,
            "",
            *_diff_head(("difference",), "requests to re-match"),
            *drift_diff_rows,
            "",
            f"Requests to re-match, paired by viewer: {rematch_paired}.",
            "",
            f"**Verdict for the drifted viewers after the drift: {verdict_drift}.** "
            + WITHIN_RUN_CAVEAT,
            "",
            "All differences by group of sessions (the number of sessions per arm in "
            "parentheses; the window before the first retrain is where only online learning "
            "can know the new tastes):",
            "",
            *_diff_head(("group", "difference"), None),
            *group_rows,
            "",
            "Drifted viewers' mean normalized page fit by round (judged by the taste they have "
            "then; the rounds after a retrain are served by the new batch model):",
            "",
            "| arm | " + " | ".join(f"{k}{marks[k]}" for k in range(1, r["rounds_n"] + 1)) + " |",
            "|---|" + "---:|" * r["rounds_n"],
            *fit_rows,
            "| sessions | " + " | ".join(str(n) for n in d["round_sessions"]) + " |",
            "",
            f"Reading: the drifted viewers' page fit (the round before the drift -> the drift "
            f"round -> the last round before the first retrain after it): "
            f"{'; '.join(trajectory)}. Paired page-fit difference in that window: "
            f"{window_fit}.{recovery}",
            "",
            _trainer_text(online),
            "",
            f"Why, measured in the online arm at the end of the drift window (after round "
            f"{wd.get('round', 'n/a')}, before the retrain): how far the online learner had "
            f"moved from the batch ranker it continues (relative L2 change; "
            f"{_movement_text(wd)}); and for the {wd['viewers']} drifted viewers, the page the "
            "online ranker would serve against the page the batch ranker would serve from the "
            f"same state: {100 * wd['overlap']:.0f} % of items in common, normalized page fit "
            f"online - batch {_signed(wd['online_minus_batch'], 4)}; for scale, batch ranker "
            f"against no ranker: {_signed(wd['batch_minus_none'], 4)} (batch ranker's pages "
            f"{wd['fit_batch']:.3f}). At the end of the run, for the "
            f"{online['diagnostics']['viewers']} viewers of the last round: "
            f"{_movement_text(online['diagnostics'])}; page fit online - batch "
            f"{_signed(online['diagnostics']['online_minus_batch'], 4)}.",
            *tuned_lines,
            DRIFT_END,
        ]
    )


# ---- replications ----------------------------------------------------------------------------

REPLICATED_METRICS = (
    # (key, label, higher is better, digits, scale)
    ("xwatch", "expected watch time per session, s", True, 1, 1.0),
    ("watch", "sampled watch time per session, s", True, 1, 1.0),
    ("finish", "finish rate, %", True, 2, 100.0),
    ("like", "like rate, %", True, 2, 100.0),
    ("fit", "page fit", True, 4, 1.0),
    ("coverage", "coverage, %", True, 1, 100.0),
    ("to_match", "newcomer requests to match", False, 2, 1.0),
    ("per_session", "videos watched per session", True, 1, 1.0),
)


def _replicate_value(arm: dict[str, Any], key: str) -> float:
    if key == "coverage":
        return float(arm["coverage"][0])
    if key == "per_session":
        return arm["impressions"] / max(arm["sessions"], 1)
    return float(arm[key].mean)


def _t_interval(values: list[float]) -> Estimate:
    """Mean and 95 % Student-t interval across independent replications."""
    from scipy.stats import t as student_t

    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return Estimate(n, mean, math.nan, math.nan)
    half = float(student_t.ppf(0.975, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return Estimate(n, mean, mean - half, mean + half)


def run_replications(args: argparse.Namespace, argv: list[str]) -> list[dict[str, Any]]:
    """Run the closed loop once per seed ``args.seed .. args.seed + K - 1``, each in its own
    process (``args.jobs`` at a time), and return their results."""
    import subprocess

    passthrough: list[str] = []
    skip_next = False
    for a in argv:
        if skip_next:
            skip_next = False
            continue
        name = a.split("=", 1)[0]
        if name in ("--replications", "--jobs", "--seed", "--json", "--section"):
            skip_next = "=" not in a
            continue
        if name == "--no-docs":
            continue
        passthrough.append(a)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        pending = [args.seed + k for k in range(args.replications)]
        running: list[tuple[int, Any, Path, Any]] = []
        while pending or running:
            while pending and len(running) < args.jobs:
                seed = pending.pop(0)
                out = Path(tmp) / f"seed{seed}.json"
                cmd = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    *passthrough,
                    "--seed",
                    str(seed),
                    "--no-docs",
                    "--json",
                    str(out),
                ]
                log = (Path(tmp) / f"seed{seed}.log").open("w")  # closed when it ends
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
                running.append((seed, proc, out, log))
                print(f"replication seed {seed} started", flush=True)
            time.sleep(2.0)
            for entry in list(running):
                seed, proc, out, log = entry
                if proc.poll() is None:
                    continue
                running.remove(entry)
                log.close()
                if proc.returncode != 0:
                    tail = (Path(tmp) / f"seed{seed}.log").read_text()[-2000:]
                    raise RuntimeError(f"replication seed {seed} failed:\n{tail}")
                result = json.loads(out.read_text(), object_hook=_estimate_or_dict)
                result["seed"] = seed
                results.append(result)
                print(f"replication seed {seed} done", flush=True)
    return sorted(results, key=lambda r: r["seed"])


def replicated_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm, each metric's mean over the replications; per pair of arms, the differences
    replication by replication with their mean and a t interval across replications."""
    arms = list(results[0]["arms"])
    pairs = [tuple(name.split(" - ")) for name in results[0]["diffs"]]
    out: dict[str, Any] = {"arms": {}, "diffs": {}, "seeds": [r["seed"] for r in results]}
    for arm in arms:
        out["arms"][arm] = {
            key: _t_interval([_replicate_value(r["arms"][arm], key) for r in results])
            for key, *_ in REPLICATED_METRICS
        }
    for treat, other in pairs:
        per_rep = {
            key: [
                _replicate_value(r["arms"][treat], key) - _replicate_value(r["arms"][other], key)
                for r in results
            ]
            for key, *_ in REPLICATED_METRICS
        }
        out["diffs"][f"{treat} - {other}"] = {
            "per_replication": per_rep,
            "estimate": {key: _t_interval(values) for key, values in per_rep.items()},
        }
    return out


def replicated_verdict(d: dict[str, Any]) -> str:
    # Videos per session is part of watch time, and sampled watch time is reported beside.
    judged = [
        (label.split(",")[0], d["estimate"][key], 1 if higher else -1)
        for key, label, higher, *_ in REPLICATED_METRICS
        if key not in ("per_session", "watch")
    ]
    return _verdict_text(judged, d["estimate"]["xwatch"], "across replications")


def replicated_section(
    results: list[dict[str, Any]],
    summary: dict[str, Any],
    command: str,
    total_s: float,
    jobs: int,
) -> str:
    first = results[0]
    m = machine_info(REPO)
    k = len(results)
    header = [
        START,
        "## Closed loop: learning while serving (`bench/closed_loop.py`)",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, fyp {m['fyp']} "
        f"(commit {m['git']}); a shared machine, so treat times as indicative  ",
        f"Runtime: {total_s / 60:.1f} min for {k} replications ({jobs} at a time)  ",
        f"Config overrides (all arms): {_overrides_text(first)}",
        "",
        f"**{k} independent replications** (seeds {summary['seeds'][0]}-{summary['seeds'][-1]}): "
        "each builds its own demo world, newcomers, session stream, leaving budgets and "
        "reaction draws from its seed, and runs every arm on them. One replication:",
        "",
        _setup(first),
        "",
        "**Why replications.** Within one replication each arm follows one trajectory (the "
        "viewer state, the items seen, the region's statistics all carry from session to "
        "session), so its sessions are not independent draws and an interval across them is "
        "too narrow. Measured: before feed requests carried scripted ids (exploration's draws "
        "were seeded from random ones), two identically configured arms (`--rounds 6 "
        "--retrain-every 0`, where batch-only and off do the same thing) came out +9.2 s "
        "[+0.3, +18.0] apart in expected watch time by the per-session paired interval; any "
        "difference between arms sets their trajectories apart the same way. Each "
        "replication's difference between two arms is one independent number; the intervals "
        "below are Student-t intervals across replications (95 %). *Expected watch time* is "
        "the session's watch time with each watched video's "
        "sampled `watch_ms` replaced by its mean under the viewer model "
        "(`Viewer.expected_watch_ms`): the same quantity without the reactions' sampling noise. "
        "*Page fit*: the mean normalized hidden fit of the pages served (see below).",
        "",
    ]
    labels = [label for _, label, *_ in REPLICATED_METRICS]
    arm_rows = [
        f"| {arm} | "
        + " | ".join(_ci(a[key], digits, scale) for key, _, _, digits, scale in REPLICATED_METRICS)
        + " |"
        for arm, a in summary["arms"].items()
    ]
    diff_rows = [
        f"| {name} | "
        + " | ".join(
            _signed(d["estimate"][key], digits, scale)
            for key, _, _, digits, scale in REPLICATED_METRICS
        )
        + " |"
        for name, d in summary["diffs"].items()
    ]
    main = summary["diffs"]["online - batch-only"]
    rep_rows = [
        f"| {seed} | "
        + " | ".join(
            f"{main['per_replication'][key][j] * scale:+.{digits}f}"
            for key, _, _, digits, scale in REPLICATED_METRICS
        )
        + " |"
        for j, seed in enumerate(summary["seeds"])
    ]
    progressive = []
    for r in results:
        for region, stats in r["arms"]["online"]["online"].items():
            prog = stats.get("progressive") or {}
            online, batch = prog.get("online", {}), prog.get("batch", {})
            if online and batch:
                progressive.append((r["seed"], region, online, batch))
    prog_text = ""
    if progressive:

        def mean_of(task: str, which: int, field: str) -> float:
            values = [
                p[which][task][field]
                for p in progressive
                if p[which].get(task, {}).get(field) is not None
            ]
            return float(np.mean(values)) if values else math.nan

        prog_text = (
            "Train-then-test on the live traffic itself (each example scored before the learner "
            "steps on it, beside the batch model it continues, on the same examples since the "
            f"latest rebase; mean over {len(progressive)} region-replications), online vs batch: "
            + "; ".join(
                f"{task} log loss {mean_of(task, 2, 'log_loss'):.4f} vs "
                f"{mean_of(task, 3, 'log_loss'):.4f}, AUC {mean_of(task, 2, 'auc_recent'):.3f} vs "
                f"{mean_of(task, 3, 'auc_recent'):.3f}"
                for task in ("finish", "quick_skip", "like")
            )
            + "."
        )

    def table(first: str, rows: list[str]) -> list[str]:
        return [*_head((first,), tuple(labels)), *rows]

    body = [
        *table("arm", arm_rows),
        "",
        "Differences (mean over replications, 95 % t interval):",
        "",
        *table("difference", diff_rows),
        "",
        f"**Verdict: {replicated_verdict(main)}.**",
        "",
        "online - batch-only, replication by replication:",
        "",
        *table("seed", rep_rows),
        "",
        prog_text,
        "",
        "Matching and page fit: " + _intervals(first).split("Matching: ", 1)[-1],
        END,
    ]
    return "\n".join([*header, *body])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        default="static",
        help="static: the world does not change; drift: viewers change taste mid-run",
    )
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--newcomers", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--sessions", type=int, default=100, help="established per round")
    parser.add_argument(
        "--pages",
        type=int,
        default=5,
        help="most pages of 10 per session (all of them with --no-leave)",
    )
    parser.add_argument(
        "--no-leave",
        dest="leave",
        action="store_false",
        help="sessions of exactly --pages pages: viewers never leave early",
    )
    parser.add_argument(
        "--match-cap", type=int, default=8, help="requests a newcomer gets to match"
    )
    parser.add_argument("--new-sessions", type=int, default=4, help="rounds a newcomer comes")
    parser.add_argument(
        "--retrain-every",
        type=int,
        default=None,
        help="rounds; 0 = never (default: 4 static, 7 drift, i.e. once, after round 7)",
    )
    parser.add_argument(
        "--active",
        type=int,
        default=None,
        help="established viewers who come back during the run; 0 = all "
        "(default: all static, 150 drift)",
    )
    parser.add_argument(
        "--drift-round", type=int, default=3, help="drift: first round with the new tastes"
    )
    parser.add_argument(
        "--drift-share", type=float, default=0.5, help="drift: share of --active that drifts"
    )
    parser.add_argument(
        "--learn-every",
        type=int,
        default=10,
        help="sessions between learn_now calls within a round (0 = only at its end)",
    )
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="config override for every arm, e.g. online.dense_lr=0.003 scoring.weights.ranker=3",
    )
    parser.add_argument(
        "--tuned",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"add an arm {TUNED!r}: the online arm with these overrides (a secondary row)",
    )
    parser.add_argument(
        "--replications",
        type=int,
        default=1,
        help="independent runs (seeds --seed, --seed + 1, ...), each in its own process; the "
        "report then gives intervals across them (static scenario)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="replications run at a time")
    parser.add_argument(
        "--section",
        default="closed-loop",
        help="docs markers of the replicated section (another name keeps the defaults' one)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument(
        "--from-json",
        type=Path,
        help="render the report of an earlier run again from its --json file (nothing is run; "
        "its section is written unless --no-docs)",
    )
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line with the scenario's defaults filled in. ``arms`` (every arm of
    ``ARMS``) is not an option: a script that calls :func:`run` itself may run fewer."""
    parser = build_parser()
    args = parser.parse_args(argv)
    active, retrain_every = SCENARIOS[args.scenario]
    if args.active is None:
        args.active = active
    if args.retrain_every is None:
        args.retrain_every = retrain_every
    if args.scenario == "drift" and not 1 <= args.drift_round <= args.rounds:
        parser.error("--drift-round must be one of the rounds")
    if args.replications > 1 and (args.scenario != "static" or args.tuned):
        parser.error("--replications works with the static scenario and no --tuned arm")
    args.arms = list(ARMS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return render_saved(args.from_json, docs=args.docs)
    command = ".venv/bin/python bench/closed_loop.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    if args.replications > 1:
        started = time.perf_counter()
        results = run_replications(args, list(argv if argv is not None else sys.argv[1:]))
        saved: dict[str, Any] = {
            "command": command,
            "seconds": time.perf_counter() - started,
            "jobs": args.jobs,
            "section": args.section,
            "runs": results,
            "summary": replicated_summary(results),
        }
        text, marks = report_of(saved)
    else:
        result = run(args)
        result["args"] = {
            k: v
            for k, v in vars(args).items()
            if k not in ("json", "from_json", "docs", "set", "tuned", "arms")
        }
        saved = {**result, "command": command}
        text, marks = report_of(saved)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(saved, default=_jsonable, indent=1))
    if args.docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", *marks, text)
    return 0


def report_of(saved: dict[str, Any]) -> tuple[str, tuple[str, str]]:
    """The report of a run (as ``main`` keeps it: a replicated run's per-seed results under
    ``runs``, or one run's result) and the docs markers of its section."""
    command = saved["command"]
    if "runs" in saved:
        results = saved["runs"]
        name = saved["section"]
        marks = (f"<!-- {name}:start -->", f"<!-- {name}:end -->")
        summary = saved.get("summary") or replicated_summary(results)
        text = replicated_section(results, summary, command, saved["seconds"], saved["jobs"])
        return text.replace(START, marks[0]).replace(END, marks[1]), marks
    if saved["args"]["scenario"] == "drift":
        return drift_section(saved, command), (DRIFT_START, DRIFT_END)
    return section(saved, command), (START, END)


def render_saved(path: Path, *, docs: bool) -> int:
    """``--from-json``: print (and unless ``docs`` is false, write) an earlier run's report."""
    saved = json.loads(path.read_text(), object_hook=_estimate_or_dict)
    if "command" not in saved:
        raise SystemExit(f"{path}: not a closed_loop --json file (no command recorded)")
    text, marks = report_of(saved)
    print(text)
    if docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", *marks, text)
    return 0


def _estimate_or_dict(d: dict[str, Any]) -> Any:
    """JSON's object hook: an interval ``_jsonable`` wrote comes back as an ``Estimate``."""
    return Estimate(**d) if d.keys() == {"n", "mean", "low", "high"} else d


def _jsonable(value: Any) -> Any:
    if isinstance(value, Estimate):
        return {"n": value.n, "mean": value.mean, "low": value.low, "high": value.high}
    return str(value)


if __name__ == "__main__":
    raise SystemExit(main())
