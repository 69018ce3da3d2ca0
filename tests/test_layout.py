"""The layout keeps its layers readable: short functions in the pure core, and no module
reaching into another's private names.

The pure core is what the import contract "The pure core does not do I/O" in
pyproject.toml names, so the two lists cannot drift apart. There are no exceptions.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "gpumix"
MAX_FUNCTION_LINES = 80


def module_file(module: str) -> Path:
    """The source of a module or the ``__init__`` of a package under gpumix/ (links followed)."""
    path = REPO_ROOT.joinpath(*module.split("."))
    if path.is_dir():
        return path / "__init__.py"
    return path.with_suffix(".py")


def module_name(path: Path) -> str:
    """Module name of a file reached through gpumix/ (``gpumix/webhook/wire.py`` ...)."""
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_files(root: Path) -> Iterator[Path]:
    """Every .py file of a package, through the links gpumix/webhook -> ../webhook etc."""
    if root.is_file():
        yield root
        return
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and (entry / "__init__.py").is_file():
            yield from package_files(entry)
        elif entry.suffix == ".py":
            yield entry


def pure_core() -> list[str]:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for contract in pyproject["tool"]["importlinter"]["contracts"]:
        if contract["name"] == "The pure core does not do I/O":
            return list(contract["source_modules"])
    raise AssertionError("pyproject.toml has no contract 'The pure core does not do I/O'")


def functions(tree: ast.AST, prefix: str) -> Iterator[tuple[str, ast.AST]]:
    """(qualified name, node) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}.{node.name}"
            if not isinstance(node, ast.ClassDef):
                yield name, node
            yield from functions(node, name)
        else:
            yield from functions(node, prefix)


def lines_of(node: ast.AST) -> int:
    assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    assert node.end_lineno is not None
    return node.end_lineno - node.lineno + 1


def long_functions(modules: list[str]) -> dict[str, tuple[int, str]]:
    """Qualified name -> (lines, file:line) of functions over the limit in these packages."""
    out: dict[str, tuple[int, str]] = {}
    for module in modules:
        root = module_file(module)
        root = root.parent if root.name == "__init__.py" else root
        for path in package_files(root):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for name, node in functions(tree, module_name(path)):
                if lines_of(node) > MAX_FUNCTION_LINES:
                    where = f"{path.relative_to(REPO_ROOT)}:{getattr(node, 'lineno', 0)}"
                    out[name] = (lines_of(node), where)
    return out


def resolve(module: str, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` inside ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".")[: len(module.split(".")) - level]
    return ".".join([*base, target] if target else base)


def private_imports() -> dict[tuple[str, str, str], str]:
    """(importer, imported module, name) -> file:line for every ``_name`` imported from
    another module of gpumix, by ``from m import _name`` or as ``alias._name`` on an
    imported module."""
    found: dict[tuple[str, str, str], str] = {}
    for path in package_files(PACKAGE):
        module = module_name(path)
        if path.name == "__init__.py":
            module += ".__init__"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = resolve(module, node.level, node.module)
                for alias in node.names:
                    imported = f"{source}.{alias.name}"
                    if module_file(imported).is_file():
                        aliases[alias.asname or alias.name] = imported
                    elif _private(alias.name) and source.startswith("gpumix"):
                        where = f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
                        found[(module, source, alias.name)] = where
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("gpumix") and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and _private(node.attr)
            ):
                where = f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
                found[(module, aliases[node.value.id], node.attr)] = where
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_the_pure_core_is_found() -> None:
    core = pure_core()
    assert "gpumix.admission" in core and "gpumix.rules" in core
    for module in core:
        assert module_file(module).is_file(), f"{module}: no such module"


def test_no_long_functions_in_the_pure_core() -> None:
    over = long_functions(pure_core())
    assert not over, "functions over {} lines in the pure core (split them):\n{}".format(
        MAX_FUNCTION_LINES,
        "\n".join(f"  {where} {name}: {lines} lines" for name, (lines, where) in over.items()),
    )


def test_the_function_length_check_sees_long_functions(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    tree = ast.parse(f"class C:\n  def m(self):\n{body}\n    return 0\n")
    [(name, node)] = list(functions(tree, "mod"))
    assert name == "mod.C.m" and lines_of(node) == MAX_FUNCTION_LINES + 2


def test_no_private_names_imported_across_modules() -> None:
    bad = private_imports()
    assert not bad, "private names used from another module (make them public or move them):\n" + (
        "\n".join(f"  {where}: {imp} uses {mod}.{name}" for (imp, mod, name), where in bad.items())
    )
