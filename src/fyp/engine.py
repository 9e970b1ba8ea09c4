"""The engine: wires storage, the gate, models and the feed pipeline behind a small API.

``Engine`` is what the HTTP API, the CLI and the tests use. It acts inside each region as that
region's service principal, so every personal read or write it does is a gated, audited access.
A running server also starts the :class:`Retrainer`, which retrains a region's learned sources when
enough new events arrived (or enough time passed) and swaps the new model in without a restart.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from threadpoolctl import threadpool_limits

from fyp.config import FypConfig
from fyp.errors import (
    AccessDenied,
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    RegionQuarantined,
)
from fyp.governance.audit_watch import AuditLogCheck, check_at_start
from fyp.governance.gate import Gate, RegionHandle
from fyp.governance.keys import Signer
from fyp.governance.policy import DeclarativePolicy, Principal, RegionalPolicies
from fyp.governance.rights import UserRightsService
from fyp.models.ranker import Ranker
from fyp.models.serving import ModelSlot, ServingModel
from fyp.models.training import TrainReport, train_region
from fyp.online.arms import Experiment, assign
from fyp.online.bus import open_bus
from fyp.online.joiner import NEGATIVE, TERMINAL, Joiner, JoinerConfig
from fyp.online.learner import LearnerConfig
from fyp.online.log import JoinPump, OnlineLog, RelayLog
from fyp.online.trainer import OnlineTrainer, TrainerConfig
from fyp.pipeline.contracts import FeedContext, FeedQuery, FeedResult
from fyp.pipeline.for_you import for_you_pipeline, non_personalized_pipeline
from fyp.pipeline.trace import Trace
from fyp.signals import FoldPolicy
from fyp.storage.audit import SqlAuditLog, TreeHead
from fyp.storage.catalog import SqlCatalog
from fyp.storage.envelope import KeyFile
from fyp.storage.models import ModelStore
from fyp.storage.region import SqlRegionStore
from fyp.storage.roles import ItemRecord, UpsertResult, UserRecord
from fyp.types import MAX_FEED_N, Event, Item, User, is_valid_id

log = logging.getLogger(__name__)

_ERASURE_STALE_S = 30.0
"""An erasure ordered this long ago and not finished is finished by the background sync of any
serving process (its own process died or failed between the steps)."""

RETRAIN_REPORTS_KEPT = 100
"""Reports of the latest retrainings a server keeps (``Retrainer.reports``)."""


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    """(index in the request, what was wrong); those events were not stored."""


def _conflict(event_id: str) -> str:
    return (
        f"conflict: event_id {event_id!r} already names an event with different content "
        "(an event id names one event; send a new id for a new event)"
    )


def fold_policy(config: FypConfig) -> FoldPolicy:
    a = config.affinity
    return FoldPolicy(
        affinity_weights=dict(a.weights),
        play_weight=a.play_weight,
        neutral_watch_ratio=a.neutral_watch_ratio,
        affinity_half_life_s=a.half_life_hours * 3600.0,
        creator_mute_s=a.creator_mute_hours * 3600.0,
        trend_weights=dict(config.sources.trending.engagement_weights),
        trend_half_life_s=config.sources.trending.half_life_hours * 3600.0,
        recent_positives=a.recent_positives,
    )


def load_policy(config: FypConfig) -> RegionalPolicies:
    """The configured access policies, checked against the regions.

    The shared policy (the built-in one by default) must load, or nothing starts. A region's own
    policy file that fails to load is recorded as that region's problem: the region then refuses
    every open and is quarantined, and the other regions are unaffected.
    """
    path = config.resolved_policy_file()
    shared = DeclarativePolicy.load(path) if path else DeclarativePolicy.default()
    shared.check_regions(config.region_names)
    own: dict[str, DeclarativePolicy] = {}
    broken: dict[str, str] = {}
    for region in config.region_names:
        region_path = config.resolved_policy_file(region)
        if region_path is None:
            continue
        try:
            policy = DeclarativePolicy.load(region_path)
            policy.check_regions(config.region_names)
        except ConfigError as exc:
            broken[region] = str(exc)
        else:
            own[region] = policy
    return RegionalPolicies(shared, own, broken)


class Engine:
    def __init__(self, config: FypConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        # Every request solves tiny problems (64 x 64); BLAS thread pools only add contention.
        # implicit parallelises training with its own threads and asks for BLAS at 1 as well.
        threadpool_limits(1, "blas")
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.catalog = SqlCatalog(config.resolved_catalog_url())
        policy = fold_policy(config)
        stores = {
            name: SqlRegionStore(
                config.region_url(name), name, policy, keys=KeyFile(config.kek_path(name), name)
            )
            for name in config.region_names
        }
        model_stores = {name: ModelStore(config.models_dir(name)) for name in config.region_names}
        audit_logs = {
            name: SqlAuditLog(
                config.audit_url(name), name, Signer.load_or_create(config.audit_key_path(name))
            )
            for name in config.region_names
        }
        policies = load_policy(config)
        self.gate = Gate(stores, model_stores, audit_logs, policies, clock=clock)
        for name, policy_problem in policies.broken.items():
            self.gate.quarantine(name, f"access policy failed to load: {policy_problem}")
        for name, audit_log in audit_logs.items():
            # An append that finds the log damaged stops the region as a failed check does.
            audit_log.on_damaged = functools.partial(self._audit_log_damaged, name)
        witnessed = check_at_start(self.gate, audit_logs, config.resolved_audit_witness_file())
        self.audit_check = AuditLogCheck(self.gate, config.region_names, witnessed)
        for name, store in stores.items():
            if store.key_problem is not None and name not in self.gate.quarantined:
                self.gate.quarantine(name, f"encryption key check failed: {store.key_problem}")
        self.pipeline = for_you_pipeline(config)
        self.plain_pipeline = non_personalized_pipeline(config)
        # A region-pinned deployment holds only its own region's models: another region's model
        # carries that region's users' vectors.
        self.slots = {name: ModelSlot() for name in config.served_regions}
        self._train_locks = {name: threading.Lock() for name in config.served_regions}
        self.retrainer = Retrainer(self)
        self.rights = UserRightsService(self.gate, clock, service_region=config.serving_region)
        self.rights.on_erase(self._forget_in_models)
        self.rights.on_erase(self.pipeline.forget_viewer)
        self.rights.on_erase(self.plain_pipeline.forget_viewer)
        self.rights.on_export(self._model_rows_of)
        self._sync_stop = threading.Event()
        self._sync_thread: threading.Thread | None = None
        # Learning while serving: each served region joins its own impressions and events (the
        # joiner's memory and the bus stream are per region, like the data they come from).
        self.online: dict[str, OnlineLog | RelayLog] = {}
        """Where this process's feeds and events go, per region."""
        self._joins: dict[str, OnlineLog] = {}
        """Where they are joined into examples: ``online`` itself with the in-process bus; in
        the training process, a local log fed by a ``JoinPump`` from the relay stream."""
        self._pumps: dict[str, JoinPump] = {}
        self.trainers: dict[str, OnlineTrainer] = {}
        """Each region's main online trainer (also in ``arm_trainers[region]["main"]``)."""
        self.arm_trainers: dict[str, dict[str, OnlineTrainer]] = {}
        self._arm_slots: dict[str, dict[str, ModelSlot]] = {}
        served_arms = {a.name: a.serve_share for a in config.online.arms if a.serve_share > 0}
        self._experiment = (
            Experiment(
                config.online.experiment,
                {"main": 1.0 - sum(served_arms.values()), **served_arms},
            )
            if served_arms and config.online.enabled
            else None
        )
        self._trainer_stop = threading.Event()
        self._trainer_threads: list[threading.Thread] = []
        if config.online.enabled:
            o = config.online
            for region in config.served_regions:
                if config.bus_url(region).startswith("memory:"):
                    self.online[region] = self._joins[region] = self._new_join_log(region)
                else:
                    raw = open_bus(
                        config.bus_url(region),
                        key=f"{o.bus_stream}:raw:{region}",
                        max_len=o.bus_max_len,
                    )
                    self.online[region] = RelayLog(raw, clock=clock)
        for region in config.served_regions:
            if region not in self.gate.quarantined:
                try:
                    self.reload_model(region)
                except AccessDenied as exc:
                    # The region's policy does not let this process serve its models; its
                    # feeds are refused the same way, and everything else starts.
                    log.warning("region %s: model not loaded: %s", region, exc)
                except RegionQuarantined as exc:  # its log failed when the open was recorded
                    log.warning("region %s: model not loaded: %s", region, exc)

        self._erasures_seen = {region: self.gate.last_erasure(region) for region in self.slots}
        """Per region, the erasure mark this process's memory has caught up with."""
        self.resume_erasures()

    def catch_up_erasures(self) -> int:
        """Forget, in this process's memory, the users another process erased.

        The process that erases a user makes its own models, joiner and learners forget them at
        once (the erasure hooks); every other process notices the region's erasure mark move
        (the background sync polls it) and drops whoever no longer exists from its served
        models, its joiner and its learners. Returns how many users were forgotten.
        """
        forgotten = 0
        for region, slot in self.slots.items():
            if region in self.gate.quarantined:
                continue
            mark = self.gate.last_erasure(region)
            if mark <= self._erasures_seen.get(region, 0.0):
                continue
            held: set[str] = set()
            join = self._joins.get(region)
            if join is not None:
                held |= join.joiner.users()
            for trainer in self.arm_trainers.get(region, {}).values():
                held |= trainer.viewer_ids()
            models = [slot.current, *(s.current for s in self._arm_slots.get(region, {}).values())]
            for model in models:
                for ranker in (model.ranker, model.batch_ranker) if model is not None else ():
                    if ranker is not None:
                        held.update(user_id for user_id, _ in ranker.vocabs.users.live())
            self.gate.forget_routes()
            if held:
                handle = self.gate.open(region, self.service(region), "erase_user")
                gone = held - handle.users.has_users(sorted(held))
                for user_id in gone:
                    self._forget_in_models(region, user_id)
                forgotten += len(gone)
            self._erasures_seen[region] = mark
        return forgotten

    def resume_erasures(self, older_than_s: float = 0.0) -> int:
        """Finish erasures that a process ordered and did not finish (it died between the steps,
        see :mod:`fyp.governance.rights`); returns how many. At start every pending one is
        finished; the background sync finishes only those older than ``older_than_s``, which
        their own process should have finished long since."""
        done = 0
        for region in self.config.served_regions:
            if region in self.gate.quarantined:
                continue
            oldest = self.gate.oldest_pending_erasure(region)
            if oldest is None or oldest > self.clock() - older_than_s:
                continue
            try:
                done += len(self.rights.resume_erasures(region, older_than_s))
            except (AccessDenied, RegionQuarantined) as exc:
                log.warning("region %s: pending erasures not resumed: %s", region, exc)
        return done

    def _audit_log_damaged(self, region: str, reason: str) -> None:
        self.gate.quarantine(region, f"audit log damaged: {reason}")

    def service(self, region: str) -> Principal:
        """The principal this process acts as when it opens ``region``.

        Embedded default: each region's own service. A deployment pinned to a region is that
        region's service everywhere, so its requests about another region's users are
        cross-region accesses that the policy refuses (and the target region's log records).
        """
        return Principal.service(self.config.serving_region or region)

    # ---- catalog --------------------------------------------------------------------------------

    def put_items(self, items: Sequence[Item]) -> UpsertResult:
        """Create or update catalog items; a batch with an item dated outside the ingest window
        (``config.ingest``) is refused whole, before anything is written."""
        self._refuse_items_out_of_window(items)
        return self.catalog.upsert_items(items)

    def _refuse_items_out_of_window(self, items: Sequence[Item]) -> None:
        now = self.clock()
        refused = [
            (index, item.item_id, problem)
            for index, item in enumerate(items)
            # An omitted created_at is stamped on receipt (or keeps the stored time).
            if "created_at" in item.model_fields_set
            and (problem := self.config.ingest.refusal("created_at", item.created_at, now))
        ]
        if refused:
            _, item_id, problem = refused[0]
            raise InvalidInput(
                f"item {item_id!r}: {problem}"
                + (f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""),
                errors=[
                    {"field": f"items.{i}.created_at", "detail": p.partition(": ")[2]}
                    for i, _, p in refused
                ],
            )

    def get_item(self, item_id: str) -> ItemRecord:
        record = self.catalog.get_item(item_id)
        if record is None:
            raise NotFound(f"no item {item_id!r}")
        return record

    # ---- users ----------------------------------------------------------------------------------

    def put_users(self, users: Sequence[User]) -> UpsertResult:
        """Create or update users in their home regions. A user never changes home region here."""
        unknown = sorted({u.region for u in users} - set(self.config.region_names))
        if unknown:
            raise InvalidInput(
                f"unknown region(s) {unknown}; configured: {self.config.region_names}"
            )
        claimed: dict[str, str] = {}
        for user in users:
            if claimed.setdefault(user.user_id, user.region) != user.region:
                # A conflict, like a user moving home: the schema cannot say it, so not a 422.
                raise Conflict(
                    f"user {user.user_id!r} appears twice in the batch with different regions"
                )
        homes = self.gate.locate_many([u.user_id for u in users])
        moving = [u.user_id for u in users if homes.get(u.user_id, u.region) != u.region]
        if moving:
            # The cached home may be stale (the user was erased by another process): ask again.
            for user_id in moving:
                self.gate.forget(user_id)
            homes.update(self.gate.locate_many(moving))
            moving = [u.user_id for u in users if homes.get(u.user_id, u.region) != u.region]
        if moving:
            raise Conflict(
                f"users {moving[:5]} already live in another region; moving a user's home region "
                "is not done by upsert"
            )
        by_region: dict[str, list[User]] = defaultdict(list)
        for user in users:
            by_region[user.region].append(user)
        created = updated = 0
        handles = {
            region: self.gate.open(region, self.service(region), "manage_users")
            for region in by_region
        }
        for region, batch in by_region.items():
            result = handles[region].users.upsert_users(batch, self.clock())
            created += result.created
            updated += result.updated
            for user in batch:
                self.gate.remember(user.user_id, region)
        return UpsertResult(created, updated)

    def get_user(self, user_id: str) -> UserRecord:
        region = self.gate.locate(user_id)
        if region is None:
            raise NotFound(f"no user {user_id!r}")
        handle = self.gate.open(region, self.service(region), "read_user")
        user = handle.users.get_user(user_id)
        if user is None:
            raise NotFound(f"no user {user_id!r}")
        return user

    # ---- events ---------------------------------------------------------------------------------

    def ingest(
        self, events: Sequence[Event | None], errors: Sequence[tuple[int, str]] = ()
    ) -> IngestResult:
        """Store valid events in their users' home regions; report the others by index.

        ``events`` may hold ``None`` at indexes that already failed validation (listed in
        ``errors``). An event dated outside the ingest window (``config.ingest``, measured
        against this engine's clock) is reported too. Each region's batch is one durable
        transaction: when this returns, every accepted event is on disk.
        """
        result = IngestResult(errors=list(errors))
        # An event id names one event: a repeat in the batch is a duplicate if it says the same,
        # a conflict if it does not (the store tells the same of ids stored before).
        first_index: dict[str, int] = {}
        unique: list[tuple[int, Event]] = []
        for index, event in enumerate(events):
            if event is None:
                continue
            earlier = first_index.setdefault(event.event_id, index)
            if earlier == index:
                unique.append((index, event))
            elif events[earlier] == event:
                result.duplicates += 1
            else:
                result.errors.append((index, _conflict(event.event_id)))
        present = self._within_window(unique, result.errors)
        homes = self.gate.locate_many([e.user_id for _, e in present])
        items = self.catalog.get_items(list({e.item_id for _, e in present}))
        by_region: dict[str, list[Event]] = defaultdict(list)
        for index, event in present:
            if event.user_id not in homes:
                result.errors.append((index, f"unknown user {event.user_id!r}; create it first"))
            elif event.item_id not in items:
                result.errors.append(
                    (index, f"unknown item {event.item_id!r}; add it to the catalog first")
                )
            else:
                by_region[homes[event.user_id]].append(event)
        # Every region's door is decided before anything is written: a batch holding a refused
        # (cross-region) event is refused whole, never half-stored.
        handles = {
            region: self.gate.open(region, self.service(region), "ingest") for region in by_region
        }
        for region, batch in by_region.items():
            # Held from before the transaction until the events reach the online learner, so an
            # erasure of one of these users waits for the hand-off (fyp.governance.fence).
            with self.gate.fence.hold(e.user_id for e in batch):
                appended = handles[region].events.append(batch, items, self.clock())
                online = self.online.get(region)
                if online is not None and appended.accepted:
                    stored = set(appended.accepted)
                    try:
                        online.record_events(e for e in batch if e.event_id in stored)
                    except Exception:  # learning must never cost an acknowledged event
                        log.exception("region %s: events not joined for online training", region)
            result.accepted += len(appended.accepted)
            result.duplicates += len(appended.duplicates)
            refused = {event_id: _conflict(event_id) for event_id in appended.conflicts}
            for event_id in appended.unknown_users:
                refused[event_id] = "unknown user (erased meanwhile?); create it first"
            if refused:
                for index, event in present:
                    if event.event_id in refused and homes.get(event.user_id) == region:
                        result.errors.append((index, refused[event.event_id]))
        result.errors.sort()
        return result

    def _within_window(
        self, present: list[tuple[int, Event]], errors: list[tuple[int, str]]
    ) -> list[tuple[int, Event]]:
        """The events whose time is inside the ingest window; the others go to ``errors``."""
        now = self.clock()
        kept = []
        for index, event in present:
            problem = self.config.ingest.refusal("ts", event.ts, now)
            if problem is None:
                kept.append((index, event))
            else:
                errors.append((index, problem))
        return kept

    # ---- feed -----------------------------------------------------------------------------------

    def feed(self, user_id: str, n: int = 10, request_id: str | None = None) -> FeedResult:
        """The next ``n`` items for ``user_id``.

        ``request_id`` names the response (events echo it back to the impression); by default a
        random one. A caller that replays a scripted stream passes its own, unique per request:
        the request's random draws (exploration's Thompson samples) are seeded from it, so the
        same request against the same state gets the same page.
        """
        if not 1 <= n <= MAX_FEED_N:
            raise InvalidInput(f"n must be between 1 and {MAX_FEED_N}, got {n}")
        if request_id is not None and not is_valid_id(request_id):
            raise InvalidInput(f"invalid request id {request_id!r}")
        region = self.gate.locate(user_id)
        if region is None:
            raise NotFound(f"no user {user_id!r}")
        handle = self.gate.open(region, self.service(region), "serve_feed")
        context = FeedContext(
            config=self.config,
            catalog=self.catalog,
            data=handle,
            model=self._served_model(region, user_id),
        )
        query = FeedQuery(
            request_id=request_id if request_id is not None else uuid.uuid4().hex,
            user_id=user_id,
            region=region,
            n=n,
            now=self.clock(),
            context=context,
            trace=Trace(),
        )
        # Held until the impressions reach the online learner: an erasure of the viewer waits for
        # that hand-off, and a page recorded after the erasure was ordered is refused (404).
        with self.gate.fence.hold([user_id]):
            # The viewer's own switch: without personalization nothing inferred about them is used.
            personalized = handle.rights.controls(user_id).personalized
            result = (self.pipeline if personalized else self.plain_pipeline).run(query)
            online = self.online.get(region)
            # Only a personalized feed teaches the ranker: a viewer who switched personalization
            # off is not profiled, so their impressions are not logged for training.
            if online is not None and personalized and result.items:
                try:
                    self._log_impressions(online, result, query.now)
                except Exception:  # the page is served whatever happens to its log
                    log.exception("region %s: feed not logged for online training", region)
        return result

    def _log_impressions(
        self, online: OnlineLog | RelayLog, result: FeedResult, now: float
    ) -> None:
        records = self.catalog.get_items([item.item_id for item in result.items])
        durations = {item_id: record.duration_s for item_id, record in records.items()}
        online.record_feed(result, durations, now=now)

    # ---- models ---------------------------------------------------------------------------------

    def train(self, regions: Sequence[str] | None = None) -> list[TrainReport]:
        """Retrain the learned sources of ``regions`` (default: all) and serve the new models."""
        reports = []
        for region in self.config.served_regions if regions is None else regions:
            if region not in self.config.region_names:
                raise InvalidInput(f"unknown region {region!r}")
            handle = self.gate.open(region, self.service(region), "train")
            if region not in self.slots:
                # Allowed by an exception, yet this process holds no slot to serve it from.
                raise InvalidInput(
                    f"this deployment serves {self.config.served_regions}, not {region!r}"
                )
            with self._train_locks[region]:
                report = train_region(
                    handle,
                    self.catalog,
                    self.config.training,
                    self.config.algorithm_hash,
                    ranker=self.config.ranker,
                    policy=fold_policy(self.config),
                    tower=self.config.sources.content_tower,
                )
            if report.version is not None:
                self.reload_model(region)
                self._forget_erased_since_training(region, handle)
            reports.append(report)
        return reports

    def _forget_erased_since_training(self, region: str, handle: RegionHandle) -> None:
        """A user erased while the model trained may have rows in it: the served copy drops them
        now (the stored one at the retraining the erasure mark triggers)."""
        model = self.slots[region].current
        if model is None or model.ranker is None:
            return
        if handle.models.last_erasure() < float(model.meta.get("data_as_of", 0.0)):
            return
        ids = [user_id for user_id, _ in model.ranker.vocabs.users.live()]
        existing = handle.users.has_users(ids) if ids else set()
        for user_id in ids:
            if user_id not in existing:
                self._forget_served(region, user_id)

    def reload_model(self, region: str) -> str:
        """Load the region's current snapshot and swap it in; requests in flight keep theirs."""
        handle = self.gate.open(region, self.service(region), "serve_feed")
        snapshot = handle.models.load_current()
        slot = self.slots[region]
        if snapshot is None:
            return slot.version
        current = slot.current
        if current is None or current.base_version != snapshot.version:
            slot.swap(ServingModel(snapshot))
        return slot.version

    def _load_published_ranker(self, region: str) -> bool:
        """Serve the ranker another process's online trainer published for this region's current
        snapshot, if it is newer than what this process serves."""
        if region in self.arm_trainers or not self.config.online.enabled:
            return False  # this process trains the region itself
        slot = self.slots[region]
        version = self.gate.published_version(region)
        if version is None or version == slot.version:
            return False
        if not version.startswith(f"{slot.base_version}+"):
            return False  # it continues another snapshot (older, or not loaded here yet)
        handle = self.gate.open(region, self.service(region), "serve_feed")
        published = handle.models.load_published()
        if published is None or published.version != version:
            return False
        from fyp.models.ranker import load_for_serving

        ranker = load_for_serving(published.meta["ranker"], published.arrays)
        return slot.publish_ranker(slot.base_version, ranker, version)

    def place_new_items(self, region: str) -> int:
        """Give items uploaded since the region's last training a place in its content towers,
        so they can be retrieved before anyone has watched them; returns how many were placed."""
        slot = self.slots.get(region)
        model = slot.current if slot is not None else None
        if model is None or model.tower is None:
            return 0
        from fyp.models.content_tower import add_new_items

        return add_new_items(model.tower, self.catalog, self.config.sources.content_tower)

    def _forget_in_models(self, region: str, user_id: str) -> None:
        """Erasure reaches the served model at once (the ranker's embedding row of the user), the
        online learner and the joiner's open impressions too; the stored model loses the row at
        the next training, which the retrainer then runs (the online checkpoint is dropped by the
        erasure itself and rewritten without the viewer)."""
        self._forget_served(region, user_id)
        join = self._joins.get(region)
        if join is not None:
            join.joiner.forget_user(user_id)
        for trainer in self.arm_trainers.get(region, {}).values():
            trainer.forget_user(user_id)

    def _model_rows_of(self, region: str, user_id: str) -> dict[str, object]:
        """What the models this process holds learned about a viewer (their embedding rows), for
        the user's export: the served ranker's row and each online learner's."""
        out: dict[str, object] = {}
        slot = self.slots.get(region)
        model = slot.current if slot is not None else None
        ranker = model.ranker if model is not None else None
        if ranker is not None:
            row = ranker.vocabs.users.row(user_id)
            if row != ranker.vocabs.users.unknown_row:
                out["ranker_user_embedding"] = {
                    "model_version": model.version if model is not None else None,
                    "vector": ranker.network.user.weight[row].detach().tolist(),
                }
        for arm, trainer in self.arm_trainers.get(region, {}).items():
            vector = trainer.user_vector(user_id)
            if vector is not None:
                out[f"online_learner_{arm}_user_embedding"] = {"vector": vector}
        return out

    def _forgotten_by_trainer(self, region: str, user_id: str) -> None:
        """A trainer forgot a viewer (possibly erased through another process): the joiner and
        the served models here drop them too."""
        join = self._joins.get(region)
        if join is not None:
            join.joiner.forget_user(user_id)
        self._forget_served(region, user_id)

    def _forget_served(self, region: str, user_id: str) -> None:
        """Drop a viewer's rows from every model this process serves in ``region``."""
        slot = self.slots.get(region)
        model = slot.current if slot is not None else None
        if model is not None:
            model.forget_user(user_id)
            if model.batch_ranker is not None and model.batch_ranker is not model.ranker:
                model.batch_ranker.forget_user(user_id)
        for arm_slot in self._arm_slots.get(region, {}).values():
            arm_model = arm_slot.current
            if arm_model is not None:
                arm_model.forget_user(user_id)

    # ---- learning while serving -----------------------------------------------------------------

    def _new_join_log(self, region: str) -> OnlineLog:
        o = self.config.online
        joiner = Joiner(
            JoinerConfig(
                window_s=o.window_s,
                close_on_next_play=o.close_on_next_play,
                terminal=NEGATIVE if o.close_on_next_play else TERMINAL,
            )
        )
        bus = open_bus(
            self.config.bus_url(region),
            key=f"{o.bus_stream}:examples:{region}",
            max_len=o.bus_max_len,
        )
        log_ = OnlineLog(joiner, bus, lateness_s=o.lateness_s, clock=self.clock)
        # Start the watermark at the clock: imported history older than a window can never meet
        # an impression, so the joiner drops it instead of holding it.
        log_.tick()
        return log_

    def _join_log(self, region: str) -> OnlineLog:
        """The region's joining log, with a pump from the relay stream when the bus is Redis."""
        join = self._joins.get(region)
        if join is None:
            relay = self.online[region]
            join = self._joins[region] = self._new_join_log(region)
            self._pumps[region] = JoinPump(relay.bus, join)
        return join

    def arm_of(self, user_id: str) -> str:
        """The online-learning experiment arm a viewer is in (``main`` without an experiment)."""
        return assign(self._experiment, user_id) if self._experiment is not None else "main"

    def _served_model(self, region: str, user_id: str) -> ServingModel | None:
        """The model a viewer's feed is scored with: their arm's learner, once it published."""
        model = self.slots[region].current
        arm = self.arm_of(user_id)
        if arm == "main" or model is None:
            return model
        arm_slot = self._arm_slots.get(region, {}).get(arm)
        if arm_slot is not None:  # a learning arm: its own publishes
            arm_model = arm_slot.current
            if arm_model is not None and arm_model.base_version == model.base_version:
                return arm_model
        # A batch-only arm (or a learning arm before its first publish): the batch model.
        if model.batch_ranker is None or model.ranker is model.batch_ranker:
            return model
        return model.with_ranker(model.batch_ranker, model.base_version)

    def trainer(self, region: str, arm: str = "main") -> OnlineTrainer:
        """The region's online trainer of ``arm`` (created on first use; online learning on)."""
        trainers = self.arm_trainers.setdefault(region, {})
        trainer = trainers.get(arm)
        if trainer is not None:
            return trainer
        online = self.online.get(region)
        if online is None:
            raise InvalidInput(f"online learning is off or region {region!r} is not served here")
        o = self.config.online
        spec = next((a for a in o.arms if a.name == arm), None)
        if arm != "main" and spec is None:
            raise InvalidInput(f"no online learner arm {arm!r}; configured: {self.arms}")
        handle = self.gate.open(region, self.service(region), "train")
        slot = self.slots[region]

        def base() -> tuple[str, Ranker] | None:
            model = slot.current
            if model is None or model.batch_ranker is None:
                return None
            return model.base_version, model.batch_ranker

        share = not self.config.bus_url(region).startswith("memory:")

        def publish_main(base_version: str, ranker: Ranker, version: str) -> bool:
            if not slot.publish_ranker(base_version, ranker, version):
                return False
            if share:  # other serving processes pick it up in their sync loop
                meta, arrays = ranker.to_arrays()
                handle.models.save_published(version, {"ranker": meta}, arrays)
            return True

        publish = publish_main
        checkpoint_dir = handle.models.online_dir()
        if spec is not None:
            arm_slot = self._arm_slots.setdefault(region, {}).setdefault(arm, ModelSlot())

            def publish_arm(base_version: str, ranker: Ranker, version: str) -> bool:
                model = slot.current
                if model is None or model.base_version != base_version:
                    return False
                arm_slot.swap(model.with_ranker(ranker, version))
                return True

            publish = publish_arm  # an arm's model is served from this process only
            checkpoint_dir = checkpoint_dir / arm
        learner = LearnerConfig(
            dense_lr=(spec.dense_lr if spec and spec.dense_lr else o.dense_lr),
            sparse_lr=(spec.sparse_lr if spec and spec.sparse_lr else o.sparse_lr),
            min_count=(spec.min_count if spec and spec.min_count else o.min_count),
            ttl_s=o.ttl_hours * 3600.0 if o.ttl_hours is not None else None,
        )
        join = self._join_log(region)
        pump = self._pumps.get(region)
        trainer = OnlineTrainer(
            region,
            join.bus,
            self.catalog.get_items,
            base,
            publish,
            TrainerConfig(
                batch_size=o.batch_size,
                behind_batch_size=o.behind_batch_size,
                publish_interval_s=o.publish_interval_s,
                checkpoint_interval_s=o.checkpoint_interval_s,
                max_busy_share=o.max_busy_share,
                learner=learner,
                group="ranker" if spec is None else f"ranker-{arm}",
                version_tag="online" if spec is None else arm,
                learn=spec.learn if spec is not None else True,
                compare_batch=spec is None,
            ),
            checkpoint_dir=checkpoint_dir,
            clock=self.clock,
            arm_of=self.arm_of if spec is None and self._experiment is not None else None,
            last_erasure=handle.models.last_erasure,
            existing_users=handle.users.has_users,
            # One pump per region feeds every learner's consumer group; the main one runs it.
            feed=pump.step if pump is not None and spec is None else None,
            on_forget=functools.partial(self._forgotten_by_trainer, region),
        )
        trainers[arm] = trainer
        if spec is None:
            self.trainers[region] = trainer
        return trainer

    @property
    def arms(self) -> list[str]:
        """The online learners per region: ``main`` and the configured arms."""
        return ["main", *(a.name for a in self.config.online.arms)]

    def learn_now(self, regions: Sequence[str] | None = None) -> dict[str, int]:
        """Close what the clock says has ended, train every learner on everything waiting and
        serve the result at once; returns the examples the main learner trained on per region.
        (The background trainers do the same continuously; this is for tools and tests that
        drive the engine step by step.)"""
        out: dict[str, int] = {}
        for region in regions or list(self.online):
            join = self._join_log(region)
            pump = self._pumps.get(region)
            while pump is not None and pump.step():
                pass
            join.tick()
            for arm in self.arms:
                trainer = self.trainer(region, arm)
                trained = 0
                while True:
                    trained += trainer.step(block_ms=0)
                    if trainer.last_delivered == 0:
                        break
                trainer.publish_if_changed()
                if arm == "main":
                    out[region] = trained
        return out

    def online_stats(self) -> dict[str, dict[str, object]]:
        """Per region: the joiner's counters, each learner's counters and train-then-test scores
        (the main one beside the batch model on the same examples), and with an experiment the
        outcomes per arm with 95 % intervals."""
        out: dict[str, dict[str, object]] = {}
        for region, online in self.online.items():
            join = self._joins.get(region)
            entry: dict[str, object] = {}
            if join is not None:
                entry["joiner"] = join.stats()
            if join is not online:
                entry["relay"] = online.stats()
            trainers = self.arm_trainers.get(region, {})
            main = trainers.get("main")
            if main is not None:
                entry["trainer"] = main.stats.as_dict()
            if trainers:
                entry["learners"] = {
                    arm: {"stats": t.stats.as_dict(), "progressive": t.progressive()}
                    for arm, t in trainers.items()
                }
            if main is not None and self._experiment is not None:
                entry["experiment"] = {
                    "name": self._experiment.name,
                    "arms": dict(self._experiment.arms),
                    "outcomes": main.outcome_report(),
                }
            out[region] = entry
        return out

    def warm(self) -> int:
        """Bring hot read paths into memory before serving; returns the catalog items loaded."""
        return self.catalog.warm()

    def sync(self) -> None:
        """Catch up with other processes: changed catalog items and newly trained models.

        Several server workers (or a worker and an import) share the data directory; each keeps
        in-memory copies, and this is how they converge.
        """
        self.catalog.refresh_changed()
        quarantined = self.gate.quarantined
        for region, slot in self.slots.items():
            if region in quarantined:
                continue
            try:
                if self.gate.model_version(region) not in (None, slot.base_version):
                    self.reload_model(region)
                self._load_published_ranker(region)
                self.place_new_items(region)
            except AccessDenied as exc:  # that region's policy refuses; the others go on
                log.warning("region %s: not synced: %s", region, exc)

    def start_background(self, train: bool) -> None:
        """Start the sync loop, the full audit log check, and, if ``train``, the retrainer (one
        process per data directory)."""
        if self.config.audit_full_check:
            self.audit_check.start()
        if self._sync_thread is None:
            self._sync_stop.clear()
            self._sync_thread = threading.Thread(
                target=self._sync_loop, name="fyp-sync", daemon=True
            )
            self._sync_thread.start()
        if train and self.retrainer.start():
            self._start_trainers()
        else:
            # Another process trains: an in-process bus here would have no consumer and only
            # grow, so this process stops logging there (a Redis bus reaches the trainer).
            local = [r for r, online in self.online.items() if self._joins.get(r) is online]
            for region in local:
                self.online.pop(region).bus.close()
                self._joins.pop(region)
            if local:
                log.info(
                    "online learning of %s runs in the training process; set online.bus_url "
                    "to a redis:// URL so this process's feeds reach it",
                    local,
                )

    def _start_trainers(self) -> None:
        """One online-training thread per served region (in the process that retrains: with the
        in-process bus that is the one serving; with Redis, the workers publish to it)."""
        if self._trainer_threads:
            return
        self._trainer_stop.clear()
        quarantined = self.gate.quarantined
        for region in self.online:
            if region in quarantined:
                continue
            for arm in self.arms:
                try:
                    trainer = self.trainer(region, arm)
                except AccessDenied as exc:
                    log.warning("region %s: no online training: %s", region, exc)
                    break
                thread = threading.Thread(
                    target=trainer.run,
                    args=(self._trainer_stop,),
                    name=f"fyp-online-{region}-{arm}",
                    daemon=True,
                )
                thread.start()
                self._trainer_threads.append(thread)

    def stop_background(self) -> None:
        self.audit_check.stop()
        self._trainer_stop.set()
        for thread in self._trainer_threads:
            thread.join(timeout=30)
        self._trainer_threads = []
        self.retrainer.stop()
        self._sync_stop.set()
        if self._sync_thread is not None:
            self._sync_thread.join(timeout=30)
            self._sync_thread = None

    def _sync_loop(self) -> None:
        next_signing = 0.0
        while not self._sync_stop.wait(self.config.sync_interval_s):
            try:
                for join in list(self._joins.values()):
                    join.tick()  # close the impressions whose window ended
                self.sync()
                self.resume_erasures(older_than_s=_ERASURE_STALE_S)
                self.catch_up_erasures()
                if time.monotonic() >= next_signing:
                    next_signing = time.monotonic() + self.config.audit_sign_interval_s
                    self.sign_audit_heads()
            except Exception:  # keep serving; the next round tries again
                log.exception("background sync failed")

    def sign_audit_heads(self) -> dict[str, TreeHead]:
        """Sign each region's audit tree head where the log grew since the last signed head."""
        quarantined = self.gate.quarantined
        return {
            region: self.gate.sign_audit_head(region)
            for region in self.config.served_regions
            if region not in quarantined
        }

    def exploration_served(self) -> dict[str, float]:
        """What this process's feeds have spent on exploring new items since it started."""
        from fyp.selectors.basic import ReserveExploration

        for selector in self.pipeline.selectors:
            if isinstance(selector, ReserveExploration):
                c = selector.counters
                return {
                    "pages": c.pages,
                    "items": c.items,
                    "exploration_items": c.exploration_items,
                    "share": round(c.share(), 4),
                }
        return {}

    def model_versions(self) -> dict[str, str]:
        return {region: slot.version for region, slot in self.slots.items()}

    def close(self) -> None:
        self.stop_background()
        for bus in {
            id(x.bus): x.bus for x in [*self.online.values(), *self._joins.values()]
        }.values():
            bus.close()
        self.gate.close()
        self.catalog.close()


class Retrainer:
    """Background retraining: a region is retrained when it has ``retrain_min_new_events`` new
    events, or when ``retrain_interval_s`` passed and it has any; the new model is swapped in."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.trained_seq: dict[str, int] = {}
        self.trained_at: dict[str, float] = {}
        self.reports: deque[TrainReport] = deque(maxlen=RETRAIN_REPORTS_KEPT)
        """The latest retrainings' reports (a bounded history: a server retrains for months)."""
        self.runs = 0
        """Retrainings done since start."""
        self._lock_file: TextIO | None = None

    def start(self) -> bool:
        """Start retraining in the background; False if another process already does.

        Only one process per data directory retrains (an exclusive lock on a file there); the
        others pick up its models through ``Engine.sync``.
        """
        if self._thread is not None:
            return True
        if not self._take_lock():
            log.info(
                "another process retrains %s; this one only serves", self._engine.config.data_dir
            )
            return False
        self._stop.clear()
        for region, slot in self._engine.slots.items():
            model = slot.current
            self.trained_seq[region] = int(model.meta.get("last_seq", 0)) if model else 0
            meta = model.meta if model else {}
            self.trained_at[region] = float(meta.get("data_as_of", meta.get("trained_at", 0.0)))
        self._thread = threading.Thread(target=self._loop, name="fyp-retrainer", daemon=True)
        self._thread.start()
        return True

    def _take_lock(self) -> bool:
        path = self._engine.config.data_dir / ".retrainer.lock"
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._lock_file = handle
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the lock
            self._lock_file = None

    def due(self, region: str) -> bool:
        config = self._engine.config.training
        handle = self._engine.gate.open(region, self._engine.service(region), "operate")
        if handle.models.last_erasure() > self.trained_at.get(region, 0.0):
            return True  # a user was erased since: their rows must leave the stored model
        new_events = handle.events.last_seq() - self.trained_seq.get(region, 0)
        if new_events <= 0:
            return False
        if new_events >= config.retrain_min_new_events:
            return True
        return time.time() - self.trained_at.get(region, 0.0) >= config.retrain_interval_s

    def run_once(self) -> list[TrainReport]:
        """Retrain every region that is due; returns what was trained."""
        done = []
        for region in self._engine.config.served_regions:
            if self._stop.is_set() or not self.due(region):
                continue
            handle = self._engine.gate.open(region, self._engine.service(region), "operate")
            seq = handle.events.last_seq()
            # Erasures are compared with when the events were read, not when training ended.
            started = time.time()
            [report] = self._engine.train([region])
            self.trained_seq[region] = seq
            self.trained_at[region] = started
            self.reports.append(report)
            self.runs += 1
            done.append(report)
        return done

    def _loop(self) -> None:
        interval = self._engine.config.training.check_interval_s
        while not self._stop.wait(interval):
            try:
                self.run_once()
            except Exception:  # keep serving; the next round tries again
                log.exception("background retraining failed")
