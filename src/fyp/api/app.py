"""The HTTP API v1 (see DESIGN.md): thin routes over :class:`fyp.engine.Engine`.

Routes validate, call one engine method and shape the answer; errors are problem documents
(``fyp.api.problems``). Authentication: with ``FYP_API_KEY`` set every ``/v1`` call needs
``Authorization: Bearer <key>``; without a key only loopback clients are served.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from importlib import resources
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

import fyp
from fyp.api import problems
from fyp.api.limits import InFlightLimit
from fyp.api.schemas import (
    ControlsIn,
    ControlsOut,
    EventErrorOut,
    EventsIn,
    EventsOut,
    FeedItemOut,
    FeedOut,
    HealthOut,
    InterestOut,
    InterestsDeletedOut,
    InterestsOut,
    ItemOut,
    ItemsIn,
    ReasonOut,
    RegionOut,
    RegionsOut,
    TrainOut,
    TrainReportOut,
    UpsertOut,
    UserOut,
    UsersIn,
)
from fyp.engine import Engine
from fyp.errors import AccessDenied, InvalidInput, Unauthenticated
from fyp.governance.transparency import report as transparency_report
from fyp.types import MAX_FEED_N, Event, is_valid_id

MAX_BODY_BYTES = 16 * 1024 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Edge:
    """Pure ASGI middleware (cheap on the hot path) for what every request gets:

    * bodies over ``MAX_BODY_BYTES`` are refused before they are read;
    * the response carries ``Server-Timing: app;dur=<ms>``, the time spent inside the server,
      which load tests read to separate server latency from client and network time.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
                response = problems.problem(
                    413,
                    "payload-too-large",
                    "Payload too large",
                    f"request bodies are limited to {MAX_BODY_BYTES} bytes",
                )
                await response(scope, receive, send)
                return
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed_ms = (time.perf_counter() - started) * 1000.0
                headers = list(message.get("headers", ()))
                headers.append((b"server-timing", f"app;dur={elapsed_ms:.3f}".encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, timed_send)


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _item_out(record: Any) -> ItemOut:
    return ItemOut(**record.to_json())


def _check_id(kind: str, value: str) -> None:
    if not is_valid_id(value):
        raise InvalidInput(f"{value!r} is not a valid {kind} id")


def create_app(
    engine: Engine, background_training: bool = False, close_engine: bool = True
) -> FastAPI:
    """Build the app around ``engine``.

    ``background_training`` starts the retrainer with the app; ``close_engine`` closes the engine
    when the app shuts down (pass False when the caller keeps using the engine).
    """
    api_key = engine.config.server.api_key

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start_background(train=background_training)
        try:
            yield
        finally:
            engine.stop_background()
            if close_engine:
                engine.close()

    app = FastAPI(
        title="fyp",
        version=fyp.__version__,
        summary="A self-hosted For You feed engine with region-pinned user data.",
        lifespan=lifespan,
    )
    app.add_middleware(Edge)
    # Added last, so outermost: a request beyond the bound is refused before anything else runs.
    app.add_middleware(InFlightLimit, limit=engine.config.server.max_in_flight)
    problems.install(app)

    def authorize(request: Request) -> None:
        if api_key is None:
            host = request.client.host if request.client else None
            if not _is_loopback(host):
                raise AccessDenied(
                    "this server has no API key and serves loopback clients only; "
                    "set FYP_API_KEY to accept remote clients"
                )
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.encode(), api_key.get_secret_value().encode()
        ):
            raise Unauthenticated("send 'Authorization: Bearer <key>' with the server's API key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    @app.get("/healthz", tags=["ops"])
    def healthz() -> HealthOut:
        quarantined = engine.gate.quarantined
        return HealthOut(
            status="degraded" if quarantined else "ok",
            version=fyp.__version__,
            regions=engine.config.region_names,
            model_versions=engine.model_versions(),
            quarantined=quarantined,
        )

    @v1.get("/regions", tags=["regions"])
    def regions() -> RegionsOut:
        versions = engine.model_versions()
        return RegionsOut(
            regions=[
                RegionOut(name=r.name, description=r.description, model_version=versions[r.name])
                for r in engine.config.regions
            ]
        )

    @v1.put("/items", tags=["catalog"])
    def put_items(body: ItemsIn) -> UpsertOut:
        result = engine.put_items(body.items)
        return UpsertOut(created=result.created, updated=result.updated)

    @v1.get("/items/{item_id}", tags=["catalog"])
    def get_item(item_id: str) -> ItemOut:
        _check_id("item", item_id)
        return _item_out(engine.get_item(item_id))

    @v1.put("/users", tags=["users"])
    def put_users(body: UsersIn) -> UpsertOut:
        result = engine.put_users(body.users)
        return UpsertOut(created=result.created, updated=result.updated)

    @v1.get("/users/{user_id}", tags=["users"])
    def get_user(user_id: str) -> UserOut:
        _check_id("user", user_id)
        user = engine.get_user(user_id)
        return UserOut(
            user_id=user.user_id,
            region=user.region,
            attributes=user.attributes,
            created_at=user.created_at,
        )

    @v1.post("/events", tags=["events"])
    def post_events(body: EventsIn) -> EventsOut:
        parsed: list[Event | None] = []
        errors: list[tuple[int, str]] = []
        for index, raw in enumerate(body.events):
            try:
                parsed.append(Event.model_validate(raw))
            except ValidationError as exc:
                parsed.append(None)
                details = problems.validation_errors(exc.errors())
                errors.append((index, "; ".join(f"{d['field']}: {d['detail']}" for d in details)))
        result = engine.ingest(parsed, errors)
        return EventsOut(
            accepted=result.accepted,
            duplicates=result.duplicates,
            errors=[EventErrorOut(index=i, detail=d) for i, d in result.errors],
        )

    feed_slots = anyio.CapacityLimiter(engine.config.server.max_concurrent_feeds)

    @v1.get("/users/{user_id}/feed", tags=["feed"])
    async def feed(
        user_id: str,
        n: Annotated[int, Query(ge=1, le=MAX_FEED_N)] = 10,
        details: Annotated[bool, Query(description="include item metadata")] = False,
        trace: Annotated[bool, Query(description="include the pipeline trace")] = False,
    ) -> FeedOut:
        _check_id("user", user_id)
        result = await anyio.to_thread.run_sync(engine.feed, user_id, n, limiter=feed_slots)
        records = engine.catalog.get_items([i.item_id for i in result.items]) if details else {}
        return FeedOut(
            request_id=result.request_id,
            user_id=result.user_id,
            region=result.region,
            model_version=result.model_version,
            algorithm_hash=result.algorithm_hash,
            items=[
                FeedItemOut(
                    item_id=item.item_id,
                    score=item.score,
                    reasons=[ReasonOut(code=r.code, text=r.text) for r in item.reasons],
                    item=_item_out(records[item.item_id]) if item.item_id in records else None,
                )
                for item in result.items
            ],
            trace=result.trace.to_json() if trace else None,
        )

    # ---- users' rights (each a gated, audited purpose; see fyp.governance.rights) ---------------

    def _controls_out(user_id: str, c: Any) -> ControlsOut:
        return ControlsOut(
            user_id=user_id,
            personalized=c.personalized,
            keyword_filters=list(c.keyword_filters),
            blocked_tags=list(c.blocked_tags),
            interests_reset_at=c.interests_reset_at,
        )

    @v1.get("/users/{user_id}/export", tags=["rights"])
    def export_user(user_id: str) -> dict[str, Any]:
        """Everything held about the user, as JSON (profile, events, state, interests, reasons)."""
        _check_id("user", user_id)
        return engine.rights.export(user_id)

    @v1.delete("/users/{user_id}", tags=["rights"])
    def erase_user(user_id: str) -> dict[str, Any]:
        """Erase the user; the receipt carries the audit entry and its inclusion proof."""
        _check_id("user", user_id)
        return engine.rights.erase(user_id)

    @v1.get("/users/{user_id}/controls", tags=["rights"])
    def get_controls(user_id: str) -> ControlsOut:
        _check_id("user", user_id)
        return _controls_out(user_id, engine.rights.controls(user_id))

    @v1.put("/users/{user_id}/controls", tags=["rights"])
    def put_controls(user_id: str, body: ControlsIn) -> ControlsOut:
        """Personalization on or off and the user's own filters; the next feed follows them."""
        _check_id("user", user_id)
        stored = engine.rights.put_controls(
            user_id, body.personalized, body.keyword_filters, body.blocked_tags
        )
        return _controls_out(user_id, stored)

    @v1.get("/users/{user_id}/interests", tags=["rights"])
    def get_interests(user_id: str) -> InterestsOut:
        """What the feed inferred about the user: tag and creator affinities, strongest first."""
        _check_id("user", user_id)
        found = engine.rights.interests(user_id)
        return InterestsOut(
            user_id=user_id,
            interests=[InterestOut(kind=i.kind, key=i.key, weight=i.weight) for i in found],
        )

    @v1.delete("/users/{user_id}/interests", tags=["rights"])
    def delete_interests(
        user_id: str,
        tag: Annotated[str | None, Query(description="forget one tag (default: reset all)")] = None,
    ) -> InterestsDeletedOut:
        _check_id("user", user_id)
        removed = engine.rights.delete_interests(user_id, tag)
        return InterestsDeletedOut(user_id=user_id, removed=removed, tag=tag)

    @v1.get("/transparency", tags=["transparency"])
    def transparency() -> dict[str, Any]:
        """The main parameters of the ranking, generated from the running configuration."""
        return transparency_report(
            engine.config,
            engine.model_versions(),
            engine.exploration_served(),
            engine.online_stats(),
        )

    @v1.post("/train", tags=["models"])
    def train(region: Annotated[str | None, Query()] = None) -> TrainOut:
        reports = engine.train([region] if region else None)
        return TrainOut(reports=[TrainReportOut(**dataclasses.asdict(r)) for r in reports])

    app.include_router(v1)

    page = resources.files("fyp.web").joinpath("static/index.html").read_text(encoding="utf-8")
    page = page.replace("__FYP_CONFIG__", json.dumps({"requires_key": api_key is not None}))

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app
