"""The ``fyp`` command line: one subcommand per task (``fyp --help`` lists them)."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fyp import __version__
from fyp.config import BACKGROUND_TRAINING_ENV, DEFAULT_DATA_DIR, FypConfig, load_config
from fyp.errors import ConfigError, FypError

if TYPE_CHECKING:
    from fyp.governance.keys import Verifier
    from fyp.ingest.importer import ImportReport
    from fyp.sim.world import WorldConfig

DEMO_DATA_DIR = Path("fyp-demo-data")
_DEMO_MARKER = "demo-world.json"

log = logging.getLogger("fyp")


def _is_loopback_host(host: str) -> bool:
    """True when ``host`` can only be this machine: a loopback address or ``localhost``. Any
    other name is not, whatever it starts with (``127.evil.example`` resolves wherever its
    owner points it)."""
    import ipaddress

    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host.lower() == "localhost"
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _check_data_dir(path: Path) -> None:
    """Make sure ``path`` is a directory fyp can create and write, or say in one line why not."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"the data directory {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        # Creating a file is the only test of writability that holds for every user and
        # filesystem (os.access says yes to root on a read-only mount).
        with tempfile.TemporaryFile(dir=path, prefix=".fyp-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot use {path} as the data directory: {exc.strerror or exc}"
        ) from exc


def _listen(host: str, port: int) -> socket.socket:
    """Bind the server's socket now, so a taken port fails before anything is loaded or
    announced; uvicorn then serves on this very socket (no window for another process)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As uvicorn does: a restart may bind while the last run's connections linger.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = (
            ": another process is listening there; stop it or choose another --port"
            if exc.errno == errno.EADDRINUSE
            else ""
        )
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from exc
    sock.set_inheritable(True)  # worker processes serve on it too
    return sock


def _serve(config: FypConfig, background_training: bool = True, workers: int = 1) -> None:
    import uvicorn

    from fyp.api.http_protocol import ProblemHttpToolsProtocol
    from fyp.governance.api_keys import keys_configured

    host, port = config.server.host, config.server.port
    keyless = not keys_configured(config.data_dir, config.server.api_key)
    if keyless and not _is_loopback_host(host):
        raise FypError(
            f"refusing to listen on {host}: without an API key fyp serves loopback only; "
            "set FYP_API_KEY or add keys with 'fyp apikey add' to accept remote clients"
        )
    _check_data_dir(config.data_dir)
    sock = _listen(host, port)
    with sock:
        if keyless:
            print("fyp: no API keys configured, so serving loopback clients only", file=sys.stderr)
        if workers > 1:
            from uvicorn.supervisors import Multiprocess

            # Each worker process builds its own engine from the environment (fyp.api.asgi).
            os.environ["FYP_DATA_DIR"] = str(config.data_dir)
            if config.serving_region:
                os.environ["FYP_SERVING_REGION"] = config.serving_region
            os.environ[BACKGROUND_TRAINING_ENV] = "1" if background_training else "0"
            print(
                f"fyp: serving {config.data_dir} on http://{host}:{port} with {workers} workers "
                "(API docs at /docs)",
                file=sys.stderr,
            )
            # The supervising process only starts workers: it does not load an engine itself.
            server_config = uvicorn.Config(
                "fyp.api.asgi:app_from_env",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                log_level="warning",
                access_log=False,
                http=ProblemHttpToolsProtocol,
            )
            Multiprocess(server_config, sockets=[sock]).run()
            return
        from fyp.api.app import create_app
        from fyp.engine import Engine

        engine = Engine(config)
        started = time.perf_counter()
        warmed = engine.warm()
        print(
            f"fyp: loaded {warmed:,} catalog items into memory in "
            f"{time.perf_counter() - started:.1f}s",
            file=sys.stderr,
        )
        app = create_app(engine, background_training=background_training)
        print(
            f"fyp: serving {config.data_dir} on http://{host}:{port} (API docs at /docs)",
            file=sys.stderr,
        )
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level="warning",
                access_log=False,
                http=ProblemHttpToolsProtocol,
            )
        )
        server.run(sockets=[sock])


def cmd_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {"server": _server_overrides(args)}
    if args.serving_region:
        overrides["serving_region"] = args.serving_region
    config = load_config(args.data_dir, **overrides)
    _serve(config, background_training=not args.no_background_training, workers=args.workers)
    return 0


def _server_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"host": args.host, "port": args.port}


def cmd_import(args: argparse.Namespace) -> int:
    from fyp.engine import Engine
    from fyp.ingest.importer import ImportReport, import_file

    engine = Engine(load_config(args.data_dir))
    try:
        report = import_file(
            engine,
            args.kind,
            Path(args.file),
            format=args.format,
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
    except FypError as exc:
        # A file that broke part-way: what was read before it is stored, and its errors count.
        partial = exc.extra.get("report")
        if isinstance(partial, ImportReport):
            _print_import_report(args.kind, partial)
        raise
    finally:
        engine.close()
    _print_import_report(args.kind, report)
    return 2 if report.error_count else 0


def _print_import_report(kind: str, report: ImportReport) -> None:
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    if report.error_count > len(report.errors):
        print(f"... and {report.error_count - len(report.errors)} more errors", file=sys.stderr)
    if report.error_count:
        print(f"({report.numbering})", file=sys.stderr)
    rate = report.records / report.seconds if report.seconds > 0 else 0.0
    if kind == "events":
        summary = f"{report.accepted} accepted, {report.duplicates} duplicates"
    else:
        summary = f"{report.created} created, {report.updated} updated"
    print(
        f"{kind}: {report.records} records, {summary}, {report.error_count} errors "
        f"in {report.seconds:.1f}s ({rate:,.0f} records/s)"
    )


def cmd_train(args: argparse.Namespace) -> int:
    from fyp.engine import Engine

    engine = Engine(load_config(args.data_dir))
    try:
        reports = engine.train([args.region] if args.region else None)
    finally:
        engine.close()
    for r in reports:
        if r.version is None:
            print(f"{r.region}: not trained ({r.skipped_reason})")
        else:
            print(
                f"{r.region}: {r.version} from {r.events:,} events, {r.users:,} users, "
                f"{r.items:,} items in {r.seconds:.1f}s"
            )
            if r.ranker and r.ranker.get("train"):
                t = r.ranker["train"]
                print(
                    f"{r.region}: ranker from {t['examples']:,} viewings in {t['seconds']:.1f}s "
                    f"({t['epochs']} epochs, best {t['best_epoch']})"
                )
            elif r.ranker:
                print(f"{r.region}: no ranker ({r.ranker.get('skipped_reason')})")
    return 0


def cmd_feed(args: argparse.Namespace) -> int:
    from fyp.engine import Engine

    engine = Engine(load_config(args.data_dir))
    try:
        result = engine.feed(args.user_id, args.n)
        records = engine.catalog.get_items([i.item_id for i in result.items])
    finally:
        engine.close()
    if args.json:
        print(
            json.dumps(
                {
                    "request_id": result.request_id,
                    "region": result.region,
                    "model_version": result.model_version,
                    "items": [
                        {
                            "item_id": i.item_id,
                            "score": i.score,
                            "reasons": [{"code": r.code, "text": r.text} for r in i.reasons],
                        }
                        for i in result.items
                    ],
                },
                indent=2,
            )
        )
        return 0
    print(f"For You · {result.user_id} · region {result.region} · model {result.model_version}")
    for position, item in enumerate(result.items, 1):
        record = records.get(item.item_id)
        caption = record.caption if record else ""
        creator = record.creator_id if record else "?"
        tags = " ".join(f"#{t}" for t in record.tags) if record else ""
        print(f"\n{position:>2}. {caption}  (@{creator}, {item.item_id}, score {item.score:.3f})")
        if tags:
            print(f"    {tags}")
        for reason in item.reasons:
            print(f"    - {reason.text}  [{reason.code}]")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fyp.engine import Engine
    from fyp.ingest.importer import import_file
    from fyp.sim.world import build_world, write_world

    data_dir = Path(args.data_dir)
    _check_data_dir(data_dir)
    marker = data_dir / _DEMO_MARKER
    config = load_config(data_dir, server=_server_overrides(args))
    if args.fresh or not marker.exists():
        if data_dir.exists() and any(data_dir.iterdir()) and not marker.exists() and not args.fresh:
            raise FypError(
                f"{data_dir} holds data that is not a demo world; pass --fresh to replace it"
            )
        _reset_demo_dir(data_dir)
        started = time.perf_counter()
        world_config = _demo_world_config(args.seed, args.size)
        world = build_world(world_config)
        files = write_world(world, data_dir / "demo-input")
        print(
            f"demo world: {len(world.items):,} videos by {len(world.creators):,} creators, "
            f"{len(world.users):,} viewers, {len(world.history):,} past events",
            file=sys.stderr,
        )
        engine = Engine(config)
        try:
            for kind in ("items", "users", "events"):
                report = import_file(engine, kind, files[kind], progress=True)
                print(
                    f"imported {kind}: {report.records:,} records, {report.error_count} errors "
                    f"in {report.seconds:.1f}s",
                    file=sys.stderr,
                )
            for r in engine.train():
                print(f"trained {r.region}: {r.version} ({r.seconds:.1f}s)", file=sys.stderr)
        finally:
            engine.close()
        sample = [u.user_id for u in world.users[:5]]
        marker.write_text(
            json.dumps({"seed": args.seed, "size": args.size, "sample_users": sample})
        )
        print(f"demo ready in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    sample_users = json.loads(marker.read_text()).get("sample_users", [])
    print(
        f"\nOpen http://{config.server.host}:{config.server.port}/ and load a user, "
        f"e.g. {', '.join(sample_users[:3])}.\n"
        f"  curl http://{config.server.host}:{config.server.port}/v1/users/"
        f"{sample_users[0] if sample_users else 'viewer0001'}/feed?n=5\n",
        file=sys.stderr,
    )
    if args.no_serve:
        return 0
    _serve(config)
    return 0


_DEMO_SIZES = ("small", "default")


def _demo_world_config(seed: int, size: str) -> WorldConfig:
    from fyp.sim.world import WorldConfig

    if size == "small":
        return WorldConfig(seed=seed, n_creators=60, n_items=1500, n_viewers=200)
    return WorldConfig(seed=seed)


def _reset_demo_dir(data_dir: Path) -> None:
    import shutil

    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)


def cmd_eval(args: argparse.Namespace) -> int:
    from fyp.eval.datasets import load_dataset
    from fyp.eval.harness import DEFAULT_KS, PROTOCOLS, default_protocols, run, table
    from fyp.eval.report import verdict, write_report

    dataset = load_dataset(args.dataset)
    protocols = [args.protocol] if args.protocol else default_protocols(dataset)
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise FypError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
        result = run(
            dataset,
            protocol,
            models=args.models.split(",") if args.models else None,
            ks=DEFAULT_KS,
            seed=args.seed,
            progress=lambda message: print(f"  {message}", file=sys.stderr, flush=True),
        )
        command = " ".join(["fyp", "eval", *sys.argv[2:]]) if len(sys.argv) > 1 else None
        files = write_report(result, Path(args.out), command=command)
        print(table(result))
        print(verdict(result).replace("**", ""))
        print(f"report: {files['markdown']}  json: {files['json']}\n")
    return 0


def cmd_eval_ranker(args: argparse.Namespace) -> int:
    from fyp.eval.ranking import run_ranker_eval, summary_table, with_overrides, write_ranker_report

    ranker = load_config(args.data_dir).ranker if args.data_dir else FypConfig().ranker
    overrides: dict[str, Any] = {"train_threads": args.threads}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    command = " ".join(["fyp", "eval-ranker", *sys.argv[2:]]) if len(sys.argv) > 1 else None
    results = []
    for seed in range(args.seed, args.seed + args.repeats):
        print(f"seed {seed}:", file=sys.stderr, flush=True)
        result = run_ranker_eval(
            args.users,
            seed,
            test_share=args.test_share,
            ranker=with_overrides(ranker, **overrides),
            exposures_per_viewer=args.exposures,
            command=command,
            progress=lambda message: print(f"  {message}", file=sys.stderr, flush=True),
        )
        print(summary_table(result))
        results.append(result)
    files = write_ranker_report(results, Path(args.out))
    print(f"report: {files['markdown']}  json: {files['json']}")
    return 0


def cmd_offline_recommend(args: argparse.Namespace) -> int:
    from fyp.eval.offline import offline_recommend

    report = offline_recommend(
        Path(args.train),
        Path(args.users),
        args.k,
        Path(args.out),
        items=Path(args.items) if args.items else None,
        seed=args.seed,
    )
    print(
        f"wrote top-{args.k} for {report.users:,} users ({report.unknown_users:,} unknown to the "
        f"log got popular items) from {report.interactions:,} interactions over "
        f"{report.items:,} items; fit {report.fit_seconds:.1f}s, "
        f"recommend {report.recommend_seconds:.1f}s -> {args.out}",
        file=sys.stderr,
    )
    return 0


def _audit_regions(engine: Any, region: str | None) -> list[str]:
    regions: list[str] = engine.config.region_names
    if region is not None and region not in regions:
        raise FypError(f"no region named {region!r}; configured: {regions}")
    return [region] if region else regions


def cmd_audit(args: argparse.Namespace) -> int:
    """Operator and auditor access to each region's tamper-evident audit log."""
    from fyp.governance.keys import Verifier

    config = load_config(args.data_dir)
    pinned = Verifier.from_hex(args.public_key) if args.public_key else None
    if args.action == "witness" and args.url:
        # A witness on another host polls regions its own configuration need not know.
        return _audit_witness(args, config, pinned)
    regions = config.region_names
    if args.region is not None and args.region not in regions:
        raise FypError(f"no region named {args.region!r}; configured: {regions}")
    if args.region:
        regions = [args.region]
    # These only read: a verifier must not write to the log it checks (nor start an engine,
    # whose start records opens), and must work on a log too damaged to append to.
    if args.action == "verify":
        return _audit_verify(args, config, regions, pinned)
    if args.action == "witness":
        return _audit_witness(args, config, pinned)
    if args.action in ("key", "head"):
        from fyp.governance.witness import open_read_only

        for region in regions:
            if args.action == "key":
                verifier = Verifier.from_key_file(config.audit_key_path(region))
                print(f"{region}\t{verifier.key_id}\t{verifier.hex()}")
                continue
            log_ = open_read_only(config, region)
            try:
                head = log_.head()
            finally:
                log_.close()
            print(json.dumps(head.to_json() if head else {"region": region, "tree_size": 0}))
        return 0
    return _audit_through_gate(args, config, regions)


def _audit_verify(
    args: argparse.Namespace, config: FypConfig, regions: list[str], pinned: Verifier | None
) -> int:
    from fyp.governance.witness import read_heads, verify_region

    witnessed = read_heads(Path(args.against)) if args.against else []
    auditor = None if args.no_record else (os.environ.get("USER") or "cli")
    failed = False
    for region in regions:
        started = time.perf_counter()
        outcome = verify_region(
            config,
            region,
            pinned,
            [h for h in witnessed if h.region == region],
            record_as=auditor,
        )
        report = outcome.report
        seconds = time.perf_counter() - started
        if report.ok:
            against = (
                f", {report.witnessed_checked} witnessed heads from {args.against}"
                if args.against
                else ""
            )
            recorded = (
                f"; this check recorded as entry #{outcome.recorded_seq}"
                if outcome.recorded_seq
                else ""
            )
            print(
                f"{region}: ok, {report.entries:,} entries, {report.heads_checked} signed "
                f"heads{against}, root {report.root[:16]}… ({seconds:.1f}s){recorded}"
            )
            if args.against and not report.witnessed_checked:
                print(f"  note: {args.against} holds no head of region {region}")
            continue
        failed = True
        where = f" (first bad entry #{report.first_bad_seq})" if report.first_bad_seq else ""
        print(f"{region}: FAILED{where}")
        for problem in report.problems:
            print(f"  - {problem}")
        if report.unlisted:
            print(f"  - … and {report.unlisted:,} more")
    return 3 if failed else 0


def _audit_witness(args: argparse.Namespace, config: FypConfig, pinned: Verifier | None) -> int:
    from fyp.governance import witness

    if pinned is None or args.heads is None or args.region is None:
        raise FypError(
            "fyp audit witness needs --region, --public-key (the region's key, pinned: see "
            "fyp audit key) and --heads (the file of heads this witness keeps)"
        )
    source: witness.HttpHeadSource | witness.LocalHeadSource
    if args.url:
        api_key = args.api_key or os.environ.get("FYP_API_KEY")
        source = witness.HttpHeadSource.connect(args.url, api_key)
    else:
        source = witness.LocalHeadSource(config)
    try:
        outcome = witness.witness(source, args.region, pinned, Path(args.heads))
    finally:
        source.close()
    if outcome.problem is not None:
        print(f"{args.region}: FAILED: {outcome.problem}")
        return 3
    assert outcome.head is not None
    since = f" (consistent with size {outcome.previous.size})" if outcome.previous else ""
    verb = "kept" if outcome.appended else "unchanged at"
    print(f"{args.region}: {verb} head of size {outcome.head.size}{since} in {args.heads}")
    return 0


def _audit_through_gate(args: argparse.Namespace, config: FypConfig, regions: list[str]) -> int:
    """tail, sign and proof: through an engine, so each access is a gated, recorded one."""
    from fyp.engine import Engine
    from fyp.governance import merkle
    from fyp.governance.policy import Principal

    engine = Engine(config)
    try:
        if args.action == "sign":
            for region in regions:
                print(json.dumps(engine.gate.sign_audit_head(region).to_json()))
            return 0
        if args.action == "proof":
            if args.region is None or args.seq is None:
                raise FypError("fyp audit proof needs --region and --seq")
            log_ = engine.gate.audit_log(args.region)
            head = log_.head(args.size) if args.size else log_.head()
            if head is None or head.size < args.seq:
                head = engine.gate.sign_audit_head(args.region)
            _, leaf = engine.gate.open(
                args.region, Principal.auditor(args.region), "audit"
            ).audit.leaf(args.seq)
            size, path = log_.inclusion_proof(args.seq, head.size)
            merkle.verify_inclusion(args.seq - 1, size, leaf, path, head.root)
            proof = {
                "seq": args.seq,
                "leaf_hash": leaf.hex(),
                "tree_head": head.to_json(),
                "audit_path": [p.hex() for p in path],
            }
            print(json.dumps(proof, indent=2))
            return 0
        for region in regions:  # tail
            handle = engine.gate.open(region, Principal.auditor(region), "audit")
            for r in handle.audit.tail(args.n):
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.ts))
                detail = json.dumps(r.detail, sort_keys=True)
                print(
                    f"{region}\t#{r.seq}\t{stamp}\t{r.decision}\t{r.principal}\t"
                    f"{r.purpose}\t{r.action}\t{detail}"
                )
        return 0
    finally:
        engine.close()


def cmd_package(args: argparse.Namespace) -> int:
    """Export, verify and import the algorithm package (no personal data, signed)."""
    from fyp.engine import Engine
    from fyp.governance import package
    from fyp.governance.keys import Signer, Verifier

    config = load_config(args.data_dir)
    engine = Engine(config)
    try:
        if args.action == "export":
            signer = Signer.load_or_create(config.data_dir / "keys" / "package.ed25519")
            manifest = package.export_package(
                config, engine.gate, Path(args.path), signer, args.region
            )
            weights = manifest["weights"]
            print(
                f"wrote {args.path}: config {manifest['config_hash']}, code "
                f"{manifest['code']['source_sha256'][:16]}, "
                + (f"weights of {weights['model_version']}" if weights else "no weights")
                + f", signed by {signer.verifier.key_id}"
            )
            return 0
        pinned = Verifier.from_hex(args.public_key) if args.public_key else None
        ids, rows = package.local_personal_data(engine.gate, config.region_names)
        report = package.verify_package(Path(args.path), pinned, ids, rows)
        if not report.ok:
            print(f"REFUSED {args.path}")
            for problem in report.problems:
                print(f"  - {problem}")
            return 3
        print(
            f"ok {args.path}: signed by {report.key_id}; scanned {report.checked_strings:,} "
            f"strings against {len(ids):,} local user ids and {report.checked_rows:,} rows "
            f"against {len(rows):,} user rows"
        )
        if args.action == "import":
            if args.region is None:
                raise FypError("fyp package import needs --region")
            version = package.import_package(engine.gate, args.region, Path(args.path), report)
            engine.reload_model(args.region)
            print(f"{args.region}: started model {version} from the package")
        return 0
    finally:
        engine.close()


def cmd_user(args: argparse.Namespace) -> int:
    """Carry out a user's export or erasure request as an operator of their home region."""
    from fyp.engine import Engine

    engine = Engine(load_config(args.data_dir))
    try:
        operator = args.operator or os.environ.get("USER") or "cli"
        if args.action == "export":
            data = engine.rights.export(args.user_id, as_operator=operator)
            text = json.dumps(data, indent=2, sort_keys=True)
            if args.out:
                Path(args.out).write_text(text + "\n", encoding="utf-8")
                print(f"wrote {args.out}: {len(data['events']):,} events", file=sys.stderr)
            else:
                print(text)
            return 0
        receipt = engine.rights.erase(args.user_id, as_operator=operator)
        print(json.dumps(receipt, indent=2, sort_keys=True))
        return 0
    finally:
        engine.close()


def cmd_keys(args: argparse.Namespace) -> int:
    """The regions' key-encryption keys: list them, check them, rotate one region's."""
    from fyp.engine import Engine
    from fyp.governance.policy import Principal

    engine = Engine(load_config(args.data_dir))
    try:
        regions = _audit_regions(engine, args.region)
        operator = args.operator or os.environ.get("USER") or "cli"
        quarantined = engine.gate.quarantined
        if args.action == "rotate":
            if args.region is None:
                raise FypError("fyp keys rotate needs --region")
            region = args.region
            principal = Principal.operator(region, operator)
            handle = engine.gate.open(region, principal, "manage_keys")
            started = time.perf_counter()

            def progress(done: int) -> None:
                if not args.quiet:
                    print(f"\r{region}: re-wrapped {done:,} data keys", end="", file=sys.stderr)

            report = handle.keys.rotate_kek(engine.clock(), batch=args.batch, progress=progress)
            if not args.quiet and report.rewrapped:
                print(file=sys.stderr)
            seq = handle.record(
                "kek_rotation",
                {
                    "new_kek": report.new_kek,
                    "new_version": report.new_version,
                    "retired": report.retired,
                    "rewrapped": report.rewrapped,
                    "resumed": report.resumed,
                },
            )
            print(
                f"{region}: KEK v{report.new_version} {report.new_kek} now wraps every data key "
                f"({report.rewrapped:,} re-wrapped"
                + (", resuming an interrupted rotation" if report.resumed else "")
                + f"); retired {', '.join(report.retired) or 'none'}; "
                f"{time.perf_counter() - started:.2f}s; audit entry #{seq}"
            )
            return 0
        failed = False
        for region in regions:
            if region in quarantined:
                failed = True
                print(f"{region}: QUARANTINED: {quarantined[region]}")
                continue
            handle = engine.gate.open(region, Principal.operator(region, operator), "manage_keys")
            keks = handle.keys.key_status()
            if args.action == "list":
                for k in keks:
                    state = (
                        "active"
                        if k.active
                        else "retired"
                        if k.retired_at is not None
                        else "retiring"
                        if k.registered
                        else "new"
                    )
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(k.created_at))
                    print(
                        f"{region}\tv{k.version}\t{k.id}\t{state}\t{stamp}\t"
                        f"{'in file' if k.in_file else 'not in file'}\t{k.data_keys:,} data keys"
                    )
                continue
            active = [k for k in keks if k.active]
            pending = sum(k.data_keys for k in keks if not k.active)
            stale = [k.id for k in keks if k.retired_at is not None and k.in_file]
            line = (
                f"{region}: ok, KEK v{active[0].version} {active[0].id} active, "
                f"{sum(k.data_keys for k in keks):,} data keys"
                if active
                else f"{region}: no active KEK"
            )
            if pending:
                line += f"; {pending:,} still wrapped by an older KEK (run fyp keys rotate)"
            if stale:
                line += f"; retired KEK {', '.join(stale)} still in the key file"
            erased = handle.models.last_erasure()
            if active and erased > active[0].created_at:
                line += (
                    "; a user was erased since this KEK was made: copies of the database from "
                    "before that erasure still hold the user's wrapped key until you rotate"
                )
            print(line)
            failed = failed or not active
        return 3 if failed else 0
    finally:
        engine.close()


def cmd_apikey(args: argparse.Namespace) -> int:
    """Named API keys: add one (its secret printed once), list them, revoke one."""
    from fyp.governance import api_keys

    config = load_config(args.data_dir)
    keys = api_keys.KeyFile(api_keys.keys_path(config.data_dir))
    if args.action == "list":
        listed = keys.read()
        if not listed:
            print(f"fyp: no API keys in {keys.path}", file=sys.stderr)
        for line in api_keys.describe(listed):
            print(line)
        return 0
    if args.name is None:
        raise FypError(f"fyp apikey {args.action} needs a key name")
    if args.action == "revoke":
        key = keys.revoke(args.name, time.time())
        print(f"fyp: revoked API key {key.name!r}; running servers refuse it within a second")
        return 0
    regions = [r.strip() for r in (args.regions or "").split(",") if r.strip()]
    unknown = sorted(set(regions) - set(config.region_names))
    if unknown:
        raise FypError(f"unknown region(s) {unknown}; configured: {config.region_names}")
    key, secret = keys.add(
        args.name,
        api_keys.parse_scopes(args.scopes or ""),
        time.time(),
        regions=regions,
        rate=args.rate,
        burst=args.burst,
    )
    print(
        f"fyp: added API key {api_keys.describe([key])[0]}\n"
        "fyp: its secret follows; it is shown only now (the keys file keeps a hash)",
        file=sys.stderr,
    )
    print(secret)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fyp", description="A self-hosted For You feed engine.")
    parser.add_argument("--version", action="version", version=f"fyp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    def data_dir_arg(p: argparse.ArgumentParser, default: str | None = None) -> None:
        # Without a default of its own, the command reads load_config's: $FYP_DATA_DIR, else
        # ./fyp-data; with one (the demo), that default is used and $FYP_DATA_DIR is not read.
        where = f"./{default}" if default else f"$FYP_DATA_DIR or ./{DEFAULT_DATA_DIR}"
        p.add_argument("--data-dir", default=default, help=f"data directory (default: {where})")

    def server_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default="127.0.0.1", help="interface to listen on")
        p.add_argument("--port", type=int, default=8000, help="port to listen on")

    p = sub.add_parser("serve", help="serve the HTTP API")
    data_dir_arg(p)
    server_args(p)
    p.add_argument(
        "--no-background-training", action="store_true", help="do not retrain while serving"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the data directory (each holds the catalog in memory)",
    )
    p.add_argument(
        "--serving-region",
        default=None,
        help="run as this region's deployment: other regions' users are refused as exports "
        "(env FYP_SERVING_REGION; default: act for every region)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("import", help="import items, users or events from CSV, JSONL or Parquet")
    p.add_argument("kind", choices=["items", "users", "events"])
    p.add_argument("file")
    p.add_argument("--format", choices=["csv", "jsonl", "parquet"], default=None)
    p.add_argument("--batch-size", type=int, default=5000, help="records per transaction")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    data_dir_arg(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("train", help="train the learned candidate sources of each region")
    p.add_argument("--region", default=None)
    data_dir_arg(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("feed", help="print a user's feed with reasons")
    p.add_argument("user_id")
    p.add_argument("-n", type=int, default=10)
    p.add_argument("--json", action="store_true")
    data_dir_arg(p)
    p.set_defaults(func=cmd_feed)

    p = sub.add_parser("eval", help="evaluate fyp against tuned baselines on a dataset")
    p.add_argument("dataset", help="a dataset directory or an interactions CSV")
    p.add_argument("--protocol", choices=["given", "loo", "temporal", "cold-items"], default=None)
    p.add_argument("--models", default=None, help="comma-separated subset (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="eval-results", help="directory for JSON, plots, Markdown")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "eval-ranker",
        help="the multi-task ranker vs the same ranker without watch-time heads, on a sim world",
    )
    p.add_argument("--users", type=int, default=1000, help="simulated viewers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="worlds to run: seeds S, S+1, ...")
    p.add_argument("--exposures", type=int, default=60, help="viewings per simulated viewer")
    p.add_argument("--test-share", type=float, default=0.2, help="last share of time for test")
    p.add_argument("--epochs", type=int, default=None, help="override ranker.epochs")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training")
    p.add_argument("--out", default="eval-results", help="directory for ranker-sim.{json,md}")
    p.add_argument(
        "--data-dir", default=None, help="read the [ranker] settings of this data directory"
    )
    p.set_defaults(func=cmd_eval_ranker)

    p = sub.add_parser(
        "offline-recommend", help="fit the default model on a training log, write top-K lists"
    )
    p.add_argument("--train", required=True, help="CSV: user_id,item_id,timestamp[,weight,...]")
    p.add_argument("--users", required=True, help="one user id per line")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--out", required=True, help="CSV to write: user_id,item_id,rank")
    p.add_argument("--items", default=None, help="CSV: item_id[,text,tags,creator]")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_offline_recommend)

    p = sub.add_parser("audit", help="verify, read and prove entries of the regions' audit logs")
    p.add_argument(
        "action",
        choices=["verify", "witness", "tail", "head", "sign", "proof", "key"],
        help="verify the whole log (reads only; exit 3 naming the first bad entry); witness: "
        "keep the latest signed head in a file of your own after checking it; print the last "
        "entries; print the latest signed tree head; sign the current head; print an inclusion "
        "proof; print the signing public key",
    )
    p.add_argument("--region", default=None, help="one region (default: all)")
    p.add_argument("-n", type=int, default=20, help="entries for tail")
    p.add_argument("--seq", type=int, default=None, help="entry for proof")
    p.add_argument("--size", type=int, default=None, help="tree size for proof (default: latest)")
    p.add_argument(
        "--public-key",
        default=None,
        help="check heads with this pinned key (hex), not the key file; witness: required",
    )
    p.add_argument(
        "--against",
        default=None,
        metavar="HEADS",
        help="verify: also check the log against every head in this witness file",
    )
    p.add_argument(
        "--no-record",
        action="store_true",
        help="verify: do not record the verification in the log afterwards (read only)",
    )
    p.add_argument(
        "--heads",
        default=None,
        metavar="HEADS",
        help="witness: the file of heads this witness keeps (JSON lines, appended)",
    )
    p.add_argument(
        "--url",
        default=None,
        help="witness: a server's base URL to poll (default: read the data directory's files)",
    )
    p.add_argument(
        "--api-key", default=None, help="witness: the server's API key (default: $FYP_API_KEY)"
    )
    data_dir_arg(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("user", help="export or erase a user (as an operator of their region)")
    p.add_argument("action", choices=["export", "erase"])
    p.add_argument("user_id")
    p.add_argument("--out", default=None, help="export: write the JSON here instead of stdout")
    p.add_argument("--operator", default=None, help="operator name for the audit log ($USER)")
    data_dir_arg(p)
    p.set_defaults(func=cmd_user)

    p = sub.add_parser(
        "keys", help="list, check or rotate the regions' key-encryption keys (encryption at rest)"
    )
    p.add_argument(
        "action",
        choices=["list", "status", "rotate"],
        help="list each KEK version; check each region's keys; rotate one region's KEK "
        "(re-wraps every user's data key, never the encrypted rows; resumable)",
    )
    p.add_argument("--region", default=None, help="one region (rotate: required)")
    p.add_argument("--batch", type=int, default=2000, help="data keys re-wrapped per transaction")
    p.add_argument("--operator", default=None, help="operator name for the audit log ($USER)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress")
    data_dir_arg(p)
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("apikey", help="add, list or revoke the named API keys of the HTTP API")
    p.add_argument("action", choices=["add", "list", "revoke"])
    p.add_argument("name", nargs="?", help="the key's name (add, revoke)")
    p.add_argument("--scopes", help="add: comma-separated: ingest,feed,rights,train,audit,admin")
    p.add_argument("--regions", help="add: comma-separated regions the key is limited to")
    p.add_argument("--rate", type=float, help="add: requests per second (default: unlimited)")
    p.add_argument("--burst", type=int, help="add: requests at once (default: the rate)")
    data_dir_arg(p)
    p.set_defaults(func=cmd_apikey)

    p = sub.add_parser("package", help="export, verify or import the algorithm package")
    p.add_argument("action", choices=["export", "verify", "import"])
    p.add_argument("path", help="the package file (.zip)")
    p.add_argument(
        "--region",
        default=None,
        help="export: include this region's non-personal weights; import: the region to start",
    )
    p.add_argument("--public-key", default=None, help="accept only packages signed by this key")
    data_dir_arg(p)
    p.set_defaults(func=cmd_package)

    p = sub.add_parser("demo", help="build the demo world, import it, train, and serve")
    data_dir_arg(p, default=str(DEMO_DATA_DIR))
    server_args(p)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--size", choices=_DEMO_SIZES, default="default")
    p.add_argument("--fresh", action="store_true", help="rebuild the demo world from scratch")
    p.add_argument("--no-serve", action="store_true", help="prepare the demo and exit")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except FypError as exc:
        print(f"fyp: {exc.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
