"""Which files to read, and what each document in them is.

A document is one of: a Kubernetes object (``apiVersion`` and ``kind`` are
non-empty strings) that gpumix checks; a kustomize file (a kustomization, or a
patch or configuration a kustomization names), recognised and never judged or
edited; or anything else (Helm values, ``Chart.yaml``, compose files, CI
workflows, lists, scalars), skipped with a note.  An object gpumix judges but
cannot read is an input error naming the file, the line and the field.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gpumix.check.yamlload import YamlProblem, iter_nodes, line_of, load_one, problem_of
from gpumix.kube.objects import AUTOSCALER_KINDS, View, autoscaler_info, view_of
from gpumix.kube.policy import Policy

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
STDIN = "-"
MAX_UP = 8
Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Note:
    """A skipped document, or an input error: where and why."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}:{self.line}: {self.message}"
            if self.line
            else (f"{self.file}: {self.message}")
        )

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "message": self.message}


@dataclass(frozen=True, slots=True)
class Entry:
    """One Kubernetes object read from a file: what the rules need and where it is."""

    kind: str
    namespace: str
    name: str
    file: str
    line: int
    unit: str
    """The directory (or rendered input) the object comes from: the context of a copy."""
    doc: int
    item: int | None
    view: View | None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class FileResult:
    entries: list[Entry] = field(default_factory=list)
    skipped: list[Note] = field(default_factory=list)
    errors: list[Note] = field(default_factory=list)


def read_file(path: str) -> str:
    """The text of a file as it is (line endings kept: ``--fix`` writes them back)."""
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


# -- which files ---------------------------------------------------------------------
def excluded(path: str, root: str, patterns: Iterable[str]) -> bool:
    """``--exclude`` globs match the path as given, the path below the ``-f``
    directory, or the base name (``*`` also matches ``/``)."""
    rel = os.path.relpath(path, root) if root else path
    candidates = {path, rel, os.path.basename(path), path.removeprefix("./")}
    return any(fnmatch.fnmatchcase(c, p.rstrip("/")) for p in patterns for c in candidates)


def is_helm_chart(directory: Path) -> bool:
    return (directory / "Chart.yaml").is_file()


def walk(arg: str, exclude: list[str], notes: list[Note]) -> Iterator[str]:
    """The manifest files under a directory, sorted; hidden directories, excluded paths
    and Helm chart templates (which are not YAML until rendered) are left out."""
    for root, dirs, files in os.walk(arg):
        here = Path(root)
        kept = []
        for d in sorted(dirs):
            sub = str(here / d)
            if d.startswith(".") or excluded(sub, arg, exclude):
                continue
            if d == "templates" and is_helm_chart(here):
                notes.append(
                    Note(
                        sub,
                        0,
                        "Helm chart templates skipped: render them and check the "
                        "output (helm template CHART | gpumix check -f -)",
                    )
                )
                continue
            kept.append(d)
        dirs[:] = kept
        for name in sorted(files):
            path = str(here / name)
            if (name.endswith(MANIFEST_SUFFIXES) or name in KUSTOMIZATION_NAMES) and not (
                excluded(path, arg, exclude)
            ):
                yield path


# -- kustomize -----------------------------------------------------------------------
def _paths_named(kustomization: Mapping[str, Any]) -> Iterator[str]:
    """The files a kustomization names that are not complete objects: patches,
    replacements, transformer/generator/validator configs, configurations."""
    for key in ("patchesStrategicMerge",):
        for item in _list(kustomization.get(key)):
            if isinstance(item, str) and "\n" not in item:
                yield item
    for key in ("patches", "patchesJson6902", "replacements"):
        for item in _list(kustomization.get(key)):
            if isinstance(item, Mapping) and isinstance(item.get("path"), str):
                yield item["path"]
            elif isinstance(item, str) and "\n" not in item and key != "patches":
                yield item
    for key in ("transformers", "generators", "validators", "configurations", "crds"):
        for item in _list(kustomization.get(key)):
            if isinstance(item, str) and "\n" not in item:
                yield item
    for chart in _list(kustomization.get("helmCharts")):
        if isinstance(chart, Mapping) and isinstance(chart.get("valuesFile"), str):
            yield chart["valuesFile"]


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def is_kustomization_file(path: str) -> bool:
    return os.path.basename(path) in KUSTOMIZATION_NAMES


@dataclass
class Kustomize:
    """The kustomize files of the inputs: kustomizations and what they name."""

    roles: dict[str, str] = field(default_factory=dict)
    """Resolved path -> 'a kustomize patch named by DIR/kustomization.yaml'."""
    errors: list[Note] = field(default_factory=list)
    _read: set[str] = field(default_factory=set)

    def learn_directory(self, directory: str) -> None:
        for name in KUSTOMIZATION_NAMES:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                self.learn(path)

    def learn(self, path: str) -> None:
        resolved = os.path.realpath(path)
        if resolved in self._read:
            return
        self._read.add(resolved)
        try:
            data = load_one(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError):
            return  # reported when the file itself is read
        if not isinstance(data, Mapping):
            return
        base = os.path.dirname(resolved)
        for named in _paths_named(data):
            target = os.path.realpath(os.path.join(base, named))
            self.roles.setdefault(target, f"named by {path} as a patch or configuration")

    def role(self, path: str) -> str | None:
        return self.roles.get(os.path.realpath(path))


def prescan(args: list[str], exclude: list[str]) -> Kustomize:
    """Find the kustomizations of the inputs before any file is judged, so a patch read
    before the kustomization that names it is still recognised."""
    k = Kustomize()
    for arg in args:
        if arg == STDIN:
            continue
        p = Path(arg)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for name in files:
                    if name in KUSTOMIZATION_NAMES and not excluded(
                        os.path.join(root, name), arg, exclude
                    ):
                        k.learn(os.path.join(root, name))
        elif p.is_file():
            # a patch may sit below the kustomization that names it (patches/x.yaml):
            # look up to the repository root
            for directory in [p.resolve().parent, *p.resolve().parent.parents][:MAX_UP]:
                k.learn_directory(str(directory))
                if (directory / ".git").exists():
                    break
    return k


# -- what a document is ----------------------------------------------------------------
JUDGED_KINDS = {"Deployment", "Node", "Namespace", *AUTOSCALER_KINDS}


def is_judged(api_version: str, kind: str) -> bool:
    if kind == "Deployment":
        return api_version.startswith("apps/")
    if kind in ("Node", "Namespace"):
        return api_version == "v1"
    return autoscaler_info(api_version, kind) is not None


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def not_an_object(data: Mapping[str, Any]) -> str | None:
    """Why a mapping is not a Kubernetes object, or None when it is one."""
    api_version, kind = data.get("apiVersion"), data.get("kind")
    if api_version is None and kind is None:
        return "not a Kubernetes object (no apiVersion and kind)"
    problems = []
    for key, value in (("apiVersion", api_version), ("kind", kind)):
        if not isinstance(value, str) or not value:
            what = "missing" if value is None else "empty" if value == "" else _describe(value)
            problems.append(f"{key} is {what}")
    if problems:
        return f"not a Kubernetes object ({', '.join(problems)})"
    return None


def _label_problems(value: object, path: Path_) -> list[tuple[Path_, str]]:
    if value is None:
        return []
    if not isinstance(value, Mapping):
        return [(path, f"must be a mapping of strings, got {_describe(value)}")]
    return [
        ((*path, str(k)), f"label values must be strings, got {_describe(v)} (quote it)")
        for k, v in value.items()
        if not isinstance(v, str)
    ]


def _mapping_problem(data: Mapping[str, Any], path: Path_) -> tuple[Path_, str] | None:
    node: object = data
    for step in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(step)
    if node is None or isinstance(node, Mapping):
        return None
    return (path, f"must be a mapping, got {_describe(node)}")


def field_problems(obj: Mapping[str, Any]) -> list[tuple[Path_, str]]:
    """The fields of an object gpumix judges that it cannot read (the API server would
    refuse them too): wrong types where the rules look."""
    problems: list[tuple[Path_, str]] = []
    metadata = obj.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        return [(("metadata",), f"must be a mapping, got {_describe(metadata)}")]
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        problems.append(((("metadata", "name")), "is required (a non-empty string)"))
    if isinstance(metadata, Mapping):
        ns = metadata.get("namespace")
        if ns is not None and not isinstance(ns, str):
            problems.append((("metadata", "namespace"), f"must be a string, got {_describe(ns)}"))
        problems += _label_problems(metadata.get("labels"), ("metadata", "labels"))
    kind = str(obj.get("kind"))
    paths: list[Path_] = [("spec",)]
    if kind == "Deployment":
        paths += [("spec", "selector"), ("spec", "template"), ("spec", "template", "metadata")]
    elif kind in AUTOSCALER_KINDS:
        paths += [("spec", "scaleTargetRef")]
    for path in paths:
        problem = _mapping_problem(obj, path)
        if problem is not None:
            return [*problems, problem]
    spec = obj.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    if kind == "Deployment":
        selector = spec.get("selector")
        if isinstance(selector, Mapping):
            problems += _label_problems(
                selector.get("matchLabels"), ("spec", "selector", "matchLabels")
            )
        template = spec.get("template")
        tmeta = template.get("metadata") if isinstance(template, Mapping) else None
        if isinstance(tmeta, Mapping):
            problems += _label_problems(
                tmeta.get("labels"), ("spec", "template", "metadata", "labels")
            )
    elif kind in AUTOSCALER_KINDS:
        info = autoscaler_info(str(obj.get("apiVersion")), kind)
        for key in (info.ceiling_field, info.floor_field) if info else ():
            value = spec.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                problems.append((("spec", key), f"must be an integer, got {_describe(value)}"))
    return problems


class Reader:
    """Reads files into entries; knows the kustomize files and the policy."""

    def __init__(self, policy: Policy, kustomize: Kustomize, strict: bool) -> None:
        self.policy = policy
        self.kustomize = kustomize
        self.strict = strict

    def read_text(self, name: str, text: str, unit: str) -> FileResult:
        result = FileResult()
        role = self.kustomize.role(name) if name != STDIN else None
        if is_kustomization_file(name):
            result.skipped.append(Note(name, 0, "kustomization file (not an object)"))
            return result
        if role is not None:
            result.skipped.append(Note(name, 0, f"kustomize file, {role}: not judged or edited"))
            return result
        try:
            # one document at a time: its nodes are dropped once its entries are made
            for index, (node, data) in enumerate(iter_nodes(text)):
                self._document(name, unit, index, node, data, result)
        except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:
            result = FileResult()
            if name.endswith(".json"):
                self._read_json(name, text, unit, result)
            else:
                self._read_chunks(name, text, unit, result, exc)
        return result

    def _read_json(self, name: str, text: str, unit: str, result: FileResult) -> None:
        """JSON that YAML does not read (tabs, for one): read as JSON, lines unknown
        inside the document."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            result.errors.append(Note(name, exc.lineno, f"invalid JSON: {exc.msg}"))
            return
        node = yaml.ScalarNode("tag:yaml.org,2002:null", "", _mark(0, 0))
        self._document(name, unit, 0, node, data, result)

    def _read_chunks(
        self, name: str, text: str, unit: str, result: FileResult, first: Exception
    ) -> None:
        """The stream did not parse: read each ``---`` chunk on its own, so the error
        names its line and the other documents are still checked."""
        offset = 0
        index = 0
        for chunk in split_chunks(text):
            try:
                for node, data in iter_nodes(chunk):
                    _shift(node, offset)
                    self._document(name, unit, index, node, data, result)
                    index += 1
            except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:
                p = (
                    problem_of(exc, offset)
                    if isinstance(exc, yaml.YAMLError)
                    else (YamlProblem(offset + 1, f"invalid YAML: {exc}"))
                )
                result.errors.append(Note(name, p.line, p.message))
                index += 1
            offset += chunk.count("\n")
        if not result.errors:  # the chunks parsed where the stream did not
            p = (
                problem_of(first)
                if isinstance(first, yaml.YAMLError)
                else YamlProblem(0, str(first))
            )
            result.errors.append(Note(name, p.line, p.message))

    def _document(
        self, name: str, unit: str, index: int, node: yaml.Node, data: Any, result: FileResult
    ) -> None:
        line = node.start_mark.line + 1
        if data is None:
            return
        if not isinstance(data, Mapping):
            self._skip(result, Note(name, line, f"not a Kubernetes object ({_describe(data)})"))
            return
        reason = not_an_object(data)
        if reason is not None:
            self._skip(result, Note(name, line, reason))
            return
        if data["kind"] in KUSTOMIZE_KINDS and data["apiVersion"].startswith("kustomize."):
            result.skipped.append(Note(name, line, "kustomization (not an object)"))
            return
        if data["kind"] == "List" or (
            data["kind"].endswith("List") and isinstance(data.get("items"), list)
        ):
            items = data.get("items")
            if not isinstance(items, list):
                result.errors.append(
                    Note(name, line_of(node, ("items",)), "field items: must be a list")
                )
                return
            seq = _value_node(node, "items")
            for i, item in enumerate(items):
                item_node = seq.value[i] if isinstance(seq, yaml.SequenceNode) else node
                self._object(name, unit, index, i, item_node, item, result, f"items[{i}].")
            return
        self._object(name, unit, index, None, node, data, result, "")

    def _object(
        self,
        name: str,
        unit: str,
        index: int,
        item: int | None,
        node: yaml.Node,
        data: Any,
        result: FileResult,
        prefix: str,
    ) -> None:
        line = node.start_mark.line + 1
        if not isinstance(data, Mapping):
            self._skip(
                result, Note(name, line, f"{prefix}not a Kubernetes object ({_describe(data)})")
            )
            return
        reason = not_an_object(data)
        if reason is not None:
            self._skip(result, Note(name, line, prefix + reason))
            return
        api_version, kind = data["apiVersion"], data["kind"]
        judged = is_judged(api_version, kind)
        problems = field_problems(data)
        if problems and not judged:
            # other kinds: only the name matters (to see the same object twice)
            problems = [p for p in problems if p[0][0] == "metadata"]
            if problems:
                self._skip(
                    result,
                    Note(
                        name,
                        line,
                        f"{kind} without a readable {'.'.join(map(str, problems[0][0]))}"
                        " (not an object the API server would accept)",
                    ),
                )
                return
        if problems:
            path, message = problems[0]
            where = ".".join(str(p) for p in path)
            metadata = data.get("metadata")
            obj_name = metadata.get("name") if isinstance(metadata, Mapping) else None
            what = f"{kind} {obj_name}" if isinstance(obj_name, str) and obj_name else kind
            result.errors.append(
                Note(name, line_of(node, path), f"{what}: field {prefix}{where}: {message}")
            )
            return
        view = view_of(data, self.policy) if judged else None
        metadata = data.get("metadata") or {}
        ns = metadata.get("namespace") or "default"
        result.entries.append(
            Entry(kind, ns, metadata["name"], name, line, unit, index, item, view)
        )

    def _skip(self, result: FileResult, note: Note) -> None:
        if self.strict:
            result.errors.append(note)
        else:
            result.skipped.append(note)


def _value_node(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if getattr(k, "value", None) == key:
                found: yaml.Node = v
                return found
    return None


def _mark(line: int, column: int) -> yaml.Mark:
    return yaml.Mark("", 0, line, column, "", 0)


def _shift(node: yaml.Node, lines: int) -> None:
    """Make a chunk's marks count from the file (only the lines are used)."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        n.start_mark = _mark(n.start_mark.line + lines, n.start_mark.column)
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                stack += [k, v]
        elif isinstance(n, yaml.SequenceNode):
            stack += list(n.value)


def split_chunks(text: str) -> list[str]:
    """Split on ``---`` lines; every chunk keeps its lines so line counts add up."""
    chunks: list[str] = []
    current: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("---") and (len(line.rstrip("\r\n")) == 3 or line[3] in " \t\r\n"):
            chunks.append("".join(current))
            current = [line]
        else:
            current.append(line)
    chunks.append("".join(current))
    return chunks
