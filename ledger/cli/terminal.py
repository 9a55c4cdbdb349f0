"""Terminal tools: ``ledger tail`` (watch a session) and ``ledger demo`` (make some happen)."""

from __future__ import annotations

import asyncio
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from ledger.client import Reporter, follow

console = Console()

REASONS = ("codec not supported", "speech model timed out", "GPU lost", "audio is silent")


def _bar(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        TextColumn("{task.completed:>3.0f}%"),
        console=console,
    )


async def tail(base_url: str, session_id: str, token: str, *, from_start: bool = False) -> int:
    """Follow a session with a progress bar; 0 when it is processed, 1 when it failed.

    Like ``tail -f``: the current state first, then what happens; ``from_start`` shows the
    whole history first.
    """
    outcome = 2
    with _bar(console) as bar:
        task = bar.add_task("waiting", total=100)
        start = 0 if from_start else None
        async for event in follow(base_url, session_id, token, last_event_id=start):
            when = event["recorded_at"][11:19]
            text = event["message"] or event["error"] or ""
            line = f"{when}  v{event['version']:<4} {event['status']:<13} {text}"
            bar.console.print(line, highlight=False, markup=False)
            bar.update(task, completed=event["progress"], description=event["status"])
            if event["type"] == "complete":
                outcome = 0
            elif event["type"] == "error":
                outcome = 1
    if outcome == 0:
        console.print("[green]processed[/green]")
    elif outcome == 1:
        console.print("[red]failed[/red]")
    return outcome


@dataclass(frozen=True)
class Plan:
    """One simulated pipeline: its steps, and where (if anywhere) it fails."""

    steps: list[tuple[str, int, str]]
    failure: str | None


def plan(rng: random.Random, fail_rate: float) -> Plan:
    steps: list[tuple[str, int, str]] = [("uploaded", 0, "audio received"), ("queued", 2, "")]
    minutes = rng.randint(20, 60)
    for done in range(0, minutes + 1, max(minutes // 5, 1)):
        steps.append(("transcribing", 5 + 50 * done // minutes, f"{done} of {minutes} min"))
    steps += [("diarizing", 60, "2 speakers"), ("diarizing", 70, ""), ("analyzing", 80, "")]
    steps.append(("analyzing", 95, "summary"))
    failure = None
    if rng.random() < fail_rate:
        cut = rng.randint(2, len(steps) - 1)
        steps = steps[:cut]
        failure = rng.choice(REASONS)
    return Plan(steps, failure)


def run_pipeline(reporter: Reporter, pipeline: Plan, pace: float, rng: random.Random) -> bool:
    """Append the plan's events with pauses; True when it ends processed."""
    for status, progress, message in pipeline.steps:
        reporter.report(status, progress, message=message or None)
        time.sleep(rng.uniform(0.3, 1.2) * pace)
    if pipeline.failure is not None:
        reporter.report("failed", error=pipeline.failure)
        return False
    reporter.report("processed", message="report ready")
    return True


def demo(
    base_url: str, token: str, *, sessions: int, pace: float, fail_rate: float, seed: int | None
) -> int:
    """Start ``sessions`` simulated pipelines at once and show them progress."""
    rng = random.Random(seed)
    pipelines = [(f"demo-patient-{i % 7 + 1}", plan(rng, fail_rate)) for i in range(sessions)]
    seeds = [rng.randrange(2**32) for _ in pipelines]
    with _bar(console) as bar, ThreadPoolExecutor(max_workers=max(sessions, 1)) as pool:

        def one(index: int) -> bool:
            patient, pipeline = pipelines[index]
            task = bar.add_task(patient, total=100)

            def moved(stored: list[dict[str, Any]]) -> None:
                bar.update(task, completed=float(stored[-1]["progress"]))

            with Reporter.register(base_url, token, patient, on_stored=moved) as reporter:
                bar.update(task, description=f"{reporter.session_id[:8]} {patient}")
                bar.console.print(f"session {reporter.session_id} for {patient}")
                return run_pipeline(reporter, pipeline, pace, random.Random(seeds[index]))

        outcomes = list(pool.map(one, range(len(pipelines))))
    console.print(f"{outcomes.count(True)} processed, {outcomes.count(False)} failed")
    return 0


def run_tail(base_url: str, session_id: str, token: str, *, from_start: bool) -> int:
    try:
        return asyncio.run(tail(base_url, session_id, token, from_start=from_start))
    except KeyboardInterrupt:
        return 130
