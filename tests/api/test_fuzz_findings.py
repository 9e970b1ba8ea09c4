"""What schemathesis found once the OpenAPI document described the server (issue 14, defect 8).

Each failed before its fix; ``tests/api/test_openapi_fuzz.py`` runs the whole conformance pass.
The last two tests hold the document's patterns to the validators they describe.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from fyp.api.app import create_app
from fyp.config import load_config
from fyp.engine import Engine
from fyp.types import Item

T0 = 1_700_000_000.0
LOCAL = ("127.0.0.1", 40000)
PROBLEM = "application/problem+json"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    engine = Engine(load_config(tmp_path), clock=lambda: T0 + 3600)
    with TestClient(create_app(engine), client=LOCAL) as c:
        yield c


def _item(**fields: Any) -> dict[str, Any]:
    return {"item_id": "v1", "creator_id": "c1", "created_at": T0, "duration_s": 20} | fields


def _problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:fyp:problem:{slug}"
    return body


def test_a_405_names_every_method_the_path_serves(client: TestClient) -> None:
    # Each method of a path is its own route; Starlette named only the first one's methods.
    response = client.options("/v1/users/u1")
    _problem(response, 405, "method-not-allowed")
    assert set(response.headers["allow"].split(", ")) == {"GET", "DELETE"}
    response = client.post("/v1/users/u1/controls")
    documented = client.get("/openapi.json").json()["paths"]["/v1/users/{user_id}/controls"]
    assert (
        set(response.headers["allow"].split(", "))
        == {m.upper() for m in documented}
        >= {
            "GET",
            "PUT",
        }
    )


@pytest.mark.parametrize(
    "created_at",
    [1e20, -1e20, 1e17, "9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+01:00"],
)
def test_an_item_time_out_of_range_is_invalid_input_not_a_server_error(
    client: TestClient, created_at: object
) -> None:
    response = client.put("/v1/items", json={"items": [_item(created_at=created_at)]})
    body = _problem(response, 422, "invalid-input")
    assert body["errors"][0]["field"] == "items.0.created_at"


def test_vector_values_beyond_float32_are_refused_not_stored_as_infinity(
    client: TestClient,
) -> None:
    response = client.put("/v1/items", json={"items": [_item(vector=[0.5, 1e39])]})
    assert _problem(response, 422, "invalid-input")["errors"][0]["field"] == "items.0.vector.1"
    assert client.put("/v1/items", json={"items": [_item(vector=[0.5, 3e38])]}).status_code == 200


def test_one_user_twice_in_a_batch_with_two_regions_is_a_conflict(client: TestClient) -> None:
    users = [{"user_id": "ann", "region": "us"}, {"user_id": "ann", "region": "eu"}]
    _problem(client.put("/v1/users", json={"users": users}), 409, "conflict")


@pytest.mark.parametrize("value", [0, 1, "no", "false", None])
def test_controls_are_not_coerced(client: TestClient, value: object) -> None:
    assert client.put("/v1/users", json={"users": [{"user_id": "ann", "region": "us"}]})
    body = {"personalized": value, "keyword_filters": [], "blocked_tags": []}
    _problem(client.put("/v1/users/ann/controls", json=body), 422, "invalid-input")


def _tag_accepted(tag: str) -> bool:
    try:
        Item(item_id="v", creator_id="c", duration_s=1.0, tags=[tag])
    except ValueError:
        return False
    return True


@given(
    st.text(
        alphabet=st.sampled_from(" \t\n\x1c\x85\u2003\u3000#,aZ9_İ\x00"), min_size=0, max_size=70
    )
    | st.text(max_size=70)
)
def test_the_documented_tag_pattern_is_what_the_validator_accepts(tag: str) -> None:
    pattern = Item.model_json_schema()["properties"]["tags"]["items"]["pattern"]
    # JSON Schema patterns are ECMA 262: '$' ends the text, as '\Z' does in Python.
    assert (re.search(pattern.replace("$", r"\Z"), tag) is not None) == _tag_accepted(tag)


@given(
    st.integers(min_value=0, max_value=9999),
    st.sampled_from(["Z", "+01:00", "-05:00", "+14:00", "-12:00"]),
)
def test_the_documented_time_range_is_what_the_validator_accepts(year: int, offset: str) -> None:
    schema = Item.model_json_schema()["properties"]["created_at"]["anyOf"]
    as_number, as_string = schema
    text = f"{year:04d}-06-15T12:00:00{offset}"
    documented = re.search(as_string["pattern"], text) is not None
    try:
        Item(item_id="v", creator_id="c", duration_s=1.0, created_at=text)  # type: ignore[arg-type]
        accepted = True
    except ValueError:
        accepted = False
    assert documented == accepted
    if 1 <= year <= 9999:
        seconds = datetime(year, 6, 15, 12, tzinfo=UTC).timestamp()
        documented = as_number["minimum"] <= seconds < as_number["exclusiveMaximum"]
        try:
            Item(item_id="v", creator_id="c", duration_s=1.0, created_at=seconds)  # type: ignore[arg-type]
            accepted = True
        except ValueError:
            accepted = False
        assert documented == accepted
