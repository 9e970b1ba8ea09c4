"""What the built-in policy file grants, written out independently as the tests' oracle."""

from __future__ import annotations

from typing import Final

DEFAULT_GRANTS: Final[dict[str, frozenset[str]]] = {
    "service": frozenset(
        {"route", "serve_feed", "ingest", "manage_users", "read_user", "train", "operate"}
        | {"export_user", "erase_user", "manage_controls"}
    ),
    "operator": frozenset(
        {"route", "ingest", "manage_users", "read_user", "train", "operate"}
        | {"export_user", "erase_user", "manage_keys"}
    ),
    "auditor": frozenset({"audit", "operate", "scan_package"}),
    "user": frozenset({"read_user", "export_user", "erase_user", "manage_controls"}),
}
