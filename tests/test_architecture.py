"""Rules of the layout (issue 19), read from the source with ``ast`` so function-level imports count too.

1. A module's private names stay inside it. In neurovit/, training/, handlers/ and monitoring/ no module
   takes another project module's private name (one leading underscore; dunders are not private): not by
   ``from x import _y``, not by ``x._y`` on a name bound to an imported project module, not by importing a
   private submodule from outside its package. Aliasing a public name to a private one
   (``from x import y as _y``) is fine. Third-party privates are not ours to police.
   Tests follow the same rule except where ``TESTS_MAY_REACH`` lists the name with its reason: a test may
   need a private helper to inject a fault or reach a mapping no public call exposes, and listing it
   keeps each such reach a conscious choice.
2. The core package ``neurovit`` is a library: it imports neither argparse (command lines live in
   training/) nor subprocess (processes are started by training/, handlers/ and monitoring/).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("neurovit", "training", "handlers", "monitoring")
CORE = "neurovit"
CORE_FORBIDDEN = ("argparse", "subprocess")

# (test file relative to the repository, "module.private_name") -> why the test needs it
TESTS_MAY_REACH = {
    ("tests/neurovit/test_store_local.py", "neurovit.store._copy_file"): (
        "fault injection: a copy that fails midway through publish"
    ),
}


def module_name(path: Path) -> str:
    """training/serve.py -> training.serve; neurovit/data/__init__.py -> neurovit.data."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> set[str]:
    return {module_name(path) for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


MODULES = project_modules()


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def same_package(importer: str, module: str) -> bool:
    """``importer`` is ``module``'s package or inside that package (a package may use its private
    submodules)."""
    package = module.rsplit(".", 1)[0]
    return importer == package or importer.startswith(package + ".")


@dataclass(frozen=True)
class Reach:
    file: str  # relative to the repository
    line: int
    name: str  # "module._private"
    how: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.how} {self.name}"


def absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The module a ``from ... import`` reads from, relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` -> ["a", "b", "c"]; None for anything that is not a plain chain of names."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(names)]


def private_reaches(path: Path) -> Iterator[Reach]:
    """Every place ``path`` takes a private name of another project module."""
    relative = str(path.relative_to(ROOT))
    importer = module_name(path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=relative)
    bound: dict[str, str] = {}  # local name -> the project module it is bound to

    def foreign(module: str) -> bool:
        return module in MODULES and module != importer

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                for depth in range(2, len(parts) + 1):
                    if is_private(parts[depth - 1]) and not same_package(importer, ".".join(parts[:depth])):
                        yield Reach(relative, node.lineno, ".".join(parts[:depth]), "imports private module")
                if alias.asname and alias.name in MODULES:
                    bound[alias.asname] = alias.name
                elif not alias.asname and parts[0] in MODULES:
                    bound[parts[0]] = parts[0]
        elif isinstance(node, ast.ImportFrom):
            source = absolute(node, importer, is_package)
            if source.split(".")[0] not in PACKAGES:
                continue
            parts = source.split(".")
            for depth in range(2, len(parts) + 1):
                if is_private(parts[depth - 1]) and not same_package(importer, ".".join(parts[:depth])):
                    yield Reach(relative, node.lineno, ".".join(parts[:depth]), "imports from private module")
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if target in MODULES:  # a submodule: `from training import serve`
                    bound[alias.asname or alias.name] = target
                    if is_private(alias.name) and not same_package(importer, target):
                        yield Reach(relative, node.lineno, target, "imports private module")
                elif is_private(alias.name) and foreign(source):
                    yield Reach(relative, node.lineno, target, "imports")

    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not is_private(node.attr):
            continue
        chain = dotted(node)
        if chain is None or chain[0] not in bound:
            continue
        module = bound[chain[0]]
        for name in chain[1:-1]:  # training.serve._pid: walk down the submodules
            if f"{module}.{name}" not in MODULES:
                break
            module = f"{module}.{name}"
        else:
            if foreign(module):
                yield Reach(relative, node.lineno, f"{module}.{node.attr}", "uses")


def sources(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def test_the_rule_sees_every_way_of_reaching_a_private_name(tmp_path, monkeypatch):
    """The checker itself, on a made-up module: each form is found once, the allowed forms never."""
    fake_root = tmp_path
    (fake_root / "training").mkdir()
    (fake_root / "training" / "__init__.py").write_text("")
    (fake_root / "training" / "serve.py").write_text("_pid = 1\n")
    (fake_root / "training" / "monitor.py").write_text(
        "from training.serve import _pid, api_key\n"
        "from training import serve\n"
        "import training.serve\n"
        "import training.serve as launcher\n"
        "from .serve import _state\n"
        "from training.serve import public as _alias\n"
        "def f():\n"
        "    from training.serve import _late\n"
        "    return serve._pid, training.serve._pid, launcher._pid, serve.__name__, api_key._ok\n"
    )
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "ROOT", fake_root)
    monkeypatch.setattr(this, "PACKAGES", ("training",))
    monkeypatch.setattr(this, "MODULES", {"training", "training.serve", "training.monitor"})
    found = sorted(
        (reach.name, reach.how) for reach in private_reaches(fake_root / "training" / "monitor.py")
    )
    assert found == [
        ("training.serve._late", "imports"),
        ("training.serve._pid", "imports"),
        ("training.serve._pid", "uses"),
        ("training.serve._pid", "uses"),
        ("training.serve._pid", "uses"),
        ("training.serve._state", "imports"),
    ]


def test_no_module_imports_another_modules_private_name():
    reaches = [reach for path in sources(*PACKAGES) for reach in private_reaches(path)]
    assert not reaches, "private names used outside their module:\n" + "\n".join(map(str, reaches))


def test_tests_reach_private_names_only_where_listed():
    reaches = [reach for path in sources("tests") for reach in private_reaches(path)]
    unlisted = [reach for reach in reaches if (reach.file, reach.name) not in TESTS_MAY_REACH]
    assert not unlisted, (
        "tests using private names (make them public, test through the public API, or list the name "
        "with its reason in TESTS_MAY_REACH):\n" + "\n".join(map(str, unlisted))
    )
    stale = set(TESTS_MAY_REACH) - {(reach.file, reach.name) for reach in reaches}
    assert not stale, f"TESTS_MAY_REACH lists names no test uses any more: {sorted(stale)}"


def imported_modules(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, top-level module) of every import, including ``importlib.import_module("x")`` and
    ``__import__("x")`` with a literal name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            yield node.lineno, node.module.split(".")[0]
        elif (
            isinstance(node, ast.Call)
            and (dotted(node.func) or [None])[-1] in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value.split(".")[0]


@pytest.mark.parametrize("forbidden", CORE_FORBIDDEN)
def test_the_core_package_is_a_library_without_command_lines_or_processes(forbidden):
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sources(CORE)
        for line, module in imported_modules(ast.parse(path.read_text()))
        if module == forbidden
    ]
    assert sources(CORE), "the core package has no modules?"
    assert not found, f"{CORE}/ imports {forbidden}: " + ", ".join(found)
