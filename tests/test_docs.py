"""The documentation stays in step with the code and the README (issue #34 point 8): every public name has one API
page entry, the command-line page lists every subcommand, the docs include the README's tested blocks, and every
relative link of the README points to a file. The site itself is built by scripts/test's docs tier
(``mkdocs build --strict``)."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def public_names() -> list[str]:
    """``persona_interp.__all__``, read without importing the package."""
    tree = ast.parse((ROOT / "persona_interp" / "__init__.py").read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in n.targets))
    return list(ast.literal_eval(node.value))


def test_every_public_name_has_exactly_one_api_entry():
    entries = [name for page in sorted((DOCS / "api").glob("*.md"))
               for name in re.findall(r"^::: persona_interp\.(\w+)$", page.read_text(encoding="utf-8"), re.M)]
    assert sorted(entries) == sorted(public_names()), "docs/api/*.md must document persona_interp.__all__, each name once"
    index = (DOCS / "api" / "index.md").read_text(encoding="utf-8")
    assert [n for n in public_names() if f"`{n}`" not in index] == [], "docs/api/index.md's table misses these names"


def test_the_command_line_page_lists_every_subcommand():
    from persona_interp.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    listed = re.findall(r"^\| `([a-z-]+)` \|", (DOCS / "cli.md").read_text(encoding="utf-8"), re.M)
    assert sorted(listed) == sorted(sub.choices)


def snippet(name: str) -> str:
    """What ``--8<-- "README.md:NAME"`` includes: the README's lines between the section's start and end markers."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"^[^\n]*--8<-- \[start:{name}\][^\n]*\n(.*?)^[^\n]*--8<-- \[end:{name}\]", text, re.M | re.S)
    assert found, f"README.md has no snippet section {name!r}"
    return found.group(1)


@pytest.mark.parametrize("name, page", [("quickstart", "quickstart.md"), ("commands", "cli.md")])
def test_the_docs_include_the_readme_blocks_the_slow_tests_run(name, page):
    from test_readme_commands_slow import readme_commands
    from test_readme_slow import quickstart_code

    assert f'--8<-- "README.md:{name}"' in (DOCS / page).read_text(encoding="utf-8")
    block = snippet(name)
    if name == "quickstart":
        assert block == f"```python\n{quickstart_code()}```\n"
    else:
        assert block.startswith("```bash\n") and block.endswith("```\n")
        assert [re.sub(r"\s+# .*$", "", line) for line in block.splitlines() if line.startswith("persona-interp ")] == readme_commands()


def test_every_relative_link_of_the_readme_points_to_a_file():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)]+)\)", text) if not re.match(r"[a-z]+:", t)]
    assert targets, "the README links its documentation"
    assert [t for t in targets if not (ROOT / t).exists()] == []


SPHINX_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|obj|exc|const|py:\w+):`")
AUTOREF = re.compile(r"\]\[(persona_interp(?:\.\w+)+)\]")


def docstrings() -> list[tuple[str, int, str]]:
    """``(file, line, text)`` of every docstring in persona_interp: of modules, classes and functions, and the string
    statements after an assignment that document an attribute."""
    found = []
    for path in sorted((ROOT / "persona_interp").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                found.append((str(path.relative_to(ROOT)), node.lineno, node.value.value))
    return found


def test_docstrings_use_markdown_cross_references_not_sphinx_roles():
    """mkdocstrings shows ``:func:`x``` as it is; a link is ``[`x`][persona_interp.module.x]``."""
    assert len(docstrings()) > 100
    assert [f"{file}:{line}" for file, line, text in docstrings() if SPHINX_ROLE.search(text)] == []


def test_every_cross_reference_of_a_docstring_names_an_object():
    """The strict site build checks the links of the docstrings it renders; this checks all of them, rendered or not."""
    import importlib

    def exists(path: str) -> bool:
        parts = path.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for name in parts[cut:]:
                annotations = getattr(obj, "__annotations__", {}) if isinstance(obj, type) else {}
                if not hasattr(obj, name) and name not in annotations and name not in getattr(obj, "model_fields", {}):
                    return False
                obj = getattr(obj, name, None)
            return True
        return False

    targets = {(file, line, target) for file, line, text in docstrings() for target in AUTOREF.findall(text)}
    assert len(targets) > 100
    assert sorted(f"{file}:{line}: {target}" for file, line, target in targets if not exists(target)) == []
