"""``--fix`` as text edits: add the lines a fix needs, leave every other byte alone.

A fix is applied (by the rules' own fix functions) to a copy of the object read
with the C loader; the difference between the copy and the original is a few
added keys or changed scalars, and each is written into the text next to the
node the parser located: a new line at the indentation of the mapping it joins
(block style), or ``, key: value`` before the closing brace (flow style).  The
result is parsed again and must equal the fixed objects, or the file is left
alone with an error (never a reformatted file).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import yaml

from gpumix.check.yamlload import iter_nodes, load_one

BOM = "\ufeff"
Mutation = Callable[[MutableMapping[str, Any]], None]


class CannotEdit(Exception):
    """The change cannot be written without reformatting."""


@dataclass(frozen=True, slots=True)
class Edit:
    start: int
    end: int
    text: str


_PLAIN_UNSAFE = re.compile(r"^[\s\-?:,\[\]{}#&*!|>'\"%@`]|: | #|[\r\n\t]|\s$|^$")


class Renderer:
    def __init__(self, text: str, is_json: bool) -> None:
        self.text = text
        self.is_json = is_json

    def scalar(self, value: object) -> str:
        if isinstance(value, bool) or value is None:
            return json.dumps(value)
        if isinstance(value, int):
            return str(value)
        s = str(value)
        if self.is_json or _PLAIN_UNSAFE.search(s):
            return json.dumps(s)
        try:
            plain_ok = load_one(s) == s
        except yaml.YAMLError:
            plain_ok = False
        return s if plain_ok else json.dumps(s)

    def key(self, key: str) -> str:
        return json.dumps(key) if self.is_json else self.scalar(key)

    def flow(self, value: object) -> str:
        if isinstance(value, Mapping):
            inner = ", ".join(f"{self.key(str(k))}: {self.flow(v)}" for k, v in value.items())
            return "{" + inner + "}"
        if isinstance(value, list):
            return "[" + ", ".join(self.flow(v) for v in value) + "]"
        return self.scalar(value)

    def block(self, key: str, value: object, col: int, step: int, eol: str) -> str:
        pad = " " * col
        if isinstance(value, Mapping) and value:
            lines = [f"{pad}{self.key(key)}:{eol}"]
            lines += [self.block(str(k), v, col + step, step, eol) for k, v in value.items()]
            return "".join(lines)
        return f"{pad}{self.key(key)}: {self.flow(value)}{eol}"

    def eol_at(self, offset: int) -> str:
        nl = self.text.find("\n", offset)
        return "\r\n" if nl > 0 and self.text[nl - 1] == "\r" else "\n"

    def line_start(self, offset: int) -> int:
        return self.text.rfind("\n", 0, offset) + 1


def _step(node: yaml.MappingNode, col: int) -> int:
    for _, v in node.value:
        if isinstance(v, yaml.MappingNode) and not v.flow_style and v.value:
            return max(int(v.value[0][0].start_mark.column) - col, 1)
    return 2


def _last_leaf(node: yaml.Node) -> yaml.Node:
    while (
        isinstance(node, (yaml.MappingNode, yaml.SequenceNode))
        and node.value
        and not (node.flow_style)
    ):
        last = node.value[-1]
        node = last[1] if isinstance(last, tuple) else last
    return node


def _add_entries(r: Renderer, node: yaml.MappingNode, entries: list[tuple[str, Any]]) -> Edit:
    if node.flow_style:
        body = ", ".join(f"{r.key(k)}: {r.flow(v)}" for k, v in entries)
        if node.value:
            at = node.value[-1][1].end_mark.index
            return Edit(at, at, ", " + body)
        at = node.start_mark.index + 1
        return Edit(at, at, body)
    if not node.value:
        raise CannotEdit("an empty block mapping")
    first = node.value[0][0]
    col = first.start_mark.column
    step = _step(node, col)
    start = r.line_start(first.start_mark.index)
    eol = r.eol_at(start)
    if not r.text[start : first.start_mark.index].strip():
        body = "".join(r.block(k, v, col, step, eol) for k, v in entries)
        return Edit(start, start, body)
    # the first key shares its line with '- ' (a list item): add after the mapping's end
    leaf = _last_leaf(node)
    end = leaf.end_mark.index
    if leaf.end_mark.column != 0:
        nl = r.text.find("\n", end)
        if nl < 0:
            body = "".join(r.block(k, v, col, step, eol) for k, v in entries)
            return Edit(len(r.text), len(r.text), eol + body.removesuffix(eol))
        end = nl + 1
    return Edit(end, end, "".join(r.block(k, v, col, step, eol) for k, v in entries))


def diff_edits(
    r: Renderer, node: yaml.Node, before: Mapping[str, Any], after: Mapping[str, Any]
) -> list[Edit]:
    """The edits that turn the text of ``before`` (at ``node``) into ``after``."""
    if not isinstance(node, yaml.MappingNode):
        raise CannotEdit("not a mapping in the text")
    pairs = {k.value: (k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)}
    edits: list[Edit] = []
    added: list[tuple[str, Any]] = []
    for key, new in after.items():
        if key not in before:
            added.append((key, new))
            continue
        old = before[key]
        if old == new:
            continue
        if key not in pairs:
            raise CannotEdit(f"{key} comes from a merge key or alias")
        k, v = pairs[key]
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            edits += diff_edits(r, v, old, new)
        elif isinstance(v, yaml.ScalarNode) and v.start_mark.index == v.end_mark.index:
            # `key:` with nothing after it: the new value goes below (or after) the key
            if isinstance(new, Mapping) and new and not r.is_json:
                col = k.start_mark.column
                eol = r.eol_at(k.start_mark.index)
                nl = r.text.find("\n", k.end_mark.index)
                at = len(r.text) if nl < 0 else nl + 1
                lead = eol if nl < 0 else ""
                body = "".join(r.block(str(a), b, col + 2, 2, eol) for a, b in new.items())
                edits.append(Edit(at, at, lead + body))
            else:
                edits.append(Edit(v.start_mark.index, v.end_mark.index, " " + r.flow(new)))
        elif isinstance(v, yaml.ScalarNode):
            edits.append(Edit(v.start_mark.index, v.end_mark.index, r.flow(new)))
        else:
            raise CannotEdit(f"{key} changes from a collection")
    if added:
        edits.append(_add_entries(r, node, added))
    return edits


@dataclass(frozen=True, slots=True)
class Target:
    doc: int
    item: int | None
    mutate: Mutation


def edit_file(text: str, is_json: bool, targets: list[Target]) -> str:
    """The file with the mutations applied as text edits; raises CannotEdit."""
    if text.startswith(BOM):  # the parser's positions do not count it
        return BOM + edit_file(text[1:], is_json, targets)
    try:
        docs = list(iter_nodes(text))
    except (yaml.YAMLError, ValueError) as exc:
        raise CannotEdit(f"cannot locate the fields ({exc})") from exc
    expected = [data for _, data in docs]
    r = Renderer(text, is_json)
    edits: list[Edit] = []
    for t in targets:
        if t.doc >= len(docs):
            raise CannotEdit(f"document {t.doc} is gone")
        node, data = docs[t.doc]
        if t.item is not None:
            items_node = next(v for k, v in node.value if getattr(k, "value", None) == "items")
            node, obj = items_node.value[t.item], data["items"][t.item]
        else:
            obj = data
        before = copy.deepcopy(obj)
        t.mutate(obj)
        edits += diff_edits(r, node, before, obj)
    out = text
    for e in sorted(edits, key=lambda e: (e.start, e.end), reverse=True):
        out = out[: e.start] + e.text + out[e.end :]
    try:
        again = [data for _, data in iter_nodes(out)]
    except (yaml.YAMLError, ValueError) as exc:
        raise CannotEdit(f"the edited text does not parse ({exc})") from exc
    if again != expected:
        raise CannotEdit("the edited text does not read back as the fixed objects")
    return out
