"""Who may do what, where: principals, purposes, and the region policy.

A principal is a service, an operator, an auditor or a user, always with a home region. A purpose
names why data is touched; each purpose permits a fixed set of role operations
(``PURPOSE_OPERATIONS``), so even an allowed handle can only do what its purpose needs.

Who is granted which purposes is not code: it is a policy file the operator can read and review
(``default_policy.toml`` here, or the file named by ``policy_file``), evaluated by
:class:`DeclarativePolicy`: deny by default, deny wins, and a cross-region access (an export) only
through a named exception that carries its justification.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from fyp.errors import ConfigError

Purpose = Literal[
    "route",
    "serve_feed",
    "ingest",
    "manage_users",
    "read_user",
    "train",
    "operate",
    "audit",
    "export_user",
    "erase_user",
    "manage_controls",
    "scan_package",
    "manage_keys",
]
PrincipalKind = Literal["service", "operator", "auditor", "user"]

PURPOSE_OPERATIONS: Final[Mapping[str, frozenset[str]]] = {
    "route": frozenset({"users.has_users"}),
    "serve_feed": frozenset(
        {
            "users.get_user",
            "state.hydrate",
            "state.seen_among",
            "state.record_served",
            "stats.stats",
            "stats.trending",
            "stats.totals",
            "events.recent_for_user",
            "rights.controls",
            "models.load_current",
            "models.current_version",
            "models.load_published",
        }
    ),
    "ingest": frozenset({"users.has_users", "events.append"}),
    "manage_users": frozenset({"users.upsert_users", "users.get_user", "users.has_users"}),
    "read_user": frozenset({"users.get_user"}),
    "train": frozenset(
        {
            "events.scan",
            "events.last_seq",
            "models.online_dir",
            "models.save_published",
            "models.last_erasure",
            "users.has_users",
            "models.save",
            "models.load_current",
            "models.current_version",
        }
    ),
    "operate": frozenset(
        {
            "users.count_users",
            "events.last_seq",
            "stats.totals",
            "models.current_version",
            "models.last_erasure",
        }
    ),
    "audit": frozenset({"audit.tail", "audit.count", "audit.verify", "audit.leaf"}),
    "export_user": frozenset({"users.get_user", "rights.export_user", "rights.interests"}),
    "erase_user": frozenset(
        {
            "users.has_users",
            "rights.begin_erasure",
            "rights.claim_erasure_audit",
            "rights.pending_erasure",
            "rights.pending_erasures",
            "rights.finish_erasure",
            "rights.erase_user",
            "models.mark_erasure",
        }
    ),
    # Checking an incoming algorithm package against the region's own users and model rows.
    "scan_package": frozenset({"users.user_ids", "models.load_current"}),
    # The region's key-encryption keys: re-wrapping data keys never opens a personal value.
    "manage_keys": frozenset({"keys.rotate_kek", "keys.key_status", "models.last_erasure"}),
    "manage_controls": frozenset(
        {
            "users.get_user",
            "rights.controls",
            "rights.put_controls",
            "rights.patch_controls",
            "rights.interests",
            "rights.reset_interests",
        }
    ),
}

KINDS: Final[tuple[PrincipalKind, ...]] = ("service", "operator", "auditor", "user")


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    kind: PrincipalKind
    region: str
    """The principal's home region: the only region whose data it may open."""

    @classmethod
    def service(cls, region: str) -> Principal:
        """The engine's own service identity inside ``region``."""
        return cls(id=f"service:{region}", kind="service", region=region)

    @classmethod
    def operator(cls, region: str, name: str = "cli") -> Principal:
        return cls(id=f"operator:{name}@{region}", kind="operator", region=region)

    @classmethod
    def auditor(cls, region: str, name: str = "cli") -> Principal:
        return cls(id=f"auditor:{name}@{region}", kind="auditor", region=region)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    rule: str | None = None
    """The name of the rule or exception that decided, if one did (else: deny by default)."""
    export: bool = False
    """An allowed access to a region other than the principal's home: recorded as an export."""


class Policy(Protocol):
    def decide(self, principal: Principal, region: str, purpose: str) -> Decision: ...


class RegionalPolicies:
    """Each region's opens decided by that region's own policy (the shared one by default).

    A region whose policy file could not be loaded decides nothing: every open of it is refused
    with the reason, and the engine quarantines it, while the other regions carry on.
    """

    def __init__(
        self,
        shared: Policy,
        by_region: Mapping[str, Policy] | None = None,
        broken: Mapping[str, str] | None = None,
    ) -> None:
        self.shared = shared
        self.by_region = dict(by_region or {})
        self.broken = dict(broken or {})

    def decide(self, principal: Principal, region: str, purpose: str) -> Decision:
        problem = self.broken.get(region)
        if problem is not None:
            return Decision(False, f"region {region!r} has no valid policy: {problem}")
        return self.by_region.get(region, self.shared).decide(principal, region, purpose)


_ALLOW_KEYS: Final = frozenset({"name", "kinds", "ids", "purposes"})
_DENY_KEYS: Final = _ALLOW_KEYS | {"regions"}
_EXCEPTION_KEYS: Final = _ALLOW_KEYS | {"justification", "from_regions", "to_regions", "expires"}
_MIN_JUSTIFICATION: Final = 10


@dataclass(frozen=True)
class Rule:
    """One ``[[allow]]``, ``[[deny]]`` or ``[[exception]]`` block; ``None`` matches anything."""

    effect: Literal["allow", "deny", "exception"]
    name: str
    kinds: frozenset[str] | None = None
    ids: tuple[str, ...] | None = None
    """Principal ids; shell-style wildcards (``operator:*@eu``) allowed."""
    purposes: frozenset[str] | None = None
    regions: frozenset[str] | None = None
    """Deny only: the target regions it covers."""
    from_regions: frozenset[str] | None = None
    to_regions: frozenset[str] | None = None
    justification: str = ""
    expires: float | None = None
    """Exceptions only: the instant (epoch seconds) it stops allowing anything."""

    def matches(self, principal: Principal, region: str, purpose: str) -> bool:
        return (
            (self.kinds is None or principal.kind in self.kinds)
            and (self.ids is None or any(fnmatchcase(principal.id, p) for p in self.ids))
            and (self.purposes is None or purpose in self.purposes)
            and (self.regions is None or region in self.regions)
            and (self.from_regions is None or principal.region in self.from_regions)
            and (self.to_regions is None or region in self.to_regions)
        )

    def region_names(self) -> set[str]:
        return set().union(*(r or () for r in (self.regions, self.from_regions, self.to_regions)))


class DeclarativePolicy:
    """A policy read from a TOML file: deny by default, deny wins, exports only by exception.

    Evaluation order for ``decide(principal, region, purpose)``:

    1. an unknown purpose is refused;
    2. any matching ``[[deny]]`` refuses (deny wins over every allow and exception);
    3. a target region other than the principal's home is an export: allowed only by a matching,
       unexpired ``[[exception]]`` (each carries a written justification);
    4. in the home region, a matching ``[[allow]]`` allows;
    5. nothing matched: refused (deny by default).
    """

    def __init__(
        self, rules: Sequence[Rule], source: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.rules = list(rules)
        self.source = source
        self._clock = clock
        self._deny = [r for r in rules if r.effect == "deny"]
        self._allow = [r for r in rules if r.effect == "allow"]
        self._exceptions = [r for r in rules if r.effect == "exception"]

    # ---- loading --------------------------------------------------------------------------------

    @classmethod
    def default(cls) -> DeclarativePolicy:
        text = resources.files("fyp.governance").joinpath("default_policy.toml").read_text()
        return cls.parse(text, "fyp default policy")

    @classmethod
    def load(cls, path: Path) -> DeclarativePolicy:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read policy file {path}: {exc.strerror}") from exc
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str, source: str) -> DeclarativePolicy:
        """Parse and check a policy; any mistake is a :class:`ConfigError` naming where it is."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"policy {source} is not valid TOML: {exc}") from exc
        unknown = set(data) - {"version", "allow", "deny", "exception"}
        if unknown:
            raise ConfigError(f"policy {source}: unknown top-level keys {sorted(unknown)}")
        if data.get("version") != 1:
            raise ConfigError(f"policy {source}: `version = 1` is required")
        rules: list[Rule] = []
        for effect, allowed_keys in (
            ("allow", _ALLOW_KEYS),
            ("deny", _DENY_KEYS),
            ("exception", _EXCEPTION_KEYS),
        ):
            blocks = data.get(effect, [])
            if not isinstance(blocks, list):
                raise ConfigError(f"policy {source}: `{effect}` must be a list of [[{effect}]]")
            for number, block in enumerate(blocks, 1):
                where = f"policy {source}, [[{effect}]] #{number}"
                rules.append(_rule(effect, block, allowed_keys, where))
        names = [r.name for r in rules]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ConfigError(f"policy {source}: rule names must be unique, repeated {duplicated}")
        return cls(rules, source)

    def check_regions(self, configured: Sequence[str]) -> None:
        """Refuse rules naming regions that are not configured (a typo would never match)."""
        for rule in self.rules:
            unknown = rule.region_names() - set(configured)
            if unknown:
                raise ConfigError(
                    f"policy {self.source}: rule {rule.name!r} names unknown regions "
                    f"{sorted(unknown)}; configured: {list(configured)}"
                )

    # ---- deciding -------------------------------------------------------------------------------

    def decide(self, principal: Principal, region: str, purpose: str) -> Decision:
        if purpose not in PURPOSE_OPERATIONS:
            return Decision(False, f"unknown purpose {purpose!r}")
        for rule in self._deny:
            if rule.matches(principal, region, purpose):
                return Decision(False, f"denied by rule {rule.name!r}", rule.name)
        if principal.region != region:
            now = self._clock()
            for rule in self._exceptions:
                if rule.matches(principal, region, purpose) and (
                    rule.expires is None or now < rule.expires
                ):
                    return Decision(
                        True,
                        f"export from {region!r} to a principal of {principal.region!r} allowed "
                        f"by exception {rule.name!r}: {rule.justification}",
                        rule.name,
                        export=True,
                    )
            return Decision(
                False,
                f"cross-region access from {principal.region!r} to {region!r} is an export "
                "and no exception allows it",
            )
        for rule in self._allow:
            if rule.matches(principal, region, purpose):
                return Decision(True, f"allowed by rule {rule.name!r}", rule.name)
        return Decision(False, f"no rule grants a {principal.kind} {purpose!r} (deny by default)")


def _strings(value: object, where: str, key: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: `{key}` must be a non-empty list of strings")
    return list(value)


def _rule(effect: str, block: object, allowed_keys: frozenset[str], where: str) -> Rule:
    if not isinstance(block, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(block) - allowed_keys
    if unknown:
        raise ConfigError(
            f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed_keys)})"
        )
    name = block.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: every rule needs a `name`")
    where = f"{where} ({name!r})"
    fields: dict[str, Any] = {}
    if "kinds" in block:
        kinds = _strings(block["kinds"], where, "kinds")
        bad = sorted(set(kinds) - set(KINDS))
        if bad:
            raise ConfigError(f"{where}: unknown principal kinds {bad}; known: {list(KINDS)}")
        fields["kinds"] = frozenset(kinds)
    if "ids" in block:
        fields["ids"] = tuple(_strings(block["ids"], where, "ids"))
    if "purposes" in block:
        purposes = _strings(block["purposes"], where, "purposes")
        if purposes != ["*"]:
            bad = sorted(set(purposes) - set(PURPOSE_OPERATIONS))
            if bad:
                raise ConfigError(
                    f"{where}: unknown purposes {bad}; known: {sorted(PURPOSE_OPERATIONS)}"
                )
            fields["purposes"] = frozenset(purposes)
    for key in ("regions", "from_regions", "to_regions"):
        if key in block:
            fields[key] = frozenset(_strings(block[key], where, key))
    if effect == "allow" and "kinds" not in fields and "ids" not in fields:
        raise ConfigError(f"{where}: an allow rule must name `kinds` or `ids`")
    if effect == "exception":
        justification = block.get("justification")
        if not isinstance(justification, str) or len(justification.strip()) < _MIN_JUSTIFICATION:
            raise ConfigError(
                f"{where}: an exception needs a `justification` of at least "
                f"{_MIN_JUSTIFICATION} characters"
            )
        if "to_regions" not in fields:
            raise ConfigError(f"{where}: an exception must name the `to_regions` it opens")
        if "kinds" not in fields and "ids" not in fields:
            raise ConfigError(f"{where}: an exception must name `kinds` or `ids`")
        fields["justification"] = justification.strip()
        if "expires" in block:
            fields["expires"] = _instant(block["expires"], where)
    return Rule(effect=effect, name=name.strip(), **fields)  # type: ignore[arg-type]


def _instant(value: object, where: str) -> float:
    """A TOML date or datetime (naive means UTC) as epoch seconds."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day, tzinfo=UTC)
    else:
        raise ConfigError(f"{where}: `expires` must be a TOML date or datetime")
    return moment.timestamp()
