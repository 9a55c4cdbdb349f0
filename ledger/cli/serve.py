"""``ledger serve``: uvicorn on the app, one process, or N of them under the supervisor."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import signal
import sys
from types import FrameType

from ledger.auth import load_keys
from ledger.cli.protocols import AnsweringWebSocketProtocol, bounded_http
from ledger.cli.sockets import inherited_socket, listening_socket
from ledger.settings import Settings, get_settings
from ledger.storage.database import resolve_database_url, wait_for_database

log = logging.getLogger("ledger.serve")

GC_YOUNG_THRESHOLD = 20_000


class Stopped(Exception):
    """SIGTERM arrived after the graceful shutdown (uvicorn re-raises the signal)."""


def _stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped


def serve_command(args: argparse.Namespace) -> int:
    import logging.config

    from ledger.logs import log_config

    settings = get_settings()
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    logging.config.dictConfig(log_config(settings.log_format, settings.log_level))
    if args.workers > 1:
        from ledger.cli.supervisor import Supervisor

        return Supervisor(settings, host, port, args.workers).run()
    try:
        return _serve_one(args, settings, host, port)
    except KeyboardInterrupt:  # before uvicorn took the signals over: still a clean stop
        print("ledger: stopped", file=sys.stderr)
        return 0


def _serve_one(args: argparse.Namespace, settings: Settings, host: str, port: int) -> int:
    import uvicorn

    from ledger.api.app import create_app
    from ledger.logs import log_config

    # What can be checked is checked before serving, so a mistake is one line, not a
    # traceback from inside the app's start-up: the port, the keys, and the database (a
    # server that cannot reach it refuses to start instead of serving 503s forever).
    sock = inherited_socket(args.fd) if args.fd is not None else listening_socket(host, port)
    load_keys(settings, create=True)
    url = resolve_database_url(settings)
    wait_for_database(url, settings.database_wait_seconds)
    if args.fd is None:
        log.info("data directory %s", settings.data_dir.resolve())
    app = create_app(settings, database_url=url)
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
        http=bounded_http(settings.header_timeout_seconds, settings.max_header_bytes),
        ws=AnsweringWebSocketProtocol,
        ws_per_message_deflate=settings.ws_deflate,
        log_config=log_config(settings.log_format, settings.log_level),
        access_log=False,
        timeout_graceful_shutdown=10,
        proxy_headers=True,
    )
    # uvicorn re-raises SIGINT (as KeyboardInterrupt) and SIGTERM after its graceful
    # shutdown; ending normally then lets atexit handlers run (the embedded PostgreSQL
    # stops with its last user), and a stop is one line, not a traceback.
    signal.signal(signal.SIGTERM, _stopped)
    with contextlib.suppress(KeyboardInterrupt, Stopped):
        Server(config).run(sockets=[sock])
    if args.fd is None:  # a supervisor's worker leaves the word to the supervisor
        print("ledger: stopped", file=sys.stderr)
    return 0
