"""Presenting benchmark results: the machine, a terminal table, the docs/BENCHMARKS.md section."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

LEGACY_MARKS = ("<!-- bench:feed_http:start -->", "<!-- bench:feed_http:end -->")
"""The single section of earlier runs, before the docs kept one section per worker count."""


def marks(workers: int) -> tuple[str, str]:
    """The markers around the section for ``workers`` server processes."""
    return f"<!-- bench:feed_http:w{workers}:start -->", f"<!-- bench:feed_http:w{workers}:end -->"


PHASES = ("trivial", "feed", "feed_1conn")
"""The measured phases, in table order."""

DOCS_INTRO = """# Benchmarks

Numbers measured by the scripts in `bench/`, each in its own marked section that the script
rewrites (text outside the markers is kept). Every section names the command, the date and the
machine, so a number can be reproduced or at least put in context.
"""


# ---- the machine --------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024.0 / 1024.0
    except OSError:
        pass
    return None


def git_revision(repo: Path) -> str | None:
    """Short commit id, ``+dirty`` when the work tree has changes (read-only git commands)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if status else "")


def machine_info(repo: Path) -> dict[str, Any]:
    import fyp

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "fyp": fyp.__version__,
        "git": git_revision(repo),
    }


# ---- formatting ---------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} MiB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def _errors(phase: dict[str, Any]) -> str:
    if not phase["errors"]:
        return "0"
    bad = {k: v for k, v in phase["statuses"].items() if k != "200"}
    return f"{phase['errors']:,} ({', '.join(f'{k}: {v}' for k, v in sorted(bad.items()))})"


def _connections(phase: dict[str, Any]) -> str:
    n = phase["concurrency"]
    return f"{n} connection{'s' if n != 1 else ''}"


def phase_titles(results: dict[str, Any], markdown: bool) -> list[str]:
    """Column titles of the side-by-side table, one per measured phase."""
    titles = []
    for name in PHASES:
        phase = results["phases"].get(name)
        if phase is None:
            continue
        connections = _connections(phase)
        if not markdown:
            titles.append(f"{'trivial' if name == 'trivial' else 'feed'}, {connections}")
        elif name == "trivial":
            titles.append(f"trivial `GET /healthz` ({connections})")
        else:
            path = f"/v1/users/{{id}}/feed?n={phase['feed']['n']}"
            titles.append(f"feed `GET {path}` ({connections})")
    return titles


def _cpu_less_idle(phase: dict[str, Any], idle_cores: float | None) -> float | None:
    """Server CPU per request without the background work the server does anyway (the idle
    rate measured after startup, times the phase's duration)."""
    cpu, requests = phase.get("server_cpu_s"), phase["requests"]
    if cpu is None or idle_cores is None or not requests:
        return None
    background = idle_cores * float(phase["seconds"])
    return max(float(cpu) - background, 0.0) * 1000.0 / int(requests)


def phase_rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    """(metric, trivial, feed 8 connections, feed 1 connection) rows of the side-by-side table."""
    phases = [results["phases"][name] for name in PHASES if name in results["phases"]]
    idle_cores = (results["server"].get("idle") or {}).get("cores")

    def each(fn: Any) -> tuple[str, ...]:
        return tuple(fn(p) for p in phases)

    rows: list[tuple[str, ...]] = [
        ("requests", *each(lambda p: f"{p['requests']:,} (stopped by {p['stopped_by']})")),
        ("errors (non-200)", *each(_errors)),
        ("throughput (req/s)", *each(lambda p: _num(p["throughput_rps"]))),
    ]
    for which, key in (("client", "client_ms"), ("server", "server_ms")):
        for q in ("p50", "p90", "p99"):
            rows.append((f"{which} {q} (ms)", *each(lambda ph, k=key, q=q: _ms(ph[k][q]))))
    rows += [
        ("server CPU per request (ms)", *each(lambda p: _ms(p.get("server_cpu_ms_per_request")))),
        (
            "server CPU per request, less idle (ms)",
            *each(lambda p: _ms(_cpu_less_idle(p, idle_cores))),
        ),
        ("server CPU busy (cores)", *each(lambda p: _num(p.get("server_cpu_share"), 2))),
        ("client CPU busy (cores)", *each(lambda p: _num(p.get("client_cpu_share"), 2))),
        ("client CPU per request (ms)", *each(lambda p: _ms(p.get("client_cpu_ms_per_request")))),
        ("other processes' CPU (cores)", *each(lambda p: _num(p.get("other_processes_cores"), 2))),
    ]
    return rows


SINGLE_CONNECTION_NOTE = (
    "With one connection the server has one request at a time, so nothing queues inside it and "
    "the server-side latency of that phase is the feed's service time. The 8-connection phase "
    "keeps the server saturated and measures throughput; its latency includes the time a "
    "request waits for the others."
)


def reference_text(results: dict[str, Any]) -> str | None:
    """One sentence on the httpx cross-check of the trivial phase, when it ran."""
    ref = results["phases"].get("trivial_httpx")
    if ref is None:
        return None
    main = results["phases"]["trivial"]
    return (
        f"Cross-check: the same /healthz phase with `httpx.AsyncClient` ({ref['requests']:,} "
        f"requests, {ref['errors']} errors) reached {_num(ref['throughput_rps'])} req/s "
        f"(client p50 {_ms(ref['client_ms']['p50'])} ms, server p50 "
        f"{_ms(ref['server_ms']['p50'])} ms) while the client used "
        f"{_ms(ref.get('client_cpu_ms_per_request'))} ms of CPU per request "
        f"({_num(ref.get('client_cpu_share'), 2)} cores) against "
        f"{_ms(main.get('client_cpu_ms_per_request'))} ms for the {main['client']} client: "
        "with httpx the client, not the server, sets the trivial ceiling on this machine."
    )


def _import_rows(build: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for kind, r in build["imports"].items():
        outcome = (
            f"{r['accepted']:,} accepted, {r['duplicates']:,} duplicates"
            if kind == "events"
            else f"{r['created']:,} created, {r['updated']:,} updated"
        )
        rows.append(
            (
                kind,
                f"{r['records']:,}",
                f"{outcome}, {r['error_count']:,} errors",
                _duration(r["seconds"]),
                f"{r['records_per_s']:,.0f}",
            )
        )
    return rows


def _server_text(results: dict[str, Any]) -> str:
    """How the server started: processes, time until ready, catalog loads."""
    server = results["server"]
    workers = server.get("workers", 1)
    loads = server.get("catalog_loads") or []
    catalog = ", ".join(f"{load['items']:,} items in {load['seconds']:.1f} s" for load in loads)
    processes = (
        "one process"
        if workers == 1
        else f"{workers} uvicorn worker processes under a supervisor process"
    )
    ready = f"ready in {_duration(server['startup_s'])}"
    if workers > 1:
        ready += f" (first /healthz answer after {_duration(server.get('first_answer_s'))})"
    text = f"{processes}, {ready}; catalog loaded into memory: {catalog or 'not reported'}"
    idle = server.get("idle")
    if idle:
        text += (
            f"; with no requests, in the {idle['seconds']:.0f} s after startup, the server used "
            f"{idle['cores']:.2f} cores"
        )
    return text


def terminal_report(results: dict[str, Any]) -> str:
    build, server, m = results["build"], results["server"], results["machine"]
    lines = [
        "",
        f"fyp feed over HTTP, {server.get('workers', 1)} worker(s): {results['date']}",
        f"  machine: {m['cpu']}, {m['cores']} cores, {_num(m['ram_gib'])} GiB RAM, "
        f"Python {m['python']}, fyp {m['fyp']} ({m['git']})",
        f"  load average at start / end: {results['loadavg_start']} / {results['loadavg_end']}",
        f"  scale: {_scale_text(results)}",
        f"  build: {'cached from ' + build['built_at'] if build['cached'] else 'built now'}; "
        f"generate {_duration(build['generate']['seconds'])}",
        "",
        f"  {'import':<8}{'records':>12}  {'outcome':<44}{'time':>10}{'records/s':>12}",
    ]
    for kind, records, outcome, seconds, rate in _import_rows(build):
        lines.append(f"  {kind:<8}{records:>12}  {outcome:<44}{seconds:>10}{rate:>12}")
    lines.append("")
    for r in build["training"]["regions"]:
        lines.append(
            f"  train {r['region']}: {_duration(r['seconds'])} ({r['events']:,} events, "
            f"{r['users']:,} users, {r['items']:,} items) -> {r['version']}"
        )
    lines.append(
        f"  training wall time with model loading: {_duration(build['training']['seconds'])}; "
        f"whole build {_duration(build['seconds'])}"
    )
    lines += [
        "",
        f"  server: {_server_text(results)}",
        f"  (load client: {results['phases']['trivial']['client']})",
        "",
        f"  {'':<40}" + "".join(f"{title:>30}" for title in phase_titles(results, False)),
    ]
    for name, *values in phase_rows(results):
        lines.append(f"  {name:<40}" + "".join(f"{v:>30}" for v in values))
    lines += [
        "",
        f"  feed (8 connections) / trivial throughput: {_ratio(results)}",
        *([f"  {reference_text(results)}"] if reference_text(results) else []),
        "",
        "  memory:",
        *(f"  {line}" for line in memory_lines(results)),
    ]
    lines += [f"  warning: {w}" for w in results["warnings"]]
    return "\n".join(lines)


def _ratio(results: dict[str, Any]) -> str:
    ratio = results["feed_trivial_ratio"]
    return "n/a" if ratio is None else f"{ratio:.3f} ({ratio * 100:.1f} %)"


def _scale_text(results: dict[str, Any]) -> str:
    s, counts = results["scale"], results["build"]["generate"]["counts"]
    return (
        f"{counts['items']:,} items by {s['creators']:,} creators in {s['topics']} topics over "
        f"{s['days']:g} days; {counts['users']:,} users (us/eu); {counts['events']:,} events "
        f"(~{counts['events'] / max(counts['users'], 1):.1f} per user); seed {s['seed']}"
    )


def markdown_section(results: dict[str, Any]) -> str:
    build, server, m = results["build"], results["server"], results["machine"]
    phases = results["phases"]
    trivial, feed = phases["trivial"], phases["feed"]
    workers = server.get("workers", 1)
    start_mark, end_mark = marks(workers)
    gen = build["generate"]
    out = [
        start_mark,
        f"## Feed over HTTP at scale, {workers} worker{'s' if workers != 1 else ''} "
        "(`bench/feed_http.py`)",
        "",
        f"Command: `{results['command']}`"
        + (" (what `make bench` runs)  " if results["command"].endswith("feed_http.py") else "  "),
        f"Date: {results['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {_num(m['ram_gib'])} GiB RAM, {m['os']}, "
        f"Python {m['python']}, fyp {m['fyp']} (commit {m['git']})  ",
        f"Load average at start / end: {results['loadavg_start']} / {results['loadavg_end']} "
        "(a shared machine: other work ran alongside, so treat the numbers as indicative)",
        "",
        f"Scale: {_scale_text(results)}. Event mix: "
        + ", ".join(f"{k} {v:,}" for k, v in gen["event_types"].items() if v)
        + ".",
        "",
        "### Build: generate, import, train",
        "",
        f"Generating the Parquet files took {_duration(gen['seconds'])}"
        + (
            f" (data built {build['built_at']} at commit {build.get('git') or 'unknown'} and "
            "reused: the import and training numbers are from that build)."
            if build["cached"]
            else "."
        ),
        "Import goes through `fyp.ingest.importer.import_file` (the `fyp import` path):",
        "",
        "| kind | records | outcome | time | records/s |",
        "|---|---:|---|---:|---:|",
    ]
    out += [f"| {' | '.join(row)} |" for row in _import_rows(build)]
    out += [
        "",
        "| training (per region) | events | users | items | time |",
        "|---|---:|---:|---:|---:|",
    ]
    out += [
        f"| {r['region']} | {r['events']:,} | {r['users']:,} | {r['items']:,} | "
        f"{_duration(r['seconds'])} |"
        for r in build["training"]["regions"]
    ]
    sizes = build.get("data_dir_mib", {})
    single = phases.get("feed_1conn")
    warmups = ", ".join(
        f"{phases[name]['warmup']['requests']:,}" for name in PHASES if name in phases
    )
    titles = phase_titles(results, True)
    out += [
        "",
        f"Training wall time, both regions, including loading the new models for serving: "
        f"{_duration(build['training']['seconds'])}. Whole build (generate, import, train): "
        f"{_duration(build['seconds'])}.",
        "",
        f"Data directory on disk: {', '.join(f'{k} {_mib(v)}' for k, v in sizes.items())}.",
        "",
        "### Serving: trivial endpoint vs feed, same server, same run",
        "",
        f"`fyp serve --no-background-training --workers {workers}` on 127.0.0.1: "
        f"{_server_text(results)}. Load: one asyncio client process "
        f"(`{trivial['client']}` HTTP/1.1, see `bench/load_client.py`), keep-alive connections, "
        f"closed loop; phases in the order of the table, each after an uncounted warm-up "
        f"({warmups} requests). Feed users drawn at random (seeded, no user twice) from both "
        f"regions; `n={feed['feed']['n']}`. Latency percentiles are over successful requests; "
        "server latency is the `Server-Timing: app;dur` header. CPU is `/proc/<pid>/stat` time "
        "over the measured window, summed over the server's processes; \"other processes' CPU\" "
        "is what the rest of the machine used meanwhile (`/proc/stat`), i.e. the noise from "
        "other jobs.",
        "",
        *([SINGLE_CONNECTION_NOTE, ""] if single else []),
        "| | " + " | ".join(titles) + " |",
        "|---|" + "---:|" * len(titles),
    ]
    out += [f"| {' | '.join(row)} |" for row in phase_rows(results)]
    out += [
        "",
        f"**Feed (8 connections) / trivial throughput: {_ratio(results)}.** " + _pages_text(feed),
    ]
    by_label = feed.get("by_label") or {}
    if by_label:
        out.append(
            "Feed (8 connections) client latency by region: "
            + "; ".join(
                f"{label}: {v['ok']:,} requests, p50 {_ms(v['p50'])} ms, p99 {_ms(v['p99'])} ms"
                for label, v in by_label.items()
            )
            + "."
        )
    reference = reference_text(results)
    if reference:
        out += ["", reference]
    out += ["", "### Memory", "", *memory_lines(results)]
    if results["warnings"]:
        out += ["", "Warnings:", ""] + [f"- {w}" for w in results["warnings"]]
    out += [
        "",
        f"Raw results: `{results.get('raw_file', 'bench/.out/feed_http-latest.json')}` "
        "(git-ignored).",
        end_mark,
    ]
    return "\n".join(out)


def _pages_text(feed: dict[str, Any]) -> str:
    extra = feed.get("feed") or {}
    return (
        f"Feed pages held {_num(extra.get('mean_items'), 2)} items on average "
        f"({extra.get('short_pages', 'n/a')} pages shorter than n)."
    )


def memory_lines(results: dict[str, Any]) -> list[str]:
    server, peaks = results["server"], results["build"]["bench_peak_rss_mib"]
    start = server.get("memory_after_startup") or {}
    after = server.get("memory_after_load") or {}
    sampled = server.get("memory_sampled_peaks_mib") or {}
    several = server.get("workers", 1) > 1

    def parts(snapshot: dict[str, Any]) -> str:
        total = snapshot.get("total") or {}
        rss, anon, mapped, pss = (
            _mib(total.get(k)) for k in ("VmRSS", "RssAnon", "RssFile", "Pss")
        )
        text = f"{rss} (heap {anon}, file-mapped {mapped}; PSS {pss})"
        if several:
            each = ", ".join(
                f"{p['role']} {_mib(p.get('VmRSS'))}" for p in snapshot.get("processes", [])
            )
            text += f"; per process: {each}"
        return text

    def peak_parts(snapshot: dict[str, Any]) -> str:
        processes = snapshot.get("processes", [])
        return ", ".join(f"{p['role']} {_mib(p.get('VmHWM'))}" for p in processes)

    summed = " summed over the server's processes" if several else ""
    peak = "sum of the workers' VmHWM" if several else "VmHWM"
    each = f" (each process: {peak_parts(after)})" if several else ""
    return [
        f"- server peak RSS ({peak}, read after the load): {_mib(server['peak_rss_mib'])}{each}",
        f"- server RSS{summed} after startup: {parts(start)}",
        f"- server RSS{summed} after the load: {parts(after)}",
        f"- server peaks{summed}, sampled every 0.25 s during the load: RSS "
        f"{_mib(sampled.get('VmRSS'))}, heap {_mib(sampled.get('RssAnon'))}, file-mapped "
        f"{_mib(sampled.get('RssFile'))}",
        "- file-mapped pages are mostly SQLite's mmap, counted in RSS once per process mapping "
        "them; PSS (`/proc/<pid>/smaps_rollup`) shares each page among the processes mapping it, "
        "so the PSS sum is what the server costs the machine",
        f"- benchmark process during the build (VmHWM): {_mib(peaks.get('after_generate'))} "
        f"after generating, {_mib(peaks.get('after_import'))} after importing, "
        f"{_mib(peaks.get('after_train'))} after training",
    ]


def _find_section(text: str, start_mark: str, end_mark: str) -> tuple[int, int] | None:
    """Start and end offsets of a marked section (end past its end marker), if present."""
    start, end = text.find(start_mark), text.find(end_mark)
    if start == -1 or end < start:
        return None
    return start, end + len(end_mark)


def _worker_sections(text: str) -> dict[int, tuple[int, int]]:
    found = {}
    for match in re.finditer(r"<!-- bench:feed_http:w(\d+):start -->", text):
        workers = int(match.group(1))
        span = _find_section(text, *marks(workers))
        if span is not None:
            found[workers] = span
    return found


def update_docs(path: Path, section: str, workers: int) -> None:
    """Write the section for ``workers`` into ``path``, keeping the sections of other worker
    counts (ordered by worker count) and the text outside the markers. Replaces the earlier
    single section, if any; appends when there is nothing to replace or place it after."""
    text = path.read_text(encoding="utf-8") if path.exists() else DOCS_INTRO
    legacy = _find_section(text, *LEGACY_MARKS)
    sections = _worker_sections(text)
    if workers in sections:
        start, end = sections[workers]
        text = text[:start] + section + text[end:]
        if legacy is not None:  # left over from before: drop it
            text = text[: legacy[0]] + text[legacy[1] :].lstrip("\n")
    elif legacy is not None:
        text = text[: legacy[0]] + section + text[legacy[1] :]
    elif sections:
        before = [w for w in sections if w < workers]
        if before:
            at = sections[max(before)][1]
            text = text[:at] + "\n\n" + section + text[at:]
        else:
            at = sections[min(sections)][0]
            text = text[:at] + section + "\n\n" + text[at:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_section(docs: Path, start: str, end: str, text: str) -> None:
    """Put ``text`` (which begins with ``start`` and ends with ``end``) into ``docs``: in place of
    the earlier section between those markers, or appended when there is none yet. Everything
    outside the markers is kept."""
    current = docs.read_text(encoding="utf-8")
    if start in current and end in current:
        before, rest = current.split(start, 1)
        current = before + text + rest.split(end, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + text + "\n"
    docs.write_text(current, encoding="utf-8")


def load_world(engine: Any, world: Any, batch: int = 5000) -> None:
    """Put a demo world's catalog, viewers and history into ``engine`` (history in batches)."""
    engine.put_items(world.items)
    engine.put_users(world.users)
    for start in range(0, len(world.history), batch):
        engine.ingest(world.history[start : start + batch])
