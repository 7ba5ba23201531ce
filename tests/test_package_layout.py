"""The package's house rules: every module says what it owns in its opening docstring."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dmlutils"


def test_every_module_opens_with_a_docstring_saying_what_it_owns():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 40
    missing = [str(m.relative_to(PACKAGE)) for m in modules if not (ast.get_docstring(ast.parse(m.read_text())) or "").strip()]
    assert not missing, f"modules without an opening docstring: {missing}"
