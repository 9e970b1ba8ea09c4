"""The app factory server workers import: ``uvicorn fyp.api.asgi:app_from_env --factory``.

``fyp serve --workers N`` starts N processes that each build their own engine from the data
directory named in ``FYP_DATA_DIR`` (host, port and API key come from the usual settings). They
share the databases; one of them retrains, all of them pick up its models (``Engine.sync``).
"""

from __future__ import annotations

import logging
import os
import time

from fastapi import FastAPI

from fyp.api.app import create_app
from fyp.config import BACKGROUND_TRAINING_ENV, load_config
from fyp.engine import Engine

log = logging.getLogger(__name__)


def app_from_env() -> FastAPI:
    config = load_config()
    engine = Engine(config)
    started = time.perf_counter()
    warmed = engine.warm()
    log.warning(
        "worker %d: %s catalog items in memory after %.1fs",
        os.getpid(),
        f"{warmed:,}",
        time.perf_counter() - started,
    )
    training = os.environ.get(BACKGROUND_TRAINING_ENV, "1") != "0"
    return create_app(engine, background_training=training)
