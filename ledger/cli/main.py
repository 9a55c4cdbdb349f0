"""The ``ledger`` command: its arguments, and one small handler per subcommand."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import IO

from ledger.auth import Role, TokenVerifier, load_keys
from ledger.cli.audit import Server, UsageError
from ledger.cli.serve import serve_command
from ledger.errors import SetupError
from ledger.settings import describe, get_settings
from ledger.storage.database import resolve_database_url, unreachable


def _migrate(args: argparse.Namespace) -> int:
    from ledger.storage.migrations import upgrade

    upgrade(resolve_database_url(get_settings()), args.revision)
    print(f"migrated to {args.revision}", file=sys.stderr)
    return 0


def _token(args: argparse.Namespace) -> int:
    settings = get_settings()
    verifier = TokenVerifier(settings, load_keys(settings))
    print(verifier.mint(Role(args.role), args.sub, args.ttl))
    return 0


def _verify(args: argparse.Namespace) -> int:
    if args.export is not None:
        from ledger.cli.audit import find_verifier, verify_export

        if args.checkpoint is None:
            raise UsageError(
                "--export needs --checkpoint (the kept checkpoint to check it against)"
            )
        if args.session is not None:
            raise UsageError("--export checks the whole global export: leave out --session")
        verifier = find_verifier(get_settings(), args.key, _base_url(args))
        return verify_export(args.export, args.checkpoint, verifier)
    if args.checkpoint is not None:
        raise UsageError("--checkpoint goes with --export (an NDJSON export of the ledger)")
    from ledger.cli.offline import verify

    return asyncio.run(verify(get_settings(), args.session))


def _server(args: argparse.Namespace) -> Server:
    from ledger.cli.audit import Server

    return Server(_base_url(args), _token_for(args, Role.AUDITOR, "auditor"))


def _checkpoint_fetch(args: argparse.Namespace) -> int:
    from ledger.cli.audit import fetch, find_verifier

    verifier = find_verifier(get_settings(), args.key, _base_url(args))
    return fetch(_server(args), verifier, args.output)


def _checkpoint_verify(args: argparse.Namespace) -> int:
    from ledger.cli.audit import find_verifier, verify_kept

    verifier = find_verifier(get_settings(), args.key, _base_url(args))
    return verify_kept(_server(args), verifier, args.files)


def _export(args: argparse.Namespace) -> int:
    from ledger.cli.offline import export, stdout_bytes

    def run(out: IO[bytes]) -> int:
        return asyncio.run(
            export(
                get_settings(),
                args.format,
                out,
                session=args.session,
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
    from ledger.cli.terminal import run_tail
    from ledger.client import LedgerClientError, find_session

    token = _token_for(args, Role.AUDITOR, "tail")
    base_url = _base_url(args)
    try:
        session_id = find_session(base_url, token, args.session)
    except LedgerClientError as refused:
        if refused.status_code == 401 and not args.token:
            raise SetupError(
                f"{base_url} refused a token signed with the key under "
                f"{get_settings().data_dir}: the server runs with another LEDGER_DATA_DIR or "
                "LEDGER_JWT_SECRET (or pass --token)"
            ) from None
        raise
    return run_tail(base_url, session_id, token, from_start=args.from_start)


def _demo(args: argparse.Namespace) -> int:
    from ledger.cli.terminal import demo

    token = _token_for(args, Role.SERVICE, "demo-pipeline")
    return demo(
        _base_url(args),
        token,
        sessions=args.sessions,
        pace=args.pace,
        fail_rate=args.fail_rate,
        seed=args.seed,
    )


def _timestamp(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


KEY_HELP = (
    "the verifier key (name+keyid+base64), or a file holding it; default: the configured"
    " signing key's public half, else the key the server publishes"
)


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
    serve.set_defaults(run=serve_command)

    migrate = commands.add_parser("migrate", help="apply database migrations (Alembic)")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(run=_migrate)

    token = commands.add_parser("token", help="mint a token for development and scripts")
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--sub", required=True, help="the subject (user or service id)")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(run=_token)

    verify = commands.add_parser(
        "verify",
        help="recompute the hash chains (in the database, or offline in an export against a"
        " kept checkpoint); exit 1 if anything differs",
    )
    verify.add_argument(
        "--session", default=None, help="only this session (its id, or the start of it)"
    )
    verify.add_argument(
        "--export", default=None, help="an NDJSON export of the whole ledger: checked offline"
    )
    verify.add_argument("--checkpoint", default=None, help="a kept checkpoint (with --export)")
    verify.add_argument("--key", default=None, help=KEY_HELP)
    verify.add_argument("--url", default=None, help=argparse.SUPPRESS)
    verify.add_argument("--token", default=None, help=argparse.SUPPRESS)
    verify.set_defaults(run=_verify)

    checkpoint = commands.add_parser(
        "checkpoint", help="keep signed checkpoints and check kept ones against the server"
    )
    actions = checkpoint.add_subparsers(dest="action", required=True)
    fetch = actions.add_parser("fetch", help="keep the latest checkpoint (signature checked)")
    fetch.add_argument("-o", "--output", default=None, help="a file (default: stdout)")
    verify_kept = actions.add_parser(
        "verify",
        help="check kept checkpoints' signatures, and that the server's latest extends each",
    )
    verify_kept.add_argument("files", nargs="+", metavar="FILE", help="kept checkpoints")
    for action, run in ((fetch, _checkpoint_fetch), (verify_kept, _checkpoint_verify)):
        action.add_argument("--key", default=None, help=KEY_HELP)
        action.add_argument("--url", default=None, help="default: http://LEDGER_HOST:LEDGER_PORT")
        action.add_argument("--token", default=None, help="default: minted with the configured key")
        action.set_defaults(run=run)

    export = commands.add_parser("export", help="export history as NDJSON or CSV")
    export.add_argument(
        "--session", default=None, help="only this session (its id, or the start of it)"
    )
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
    tail.add_argument("session", help="the session's id, or the start of it")
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

    return parser


def explain(error: BaseException) -> str | None:
    """A user's mistake (or an unreachable server or database) as one line; None for what
    is a bug, which keeps its traceback."""
    import httpx
    import psycopg
    from pydantic import ValidationError

    from ledger.client import LedgerClientError

    if isinstance(error, ValidationError):
        return f"invalid setting: {describe(error)}"
    if isinstance(error, SetupError):
        return str(error)
    if isinstance(error, LedgerClientError):
        return f"{error.detail} ({error.status_code})"
    if isinstance(error, httpx.TransportError):
        try:
            where = f"{error.request.url.scheme}://{error.request.url.netloc.decode()}"
        except RuntimeError:  # no request attached
            where = "the server"
        return f"cannot reach {where}: {error} (is `ledger serve` running there?)"
    cause = getattr(error, "orig", None) or error  # SQLAlchemy wraps the driver's error
    if isinstance(cause, psycopg.OperationalError):
        return str(unreachable(get_settings().database_url, cause))
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        print("ledger: interrupted", file=sys.stderr)
        return 130
    except UsageError as error:
        print(f"ledger: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        line = explain(error)
        if line is None:
            raise
        print(f"ledger: {line}", file=sys.stderr)
        return 1
    return code
