"""Process helpers: start the real ``fyp serve`` on loopback, read /proc counters, run a phase."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# ---- /proc --------------------------------------------------------------------------------------


def proc_status_kib(pid: int | str, field: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``...), or ``None``."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def memory_mib(pid: int | str) -> dict[str, float]:
    """Resident memory of ``pid`` in MiB: total (``VmRSS``), peak (``VmHWM``), and its parts.

    ``RssFile`` counts file pages mapped into the process (SQLite's mmap, model files): a page
    mapped by several connections counts once per mapping, so it overstates what the process
    costs the machine; ``RssAnon`` is the process's own heap.
    """
    found: dict[str, float] = {}
    for field in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
        kib = proc_status_kib(pid, field)
        if kib is not None:
            found[field] = kib / 1024.0
    return found


class MemorySampler:
    """Polls a process's memory in a thread and keeps the maximum of each field."""

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peaks: dict[str, float] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[str, float]:
        """Stop polling (safe to call again) and return the peaks, with one last sample."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self._sample()
        return self.peaks

    def _sample(self) -> None:
        for key, value in memory_mib(self.pid).items():
            self.peaks[key] = max(value, self.peaks.get(key, 0.0))
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()


def self_peak_mib() -> float | None:
    kib = proc_status_kib("self", "VmHWM")
    return None if kib is None else kib / 1024.0


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and its threads so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)


def machine_cpu_s() -> dict[str, float]:
    """Machine-wide CPU seconds so far (all cores) from ``/proc/stat``: busy, idle, I/O wait
    (also counted in idle), steal."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return {
        "busy": (user + nice + system + irq + softirq) / ticks,
        "idle": (idle + iowait) / ticks,
        "iowait": iowait / ticks,
        "steal": steal / ticks,
    }


def loadavg() -> tuple[float, float, float]:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


# ---- the server ---------------------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    startup_s: float
    health: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def rss_mib(self) -> float | None:
        kib = proc_status_kib(self.pid, "VmRSS")
        return None if kib is None else kib / 1024.0

    def peak_rss_mib(self) -> float | None:
        kib = proc_status_kib(self.pid, "VmHWM")
        return None if kib is None else kib / 1024.0

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGINT (uvicorn's graceful shutdown closes the engine), then SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_server(data_dir: Path, log_path: Path, timeout_s: float = 900.0) -> Server:
    """Start ``fyp serve`` on a free loopback port and wait until ``/healthz`` answers 200."""
    fyp = Path(sys.executable).parent / "fyp"
    port = free_port()
    command = [
        str(fyp),
        "serve",
        "--data-dir",
        str(data_dir),
        "--host",
        HOST,
        "--port",
        str(port),
        "--no-background-training",
    ]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
    env.pop("FYP_API_KEY", None)  # a loopback benchmark; the key check is not what is measured
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log: IO[bytes] = log_path.open("wb")
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    url = f"http://{HOST}:{port}/healthz"
    with httpx.Client(timeout=5.0) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"fyp serve exited with {process.returncode} before answering /healthz:\n"
                    + _log_tail(log_path)
                )
            if time.perf_counter() - started > timeout_s:
                process.kill()
                raise RuntimeError(f"fyp serve did not answer /healthz within {timeout_s:.0f}s")
            try:
                response = client.get(url)
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if response.status_code == 200:
                return Server(
                    process=process,
                    port=port,
                    log_path=log_path,
                    startup_s=time.perf_counter() - started,
                    health=response.json(),
                )
            time.sleep(0.2)


# ---- one load phase -----------------------------------------------------------------------------


def run_phase(server: Server, spec: dict[str, Any], hard_timeout_s: float) -> dict[str, Any]:
    """Run one phase in a fresh client process; add the server's CPU and RSS over the window."""
    command = [sys.executable, str(BENCH_DIR / "load_client.py")]
    child = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert child.stdin is not None
    assert child.stdout is not None
    # The client bounds itself (request count, time limit, request timeout); this is a backstop.
    watchdog = threading.Timer(hard_timeout_s, child.kill)
    watchdog.start()
    cpu_start = cpu_end = None
    machine_start: dict[str, float] = {}
    machine_end: dict[str, float] = {}
    rss_before = server.rss_mib()
    result: dict[str, Any] | None = None
    try:
        child.stdin.write(json.dumps(spec) + "\n")
        child.stdin.flush()
        for line in child.stdout:
            message = json.loads(line)
            event = message.pop("event")
            if event == "measure-start":
                machine_start = machine_cpu_s()
                cpu_start = proc_cpu_s(server.pid)
                child.stdin.write("go\n")
                child.stdin.flush()
            elif event == "measure-end":
                cpu_end = proc_cpu_s(server.pid)
                machine_end = machine_cpu_s()
                child.stdin.write("go\n")
                child.stdin.flush()
            elif event == "result":
                result = message
        child.wait(60)
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
    if result is None:
        raise RuntimeError(
            f"load client for phase {spec['name']!r} exited with {child.returncode} without a "
            f"result (killed after {hard_timeout_s:.0f}s?)"
        )
    if cpu_start is not None and cpu_end is not None:
        server_cpu = cpu_end - cpu_start
        result["server_cpu_s"] = server_cpu
        result["server_cpu_share"] = server_cpu / result["seconds"] if result["seconds"] else 0.0
        result["server_cpu_ms_per_request"] = (
            server_cpu * 1000.0 / result["requests"] if result["requests"] else None
        )
    if machine_start and machine_end and result["seconds"]:
        # Everything else the machine did meanwhile (other people's jobs): the noise floor.
        seconds = result["seconds"]
        busy = machine_end["busy"] - machine_start["busy"]
        ours = result.get("server_cpu_s", 0.0) + result["client_cpu_s"]
        result["machine_busy_cores"] = busy / seconds
        result["other_processes_cores"] = max(busy - ours, 0.0) / seconds
        result["steal_cores"] = (machine_end["steal"] - machine_start["steal"]) / seconds
        result["iowait_cores"] = (machine_end["iowait"] - machine_start["iowait"]) / seconds
    result["server_rss_before_mib"] = rss_before
    result["server_rss_after_mib"] = server.rss_mib()
    result["server_alive"] = server.process.poll() is None
    return result
