"""A small Dockerfile reader for the ops tests: instructions, stages, and what a stage inherits.

Enough of the format for this project's Dockerfile (line continuations, comments, `FROM x AS y`,
`--flag=value` options, exec-form JSON arguments), so the tests can check the image's structure
without a Docker engine. Not a general parser: no heredocs, no ARG substitution.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_FLAG = re.compile(r"^--([a-z-]+)(?:=(\S*))?\s*")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: RUN, COPY, ...
    args: str  # the text after the keyword and its --flags, continuations joined
    flags: dict[str, str]
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array form (`["embedder", "serve"]`), or None for the shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value

    def words(self) -> list[str]:
        return shlex.split(self.args)


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Continuation lines joined; comment and blank lines dropped (also inside a continuation)."""
    lines: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        lines.append((start, " ".join(pending)))
        pending = []
    assert not pending, "Dockerfile ends inside a line continuation"
    return lines


def _instruction(line: int, text: str) -> Instruction:
    keyword, _, rest = text.partition(" ")
    flags: dict[str, str] = {}
    rest = rest.strip()
    while match := _FLAG.match(rest):
        flags[match.group(1)] = match.group(2) or ""
        rest = rest[match.end() :]
    return Instruction(keyword.upper(), rest, flags, line)


class Dockerfile:
    def __init__(self, text: str) -> None:
        self.stages: list[Stage] = []
        self.global_args: list[Instruction] = []
        for line, text_line in _logical_lines(text):
            instruction = _instruction(line, text_line)
            if instruction.keyword == "FROM":
                words = instruction.words()
                name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
                self.stages.append(Stage(name, words[0]))
            elif not self.stages:
                self.global_args.append(instruction)
            else:
                self.stages[-1].instructions.append(instruction)

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        return cls(path.read_text(encoding="utf-8"))

    def stage(self, name: str) -> Stage:
        matches = [s for s in self.stages if s.name == name]
        assert matches, f"no stage named {name!r}: {[s.name for s in self.stages]}"
        return matches[0]

    def chain(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, nearest first."""
        names = {s.name for s in self.stages}
        chain = [self.stage(name)]
        while chain[-1].base in names:
            chain.append(self.stage(chain[-1].base))
        return chain

    def effective(self, name: str, keyword: str) -> list[Instruction]:
        """Every `keyword` instruction the stage runs or inherits, in build order."""
        return [i for stage in reversed(self.chain(name)) for i in stage.all(keyword)]

    def last(self, name: str, keyword: str) -> Instruction | None:
        """The instruction in force (USER, ENTRYPOINT, CMD, HEALTHCHECK...): the last one."""
        found = self.effective(name, keyword)
        return found[-1] if found else None

    def env(self, name: str) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.effective(name, "ENV"):
            for word in instruction.words():
                key, sep, value = word.partition("=")
                assert sep, f"line {instruction.line}: use ENV key=value"
                values[key] = value
        return values
