"""The benchmarks' load generator: raw asyncio sockets, in a process of its own.

``python -m benchmarks.loadgen SCENARIO ARGS_JSON`` prints one JSON object with its figures
and the CPU time it used, so a reader can tell whether the client was the bottleneck.
Streams are read over HTTP/1.0 (no chunked framing to undo); appends use keep-alive
HTTP/1.1 with pre-encoded bodies. Nothing here is clever: it is what any SSE client does,
minus the layers that would make the client, not the server, the thing measured.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

RECORDED = b'"recorded_at":"'
SESSION_STREAM = "/api/sessions/{}/status/stream"
SESSION_WS = "/api/sessions/{}/status/ws"
T = TypeVar("T")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def process_status() -> Iterator[tuple[int, dict[str, str]]]:
    """Every process's pid and ``/proc/PID/status`` fields (those gone meanwhile skipped)."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue  # gone meanwhile
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        yield int(status.parent.name), {k: v.strip() for k, v in fields.items()}


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the workers of ``ledger serve --workers``)."""
    return sorted(child for child, fields in process_status() if fields.get("PPid") == str(pid))


def family(pid: int) -> list[int]:
    """A process and its children."""
    return [pid, *children(pid)]


def rss_kib(pid: int) -> int:
    """Resident memory of a process and its children."""
    members = set(family(pid))
    return sum(
        int(fields.get("VmRSS", "0 kB").split()[0])
        for proc, fields in process_status()
        if proc in members
    )


def cpu_of(pid: int) -> float:
    """CPU seconds (user and system) used so far by a process and its children."""
    total = 0
    for proc in family(pid):
        try:
            fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def recorded_at(line: bytes) -> float:
    start = line.index(RECORDED) + len(RECORDED)
    return datetime.fromisoformat(line[start : line.index(b'"', start)].decode()).timestamp()


class Http:
    """One keep-alive HTTP/1.1 connection for request/response calls."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(
        self, method: str, path: str, body: bytes = b"", extra: str = ""
    ) -> tuple[int, bytes]:
        """``extra``: more header lines, each ending in CRLF."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
            f"{extra}Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        length, closing = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"connection" and value.strip().lower() == b"close":
                closing = True  # nginx ends a keep-alive connection after 1,000 requests
        payload = await self.reader.readexactly(length)
        if closing:
            self.close()
        return int(status_line.split()[1]), payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Refused(Exception):
    """A stream was answered with something other than 200 (and when to come back)."""

    def __init__(self, status: str, retry_after: float | None = None) -> None:
        super().__init__(status)
        self.retry_after = retry_after


def request_head(host: str, path: str, token: str, extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
        f"Authorization: Bearer {token}\r\n{extra}\r\n"
    ).encode()


def refusal(status_line: bytes, headers: list[bytes]) -> Refused | None:
    """None for a 200; else the refusal, with the server's ``Retry-After`` if it gave one."""
    if status_line.split()[1:2] == [b"200"]:
        return None
    if not status_line:
        # Closed before any answer: the listen backlog overflowed under a storm of opens
        # (twenty thousand at once); a browser's EventSource reconnects, and so does this.
        return Refused("connection closed", retry_after=1.0)
    retry_after: float | None = None
    for line in headers:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"retry-after" and value.strip().isdigit():
            retry_after = float(value.strip())
    return Refused(status_line.decode(errors="replace").strip() or "connection closed", retry_after)


async def open_stream(
    host: str, port: int, path: str, token: str, extra: str = ""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``extra``: more header lines, each ending in CRLF. Raises ``Refused`` unless 200."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request_head(host, path, token, extra))
    status_line = await reader.readline()
    headers = []
    while (line := await reader.readline()) not in (b"\r\n", b""):
        headers.append(line)
    refused = refusal(status_line, headers)
    if refused is not None:
        writer.close()
        raise refused
    return reader, writer


class Receipts(asyncio.Protocol):
    """A stream read by callback: each ``data:`` line is handed over with the time its
    bytes arrived, and no task wakes per read. At 10,000 receipts a second a task per
    stream reading line by line took 25.7% of a core, this 19.7%, and each receipt is
    stamped when it arrives, not when its task gets its turn."""

    def __init__(self, on_data: Callable[[bytes, float], None]) -> None:
        self.on_data = on_data
        self.opened: asyncio.Future[Refused | None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._head = b""
        self._partial = b""

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.opened.done():
            self._head += data
            if b"\r\n\r\n" not in self._head:
                return
            head, _, data = self._head.partition(b"\r\n\r\n")
            status_line, *headers = head.split(b"\r\n")
            self.opened.set_result(refusal(status_line, headers))
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.startswith(b"data: "):
                self.on_data(line, now)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            # Closed before the head: retried, as in refusal().
            self.opened.set_result(Refused("connection closed", retry_after=1.0))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_receipts(
    host: str, port: int, path: str, token: str, on_data: Callable[[bytes, float], None]
) -> Receipts:
    """A stream read by ``Receipts``. Raises ``Refused`` unless 200."""
    loop = asyncio.get_running_loop()
    transport, receipts = await loop.create_connection(lambda: Receipts(on_data), host, port)
    receipts.transport = transport
    transport.write(request_head(host, path, token))
    refused = await receipts.opened
    if refused is not None:
        receipts.close()
        raise refused
    return receipts


async def open_admitted(opening: Callable[[], Awaitable[T]], patience: float = 120.0) -> T:
    """Open a stream, coming back after the server's ``Retry-After`` while it sheds a storm
    of opens (LEDGER_MAX_OPENING_STREAMS), or after a second when the connection itself
    failed (ten thousand connecting at once overflow the listen backlog: reset or refused),
    as a well-behaved client (EventSource) does; for ``patience`` seconds, then the refusal
    or the error is raised (a server that never lets it in)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return await opening()
        except Refused as refused:
            if refused.retry_after is None or time.monotonic() > deadline:
                raise
            await asyncio.sleep(refused.retry_after)
        except (ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)


@dataclass(frozen=True)
class Readers:
    """``count`` streams opened at ``path`` with ``token``, each carrying every event of
    ``sessions``: session streams (one session each) and scoped streams (several) alike, so
    the scenarios count each reader's deliveries the same way."""

    path: str
    token: str
    sessions: list[str]
    count: int


def readers_of(
    raw: list[dict[str, Any]] | None, path: str, token: str, sessions: list[str], streams: int
) -> list[Readers]:
    """One entry per stream: the ``raw`` groups given, or by default ``streams`` session
    streams over ``sessions`` round robin; the groups interleaved, as round robin opens them."""
    if raw is None:
        spread = [
            streams // len(sessions) + (i < streams % len(sessions)) for i in range(len(sessions))
        ]
        groups = [
            Readers(path.format(s), token, [s], n) for s, n in zip(sessions, spread, strict=True)
        ]
    else:
        groups = [Readers(**group) for group in raw]
    widest = max(group.count for group in groups)
    return [group for k in range(widest) for group in groups if k < group.count]


# -- scenarios ------------------------------------------------------------------------------


async def appends(
    host: str, port: int, token: str, sessions: list[str], writers: int, seconds: float, batch: int
) -> dict[str, Any]:
    """``writers`` connections appending ``batch`` events per request for ``seconds``."""
    one = {"status": "transcribing", "progress": 50, "message": "bench"}
    body = json.dumps([one] * batch if batch > 1 else one).encode()
    counts = [0] * writers
    errors = [0] * writers
    waits: list[float] = []
    deadline = time.monotonic() + seconds

    async def writer(index: int) -> None:
        http = Http(host, port, token)
        path = f"/api/sessions/{sessions[index % len(sessions)]}/events"
        while time.monotonic() < deadline:
            sent = time.perf_counter()
            status, _ = await http.call("POST", path, body)
            waits.append(time.perf_counter() - sent)
            if status == 201:
                counts[index] += batch
            else:
                errors[index] += 1

    started = time.monotonic()
    await asyncio.gather(*(writer(i) for i in range(writers)))
    elapsed = time.monotonic() - started
    return {
        "events": sum(counts),
        "errors": sum(errors),
        "events_per_second": sum(counts) / elapsed,
        "p99_ms": percentile(waits, 0.99) * 1000 if waits else None,
    }


async def open_ws(host: str, port: int, path: str, token: str) -> ClientConnection:
    """A WebSocket stream, open once its handshake is answered (the server subscribes
    before it accepts); raises ``Refused`` for a refusal, as the SSE openers do."""
    try:
        return await connect(
            f"ws://{host}:{port}{path}",
            additional_headers={"Authorization": f"Bearer {token}"},
            ping_interval=None,  # idle means idle: no client pings
            max_queue=None,
        )
    except InvalidStatus as refused:
        retry_after = refused.response.headers.get("Retry-After", "")
        raise Refused(
            str(refused.response.status_code), float(retry_after) if retry_after.isdigit() else None
        ) from None


async def idle(
    host: str,
    port: int,
    token: str,
    sessions: list[str],
    hold: float,
    connections: int = 0,
    readers: list[dict[str, Any]] | None = None,
    transport: str = "sse",
) -> dict[str, Any]:
    """Open the streams (``connections`` session streams, or the ``readers`` given), each
    until its opening message (over WebSocket, ``transport="ws"``: until the handshake is
    answered); hold them, close."""
    closers: list[Callable[[], Any]] = []
    path = SESSION_WS if transport == "ws" else SESSION_STREAM
    for stream in readers_of(readers, path, token, sessions, connections):
        if transport == "ws":
            socket = await open_admitted(
                functools.partial(open_ws, host, port, stream.path, stream.token)
            )
            closers.append(socket.transport.abort)
            continue
        reader, writer = await open_admitted(
            functools.partial(open_stream, host, port, stream.path, stream.token)
        )
        await reader.readline()  # the retry hint: the subscription exists
        closers.append(writer.close)
    print(json.dumps({"ready": len(closers)}), flush=True)
    await asyncio.sleep(hold)
    for close in closers:
        close()
    return {"connections": len(closers)}


async def latency(
    host: str,
    port: int,
    token: str,
    sessions: list[str],
    rate: float,
    seconds: float,
    poll_interval: float | None,
    subscribers: int = 0,
    readers: list[dict[str, Any]] | None = None,
    target: str = "ledger",
    server_pid: int | None = None,
    keep_samples: bool = False,
    wait_for_go: bool = False,
    open_patience: float = 120.0,
) -> dict[str, Any]:
    """Subscribers over ``sessions`` (``subscribers`` session streams, or pollers every
    ``poll_interval``, or the ``readers`` given); one appender at ``rate`` appends/s, round
    robin over ``sessions``; latency = receipt - the event's recorded_at.

    ``target="nchan"`` drives nginx + Nchan the same way: channels named like the
    sessions, and the publisher stamps ``recorded_at`` itself just before it sends.
    """
    stream_path, publish_path = SESSION_STREAM, "/api/sessions/{}/events"
    if target == "nchan":
        stream_path, publish_path = "/sub/{}", "/pub/{}"
    followers = readers_of(readers, stream_path, token, sessions, subscribers)
    samples: list[float] = []
    received = [0] * len(followers)
    failed, unreadable = [0], [0]  # streams that did not open; data lines without a time
    why: dict[str, int] = {}  # what stopped the streams that did not open
    stop = asyncio.Event()
    since = [float("inf")]  # only events appended by this run count (not a stream's first state)

    def sample(index: int, line: bytes, now: float) -> None:
        try:
            appended = recorded_at(line)
        except ValueError:
            unreadable[0] += 1  # counted, not raised: raised, it would end the stream
            return
        if appended >= since[0]:
            samples.append(now - appended)
            received[index] += 1

    def arrived() -> None:
        ready.append(1)
        if len(ready) == len(followers):
            all_ready.set()

    async def streamer(index: int, stream: Readers) -> None:
        try:
            receipts = await open_admitted(
                functools.partial(
                    open_receipts,
                    host,
                    port,
                    stream.path,
                    stream.token,
                    functools.partial(sample, index),
                ),
                open_patience,
            )
        except (OSError, Refused) as exc:
            failed[0] += 1  # the run goes on; its reader is not complete
            reason = str(exc) if isinstance(exc, Refused) else type(exc).__name__
            why[reason] = why.get(reason, 0) + 1
            arrived()
            return
        arrived()
        try:
            await stop.wait()
        finally:
            receipts.close()

    async def poller(index: int, session: str, offset: float) -> None:
        http = Http(host, port, token)
        arrived()
        await asyncio.sleep(offset)
        seen = 0
        while not stop.is_set():
            status, body = await http.call("GET", f"/api/sessions/{session}/status")
            state = json.loads(body)
            if status == 200 and state["version"] > seen:
                if seen:
                    sample(index, body, time.time())
                seen = state["version"]
            await asyncio.sleep(poll_interval or 2.0)

    ready: list[int] = []
    all_ready = asyncio.Event()
    if poll_interval is None:
        tasks = [asyncio.create_task(streamer(i, f)) for i, f in enumerate(followers)]
    else:
        tasks = [
            asyncio.create_task(poller(i, f.sessions[0], poll_interval * i / len(followers)))
            for i, f in enumerate(followers)
        ]
    await all_ready.wait()
    if wait_for_go:
        # Several load generators share one load: each says when its streams are open and
        # appends once told (a line on its stdin) that every one of them is.
        print(json.dumps({"ready": len(ready)}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)
    await asyncio.sleep(1)
    http = Http(host, port, token)
    body = json.dumps({"status": "transcribing", "progress": 1}).encode()
    appended = dict.fromkeys(sessions, 0)
    sent = 0
    # The server's CPU from here on.
    cpu_before = cpu_of(server_pid) if server_pid else 0.0
    since[0] = time.time()
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if target == "nchan":
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            body = json.dumps(
                {"status": "transcribing", "recorded_at": stamp}, separators=(",", ":")
            ).encode()
        session = sessions[sent % len(sessions)]
        await http.call("POST", publish_path.format(session), body)
        appended[session] += 1
        sent += 1
        await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
    await asyncio.sleep(poll_interval or 1.0)
    server_cpu = cpu_of(server_pid) - cpu_before if server_pid else None
    stop.set()
    for task in tasks:
        task.cancel()
    millis = [s * 1000 for s in samples]
    # Every reader gets each event of its sessions (pollers may skip some).
    owed = [sum(appended[s] for s in f.sessions) for f in followers]
    streaming = poll_interval is None
    return {
        "appends": sent,
        "received": len(samples),
        "expected": sum(owed) if streaming else None,
        "readers": len(followers),
        "failed_opens": failed[0],
        "failed_open_reasons": why,
        "unreadable_lines": unreadable[0],
        "readers_complete": (
            sum(got == due for got, due in zip(received, owed, strict=True)) if streaming else None
        ),
        "p50_ms": statistics.median(millis) if millis else None,
        "p99_ms": percentile(millis, 0.99) if millis else None,
        "server_cpu_seconds": server_cpu,
        **({"samples_ms": millis} if keep_samples else {}),
    }


async def replay(host: str, port: int, token: str, session: str, count: int) -> dict[str, Any]:
    """Resume from 0 on a ``count``-event session; events per second delivered."""
    started = time.monotonic()
    path = f"/api/sessions/{session}/status/stream?last_event_id=0"
    reader, writer = await open_admitted(functools.partial(open_stream, host, port, path, token))
    received = 0
    final = f"id: {count}\n".encode()
    while True:
        line = await reader.readline()
        if not line:
            break
        if line.startswith(b"id: "):
            received += 1
            if line == final:
                break
    elapsed = time.monotonic() - started
    writer.close()
    return {"received": received, "events_per_second": received / elapsed}


def main(argv: list[str]) -> int:
    scenario, raw = argv[0], json.loads(argv[1])
    result_path = raw.pop("result_path", None)
    raise_fd_limit()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    before = cpu_seconds()
    started = time.monotonic()
    from benchmarks.soak_load import soak  # it builds on this module's clients

    runners: dict[str, Any] = {
        "appends": appends,
        "soak": soak,
        "idle": idle,
        "latency": latency,
        "replay": replay,
    }
    result = asyncio.run(runners[scenario](**raw))
    wall = time.monotonic() - started
    result["client_cpu_percent"] = round(100 * (cpu_seconds() - before) / wall, 1)
    if result_path is not None:
        # The soak's answer is half a megabyte: read through the pipe it came back cut short
        # (twice in six runs, with a worker killed), so it goes to a file.
        Path(result_path).write_text(json.dumps(result))
    else:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
