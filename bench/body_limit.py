"""What a large chunked upload costs the server: status, bytes taken, resident memory.

    .venv/bin/python bench/body_limit.py [--mib 100] [--src DIR]

Starts ``fyp serve`` on a fresh data directory (loopback, no keys), then streams ``--mib`` MiB to
``POST /v1/events`` with ``Transfer-Encoding: chunked`` (no ``Content-Length``, so no early
refusal is possible) and reports the answer, how much the client got out before it, and the
server's resident memory before, after and at its peak (``VmHWM``). ``--src`` runs another
checkout's ``src`` (for a baseline, e.g. ``git archive <commit> src | tar -x -C /tmp/base``).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
CHUNK = 64 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _memory_mib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise RuntimeError(f"no {field} for process {pid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=100, help="upload size in MiB")
    parser.add_argument("--src", default=str(REPO / "src"), help="the fyp sources to serve")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=args.src)
    env.pop("FYP_API_KEY", None)
    port = _free_port()
    fyp = Path(sys.executable).with_name("fyp")
    with tempfile.TemporaryDirectory() as data_dir:
        command = [str(fyp), "serve", "--data-dir", data_dir, "--port", str(port)]
        server = subprocess.Popen(
            [*command, "--no-background-training"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            idle = _memory_mib(server.pid, "VmRSS")
            total = args.mib * 1024 * 1024
            sent = 0

            def body() -> Iterator[bytes]:
                nonlocal sent
                while sent < total:
                    sent += CHUNK
                    yield b" " * CHUNK

            try:
                response = httpx.post(
                    f"{base}/v1/events",
                    content=body(),
                    headers={"content-type": "application/json"},
                    timeout=300,
                )
                answer = f"{response.status_code} {response.json().get('type', '')}"
            except httpx.HTTPError as exc:
                answer = type(exc).__name__
            time.sleep(1.0)  # let the server finish with the request
            after = _memory_mib(server.pid, "VmRSS")
            peak = _memory_mib(server.pid, "VmHWM")
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(
        f"src {args.src}: {args.mib} MiB chunked upload -> {answer}; client got out "
        f"{sent / 2**20:.0f} MiB before the answer; server RSS {idle} MiB idle, {after} MiB "
        f"after, peak {peak} MiB (+{peak - idle} MiB)"
    )


if __name__ == "__main__":
    main()
