"""Does erasure reach the model? A membership-inference check before and after erasure.

    .venv/bin/python bench/erasure_mi.py [--viewers 1500] [--erase 150] [--no-docs]

On the demo world (fyp.sim), in one region: a set of viewers is kept out of the engine entirely
(non-members). The rest are imported and the region is trained. The attack scores a viewer by
how well the trained factor model reconstructs their own interactions (the mean preference-weighted
score of their items after folding them into the factor space from those same events): a model
that learned from a viewer fits their items better than a stranger's. Its AUC separates members
from non-members before erasure. Then a set of members is erased through the rights API and the
region is retrained (the next training step); the attack is run again on the erased viewers (using
the events they had, as an attacker holding a copy would) against the same non-members. Chance is
0.5. Remaining members are scored too, to show the attack still works on the retrained model.
Writes the ``bench:erasure_mi`` section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import machine_info, write_section  # noqa: E402
from fyp.config import load_config  # noqa: E402
from fyp.engine import Engine  # noqa: E402
from fyp.eval.metrics import auc  # noqa: E402
from fyp.signals import preference_weight  # noqa: E402
from fyp.sim.world import WorldConfig, build_world  # noqa: E402
from fyp.types import Event  # noqa: E402

START = "<!-- bench:erasure_mi:start -->"
END = "<!-- bench:erasure_mi:end -->"
REGION = "us"


def _signal(engine: Engine, history: list[Event], durations: dict[str, float]) -> float:
    """Mean model score of the viewer's own preferred items, folded in from their events."""
    model = engine.slots[REGION].current
    assert model is not None
    training = engine.config.training
    pairs = [
        (
            e.item_id,
            preference_weight(
                e.type,
                e.watch_ms,
                durations[e.item_id],
                training.event_weights,
                training.play_weight,
            ),
        )
        for e in history
    ]
    vector = model.user_vector(pairs)
    if vector is None:
        return 0.0
    liked = [model.index_of[i] for i, w in pairs if w > 0 and i in model.index_of]
    if not liked:
        return 0.0
    factors = model._als.item_factors  # the served item factors
    return float(np.mean(factors[liked] @ vector))


def run(viewers: int, erase: int, seed: int) -> dict[str, float]:
    world = build_world(WorldConfig(seed=seed, n_viewers=viewers, regions=(REGION,)))
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in world.history:
        by_user[event.user_id].append(event)
    active = sorted(u for u, evs in by_user.items() if sum(e.type == "like" for e in evs) >= 2)
    rng = random.Random(seed)
    rng.shuffle(active)
    outsiders, erased, kept = (
        active[:erase],
        active[erase : 2 * erase],
        active[2 * erase : 3 * erase],
    )
    durations = {item.item_id: item.duration_s for item in world.items}
    out: dict[str, float] = {"viewers": viewers, "per_group": erase}
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(load_config(Path(tmp)), clock=lambda: world.now)
        engine.put_items(world.items)
        outside = set(outsiders)
        engine.put_users([u for u in world.users if u.user_id not in outside])
        members_events = [e for e in world.history if e.user_id not in outside]
        for start in range(0, len(members_events), 5000):
            engine.ingest(members_events[start : start + 5000])
        out["events"] = len(members_events)
        engine.train([REGION])

        def scores(users: list[str]) -> list[float]:
            return [_signal(engine, by_user[u], durations) for u in users]

        non_members = scores(outsiders)
        before = scores(erased)
        out["auc_before"] = auc([1] * len(before) + [0] * len(non_members), before + non_members)
        for user_id in erased:
            engine.rights.erase(user_id)
        engine.train([REGION])
        non_members = scores(outsiders)
        after = scores(erased)
        still = scores(kept)
        out["auc_after"] = auc([1] * len(after) + [0] * len(non_members), after + non_members)
        out["auc_kept"] = auc([1] * len(still) + [0] * len(non_members), still + non_members)
        engine.close()
    return out


def section(r: dict[str, float], command: str) -> str:
    m = machine_info(REPO)
    n = int(r["per_group"])
    return "\n".join(
        [
            START,
            "## Erasure reaches the model: membership inference (`bench/erasure_mi.py`)",
            "",
            f"Command: `{command}`  ",
            f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}  ",
            f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, fyp {m['fyp']} "
            f"(commit {m['git']})",
            "",
            f"Demo world of {int(r['viewers']):,} viewers in one region ({int(r['events']):,} "
            f"events imported); {n} viewers never imported (non-members), {n} erased, {n} kept. "
            "Attack: the mean score the region's factor model gives a viewer's own liked items "
            "after folding them in from their events (a model fits what it learned from). AUC of "
            "that score, members against non-members; 0.5 is chance.",
            "",
            "| group against non-members | model | attack AUC |",
            "|---|---|---:|",
            f"| viewers to be erased | trained with them | {r['auc_before']:.3f} |",
            f"| the same viewers, erased | retrained after erasure | **{r['auc_after']:.3f}** |",
            f"| viewers kept | retrained after erasure | {r['auc_kept']:.3f} |",
            "",
            "How erasure reaches the model: the region's learned source stores no per-user "
            "vectors (a viewer is folded in from their events at request time), so erasure "
            "removes the events and the next training run, which reads only the remaining events, "
            "rebuilds the item factors without them.",
            END,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--viewers", type=int, default=1500)
    parser.add_argument("--erase", type=int, default=150)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    args = parser.parse_args(argv)
    result = run(args.viewers, args.erase, args.seed)
    command = ".venv/bin/python bench/erasure_mi.py"
    text = section(result, command)
    print(text)
    if args.docs:
        write_section(REPO / "docs" / "BENCHMARKS.md", START, END, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
