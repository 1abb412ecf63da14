"""A small Dockerfile reader for the ops tests: instructions, stages, and what a stage inherits.

Enough of the format for this project's Dockerfile (line continuations, comments, `FROM x AS y`,
`--flag=value` options, repeated `--mount`s, exec-form JSON arguments), so the tests can check the
image's structure without a Docker engine. Not a general parser: no heredocs, no ARG substitution.

It also replays the builder and runtime stages' pip lines on this machine (`replay_builder`,
`replay_install`), for tests/ops/test_dockerfile.py and tools/install_size.py.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

_FLAG = re.compile(r"^--([a-z-]+)(?:=(\S*))?\s*")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: RUN, COPY, ...
    args: str  # the text after the keyword and its --flags, continuations joined
    flags: dict[str, str]  # the last value of each flag
    line: int
    mounts: tuple[dict[str, str], ...] = ()  # every --mount, its key=value list as a dict

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
    mounts: list[dict[str, str]] = []
    rest = rest.strip()
    while match := _FLAG.match(rest):
        flags[match.group(1)] = match.group(2) or ""
        if match.group(1) == "mount":
            mounts.append(dict(item.partition("=")[::2] for item in (match.group(2) or "").split(",")))
        rest = rest[match.end() :]
    return Instruction(keyword.upper(), rest, flags, line, tuple(mounts))


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


# ---- the builder and runtime stages, replayed without Docker -----------------------------------


def pip_runs(dockerfile: Dockerfile, stage: str) -> list[Instruction]:
    return [i for i in dockerfile.effective(stage, "RUN") if re.search(r"\bpip (install|wheel)\b", i.args)]


def commands(run: Instruction) -> list[list[str]]:
    """The commands of a shell-form RUN chained with `&&`, each as words."""
    found: list[list[str]] = [[]]
    for word in run.words():
        if word == "&&":
            found.append([])
        else:
            found[-1].append(word)
    return found


def replay_builder(dockerfile: Dockerfile, context: Path, work: Path) -> Path:
    """Copy the builder stage's context into `work/src`, run its `pip wheel`; returns the wheel dir."""
    src, wheels = work / "src", work / "wheels"
    src.mkdir()
    for copy in dockerfile.stage("builder").all("COPY"):
        assert "from" not in copy.flags
        for pattern in copy.words()[:-1]:
            for found in glob.glob(str(context / pattern)):
                path = Path(found)
                if path.is_dir():
                    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                    shutil.copytree(path, src / path.name, ignore=ignore)
                else:
                    shutil.copy2(path, src / path.name)
    (build,) = pip_runs(dockerfile, "builder")
    argv = [sys.executable, "-m", *(str(wheels) if w == "/wheels" else w for w in build.words())]
    done = subprocess.run(argv, check=False, cwd=src, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    return wheels


def venv_python(venv: Path, code: str) -> str:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    return done.stdout


def site_packages(venv: Path) -> Path:
    return Path(venv_python(venv, "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())


def fresh_venv(venv: Path) -> None:
    """A new venv, with the names its site-packages holds before any install (pip, setuptools)
    written to bootstrap.txt: the image's Python has its own, so they are not the install's."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    (venv / "bootstrap.txt").write_text("\n".join(sorted(p.name for p in site_packages(venv).iterdir())))


def pip(venv: Path, words: list[str], cwd: Path | None = None) -> None:
    assert words[0] == "pip", words
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", *words],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def replay_install(dockerfile: Dockerfile, stage: str, context: Path, wheels: Path, venv: Path) -> None:
    """Run the stage's `pip install` line into a fresh venv, its bind mounts mapped to this machine:
    the builder's /wheels to `wheels`, a build-context mount to its source under `context`."""
    (install,) = pip_runs(dockerfile, stage)
    targets: dict[str, Path] = {}
    for mount in install.mounts:
        assert mount.get("type") == "bind", mount
        if mount.get("from") == "builder":
            assert mount["source"] == "/wheels", mount
            targets[mount["target"]] = wheels
        else:
            assert "from" not in mount, mount
            targets[mount["target"]] = context / mount["source"]
    fresh_venv(venv)
    for command in commands(install):
        words: list[str] = []
        for word in command:
            target = next((t for t in targets if word == t or word.startswith(t + "/")), None)
            if target is None:
                words.append(word)
            else:
                words += sorted(glob.glob(str(targets[target]) + word[len(target) :]))
        pip(venv, words)


def added_bytes(venv: Path) -> dict[str, int]:
    """Bytes per top-level entry of site-packages, less what the venv held before the install."""
    site = site_packages(venv)
    bootstrap = set((venv / "bootstrap.txt").read_text().split())
    sizes: dict[str, int] = {}
    for root, _dirs, files in os.walk(site):
        top = Path(root).relative_to(site).parts[:1] or ("(top level)",)
        if top[0] in bootstrap:
            continue
        # Top-level files (a .pth, a one-module distribution) are counted under their own name.
        for name in files:
            key = name if top[0] == "(top level)" else top[0]
            if key in bootstrap:
                continue
            sizes[key] = sizes.get(key, 0) + os.lstat(os.path.join(root, name)).st_size
    return sizes
