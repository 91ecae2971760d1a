"""The shape the code holds itself to: no import cycles, short modules and functions, no repeated blocks.

The layers and the forbidden imports between stages are import-linter contracts in pyproject.toml, checked by
`lint-imports` in .ci/run; these tests check what import-linter does not.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "kdistill"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MIN_REPEATED_LINES = 6


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _name(path: Path) -> str:
    return str(path.relative_to(SRC.parent))


def test_no_import_cycles_among_kdistills_modules():
    grimp = pytest.importorskip("grimp")
    # imports under `if TYPE_CHECKING:` are for annotations only and never run, so they cannot form a cycle
    graph = grimp.build_graph("kdistill", exclude_type_checking_imports=True)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=imported, imported=module):
                chain = graph.find_shortest_chain(importer=imported, imported=module)
                cycles.append(f"{module} -> {' -> '.join(chain)}")
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_no_module_is_longer_than_400_lines(path: Path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{_name(path)} has {lines} lines (at most {MAX_MODULE_LINES}): split it by stage"


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{_name(path)}:{node.lineno} {node.name}() has {length} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the lines that are code: no blanks, comments, docstrings or imports."""
    text = path.read_text(encoding="utf-8")
    skip: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            skip.update(range(body[0].lineno, body[0].end_lineno + 1))  # a docstring
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            skip.update(range(node.lineno, node.end_lineno + 1))
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1)
            if i not in skip and line.strip() and not line.strip().startswith("#")]


def test_no_block_of_six_code_lines_is_written_twice_in_src():
    seen: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for path in _modules():
        lines = _code_lines(path)
        for start in range(len(lines) - MIN_REPEATED_LINES + 1):
            window = tuple(text for _, text in lines[start:start + MIN_REPEATED_LINES])
            seen[window].append(f"{_name(path)}:{lines[start][0]}")
    repeated = [places for places in seen.values() if len(places) > 1]
    assert not repeated, "the same 6 code lines in several places (one function should serve):\n" + "\n".join(
        " and ".join(places) for places in repeated[:10])
