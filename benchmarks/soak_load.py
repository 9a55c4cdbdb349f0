"""The soak's client side: many resuming followers, idempotent appenders, a terminal burst.

Run by the load generator (``python -m benchmarks.loadgen soak ARGS_JSON``) for
``benchmarks.soak``. Every follower keeps the last id it saw and reconnects with
``Last-Event-ID`` whenever its stream is cut, the way a browser does; every append carries
an ``Idempotency-Key`` and is retried with it until it is acknowledged. What each follower
received is counted exactly (in order, twice, skipped), so the driver can compare it with
the table.

The protocol with the driver: once every follower has its first stream open, one line
``{"ready": N}`` goes to stdout; the driver answers on stdin with ``{"fault_at": T}`` (the
wall-clock time it injected its fault, or null) whenever it has done so. The appenders run
for ``seconds`` after "ready"; then every session gets its terminal event at once (the
burst), and the run ends when every follower has seen its session end.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.loadgen import Http, Refused, open_stream, percentile, recorded_at

TERMINAL = (b"event: complete", b"event: error")
ACKNOWLEDGED = (200, 201)
# After the burst, how long the followers may take to see their sessions end.
FINISH_TIMEOUT = 120.0


@dataclass
class Follower:
    session: str
    last: int = 0
    received: int = 0
    doubled: int = 0
    skipped: int = 0
    resets: int = 0
    cuts: list[float] = field(default_factory=list)  # when a stream ended early
    resumed: list[float] = field(default_factory=list)  # when the next one opened
    refused: int = 0  # opens answered other than 200 (the server shedding a storm: 503)
    done: bool = False

    def take(self, event_id: int) -> None:
        if event_id <= self.last:
            self.doubled += 1
            return
        self.skipped += event_id - self.last - 1
        self.received += 1
        self.last = event_id


@dataclass
class Lags:
    all: list[float] = field(default_factory=list)
    terminal: list[float] = field(default_factory=list)

    def take(self, data: bytes, terminal: bool) -> None:
        lag = time.time() - recorded_at(data)
        self.all.append(lag)
        if terminal:
            self.terminal.append(lag)


def summary_ms(values: list[float]) -> dict[str, float | None]:
    millis = [v * 1000 for v in values]
    return {
        "p50_ms": round(statistics.median(millis), 2) if millis else None,
        "p99_ms": round(percentile(millis, 0.99), 2) if millis else None,
        "max_ms": round(max(millis), 2) if millis else None,
    }


async def follow(
    host: str, port: int, token: str, follower: Follower, lags: Lags, opened: asyncio.Event
) -> None:
    path = f"/api/sessions/{follower.session}/status/stream"
    first = True
    retry = 1.0
    refusals = 0
    while not follower.done:
        try:
            reader, writer = await open_stream(
                host, port, path, token, f"Last-Event-ID: {follower.last}\r\n"
            )
        except (OSError, Refused, IndexError) as exc:
            # As a well-behaved client: the server's Retry-After, else backoff with jitter.
            asked = exc.retry_after if isinstance(exc, Refused) else None
            follower.refused += isinstance(exc, Refused)
            refusals += 1
            await asyncio.sleep(asked or random.uniform(0, min(30.0, retry * 2**refusals)))
            continue
        refusals = 0
        if first:
            first = False
            opened.set()
        elif follower.cuts and len(follower.resumed) < len(follower.cuts):
            follower.resumed.append(time.time())
        try:
            await read_frames(reader, follower, lags)
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
        if not follower.done:
            follower.cuts.append(time.time())
            await asyncio.sleep(retry * random.uniform(0.5, 1.5))


async def read_frames(reader: asyncio.StreamReader, follower: Follower, lags: Lags) -> None:
    """Until the stream ends: count each event frame, and stop after the terminal one."""
    name = data = b""
    event_id: int | None = None
    while True:
        line = await reader.readline()
        if not line:
            return
        line = line.rstrip(b"\n")
        if line:
            if line.startswith(b"event: "):
                name = line
            elif line.startswith(b"data: "):
                data = line
            elif line.startswith(b"id: "):
                event_id = int(line[4:])
            continue
        if name == b"event: reset":
            follower.resets += 1
        elif data and event_id is not None:
            terminal = name in TERMINAL
            if event_id > follower.last:
                lags.take(data, terminal)
            follower.take(event_id)
            if terminal:
                follower.done = True
                return
        name, data, event_id = b"", b"", None


@dataclass
class Appends:
    acknowledged: dict[str, int] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    retries: int = 0
    refused: int = 0

    async def post(self, http: Http, session: str, body: bytes, key: str) -> None:
        """Until acknowledged: a retry with the same key is stored once (or replayed)."""
        while True:
            try:
                status, _ = await http.call(
                    "POST", f"/api/sessions/{session}/events", body, f"Idempotency-Key: {key}\r\n"
                )
            except (OSError, IndexError, ValueError, asyncio.IncompleteReadError):
                http.close()
                status = 0
            if status in ACKNOWLEDGED:
                self.acknowledged[session] = self.acknowledged.get(session, 0) + 1
                self.times.append(time.time())
                return
            if 400 <= status < 500 and status != 429:
                self.refused += 1  # a client error would be the benchmark's bug: reported
                return
            self.retries += 1
            await asyncio.sleep(0.2)


async def soak(
    host: str,
    port: int,
    token: str,
    sessions: list[str],
    streams: int,
    writers: int,
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    lags = Lags()
    opening = time.monotonic()
    followers = [Follower(sessions[i % len(sessions)]) for i in range(streams)]
    opened = [asyncio.Event() for _ in followers]
    tasks = [
        asyncio.create_task(follow(host, port, token, f, lags, e))
        for f, e in zip(followers, opened, strict=True)
    ]
    for event in opened:
        await event.wait()
    all_open_after = time.monotonic() - opening
    refused_opening = sum(f.refused for f in followers)
    print(json.dumps({"ready": len(followers), "after_s": round(all_open_after, 1)}), flush=True)
    fault = asyncio.create_task(asyncio.to_thread(sys.stdin.readline))

    appends = Appends()
    progress = json.dumps({"status": "transcribing", "progress": 50}).encode()
    started = time.monotonic()
    steady_from = time.time()

    async def steady(index: int) -> None:
        http = Http(host, port, token)
        sent = 0
        while time.monotonic() - started < seconds:
            session = sessions[(index + sent * writers) % len(sessions)]
            await appends.post(http, session, progress, f"soak-{index}-{sent}")
            sent += 1
            due = started + (sent * writers) / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        http.close()

    await asyncio.gather(*(steady(i) for i in range(writers)))
    steady_appends = sum(appends.acknowledged.values())
    ack_times = sorted(appends.times)

    burst_started = time.monotonic()
    processed = json.dumps({"status": "processed", "progress": 100}).encode()

    async def burst(index: int) -> None:
        http = Http(host, port, token)
        for session in sessions[index::writers]:
            await appends.post(http, session, processed, f"soak-end-{session}")
        http.close()

    await asyncio.gather(*(burst(i) for i in range(writers)))
    burst_seconds = time.monotonic() - burst_started
    finished = await asyncio.wait(tasks, timeout=FINISH_TIMEOUT)
    for task in finished[1]:
        task.cancel()

    fault_line = await fault
    fault_at: float | None = json.loads(fault_line or "{}").get("fault_at")
    gaps = [b - a for a, b in itertools.pairwise(ack_times)]
    return {
        "streams": len(followers),
        "sessions": len(sessions),
        "all_open_after_s": round(all_open_after, 2),
        "opens_refused_at_start": refused_opening,
        "opens_refused": sum(f.refused for f in followers),
        "steady_seconds": seconds,
        "steady_appends": steady_appends,
        "burst_appends": len(sessions),
        "burst_seconds": round(burst_seconds, 2),
        "append_retries": appends.retries,
        "append_refused": appends.refused,
        "acknowledged": appends.acknowledged,
        "longest_append_gap_s": round(max(gaps), 3) if gaps else None,
        "lag": summary_ms(lags.all),
        "terminal_lag": summary_ms(lags.terminal),
        "followers": [
            [f.session, f.received, f.doubled, f.skipped, f.resets, f.last, f.done]
            for f in followers
        ],
        "recovery": recovery(followers, fault_at, steady_from),
    }


def recovery(followers: list[Follower], fault_at: float | None, since: float) -> dict[str, Any]:
    """How many streams the fault cut, and how long until the last of them was back."""
    if fault_at is None:
        cut = sum(len(f.cuts) for f in followers)
        return {"fault_at": None, "streams_cut": cut, "all_resumed_after_s": None}
    cut, back = 0, 0.0
    for f in followers:
        for index, when in enumerate(f.cuts):
            if when < fault_at:
                continue
            cut += 1
            if index < len(f.resumed):
                back = max(back, f.resumed[index] - fault_at)
    return {
        "fault_after_s": round(fault_at - since, 2),
        "streams_cut": cut,
        "all_resumed_after_s": round(back, 2) if cut else None,
    }
