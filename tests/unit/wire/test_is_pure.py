"""wire/ is sans-IO: no module under popbridge/wire/ may import twisted."""

import ast
from pathlib import Path

import pytest

WIRE = Path(__file__).resolve().parents[3] / "popbridge" / "wire"


def imported_modules(source: str) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__" and node.args:
            if isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                modules.add(node.args[0].value)
    return modules


def imports_twisted(source: str) -> bool:
    return any(name == "twisted" or name.startswith("twisted.") for name in imported_modules(source))


def test_wire_modules_exist() -> None:
    assert sorted(WIRE.glob("*.py"))


@pytest.mark.parametrize("path", sorted(WIRE.rglob("*.py")), ids=lambda p: p.name)
def test_wire_module_does_not_import_twisted(path: Path) -> None:
    assert not imports_twisted(path.read_text()), f"{path} imports twisted"


@pytest.mark.parametrize(
    "source",
    ["import twisted", "from twisted.internet import reactor", "import os, twisted.internet.defer as d",
     "__import__('twisted.logger')"],
)
def test_the_check_catches_twisted_imports(source: str) -> None:
    assert imports_twisted(source)


def test_the_check_ignores_lookalikes() -> None:
    assert not imports_twisted("import twistedish\nfrom popbridge.addresses import client_key")
