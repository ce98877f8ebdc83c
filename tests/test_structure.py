"""The package's house rules, checked on its source: no file over 400 lines, no import circle, no private reach."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edgeprune"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """Returns (module imported, names taken from it) for every import in the file, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("edgeprune")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("edgeprune"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub, []) if sub in modules else (base, [alias.name]))
    return out


def test_no_file_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_no_module_takes_another_modules_private_names():
    modules = _modules()
    reached = [(name, target, taken) for name, path in modules.items()
               for target, names in _imports(path, name, modules) for taken in names
               if taken.startswith("_") and not taken.startswith("__") and target != name]
    assert not reached, reached


def test_there_is_no_import_circle():
    modules = _modules()
    graph = {name: {t for t, _ in _imports(path, name, modules) if t in modules and t != name}
             for name, path in modules.items()}
    # a package's face (an __init__ that only hands names on) imports its parts; a part importing
    # the face of its own package is the circle this rule is about, so faces stay in the graph
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, circles
