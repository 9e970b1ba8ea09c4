"""The HTTP API v1 (see DESIGN.md): thin routes over :class:`fyp.engine.Engine`.

Routes validate, call one engine method and shape the answer; errors are problem documents
(``fyp.api.problems``). Authentication (``fyp.api.auth``): with API keys configured every ``/v1``
call needs ``Authorization: Bearer <key>`` of a key with the route's scope; without keys only
loopback clients are served.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from importlib import resources
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, Security
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

import fyp
from fyp.api import openapi, problems
from fyp.api.audit_routes import audit_router
from fyp.api.auth import Authenticator, bearer_token
from fyp.api.limits import InFlightLimit
from fyp.api.schemas import (
    ControlsIn,
    ControlsOut,
    ControlsPatchIn,
    ErasureReceiptOut,
    EventErrorOut,
    EventsIn,
    EventsOut,
    FeedItemOut,
    FeedOut,
    HealthOut,
    HealthPublicOut,
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
from fyp.errors import AccessDenied, InvalidInput
from fyp.governance import api_keys
from fyp.governance.transparency import report as transparency_report
from fyp.types import MAX_FEED_N, MAX_ID_LEN, Event, RegionName, Tag, is_valid_id

MAX_BODY_BYTES = 16 * 1024 * 1024

_BEARER = HTTPBearer(
    auto_error=False,
    description="An API key (`fyp apikey add`, or `FYP_API_KEY`). A server without keys serves "
    "loopback clients without one.",
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` once a request body passes ``MAX_BODY_BYTES``.

    An HTTP exception on purpose: FastAPI re-raises those from body reading (anything else it
    turns into a 400), so the problem handler answers it like any other refusal.
    """

    def __init__(self) -> None:
        super().__init__(413, f"request bodies are limited to {MAX_BODY_BYTES} bytes")


class Edge:
    """Pure ASGI middleware (cheap on the hot path) for what every request gets:

    * bodies over ``MAX_BODY_BYTES`` are refused: at once when ``Content-Length`` says so, and
      otherwise (chunked uploads) as soon as the bytes pulled from the client pass the limit, so
      the server never holds more than the limit plus one chunk; the refusal closes the
      connection rather than draining the rest of the upload;
    * the response carries ``Server-Timing: app;dur=<ms>``, the time spent inside the server,
      which load tests read to separate server latency from client and network time.

    FastAPI's own ``max_body_size`` is not used: it answers some refusals in ``text/plain``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
                await _too_large(scope, receive, send)
                return
        started = time.perf_counter()
        received = 0
        over_limit = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, over_limit
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    over_limit = True
                    raise BodyTooLarge
            return message

        async def timed_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                elapsed_ms = (time.perf_counter() - started) * 1000.0
                headers = list(message.get("headers", ()))
                headers.append((b"server-timing", f"app;dur={elapsed_ms:.3f}".encode()))
                if over_limit:
                    # The rest of the upload is still coming: close rather than read it.
                    headers.append((b"connection", b"close"))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, limited_receive, timed_send)
        except BodyTooLarge:
            # Read outside a route's body parsing, where no handler caught it.
            if response_started:
                raise
            await _too_large(scope, receive, send)


async def _too_large(scope: Scope, receive: Receive, send: Send) -> None:
    response = problems.problem(
        413,
        "payload-too-large",
        "Payload too large",
        f"request bodies are limited to {MAX_BODY_BYTES} bytes",
        headers={"Connection": "close"},
    )
    await response(scope, receive, send)


def _item_out(record: Any) -> ItemOut:
    return ItemOut(**record.to_json())


def _key_regions() -> list[str] | None:
    """The regions the request's API key is limited to (``None``: every region)."""
    key = api_keys.current()
    return sorted(key.regions) if key is not None and key.regions is not None else None


def _require_every_region() -> None:
    """The catalog is shared by every region: a key limited to some may not change it."""
    key = api_keys.current()
    if key is not None and key.regions is not None:
        raise AccessDenied(
            f"API key {key.name!r} is limited to region(s) {', '.join(sorted(key.regions))}; "
            "the catalog is shared by every region"
        )


def _check_id(kind: str, value: str) -> None:
    if len(value) > MAX_ID_LEN:
        # Not echoed: a problem document must not grow with what the client sent.
        raise InvalidInput(
            f"a {kind} id has at most {MAX_ID_LEN} characters, got {len(value)} characters"
        )
    if not is_valid_id(value):
        raise InvalidInput(f"{value!r} is not a valid {kind} id")


def create_app(
    engine: Engine,
    background_training: bool = False,
    close_engine: bool = True,
    auth: Authenticator | None = None,
) -> FastAPI:
    """Build the app around ``engine``.

    ``background_training`` starts the retrainer with the app; ``close_engine`` closes the engine
    when the app shuts down (pass False when the caller keeps using the engine). ``auth`` holds
    the API keys (default: ``FYP_API_KEY`` and the data directory's keys file).
    """
    if auth is None:
        auth = Authenticator(engine.config.data_dir, engine.config.server.api_key)

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
    openapi.install(app, engine.config.region_names)

    async def authorize(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
    ) -> None:
        # Async on purpose: the key is set in the request's own context, which the worker
        # threads running the route (and the gate's audit entries) inherit.
        route = request.scope.get("route")
        key = auth.authorize(
            credentials.credentials if credentials else None,
            request.client.host if request.client else None,
            request.method,
            getattr(route, "path", request.url.path),
        )
        api_keys.acting_as(key)

    v1 = APIRouter(
        prefix="/v1", dependencies=[Depends(authorize)], responses=openapi.PROBLEM_RESPONSES
    )

    @app.get(
        "/healthz",
        tags=["ops"],
        responses={503: {"model": HealthOut | HealthPublicOut, "description": "Down"}},
    )
    async def healthz(request: Request, response: Response) -> HealthOut | HealthPublicOut:
        """Up or down for anyone; in full (model versions, quarantine reasons) for keys with the
        ``admin`` or ``audit`` scope, or for loopback clients of a server without keys."""
        quarantined = engine.gate.quarantined
        down = all(region in quarantined for region in engine.config.served_regions)
        if down:
            response.status_code = 503
        client = request.client.host if request.client else None
        if not auth.sees_health_detail(bearer_token(request.headers.get("authorization")), client):
            return HealthPublicOut(status="down" if down else "up")
        return HealthOut(
            status="down" if down else "degraded" if quarantined else "ok",
            version=fyp.__version__,
            regions=engine.config.region_names,
            model_versions=engine.model_versions(),
            quarantined=quarantined,
            audit_check=engine.audit_check.status(),
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
        _require_every_region()
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
    def erase_user(user_id: str) -> ErasureReceiptOut:
        """Erase the user; the receipt carries the audit entry and its inclusion proof. A second
        request for the same user (or one racing the first) finds no user: 404."""
        _check_id("user", user_id)
        return ErasureReceiptOut.model_validate(engine.rights.erase(user_id))

    @v1.get("/users/{user_id}/controls", tags=["rights"])
    def get_controls(user_id: str) -> ControlsOut:
        _check_id("user", user_id)
        return _controls_out(user_id, engine.rights.controls(user_id))

    @v1.put("/users/{user_id}/controls", tags=["rights"])
    def put_controls(user_id: str, body: ControlsIn) -> ControlsOut:
        """Replace the user's controls (the whole document: personalization on or off, keyword
        filters, blocked tags); the next feed follows them."""
        _check_id("user", user_id)
        stored = engine.rights.put_controls(
            user_id, body.personalized, body.keyword_filters, body.blocked_tags
        )
        return _controls_out(user_id, stored)

    @v1.patch("/users/{user_id}/controls", tags=["rights"])
    def patch_controls(user_id: str, body: ControlsPatchIn) -> ControlsOut:
        """Change only the controls given; the others keep their stored values."""
        _check_id("user", user_id)
        stored = engine.rights.patch_controls(
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
        tag: Annotated[Tag | None, Query(description="forget one tag (default: reset all)")] = None,
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
    def train(
        region: Annotated[
            RegionName | None, Query(description="one configured region (default: every one)")
        ] = None,
    ) -> TrainOut:
        # ``?region=`` is an invalid name (422), never "every region"; a key limited to some
        # regions trains those by default.
        reports = engine.train([region] if region is not None else _key_regions())
        return TrainOut(reports=[TrainReportOut(**dataclasses.asdict(r)) for r in reports])

    app.include_router(v1)
    app.include_router(
        audit_router(engine),
        prefix="/v1",
        dependencies=[Depends(authorize)],
        responses=openapi.PROBLEM_RESPONSES,
    )

    page = resources.files("fyp.web").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        settings = json.dumps({"requires_key": auth.configured})
        return HTMLResponse(page.replace("__FYP_CONFIG__", settings))

    return app
