"""dvc.yaml lists each stage's lib/ files by hand; these tests fail when a stage misses a module
its notebook (or a script the notebook launches) imports, directly or through another module.
A missing dep leaves results stale while `dvc status` says they are up to date."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib" / "pluralign"
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
# lib/pluralign/__init__.py is imported by every module but holds only a docstring and the version
# (checked below), so it changes no result and is not listed.
EXEMPT = {"lib/pluralign/__init__.py"}


def _imports(tree: ast.AST, package_module: str | None) -> set[str]:
    """pluralign submodules named by the imports anywhere in ``tree`` (also inside functions).
    ``package_module``: the importing module's name inside pluralign (for relative imports)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "pluralign" and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                if package_module is None:
                    continue
                base = node.module.split(".")[0] if node.module else None
            elif node.module and node.module.split(".")[0] == "pluralign":
                parts = node.module.split(".")
                base = parts[1] if len(parts) > 1 else None
            else:
                continue
            if base:
                found.add(base)
            else:  # from pluralign import a, b  /  from . import a, b
                found.update(a.name for a in node.names if (LIB / f"{a.name}.py").is_file())
    return found


def transitive(modules: set[str]) -> set[str]:
    seen, todo = set(), list(modules)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(_imports(ast.parse((LIB / f"{m}.py").read_text()), m) - seen)
    return seen


def notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    lines = []
    for c in cells:
        if c["cell_type"] == "code":
            src = "".join(c["source"])
            lines += [ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    return "\n".join(lines)


def needed_deps(notebook: str) -> set[str]:
    """Every file a stage running ``notebook`` depends on through imports: the pluralign modules
    it imports (transitively) and those of any scripts/*.py it launches."""
    code = notebook_code(ROOT / notebook)
    mods = _imports(ast.parse(code), None)
    scripts = set(re.findall(r"scripts/[\w/]+\.py", code))
    for s in scripts:
        mods |= _imports(ast.parse((ROOT / s).read_text()), None)
    return {f"lib/pluralign/{m}.py" for m in transitive(mods)} | scripts


# the notebook stages (the `book` stage runs a script that reads their executed copies: tested below)
STAGES = {name: st for name, st in DVC["stages"].items() if ".ipynb" in st["cmd"]}


def _notebook_of(stage: dict) -> str:
    return next(tok for tok in stage["cmd"].split() if tok.endswith(".ipynb"))


def test_the_import_walker_follows_relative_and_nested_imports():
    # experiments imports em/games/nash/simulate/tabular and bradley_terry; nash imports tabular
    assert {"bradley_terry", "simulate", "em", "nash", "tabular", "games"} <= transitive({"experiments"})
    # lora imports lm inside a function and reward_models -> preferences -> simulate -> bradley_terry
    assert {"lm", "reward_models", "preferences", "simulate", "bradley_terry"} <= transitive({"lora"})
    assert _imports(ast.parse("from pluralign import em, report\nimport pluralign.nash as n"), None) == {"em", "report", "nash"}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_every_module_its_notebook_imports(name):
    stage = STAGES[name]
    deps = set(stage["deps"])
    covered = lambda f: f in deps or any(f.startswith(d.rstrip("/") + "/") for d in deps)
    missing = sorted(f for f in needed_deps(_notebook_of(stage)) - EXEMPT if not covered(f))
    assert not missing, f"dvc.yaml stage {name!r} misses deps {missing}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_lists_no_lib_module_it_does_not_import(name):
    """The converse: a listed module the stage never imports re-runs it for nothing."""
    stage = STAGES[name]
    needed = needed_deps(_notebook_of(stage))
    extra = sorted(d for d in stage["deps"] if d.startswith("lib/pluralign/") and d not in needed)
    assert not extra, f"dvc.yaml stage {name!r} lists {extra}, which its notebook does not import"


def test_package_init_holds_no_code():
    tree = ast.parse((LIB / "__init__.py").read_text())
    kinds = [type(n).__name__ for n in tree.body]
    assert kinds[0] == "Expr" and all(k == "Assign" for k in kinds[1:]), kinds
    assert [t.id for n in tree.body[1:] for t in n.targets] == ["__version__"]


def test_book_stage_deps_are_the_files_the_book_reads():
    """The book is rebuilt when an executed notebook (or anything else it reads) changes: its deps
    are exactly what scripts/build_book.py reads, less dvc.yaml (DVC refuses it as a dep)."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import build_book

    book = DVC["stages"]["book"]
    executed = {o for st in STAGES.values() for o in st["outs"] if isinstance(o, str) and o.startswith("results/notebooks/")}
    assert len(executed) == len(STAGES)
    assert executed <= set(book["deps"])
    assert sorted(book["deps"]) == sorted(set(build_book.book_inputs(ROOT)) - {"dvc.yaml"})
    assert list(DVC["stages"])[-1] == "book"
    assert book["outs"] == [{"docs/book": {"cache": False, "persist": True}}]
