"""The witness endpoints: a region's latest signed audit tree head, and consistency proofs.

An outside monitor (``fyp audit witness --url``, see :mod:`fyp.governance.witness`) polls these
to keep copies of the heads where the region's process cannot rewrite them. Heads and proofs
carry only sizes and hashes, never an entry's content, so like ``Gate.sign_audit_head`` they are
answered without opening the region and nothing is appended to the log per poll. They sit under
``/v1`` behind the API key like every other route.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from fyp.engine import Engine
from fyp.errors import AuditLogDamaged, InvalidInput, NotFound, RegionQuarantined
from fyp.governance import merkle


class TreeHeadOut(BaseModel):
    """A signed statement that the region's log had ``tree_size`` entries with this root.

    The signature (Ed25519, hex) covers ``fyp.governance.keys.tree_head_message``: the region,
    the size, the time and the root; check it with the key ``fyp audit key`` prints.
    """

    region: str
    tree_size: int
    timestamp_ms: int
    root_hash: str
    key_id: str
    signature: str


class ConsistencyOut(BaseModel):
    """RFC 9162 consistency proof: the tree of ``first`` entries is a prefix of ``second``'s."""

    region: str
    first: int
    second: int
    proof: list[str]
    """Hashes in hex, in the order ``fyp.governance.merkle.verify_consistency`` takes them."""


def audit_router(engine: Engine) -> APIRouter:
    router = APIRouter(prefix="/audit", tags=["audit"])

    def refuse_quarantined(region: str) -> None:
        reason = engine.gate.quarantined.get(region)
        if reason is not None:
            raise RegionQuarantined(f"region {region!r} is quarantined: {reason}")

    @router.get("/{region}/head")
    def latest_head(region: str) -> TreeHeadOut:
        """The region's latest signed tree head; signed now if the log grew since the last one
        (so a monitor's copy is as fresh as its polling)."""
        log = engine.gate.audit_log(region)  # NotFound for a region that is not configured
        refuse_quarantined(region)
        if region in engine.config.served_regions:
            head = engine.gate.sign_audit_head(region)
        else:
            # Another deployment serves and signs that region; this one only shows its heads.
            found = log.head()
            if found is None:
                raise NotFound(f"region {region!r} has no signed tree head yet")
            head = found
        return TreeHeadOut(**head.to_json())

    @router.get("/{region}/consistency")
    def consistency(
        region: str,
        first: Annotated[int, Query(ge=1, description="the smaller tree size (a head you hold)")],
        second: Annotated[int, Query(ge=1, description="the larger tree size")],
    ) -> ConsistencyOut:
        """The proof that the log's first ``first`` entries are unchanged in its first
        ``second``."""
        log = engine.gate.audit_log(region)
        if second < first:
            raise InvalidInput(f"second ({second}) must not be smaller than first ({first})")
        size = log.size()
        if second > size:
            raise NotFound(f"the audit log of region {region!r} has {size} entries, not {second}")
        try:
            _, proof = log.consistency_proof(first, second)
        except merkle.ProofError as exc:
            # Sizes were checked above: a proof can only fail on a missing or malformed node.
            raise AuditLogDamaged(
                f"the audit log of region {region!r} cannot prove consistency: {exc}"
            ) from exc
        return ConsistencyOut(
            region=region, first=first, second=second, proof=[h.hex() for h in proof]
        )

    return router
