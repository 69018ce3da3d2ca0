"""Reading YAML fast: libyaml's parser (PyYAML's C loader), with the positions of nodes.

The loader reads YAML as Kubernetes does (``sigs.k8s.io/yaml``): timestamps stay
strings, ``=`` is a plain string, and an unknown tag (``!Ref``, ``!reference``)
gives the plain value instead of failing, so a stray file never stops a check.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

_DROPPED_TAGS = {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"}


class Loader(yaml.CSafeLoader):
    """The C loader, with Kubernetes' reading of plain scalars."""


Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED_TAGS]
    for first, resolvers in yaml.CSafeLoader.yaml_implicit_resolvers.items()
}


def _any_tag(loader: Loader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


Loader.add_multi_constructor("", _any_tag)


@dataclass(frozen=True, slots=True)
class YamlProblem:
    line: int
    """1-based line of the file; 0 when the parser does not say."""
    message: str


def problem_of(exc: Exception, line_offset: int = 0) -> YamlProblem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    line = mark.line + 1 + line_offset if mark is not None else 0
    return YamlProblem(line, f"invalid YAML: {problem}")


def iter_nodes(text: str) -> Iterator[tuple[yaml.Node, Any]]:
    """Each document's root node and its value; raises yaml.YAMLError and ValueError."""
    loader = Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                yield node, loader.construct_document(node)
    finally:
        loader.dispose()


def load_one(text: str) -> Any:
    return yaml.load(text, Loader=Loader)


def node_at(node: yaml.Node | None, path: tuple[str | int, ...]) -> yaml.Node | None:
    """The node at a path of mapping keys and sequence indexes (the deepest that exists)."""
    for step in path:
        if isinstance(node, yaml.MappingNode) and isinstance(step, str):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == step), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int):
            nxt = node.value[step] if 0 <= step < len(node.value) else None
        else:
            nxt = None
        if nxt is None:
            return node
        node = nxt
    return node


def line_of(node: yaml.Node | None, path: tuple[str | int, ...] = ()) -> int:
    """The line of the field at ``path`` (of its key), else of the deepest that exists."""
    if path and isinstance(path[-1], str):
        parent = node_at(node, path[:-1])
        if isinstance(parent, yaml.MappingNode):
            for k, _ in parent.value:
                if getattr(k, "value", None) == path[-1]:
                    return int(k.start_mark.line) + 1
    found = node_at(node, path)
    return found.start_mark.line + 1 if found is not None else 0
