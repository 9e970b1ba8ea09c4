"""The seeded demo world: a short-video catalog, creators, and simulated viewers with hidden tastes.

``build_world(WorldConfig(seed=1))`` gives a catalog (``fyp.types.Item``), users
(``fyp.types.User``) and a past event log (``fyp.types.Event``) the engine can import, plus
``Viewer`` objects that react to any feed the way their hidden tastes dictate. ``write_world`` saves
the public part as JSON lines for the importer.
"""

from fyp.sim.topics import TOPICS, Topic
from fyp.sim.viewers import ItemFacts, Viewer
from fyp.sim.world import Creator, World, WorldConfig, build_world, write_world

__all__ = [
    "TOPICS",
    "Creator",
    "ItemFacts",
    "Topic",
    "Viewer",
    "World",
    "WorldConfig",
    "build_world",
    "write_world",
]
