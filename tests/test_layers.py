"""The layers DESIGN.md draws: format and query (engine) below build (indexers) below the application (sift);
developer tools and benchmarks above all of them and never installed. Arrows point down only."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "indexers", "sift", "tools", "bench")
# what each package may import (lazily or not) besides itself
ALLOWED = {
    "engine": set(),
    "indexers": {"engine"},
    "sift": {"engine", "indexers", "bench"},  # `sift bench` loads the checkout's benchmarks
    "tools": {"engine", "indexers"},
    "bench": {"engine", "indexers", "tools"},
}


def imported_packages(package: str) -> dict[str, set[str]]:
    """Our packages imported anywhere in a package's files (inside functions too), with where."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in PACKAGES and top != package:
                    found.setdefault(top, set()).add(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_each_package_imports_only_the_layers_below_it():
    for package, allowed in ALLOWED.items():
        wrong = {top: where for top, where in imported_packages(package).items() if top not in allowed}
        assert not wrong, f"{package} imports {wrong}"


def test_no_import_cycle_between_packages():
    graph = {package: set(imported_packages(package)) for package in PACKAGES}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for successor in graph[start] - seen:
            if successor == target or reaches(successor, target, seen | {successor}):
                return True
        return False

    cycles = [package for package in PACKAGES if reaches(package, package, set())]
    assert not cycles, f"packages on an import cycle: {cycles} ({graph})"


def test_importing_every_engine_module_loads_nothing_from_above():
    script = """
import importlib, pkgutil, sys
import engine
for module in pkgutil.walk_packages(engine.__path__, "engine."):
    importlib.import_module(module.name)
print(sorted({name.split(".")[0] for name in sys.modules} & {"indexers", "sift", "tools", "bench"}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
