"""The listening socket: bound once by ``serve`` (or the supervisor), handed to uvicorn."""

from __future__ import annotations

import socket

from ledger.errors import SetupError


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound and listening; a port that is taken is one line that says what to change."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SetupError(
            f"cannot listen on {host}:{port}: {exc.strerror} (set LEDGER_PORT or --port, or "
            "stop what listens there)"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def inherited_socket(fd: int) -> socket.socket:
    """The listening socket a supervisor handed down, with its real family.

    uvicorn's own ``fd`` option takes any descriptor for a UNIX socket, so the event loop
    never set TCP_NODELAY on the connections it accepted and every response waited for the
    client's delayed ACK (~40 ms: ``--workers 2`` served a third of one process's appends).
    """
    return socket.socket(fileno=fd)
