"""The README's fenced code blocks, found by the heading they stand under."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@dataclass(frozen=True)
class Block:
    heading: str
    lang: str
    text: str


def blocks() -> list[Block]:
    """Every fenced code block with the heading it stands under."""
    found: list[Block] = []
    heading = ""
    lines = iter(README.splitlines())
    for line in lines:
        if line.startswith("#") and not line.startswith("#!"):
            heading = line.lstrip("#").strip()
        elif line.startswith("```"):
            body: list[str] = []
            for inner in lines:
                if inner.startswith("```"):
                    break
                body.append(inner)
            found.append(Block(heading, line[3:].strip(), "\n".join(body) + "\n"))
    return found


def block(heading: str, lang: str, nth: int = 0) -> str:
    matching = [b.text for b in blocks() if b.heading == heading and b.lang == lang]
    assert len(matching) > nth, f"no {lang} block under {heading!r}"
    return matching[nth]
