"""The ``ledger`` command."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import socket
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import IO
from uuid import UUID

from ledger.auth import Role, TokenVerifier, load_keys
from ledger.db import resolve_database_url
from ledger.settings import get_settings

GC_YOUNG_THRESHOLD = 20_000


def inherited_socket(fd: int) -> socket.socket:
    """The listening socket a supervisor handed down, with its real family.

    uvicorn's own ``fd`` option takes any descriptor for a UNIX socket, so the event loop
    never set TCP_NODELAY on the connections it accepted and every response waited for the
    client's delayed ACK (~40 ms: ``--workers 2`` served a third of one process's appends).
    """
    return socket.socket(fileno=fd)


def _serve(args: argparse.Namespace) -> int:
    import logging.config

    import uvicorn

    from ledger.app import create_app
    from ledger.logs import log_config

    settings = get_settings()
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    logging.config.dictConfig(log_config(settings.log_format, settings.log_level))
    if args.workers > 1:
        from ledger.supervisor import Supervisor

        return Supervisor(settings, host, port, args.workers).run()
    app = create_app(settings)
    # Everything imported so far lives as long as the process: keep it out of the cyclic
    # collector's scans, and collect the young generation less often (a replay allocates
    # a few objects per event, and most die young without cycles).
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Streams never end by themselves: close them so shutdown can finish and
            # clients resume on another process.
            runtime = getattr(app.state, "runtime", None)
            if runtime is not None:
                runtime.hub.close_all()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        log_config=log_config(settings.log_format, settings.log_level),
        access_log=False,
        timeout_graceful_shutdown=10,
        proxy_headers=True,
    )
    # uvicorn re-raises SIGTERM after its graceful shutdown; exiting normally then lets
    # atexit handlers run (the embedded PostgreSQL stops with its last user).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    Server(config).run(sockets=None if args.fd is None else [inherited_socket(args.fd)])
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from ledger.migrate import upgrade

    upgrade(resolve_database_url(get_settings()), args.revision)
    print(f"migrated to {args.revision}", file=sys.stderr)
    return 0


def _token(args: argparse.Namespace) -> int:
    settings = get_settings()
    verifier = TokenVerifier(settings, load_keys(settings))
    print(verifier.mint(Role(args.role), args.sub, args.ttl))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ledger.offline import verify

    return asyncio.run(verify(get_settings(), args.session))


def _export(args: argparse.Namespace) -> int:
    from ledger.offline import export, stdout_bytes

    def run(out: IO[bytes]) -> int:
        return asyncio.run(
            export(
                get_settings(),
                args.format,
                out,
                session_id=args.session,
                after=args.after,
                start=args.start,
                end=args.end,
            )
        )

    if args.output is None:
        return run(stdout_bytes())
    with open(args.output, "wb") as out:
        return run(out)


def _base_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    settings = get_settings()
    return f"http://{settings.host}:{settings.port}"


def _token_for(args: argparse.Namespace, role: Role, subject: str) -> str:
    """The given token, or one minted with the configured key (development)."""
    if args.token:
        return str(args.token)
    settings = get_settings()
    return TokenVerifier(settings, load_keys(settings)).mint(role, subject, 24 * 3600)


def _tail(args: argparse.Namespace) -> int:
    from ledger.terminal import run_tail

    token = _token_for(args, Role.AUDITOR, "tail")
    return run_tail(_base_url(args), str(args.session), token, from_start=args.from_start)


def _demo(args: argparse.Namespace) -> int:
    from ledger.terminal import demo

    token = _token_for(args, Role.SERVICE, "demo-pipeline")
    return demo(
        _base_url(args),
        token,
        sessions=args.sessions,
        pace=args.pace,
        fail_rate=args.fail_rate,
        seed=args.seed,
    )


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ledger.bench import run

    return run(get_settings(), quick=args.quick, output=Path(args.output))


def _timestamp(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledger", description="An event-sourced progress ledger with live streams."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the HTTP API (LEDGER_HOST, LEDGER_PORT)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument(
        "--workers", type=int, default=1, help="processes on one socket, each with one LISTEN"
    )
    serve.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="apply database migrations (Alembic)")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(run=_migrate)

    token = commands.add_parser("token", help="mint a token for development and scripts")
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--sub", required=True, help="the subject (user or service id)")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(run=_token)

    verify = commands.add_parser(
        "verify", help="recompute the hash chains; exit 1 if any is broken"
    )
    verify.add_argument("--session", type=UUID, default=None, help="only this session")
    verify.set_defaults(run=_verify)

    export = commands.add_parser("export", help="export history as NDJSON or CSV")
    export.add_argument("--session", type=UUID, default=None, help="only this session")
    export.add_argument("--from", dest="start", type=_timestamp, default=None)
    export.add_argument("--to", dest="end", type=_timestamp, default=None)
    export.add_argument(
        "--after", type=int, default=0, help="a version (with --session) or global position"
    )
    export.add_argument("--format", choices=["ndjson", "csv"], default="ndjson")
    export.add_argument("--output", "-o", default=None, help="a file (default: stdout)")
    export.set_defaults(run=_export)

    tail = commands.add_parser(
        "tail", help="follow a session with a progress bar; exit 0 processed, 1 failed"
    )
    tail.add_argument("session", type=UUID)
    tail.add_argument("--from-start", action="store_true", help="show the whole history first")
    tail.add_argument("--url", default=None, help="default: http://LEDGER_HOST:LEDGER_PORT")
    tail.add_argument("--token", default=None, help="default: minted with the configured key")
    tail.set_defaults(run=_tail)

    demo = commands.add_parser("demo", help="run simulated pipelines that append progress")
    demo.add_argument("--sessions", type=int, default=5)
    demo.add_argument("--pace", type=float, default=1.0, help="pause multiplier (0 = no pauses)")
    demo.add_argument("--fail-rate", type=float, default=0.2)
    demo.add_argument("--seed", type=int, default=None)
    demo.add_argument("--url", default=None, help="default: http://LEDGER_HOST:LEDGER_PORT")
    demo.add_argument("--token", default=None, help="default: minted with the configured key")
    demo.set_defaults(run=_demo)

    bench = commands.add_parser("bench", help="run the benchmarks, write a JSON report")
    bench.add_argument("--quick", action="store_true", help="a tenth of the size")
    bench.add_argument("--output", default="bench-results.json")
    bench.set_defaults(run=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
