"""The domain types under hostile input (issue 14, defects 3 and 11): every pattern matches the
whole value (no trailing newline slips through), and a timestamp no datetime can hold is an
ordinary validation error, not an ``OverflowError`` that became a 500."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from fyp.config import LearnerArm, RegionConfig
from fyp.types import (
    MAX_ID_LEN,
    AttributeKey,
    Event,
    Id,
    Item,
    RegionName,
    Tag,
    Timestamp,
    User,
    is_valid_id,
)


@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\n\n", "\r", "\x00", " "])
def test_is_valid_id_refuses_a_trailing_line_break_or_control(suffix: str) -> None:
    assert is_valid_id("us1")
    assert not is_valid_id("us1" + suffix)


@pytest.mark.parametrize(
    ("adapter", "good"),
    [
        (TypeAdapter(Id), "us1"),
        (TypeAdapter(RegionName), "eu-west"),
        (TypeAdapter(AttributeKey), "plan"),
    ],
)
def test_every_pattern_matches_the_whole_value(adapter: TypeAdapter[Any], good: str) -> None:
    assert adapter.validate_python(good) == good
    for bad in (good + "\n", "\n" + good, good + "\nx"):
        with pytest.raises(ValidationError):
            adapter.validate_python(bad)


def test_a_tag_is_trimmed_but_never_holds_a_line_break() -> None:
    tag = TypeAdapter(Tag)
    assert tag.validate_python(" #Cooking\n") == "cooking"  # normalized, as documented
    for bad in ("cook\ning", "\n", "#\n"):
        with pytest.raises(ValidationError):
            tag.validate_python(bad)


@pytest.mark.parametrize(
    ("model", "data", "field"),
    [
        (User, {"user_id": "a", "region": "us\n"}, "region"),
        (Item, {"item_id": "v\n", "creator_id": "c", "duration_s": 1}, "item_id"),
        (Item, {"item_id": "v", "creator_id": "c", "duration_s": 1, "language": "en\n"}, None),
        (RegionConfig, {"name": "us\n"}, "name"),
        (LearnerArm, {"name": "shadow\n"}, "name"),
    ],
)
def test_models_and_settings_refuse_a_trailing_newline(
    model: type[BaseModel], data: dict[str, Any], field: str | None
) -> None:
    with pytest.raises(ValidationError) as raised:
        model.model_validate(data)
    if field is not None:
        assert raised.value.errors()[0]["loc"][0] == field


def test_an_id_at_the_length_limit_is_valid_and_one_more_is_not() -> None:
    assert is_valid_id("a" * MAX_ID_LEN)
    assert not is_valid_id("a" * (MAX_ID_LEN + 1))


@pytest.mark.parametrize(
    "value",
    [
        1e20,
        1e17,
        -1e17,
        2**63,
        253_402_300_800,  # 10000-01-01T00:00:00Z
        "9999-12-31T23:00:00-05:00",
        "0001-01-01T00:00:00+01:00",
    ],
)
def test_an_unrepresentable_timestamp_is_a_validation_error(value: Any) -> None:
    with pytest.raises(ValidationError) as raised:
        TypeAdapter(Timestamp).validate_python(value)
    assert "must lie in the years 2-9998" in str(raised.value)
    with pytest.raises(ValidationError):
        Event.model_validate(
            {"event_id": "e", "user_id": "u", "item_id": "i", "type": "like", "ts": value}
        )


def test_the_extremes_that_fit_are_still_parsed() -> None:
    adapter = TypeAdapter(Timestamp)
    assert adapter.validate_python("9998-12-31T23:59:59Z").year == 9998
    assert adapter.validate_python("0002-01-01T01:00:00+01:00").year == 2
