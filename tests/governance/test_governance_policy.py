"""The region policy: deny by default; a principal may open only its own region, for its kind's
purposes."""

from __future__ import annotations

from grants import DEFAULT_GRANTS
from hypothesis import given, settings
from hypothesis import strategies as st

from fyp.governance.policy import PURPOSE_OPERATIONS, DeclarativePolicy, Principal

REGIONS = ("us", "eu", "jp")
KINDS = ("service", "operator", "auditor", "user")
PURPOSES = (*PURPOSE_OPERATIONS, "export", "")

principals = st.builds(
    Principal,
    id=st.sampled_from(["svc", "ops", "aud", "alice"]),
    kind=st.sampled_from(KINDS),
    region=st.sampled_from(REGIONS),
)


def expected_allowed(principal: Principal, region: str, purpose: str) -> bool:
    return (
        principal.region == region
        and purpose in PURPOSE_OPERATIONS
        and purpose in DEFAULT_GRANTS[principal.kind]
    )


@settings(max_examples=300)
@given(principal=principals, region=st.sampled_from(REGIONS), purpose=st.sampled_from(PURPOSES))
def test_region_policy_allows_only_own_region_for_the_kinds_purposes(
    principal: Principal, region: str, purpose: str
) -> None:
    decision = DeclarativePolicy.default().decide(principal, region, purpose)
    assert decision.allowed == expected_allowed(principal, region, purpose)
    assert decision.reason


def test_no_kind_may_read_another_region_for_any_purpose() -> None:
    policy = DeclarativePolicy.default()
    for kind in KINDS:
        for purpose in PURPOSE_OPERATIONS:
            principal = Principal(id="p", kind=kind, region="us")  # type: ignore[arg-type]
            decision = policy.decide(principal, "eu", purpose)
            assert not decision.allowed
            assert "export" in decision.reason


def test_only_auditors_read_the_audit_log_and_users_only_exercise_their_rights() -> None:
    policy = DeclarativePolicy.default()
    for kind in KINDS:
        principal = Principal(id="p", kind=kind, region="us")  # type: ignore[arg-type]
        assert policy.decide(principal, "us", "audit").allowed == (kind == "auditor")
    user = Principal(id="alice", kind="user", region="us")
    allowed = {p for p in PURPOSE_OPERATIONS if policy.decide(user, "us", p).allowed}
    assert allowed == {"read_user", "export_user", "erase_user", "manage_controls"}
