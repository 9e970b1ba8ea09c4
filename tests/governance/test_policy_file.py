"""The declarative policy: its file format, its errors, and its rules checked over generated cases.

The property tests generate whole policies and then decide every (principal kind, home region,
target region, purpose) combination against each, so one run checks well over 100,000 generated
decisions (the count is asserted at the end of the module's run).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fyp.config import load_config
from fyp.engine import Engine
from fyp.errors import AccessDenied, ConfigError
from fyp.governance.policy import (
    KINDS,
    PURPOSE_OPERATIONS,
    DeclarativePolicy,
    Principal,
    Rule,
)

REGIONS = ("us", "eu", "jp")
PURPOSES = (*PURPOSE_OPERATIONS, "export-everything")
NOW = 1_800_000_000.0
CASES = {"decisions": 0}


def _requests() -> list[tuple[Principal, str, str]]:
    return [
        (Principal(id=f"{kind}:p@{home}", kind=kind, region=home), target, purpose)
        for kind, home, target, purpose in itertools.product(KINDS, REGIONS, REGIONS, PURPOSES)
    ]


REQUESTS = _requests()

subsets = st.one_of(st.none(), st.frozensets(st.sampled_from(REGIONS), min_size=1))
rules = st.builds(
    Rule,
    effect=st.sampled_from(["allow", "deny", "exception"]),
    name=st.uuids().map(str),
    kinds=st.one_of(st.none(), st.frozensets(st.sampled_from(KINDS), min_size=1)),
    ids=st.one_of(st.none(), st.just(("operator:*",)), st.just(("auditor:p@eu",))),
    purposes=st.one_of(
        st.none(), st.frozensets(st.sampled_from(list(PURPOSE_OPERATIONS)), min_size=1)
    ),
    regions=subsets,
    from_regions=subsets,
    to_regions=subsets,
    justification=st.just("a reviewed and written reason"),
    expires=st.one_of(st.none(), st.sampled_from([NOW - 1, NOW + 1])),
)
policies = st.lists(rules, max_size=8).map(
    lambda rs: DeclarativePolicy(rs, "generated", lambda: NOW)
)


def oracle(policy: DeclarativePolicy, p: Principal, region: str, purpose: str) -> bool:
    """The semantics, written plainly: the evaluator must agree with this on every case."""
    if purpose not in PURPOSE_OPERATIONS:
        return False
    matching = [r for r in policy.rules if r.matches(p, region, purpose)]
    if any(r.effect == "deny" for r in matching):
        return False
    if p.region != region:
        return any(
            r.effect == "exception" and (r.expires is None or r.expires > NOW) for r in matching
        )
    return any(r.effect == "allow" for r in matching)


@settings(max_examples=160, deadline=None)
@given(policy=policies)
def test_the_evaluator_agrees_with_the_plain_semantics(policy: DeclarativePolicy) -> None:
    for principal, region, purpose in REQUESTS:
        decision = policy.decide(principal, region, purpose)
        assert decision.allowed == oracle(policy, principal, region, purpose)
        assert decision.reason
        assert decision.export == (decision.allowed and principal.region != region)
    CASES["decisions"] += len(REQUESTS)


@settings(max_examples=80, deadline=None)
@given(policy=policies)
def test_no_cross_region_read_without_an_exception(policy: DeclarativePolicy) -> None:
    without = DeclarativePolicy(
        [r for r in policy.rules if r.effect != "exception"], "generated", lambda: NOW
    )
    for principal, region, purpose in REQUESTS:
        if principal.region != region:
            decision = without.decide(principal, region, purpose)
            assert not decision.allowed
            assert "export" in decision.reason or decision.reason.startswith("denied by rule")
    CASES["decisions"] += len(REQUESTS)


@settings(max_examples=80, deadline=None)
@given(policy=policies, deny=rules.map(lambda r: Rule(**{**r.__dict__, "effect": "deny"})))
def test_deny_wins_over_every_allow_and_exception(policy: DeclarativePolicy, deny: Rule) -> None:
    stricter = DeclarativePolicy([*policy.rules, deny], "generated", lambda: NOW)
    for principal, region, purpose in REQUESTS:
        if deny.matches(principal, region, purpose):
            assert not stricter.decide(principal, region, purpose).allowed
        elif policy.decide(principal, region, purpose).allowed:
            assert stricter.decide(principal, region, purpose).allowed
    CASES["decisions"] += len(REQUESTS)


def test_enough_generated_cases_ran() -> None:
    # Runs after the three properties in this module (file order): they decided these many cases.
    if CASES["decisions"] == 0:
        pytest.skip("the property tests of this module were not selected in this run")
    assert CASES["decisions"] >= 100_000, CASES


# ---- the file format ----------------------------------------------------------------------------


def test_the_built_in_policy_grants_what_the_documentation_says() -> None:
    policy = DeclarativePolicy.default()
    auditor = Principal("auditor:a@us", "auditor", "us")
    assert policy.decide(auditor, "us", "audit").allowed
    assert policy.decide(auditor, "us", "audit").rule
    assert not policy.decide(auditor, "us", "train").allowed
    assert not policy.decide(auditor, "eu", "audit").allowed


EXCEPTION = """
version = 1
[[allow]]
name = "auditors at home"
kinds = ["auditor"]
purposes = ["audit"]

[[exception]]
name = "us auditor reviews eu"
justification = "Joint review agreed on 2026-11-01, ticket SEC-1"
ids = ["auditor:alice@us"]
purposes = ["audit"]
from_regions = ["us"]
to_regions = ["eu"]
expires = 2027-01-01
"""


def test_an_exception_opens_exactly_what_it_names_until_it_expires() -> None:
    alice = Principal("auditor:alice@us", "auditor", "us")
    bob = Principal("auditor:bob@us", "auditor", "us")
    policy = DeclarativePolicy.parse(EXCEPTION, "test")
    decision = policy.decide(alice, "eu", "audit")
    assert decision.allowed and decision.export
    assert "SEC-1" in decision.reason and decision.rule == "us auditor reviews eu"
    assert not policy.decide(alice, "eu", "operate").allowed
    assert not policy.decide(bob, "eu", "audit").allowed
    assert not policy.decide(alice, "jp", "audit").allowed
    later = DeclarativePolicy(policy.rules, "test", clock=lambda: 1_900_000_000.0)
    assert not later.decide(alice, "eu", "audit").allowed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version = 1\n[[allow]\n", "not valid TOML"),
        ("[[allow]]\nname = 'x'\nkinds = ['user']\n", "version = 1"),
        ("version = 1\nextra = 2\n", "unknown top-level keys"),
        ("version = 1\n[[allow]]\nkinds = ['user']\n", "needs a `name`"),
        ("version = 1\n[[allow]]\nname = 'a'\nkinds = ['robot']\n", "unknown principal kinds"),
        ("version = 1\n[[allow]]\nname = 'a'\nkinds = ['user']\npurposes = ['snoop']\n", "snoop"),
        ("version = 1\n[[allow]]\nname = 'a'\npurposes = ['audit']\n", "must name `kinds` or"),
        (
            "version = 1\n[[allow]]\nname = 'a'\nkinds = ['user']\nregions = ['eu']\n",
            "unknown keys",
        ),
        (
            "version = 1\n[[exception]]\nname = 'e'\nkinds = ['auditor']\nto_regions = ['eu']\n",
            "justification",
        ),
        (
            "version = 1\n[[exception]]\nname = 'e'\nkinds = ['auditor']\n"
            "justification = 'because we must'\n",
            "to_regions",
        ),
        (
            "version = 1\n[[allow]]\nname = 'a'\nkinds = ['user']\n"
            "[[deny]]\nname = 'a'\nkinds = ['user']\n",
            "unique",
        ),
        ("version = 1\n[[deny]]\nname = 'd'\nkinds = []\n", "non-empty list"),
    ],
)
def test_a_malformed_policy_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DeclarativePolicy.parse(text, "test")


def test_rules_naming_unconfigured_regions_are_refused() -> None:
    policy = DeclarativePolicy.parse(EXCEPTION.replace('"eu"', '"mars"'), "test")
    with pytest.raises(ConfigError, match="mars"):
        policy.check_regions(["us", "eu"])


# ---- through the engine -------------------------------------------------------------------------


def test_the_engine_uses_the_policy_file_and_logs_exports(tmp_path: Path) -> None:
    services = '[[allow]]\nname = "services"\nkinds = ["service"]\npurposes = ["serve_feed"]\n'
    policy = EXCEPTION.replace("2027-01-01", "2999-01-01") + services
    (tmp_path / "policy.toml").write_text(policy)
    engine = Engine(load_config(tmp_path, policy_file="policy.toml"))
    try:
        alice = Principal("auditor:alice@us", "auditor", "us")
        engine.gate.open("eu", alice, "audit")
        engine.gate.open("us", alice, "audit")
        with pytest.raises(AccessDenied):
            engine.gate.open("eu", Principal("auditor:bob@us", "auditor", "us"), "audit")
        with pytest.raises(AccessDenied):  # the file grants services nothing but serving
            engine.gate.open("us", Principal.service("us"), "train")
        eu = engine.gate.open("eu", alice, "audit").audit.tail(10)
        export = [r for r in eu if r.principal == "auditor:alice@us" and r.action == "export"]
        assert export and export[0].detail["rule"] == "us auditor reviews eu"
        assert [r.decision for r in eu if r.principal == "auditor:bob@us"] == ["deny"]
    finally:
        engine.close()


def test_an_engine_with_a_broken_policy_does_not_start(tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text("version = 1\n[[allow]]\nname = 'x'\n")
    with pytest.raises(ConfigError, match="must name `kinds` or `ids`"):
        Engine(load_config(tmp_path, policy_file="policy.toml"))
    with pytest.raises(ConfigError, match="cannot read policy file"):
        Engine(load_config(tmp_path, policy_file="missing.toml"))
