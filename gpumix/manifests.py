"""Reading and rewriting manifest files: multi-document YAML, JSON, ``kind: List``.

Each file is split into its documents on ``---`` lines, and each document is
parsed on its own with a round-trip YAML parser.  Documents that a fix does not
touch are written back byte for byte; changed ones keep their comments and key
order.  Errors name the file and the document index (0-based, as ``kubectl``
counts them) and never stop the other files from being read.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from gpumix.kube.objects import name_of, namespace_of

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"
_SEPARATOR = re.compile(r"^---(?:[ \t].*)?$")
_SKIPPED_KINDS = {"Kustomization", "Component"}


class InputError(Exception):
    """A file or document that cannot be read; the message says where."""

    def __init__(self, source: str, message: str, index: int | None = None) -> None:
        where = source if index is None else f"{source}: document {index}"
        super().__init__(f"{where}: {message}")
        self.source = source
        self.index = index


@dataclass
class Document:
    """One YAML document (or JSON file) and the objects in it."""

    source: str
    index: int
    text: str
    data: Any
    changed: bool = False

    def objects(self) -> Iterator[MutableMapping[str, Any]]:
        """The Kubernetes objects of this document (the items of a ``kind: List``)."""
        if not isinstance(self.data, MutableMapping):
            return
        if self.data.get("kind") == "List" or str(self.data.get("kind", "")).endswith("List"):
            items = self.data.get("items")
            for item in items if isinstance(items, list) else []:
                if isinstance(item, MutableMapping):
                    yield item
        else:
            yield self.data


@dataclass
class SourceFile:
    path: str
    is_json: bool
    documents: list[Document] = field(default_factory=list)
    separators: list[str] = field(default_factory=list)
    """``separators[i]`` is the text that preceded document ``i`` (``---`` lines)."""

    @property
    def changed(self) -> bool:
        return any(d.changed for d in self.documents)

    def render(self) -> str:
        out = io.StringIO()
        for sep, doc in zip(self.separators, self.documents, strict=True):
            out.write(sep)
            if not doc.changed:
                out.write(doc.text)
            elif self.is_json:
                out.write(json.dumps(doc.data, indent=2) + "\n")
            else:
                out.write(dump_yaml(doc.data, doc.text))
        return out.getvalue()


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096
    return y


def dump_yaml(data: Any, original: str) -> str:
    y = _yaml()
    mapping, sequence, offset = _indentation(original)
    y.indent(mapping=mapping, sequence=sequence, offset=offset)
    buf = io.StringIO()
    y.dump(data, buf)
    return buf.getvalue()


def _indentation(text: str) -> tuple[int, int, int]:
    """Guess the block-sequence style: ``- `` flush with its key, or indented."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for prev, line in itertools.pairwise(lines):
        if line.lstrip().startswith("- ") and prev.rstrip().endswith(":"):
            parent = len(prev) - len(prev.lstrip())
            dash = len(line) - len(line.lstrip())
            if dash == parent:
                return 2, 2, 0
            return 2, dash - parent + 2, dash - parent
    return 2, 2, 0


def _split_documents(text: str) -> tuple[list[str], list[str]]:
    seps: list[str] = []
    docs: list[str] = []
    current: list[str] = []
    pending_sep = ""
    for line in text.splitlines(keepends=True):
        if _SEPARATOR.match(line.rstrip("\r\n")):
            seps.append(pending_sep)
            docs.append("".join(current))
            rest = line[3:].strip()
            if rest and not rest.startswith("#"):
                # content on the marker line (`--- {a: 1}`) belongs to the document
                current, pending_sep = [line], ""
            else:
                current, pending_sep = [], line
        else:
            current.append(line)
    seps.append(pending_sep)
    docs.append("".join(current))
    # a leading '---' leaves an empty first chunk: fold it into the separator
    if len(docs) > 1 and not docs[0].strip():
        seps[1] = seps[0] + docs[0] + seps[1]
        seps, docs = seps[1:], docs[1:]
    return seps, docs


def parse_source(path: str, text: str) -> tuple[SourceFile, list[InputError]]:
    is_json = path.endswith(".json")
    source = SourceFile(path=path, is_json=is_json)
    errors: list[InputError] = []
    if is_json:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            return source, [InputError(path, f"invalid JSON at line {exc.lineno}: {exc.msg}", 0)]
        source.separators.append("")
        source.documents.append(Document(path, 0, text, data))
    else:
        seps, chunks = _split_documents(text)
        for index, chunk in enumerate(chunks):
            try:
                data = _yaml().load(chunk)
            except YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                line = f" (line {mark.line + 1} of the document)" if mark is not None else ""
                problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
                errors.append(InputError(path, f"invalid YAML{line}: {problem}", index))
                data = None
            except (ValueError, TypeError, RecursionError) as exc:
                # raised while constructing values, e.g. a timestamp like 2024-13-45
                errors.append(InputError(path, f"invalid YAML: {exc}", index))
                data = None
            source.separators.append(seps[index])
            source.documents.append(Document(path, index, chunk, data))
    for doc in source.documents:
        errors.extend(_validate(doc))
    return source, errors


def _validate(doc: Document) -> list[InputError]:
    if doc.data is None:
        return []
    if not isinstance(doc.data, MutableMapping):
        return [
            InputError(
                doc.source,
                f"expected a Kubernetes object (a mapping), got {type(doc.data).__name__}",
                doc.index,
            )
        ]
    kind = doc.data.get("kind")
    if isinstance(kind, str) and kind in _SKIPPED_KINDS:
        return []
    errors: list[InputError] = []
    items = list(doc.objects())
    if doc.data.get("kind") == "List" and not isinstance(doc.data.get("items", []), list):
        errors.append(InputError(doc.source, "field items: must be a list", doc.index))
    for i, obj in enumerate(items):
        where = f"items[{i}]." if obj is not doc.data else ""
        for key in ("apiVersion", "kind"):
            if not isinstance(obj.get(key), str) or not obj.get(key):
                errors.append(InputError(doc.source, f"field {where}{key}: is required", doc.index))
        metadata = obj.get("metadata")
        if metadata is not None and not isinstance(metadata, MutableMapping):
            errors.append(
                InputError(doc.source, f"field {where}metadata: must be a mapping", doc.index)
            )
        elif not name_of(obj) and obj.get("kind") != "List":
            errors.append(
                InputError(doc.source, f"field {where}metadata.name: is required", doc.index)
            )
    return errors


def iter_paths(arg: str) -> Iterator[str]:
    if arg == STDIN:
        yield STDIN
        return
    p = Path(arg)
    if p.is_dir():
        for root, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.endswith(MANIFEST_SUFFIXES):
                    yield str(Path(root) / name)
    else:
        yield arg


def load_sources(args: list[str], stdin: TextIO) -> tuple[list[SourceFile], list[InputError]]:
    """Read every file/dir/stdin argument; keep going past bad ones."""
    sources: list[SourceFile] = []
    errors: list[InputError] = []
    for arg in args:
        paths = list(iter_paths(arg))
        if not paths:
            errors.append(InputError(arg, "no manifest files (*.yaml, *.yml, *.json) found"))
        for path in paths:
            try:
                if path == STDIN:
                    text, name = stdin.read(), "<stdin>"
                else:
                    text, name = Path(path).read_text(encoding="utf-8"), path
            except FileNotFoundError:
                errors.append(InputError(path, "no such file or directory"))
                continue
            except (OSError, UnicodeDecodeError) as exc:
                errors.append(InputError(path, f"cannot read: {exc}"))
                continue
            source, errs = parse_source(name, text)
            sources.append(source)
            errors.extend(errs)
    return sources, errors


def is_kubernetes_object(obj: MutableMapping[str, Any]) -> bool:
    return (
        isinstance(obj.get("apiVersion"), str)
        and isinstance(obj.get("kind"), str)
        and obj.get("kind") not in _SKIPPED_KINDS
        and bool(name_of(obj))
    )


def object_key(obj: MutableMapping[str, Any]) -> tuple[str, str, str]:
    return (str(obj.get("kind")), namespace_of(obj), name_of(obj))
