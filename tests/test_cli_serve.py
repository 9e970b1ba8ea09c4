"""``fyp serve`` and ``fyp demo`` refuse what they cannot use in one clear line, before they load
or announce anything (issue 14, defect 13)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fyp.cli import build_parser, main


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _one_clear_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fyp: ") and "Traceback" not in err
    return lines[0]


def test_a_port_in_use_is_refused_before_serving_is_announced(
    tmp_path: Path, taken_port: int
) -> None:
    # A real process: the symptom was what the command printed around uvicorn's own failure.
    argv = ["serve", "--data-dir", str(tmp_path), "--port", str(taken_port)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-m", "fyp.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode != 0
    line = _one_clear_line(done.stderr)
    assert f"cannot listen on 127.0.0.1:{taken_port}" in line and "--port" in line
    assert "serving" not in done.stderr


@pytest.mark.parametrize("workers", [1, 3])
def test_a_port_in_use_fails_the_same_with_workers(
    tmp_path: Path, taken_port: int, workers: int, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "--data-dir", str(tmp_path), "--port", str(taken_port)]
    assert main([*argv, "--workers", str(workers)]) == 1
    assert "cannot listen on" in _one_clear_line(capsys.readouterr().err)
    assert not (tmp_path / "catalog.db").exists()  # nothing was loaded


def test_a_data_dir_that_is_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "a-file"
    plain.write_text("not a directory")
    assert main(["serve", "--data-dir", str(plain), "--port", "0"]) == 1
    assert "is a file, not a directory" in _one_clear_line(capsys.readouterr().err)
    assert main(["serve", "--data-dir", str(plain / "below"), "--port", "0"]) == 1
    assert "Not a directory" in _one_clear_line(capsys.readouterr().err)


def test_an_unwritable_data_dir_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A directory no one may create, whoever runs the tests (root included)...
    assert main(["serve", "--data-dir", "/proc/fyp-data", "--port", "0"]) == 1
    assert "cannot use /proc/fyp-data as the data directory" in _one_clear_line(
        capsys.readouterr().err
    )
    if os.geteuid() == 0:
        return  # root writes into a read-only directory anyway
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    assert main(["serve", "--data-dir", str(locked), "--port", "0"]) == 1
    assert "Permission denied" in _one_clear_line(capsys.readouterr().err)


def test_demo_refuses_a_data_dir_it_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "a-file"
    plain.write_text("")
    assert main(["demo", "--no-serve", "--data-dir", str(plain)]) == 1
    assert "is a file, not a directory" in _one_clear_line(capsys.readouterr().err)


def test_demo_help_names_the_directory_demo_really_uses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    default = build_parser().parse_args(["demo"]).data_dir
    assert f"(default: ./{default})" in text
    assert "fyp-data)" not in text and "FYP_DATA_DIR" not in text
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "(default: $FYP_DATA_DIR or ./fyp-data)" in " ".join(capsys.readouterr().out.split())
