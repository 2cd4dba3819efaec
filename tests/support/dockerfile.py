"""Read a Dockerfile into its build stages, for tests that check the image without Docker."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    """One ``FROM`` and the instructions under it, each as (KEYWORD, arguments)."""

    base: str
    name: str | None
    instructions: list[tuple[str, list[str]]] = field(default_factory=list)

    def args_of(self, keyword: str) -> list[list[str]]:
        return [args for kw, args in self.instructions if kw == keyword]

    def copies(self) -> list[tuple[str | None, list[str], str]]:
        """Every COPY as (``--from`` stage or None, sources, destination)."""
        found = []
        for args in self.args_of("COPY"):
            flags = [a for a in args if a.startswith("--")]
            *sources, destination = [a for a in args if not a.startswith("--")]
            origin = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            found.append((origin, sources, destination))
        return found


def instructions(path: Path) -> list[tuple[str, list[str]]]:
    return instructions_of(path.read_text())


def instructions_of(text: str) -> list[tuple[str, list[str]]]:
    """The instructions of a Dockerfile's text (tests parse altered copies without writing them)."""
    text = text.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, *args = line.split()
            found.append((keyword.upper(), args))
    return found


def stages(path: Path) -> list[Stage]:
    return stages_of(path.read_text())


def stages_of(text: str) -> list[Stage]:
    result: list[Stage] = []
    for keyword, args in instructions_of(text):
        if keyword == "FROM":
            name = args[2] if len(args) >= 3 and args[1].upper() == "AS" else None
            result.append(Stage(base=args[0], name=name))
        else:
            result[-1].instructions.append((keyword, args))
    return result
