"""The ``ledger`` command."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from ledger.auth import Role, TokenVerifier, load_keys
from ledger.db import resolve_database_url
from ledger.settings import get_settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ledger.app import create_app
    from ledger.logs import uvicorn_log_config

    settings = get_settings()
    app = create_app(settings)

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
        host=args.host or settings.host,
        port=args.port if args.port is not None else settings.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        log_config=uvicorn_log_config(),
        timeout_graceful_shutdown=10,
        proxy_headers=True,
    )
    # uvicorn re-raises SIGTERM after its graceful shutdown; exiting normally then lets
    # atexit handlers run (the embedded PostgreSQL stops with its last user).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    Server(config).run()
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledger", description="An event-sourced progress ledger with live streams."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the HTTP API (LEDGER_HOST, LEDGER_PORT)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="apply database migrations (Alembic)")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(run=_migrate)

    token = commands.add_parser("token", help="mint a token for development and scripts")
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--sub", required=True, help="the subject (user or service id)")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(run=_token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
