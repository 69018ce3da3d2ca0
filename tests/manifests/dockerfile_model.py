"""A small reader of the project's Dockerfile: stages and their instructions.

Enough for the instructions the Dockerfile uses (ARG, FROM, ENV, WORKDIR, COPY, RUN,
LABEL, USER, EXPOSE, ENTRYPOINT, CMD), with line continuations, comments and ARG
defaults substituted in FROM.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from manifest_objects import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    flags: tuple[str, ...]  # --from=..., --mount=..., in order
    value: str  # the rest, continuations joined
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """ENV as written (``$VAR`` references are not expanded)."""
        out: dict[str, str] = {}
        for inst in self.all("ENV"):
            for word in shlex.split(inst.value):
                name, _, val = word.partition("=")
                out[name] = val
        return out

    def exec_form(self, keyword: str) -> list[str] | None:
        found = self.all(keyword)
        if not found:
            return None
        parsed = json.loads(found[-1].value)
        assert isinstance(parsed, list), f"{keyword} must use the exec (JSON) form"
        return [str(w) for w in parsed]


def _logical_lines(text: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # comment lines inside a continued instruction
        if not buf:
            start = number
        if line.endswith("\\"):
            buf.append(line[:-1])
            continue
        buf.append(line)
        out.append((start, " ".join(part.strip() for part in buf)))
        buf = []
    assert not buf, "Dockerfile ends inside a continued line"
    return out


def parse(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages in order)."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in _logical_lines(path.read_text(encoding="utf-8")):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        flags: list[str] = []
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
            continue
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(
                r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], words[0]
            )
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=alias))
            continue
        assert stages, f"line {number}: {keyword} before FROM"
        stages[-1].instructions.append(Instruction(keyword, tuple(flags), rest, number))
    return args, stages


def ignore_patterns(path: Path = DOCKERIGNORE) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def lineage(stages: list[Stage], stage: Stage) -> list[Stage]:
    """The stage and the earlier stages it is built FROM (``FROM <stage name>``), base first."""
    named = {s.name: s for s in stages if s.name}
    out = [stage]
    while out[0].base in named:
        out.insert(0, named[out[0].base])
    return out


def effective_env(stages: list[Stage], stage: Stage) -> dict[str, str]:
    """ENV of the stage with what it inherits, as written."""
    out: dict[str, str] = {}
    for s in lineage(stages, stage):
        out.update(s.env())
    return out


def effective(stages: list[Stage], stage: Stage, keyword: str) -> list[Instruction]:
    """The stage's instructions of a kind with those it inherits, in build order."""
    return [i for s in lineage(stages, stage) for i in s.all(keyword)]


def effective_exec_form(stages: list[Stage], stage: Stage, keyword: str) -> list[str] | None:
    """ENTRYPOINT or CMD in effect for the stage (the last one set along its lineage)."""
    for s in reversed(lineage(stages, stage)):
        found = s.exec_form(keyword)
        if found is not None:
            return found
    return None
