"""Process helpers: start the real ``fyp serve`` on loopback, read /proc counters, run a phase."""

from __future__ import annotations

import contextlib
import json
import os
import re
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


MEMORY_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")


def memory_mib(pid: int | str) -> dict[str, float]:
    """Resident memory of ``pid`` in MiB: total (``VmRSS``), peak (``VmHWM``), and its parts.

    ``RssFile`` counts file pages mapped into the process (SQLite's mmap, model files): a page
    mapped by several connections counts once per mapping, so it overstates what the process
    costs the machine; ``RssAnon`` is the process's own heap.
    """
    found: dict[str, float] = {}
    for field in MEMORY_FIELDS:
        kib = proc_status_kib(pid, field)
        if kib is not None:
            found[field] = kib / 1024.0
    return found


def pss_mib(pid: int | str) -> dict[str, float]:
    """Proportional set size of ``pid`` in MiB (``/proc/<pid>/smaps_rollup``): a page shared by
    several processes counts as a share for each, so the sum over processes is what they cost the
    machine together. Walks the page tables: read at quiet moments, not in a polling loop."""
    found: dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return found
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("Pss", "Pss_Anon", "Pss_File"):
            found[name] = int(rest.split()[0]) / 1024.0
    return found


# ---- a process and its children -----------------------------------------------------------------


def _parent_pids() -> dict[int, int]:
    """pid -> parent pid for every process (``/proc/*/stat``; this kernel has no
    ``/proc/<pid>/task/<tid>/children``)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parents[int(entry.name)] = int(fields[1])
    return parents


def descendants(pid: int) -> list[int]:
    """The children of ``pid``, their children and so on (not ``pid`` itself)."""
    children: dict[int, list[int]] = {}
    for child, parent in _parent_pids().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in sorted(children.get(todo.pop(), [])):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def process_role(pid: int, root: int) -> str:
    """``server`` (the process serving requests: ``fyp serve`` with one worker), ``parent``
    (uvicorn's supervisor), ``worker`` (a uvicorn worker) or ``helper`` (e.g. the
    multiprocessing resource tracker)."""
    if pid == root:
        return "server"
    return "worker" if "spawn_main" in cmdline(pid) else "helper"


@dataclass
class ProcessTree:
    """The server's processes: ``root`` (``fyp serve``) and whatever it started."""

    root: int

    def pids(self) -> list[int]:
        return [self.root, *descendants(self.root)]

    def roles(self) -> dict[int, str]:
        pids = self.pids()
        roles = {pid: process_role(pid, self.root) for pid in pids}
        if "worker" in roles.values():
            roles[self.root] = "parent"
        return roles

    def workers(self) -> list[int]:
        """The processes that serve requests: the uvicorn workers, or the root alone."""
        roles = self.roles()
        found = [pid for pid, role in roles.items() if role == "worker"]
        return found or [self.root]

    def cpu_s(self) -> tuple[float, list[int]]:
        """User + system CPU seconds so far, summed over the processes; and their pids."""
        total = 0.0
        pids = self.pids()
        for pid in pids:
            total += proc_cpu_s(pid) or 0.0
        return total, pids

    def memory_mib(self) -> dict[str, float]:
        """Each memory field summed over the processes (see :func:`memory_mib`)."""
        totals: dict[str, float] = {}
        for pid in self.pids():
            for key, value in memory_mib(pid).items():
                totals[key] = totals.get(key, 0.0) + value
        return totals

    def snapshot(self) -> dict[str, Any]:
        """Memory per process (with PSS) and summed, at one moment."""
        processes: list[dict[str, Any]] = []
        for pid, role in self.roles().items():
            processes.append({"pid": pid, "role": role, **memory_mib(pid), **pss_mib(pid)})
        fields = (*MEMORY_FIELDS, "Pss", "Pss_Anon", "Pss_File")
        total = {f: sum(p.get(f, 0.0) for p in processes) for f in fields}
        serving = [p for p in processes if p["role"] in ("server", "worker")]
        return {
            "total": total,
            "workers_peak_rss_mib": sum(p.get("VmHWM", 0.0) for p in serving),
            "processes": processes,
        }

    def peak_rss_mib(self) -> float | None:
        """Sum of the serving processes' ``VmHWM`` (each worker's own peak; the uvicorn parent
        and helpers are not included). An upper bound on the peak of the sum."""
        peaks = [proc_status_kib(pid, "VmHWM") for pid in self.workers()]
        known = [kib for kib in peaks if kib is not None]
        return sum(known) / 1024.0 if known else None


def idle_cpu(tree: ProcessTree, seconds: float) -> dict[str, Any]:
    """The server's CPU use while nobody sends it a request: its background work (sync loop,
    threads, the supervisor's health checks)."""
    cpu_start, pids = tree.cpu_s()
    started = time.perf_counter()
    time.sleep(seconds)
    cpu_end, _ = tree.cpu_s()
    elapsed = time.perf_counter() - started
    return {
        "seconds": elapsed,
        "cpu_s": cpu_end - cpu_start,
        "cores": (cpu_end - cpu_start) / elapsed,
        "pids": pids,
    }


class MemorySampler:
    """Polls the server's memory (summed over its processes) in a thread; keeps the maximum of
    each field."""

    def __init__(self, tree: ProcessTree, interval_s: float = 0.25) -> None:
        self.tree = tree
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
        for key, value in self.tree.memory_mib().items():
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


CATALOG_LOADED = re.compile(
    r"(?:loaded|worker \d+:) ([\d,]+) catalog items (?:into|in) memory (?:in|after) ([\d.]+)s"
)
"""What ``fyp serve`` logs once a process holds the catalog: ``fyp: loaded 1,000 catalog items
into memory in 1.0s`` (one process) or ``worker 123: 1,000 catalog items in memory after 1.0s``."""


def catalog_loads(log_path: Path) -> list[dict[str, float]]:
    """Every catalog load the server log reports: items and seconds, one per server process."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    return [
        {"items": int(m.group(1).replace(",", "")), "seconds": float(m.group(2))}
        for m in CATALOG_LOADED.finditer(text)
    ]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    workers: int
    first_answer_s: float
    """Until ``/healthz`` first answered 200 (with several workers: the first ready worker)."""
    startup_s: float
    """Until every worker had loaded the catalog and could serve."""
    health: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def tree(self) -> ProcessTree:
        return ProcessTree(self.process.pid)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def rss_mib(self) -> float | None:
        """``VmRSS`` summed over the server's processes."""
        return self.tree.memory_mib().get("VmRSS")

    def peak_rss_mib(self) -> float | None:
        return self.tree.peak_rss_mib()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGINT (uvicorn's graceful shutdown closes the engine), then SIGKILL if it hangs;
        worker processes left behind by a killed parent are killed too."""
        children = descendants(self.pid) if self.process.poll() is None else []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        deadline = time.monotonic() + 10.0
        for pid in children:
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                if Path(f"/proc/{pid}").exists():
                    os.kill(pid, signal.SIGKILL)
        return self.process.returncode


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_server(
    data_dir: Path,
    log_path: Path,
    timeout_s: float = 900.0,
    workers: int = 1,
    background_training: bool = False,
) -> Server:
    """Start ``fyp serve`` on a free loopback port; return once every worker is ready.

    ``/healthz`` answers as soon as one worker serves (they share the listening socket), so with
    several workers this also waits until each has logged that it loaded the catalog.
    ``background_training`` keeps ``fyp serve``'s default (retraining and online learning in the
    server); by default they are off, so a benchmark measures serving alone.
    """
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
        "--workers",
        str(workers),
        *([] if background_training else ["--no-background-training"]),
    ]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
    env.pop("FYP_API_KEY", None)  # a loopback benchmark; the key check is not what is measured
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log: IO[bytes] = log_path.open("wb")
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()

    def check(what: str) -> None:
        if process.poll() is not None:
            raise RuntimeError(
                f"fyp serve exited with {process.returncode} before {what}:\n" + _log_tail(log_path)
            )
        if time.perf_counter() - started > timeout_s:
            process.kill()
            raise RuntimeError(f"fyp serve: no {what} within {timeout_s:.0f}s")

    url = f"http://{HOST}:{port}/healthz"
    with httpx.Client(timeout=5.0) as client:
        while True:
            check("answering /healthz")
            try:
                response = client.get(url)
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if response.status_code == 200:
                break
            time.sleep(0.2)
    first_answer_s = time.perf_counter() - started
    while len(catalog_loads(log_path)) < workers:
        check(f"catalog loaded in {workers} workers")
        time.sleep(0.2)
    startup_s = time.perf_counter() - started
    if workers > 1:
        time.sleep(1.0)  # the app's startup after the catalog: milliseconds
    return Server(
        process=process,
        port=port,
        log_path=log_path,
        workers=workers,
        first_answer_s=first_answer_s,
        startup_s=startup_s,
        health=response.json(),
    )


# ---- one load phase -----------------------------------------------------------------------------


def run_phase(server: Server, spec: dict[str, Any], hard_timeout_s: float) -> dict[str, Any]:
    """Run one phase in a fresh client process; add the server's CPU and RSS over the window.

    Server CPU and RSS are summed over all its processes (uvicorn parent, workers, helpers).
    """
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
    pids_start: list[int] = []
    pids_end: list[int] = []
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
                cpu_start, pids_start = server.tree.cpu_s()
                child.stdin.write("go\n")
                child.stdin.flush()
            elif event == "measure-end":
                cpu_end, pids_end = server.tree.cpu_s()
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
    result["server_pids"] = pids_start
    if pids_end != pids_start:  # a worker died or was replaced: its CPU time is lost or partial
        result["server_pids_changed"] = {"start": pids_start, "end": pids_end}
    result["server_rss_before_mib"] = rss_before
    result["server_rss_after_mib"] = server.rss_mib()
    result["server_alive"] = server.process.poll() is None
    return result
