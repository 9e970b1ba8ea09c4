"""The README's curl walk-through works as written: each command is replayed against the app."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

from fastapi.testclient import TestClient

from fyp.api.app import create_app
from fyp.config import load_config
from fyp.engine import Engine

README = Path(__file__).resolve().parents[1] / "README.md"


def _curl_commands() -> list[list[str]]:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    return [shlex.split(block) for block in blocks if block.lstrip().startswith("curl")]


def _request(args: list[str]) -> tuple[str, str, str | None]:
    assert args[0] == "curl"
    method, url, data = "GET", "", None
    rest = iter(args[1:])
    for arg in rest:
        if arg == "-X":
            method = next(rest)
        elif arg == "-d":
            data = next(rest)
        elif arg == "-H":
            next(rest)
        elif arg.startswith("http"):
            url = arg
    assert url, args
    parts = urlsplit(url)
    return method, parts.path + (f"?{parts.query}" if parts.query else ""), data


def test_quick_start_is_exactly_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("##", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.S)
    assert block is not None
    assert block.group(1).split("\n")[:-1] == ["make demo", "make test"]


def test_curl_walkthrough(tmp_path: Path) -> None:
    commands = _curl_commands()
    assert len(commands) == 4
    engine = Engine(load_config(tmp_path))
    with TestClient(create_app(engine), client=("127.0.0.1", 8123)) as client:
        responses = []
        for args in commands:
            method, path, data = _request(args)
            response = client.request(
                method, path, content=data, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 200, (path, response.text)
            responses.append(response.json())
    items, users, events, feed = responses
    assert items == {"created": 4, "updated": 0}
    assert users == {"created": 1, "updated": 0}
    assert events == {"accepted": 4, "duplicates": 0, "errors": []}
    assert feed["region"] == "eu"
    served = [entry["item_id"] for entry in feed["items"]]
    # walk-1 was watched and walk-3 skipped: neither comes back; walk-4 is available in the EU.
    assert set(served) == {"walk-2", "walk-4"}
    assert served[0] == "walk-2"
    codes = {r["code"] for r in feed["items"][0]["reasons"]}
    assert "interest_tag:cooking" in codes
