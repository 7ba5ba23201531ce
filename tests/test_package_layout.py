"""The package's house rules: every module says what it owns in its opening docstring."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dmlutils"


def test_every_module_opens_with_a_docstring_saying_what_it_owns():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 40
    missing = [str(m.relative_to(PACKAGE)) for m in modules if not (ast.get_docstring(ast.parse(m.read_text())) or "").strip()]
    assert not missing, f"modules without an opening docstring: {missing}"


# --- no import circle: each module sits above the ones it imports ---------------------------


def import_graph(package: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, read from the source: every `import` and
    `from ... import` anywhere in a module, inside functions too (a lazy import still closes
    a circle, it only hides it until the function runs). `from .x import name` counts as
    importing `x`, and `x.name` too when that is a module of the package."""
    def name_of(path: Path) -> str:
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name_of(path): path for path in package.rglob("*.py")}
    graph = {}
    for module, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's own package, up level - 1 packages
                    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                # A submodule's import of its own package (`from . import sibling`) adds no edge to
                # that package: Python has imported every ancestor package before any submodule.
                ancestor = module.startswith(target + ".")
                imported |= (set() if ancestor else {target}) | {f"{target}.{alias.name}" for alias in node.names}
        graph[module] = {name for name in imported if name in modules and name != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` as [a, b, ..., a], or None."""
    state, trail = {}, []  # state: 1 on the current path, 2 done

    def visit(module):
        state[module] = 1
        trail.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                return trail[trail.index(other):] + [other]
            if other not in state and (cycle := visit(other)):
                return cycle
        trail.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_import_circle_finder_sees_lazy_and_relative_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .low import x\n")
    (package / "sub" / "low.py").write_text("def f():\n    from ..high import y  # lazy, two levels up\n")
    (package / "high.py").write_text("from .sub import low\n")
    (package / "sub" / "mid.py").write_text("from . import low\n")  # a sibling, not the package: no circle
    graph = import_graph(package)
    assert graph["pkg.sub.mid"] == {"pkg.sub.low"}
    assert graph["pkg.high"] == {"pkg.sub", "pkg.sub.low"} and graph["pkg.sub.low"] == {"pkg.high"}
    cycle = find_cycle(graph)
    assert cycle[0] == cycle[-1] and {"pkg.high", "pkg.sub.low"} <= set(cycle)
    (package / "sub" / "low.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(package)) is None


def test_no_module_of_the_package_imports_one_that_imports_it_back():
    """A circle means two modules each sit below the other: reading that loads planning, or
    a data set that loads itself half-initialised. Lazy imports count (see import_graph)."""
    graph = import_graph(PACKAGE)
    assert len(graph) > 40 and "dmlutils.records" in graph["dmlutils.manifest"]  # the graph sees lazy imports
    cycle = find_cycle(graph)
    assert cycle is None, f"import circle in dmlutils/: {' -> '.join(cycle)}; move what both need below both, or pass it as an argument"
