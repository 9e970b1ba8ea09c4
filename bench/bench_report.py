"""Presenting benchmark results: the machine, a terminal table, the docs/BENCHMARKS.md section."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

START_MARK = "<!-- bench:feed_http:start -->"
END_MARK = "<!-- bench:feed_http:end -->"
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


def phase_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, trivial, feed) rows of the side-by-side table."""
    trivial, feed = results["phases"]["trivial"], results["phases"]["feed"]

    def both(fn: Any) -> tuple[str, str]:
        return fn(trivial), fn(feed)

    rows: list[tuple[str, str, str]] = [
        ("requests", *both(lambda p: f"{p['requests']:,} (stopped by {p['stopped_by']})")),
        ("errors (non-200)", *both(_errors)),
        ("throughput (req/s)", *both(lambda p: _num(p["throughput_rps"]))),
    ]
    for which, key in (("client", "client_ms"), ("server", "server_ms")):
        for p in ("p50", "p90", "p99"):
            rows.append((f"{which} {p} (ms)", *both(lambda ph, k=key, q=p: _ms(ph[k][q]))))
    rows += [
        ("server CPU per request (ms)", *both(lambda p: _ms(p.get("server_cpu_ms_per_request")))),
        ("server CPU busy (cores)", *both(lambda p: _num(p.get("server_cpu_share"), 2))),
        ("client CPU busy (cores)", *both(lambda p: _num(p.get("client_cpu_share"), 2))),
        ("client CPU per request (ms)", *both(lambda p: _ms(p.get("client_cpu_ms_per_request")))),
        ("other processes' CPU (cores)", *both(lambda p: _num(p.get("other_processes_cores"), 2))),
    ]
    return rows


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


def terminal_report(results: dict[str, Any]) -> str:
    build, server, m = results["build"], results["server"], results["machine"]
    lines = [
        "",
        f"fyp feed over HTTP: {results['date']}",
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
        f"  server: ready in {_duration(server['startup_s'])}, RSS after startup "
        f"{_mib(server['rss_after_startup_mib'])}, peak RSS after load "
        f"{_mib(server['peak_rss_mib'])}",
        "",
        f"  {'':<30}{'GET /healthz':>26}{'GET /v1/users/{id}/feed':>30}",
        f"  (load client: {results['phases']['trivial']['client']})",
    ]
    for name, trivial, feed in phase_rows(results):
        lines.append(f"  {name:<30}{trivial:>26}{feed:>30}")
    lines += [
        "",
        f"  feed / trivial throughput: {_ratio(results)}",
        *([f"  {reference_text(results)}"] if reference_text(results) else []),
        "",
        "  peak memory:",
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
    trivial, feed = results["phases"]["trivial"], results["phases"]["feed"]
    gen = build["generate"]
    out = [
        START_MARK,
        "## Feed over HTTP at scale (`bench/feed_http.py`)",
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
        f"`fyp serve --no-background-training` (one uvicorn process) on 127.0.0.1, ready in "
        f"{_duration(server['startup_s'])}. Load: one asyncio client process "
        f"(`{trivial['client']}` HTTP/1.1, see `bench/load_client.py`), "
        f"{trivial['concurrency']} keep-alive connections, closed loop; each phase after an "
        f"uncounted warm-up ({trivial['warmup']['requests']:,} and "
        f"{feed['warmup']['requests']:,} requests). Feed users drawn at random (seeded, without "
        "repeats) from both regions; `n=10`. Latency percentiles are over successful requests; "
        "server latency is the `Server-Timing: app;dur` header. CPU is the server's "
        '`/proc/<pid>/stat` time over the measured window; "other processes\' CPU" is what the '
        "rest of the machine used meanwhile (`/proc/stat`), i.e. the noise from other jobs.",
        "",
        "| | trivial `GET /healthz` | feed `GET /v1/users/{id}/feed?n=10` |",
        "|---|---:|---:|",
    ]
    out += [f"| {name} | {a} | {b} |" for name, a, b in phase_rows(results)]
    extra = feed.get("feed") or {}
    out += [
        "",
        f"**Feed / trivial throughput: {_ratio(results)}.** "
        f"Feed pages held {_num(extra.get('mean_items'), 2)} items on average "
        f"({extra.get('short_pages', 'n/a')} pages shorter than n).",
    ]
    by_label = feed.get("by_label") or {}
    if by_label:
        out.append(
            "Feed client latency by region: "
            + "; ".join(
                f"{label}: {v['ok']:,} requests, p50 {_ms(v['p50'])} ms, p99 {_ms(v['p99'])} ms"
                for label, v in by_label.items()
            )
            + "."
        )
    reference = reference_text(results)
    if reference:
        out += ["", reference]
    out += ["", "### Peak memory", "", *memory_lines(results)]
    if results["warnings"]:
        out += ["", "Warnings:", ""] + [f"- {w}" for w in results["warnings"]]
    out += [
        "",
        "Raw results: `bench/.out/feed_http-latest.json` (git-ignored).",
        END_MARK,
    ]
    return "\n".join(out)


def memory_lines(results: dict[str, Any]) -> list[str]:
    server, peaks = results["server"], results["build"]["bench_peak_rss_mib"]
    start = server.get("memory_after_startup_mib") or {}
    after = server.get("memory_after_load_mib") or {}
    sampled = server.get("memory_sampled_peaks_mib") or {}

    def parts(m: dict[str, float]) -> str:
        rss, anon, mapped = (_mib(m.get(k)) for k in ("VmRSS", "RssAnon", "RssFile"))
        return f"{rss} (heap {anon}, file-mapped {mapped})"

    return [
        f"- server peak RSS (VmHWM, read after the load): {_mib(server['peak_rss_mib'])}",
        f"- server RSS after startup: {parts(start)}",
        f"- server RSS after the load: {parts(after)}",
        f"- server peaks sampled every 0.25 s during the load: RSS {_mib(sampled.get('VmRSS'))}, "
        f"heap {_mib(sampled.get('RssAnon'))}, file-mapped {_mib(sampled.get('RssFile'))} "
        "(file-mapped pages are mostly SQLite's mmap, counted once per connection mapping them)",
        f"- benchmark process during the build (VmHWM): {_mib(peaks.get('after_generate'))} "
        f"after generating, {_mib(peaks.get('after_import'))} after importing, "
        f"{_mib(peaks.get('after_train'))} after training",
    ]


def update_docs(path: Path, section: str) -> None:
    """Replace the text between the markers in ``path`` (append the section if they are absent)."""
    text = path.read_text(encoding="utf-8") if path.exists() else DOCS_INTRO
    start, end = text.find(START_MARK), text.find(END_MARK)
    if start != -1 and end > start:
        text = text[:start] + section + text[end + len(END_MARK) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
