"""The dependency shape: stages import only the core, the core names no stage, and every command is found."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from alignsmith.cli import _resolve, command_groups

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("builders", "training", "evaluation", "spaces")
MODULE_REFERENCE = re.compile(rf"^({'|'.join(STAGES)})(\.[\w.]+(:\w+)?|:\w+)$")  # e.g. 'builders.convert:run'


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, relative imports resolved against its package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = path.relative_to(ROOT).parent.parts
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            found.append((node.lineno, ".".join([*base, node.module or ""]).strip(".")))
    return found


def _python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", _python_files("alignsmith"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_neither_imports_nor_names_a_stage(path):
    for line, module in _imports(path):
        assert module.split(".")[0] not in STAGES, f"{path.relative_to(ROOT)}:{line} imports {module}"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert not MODULE_REFERENCE.match(node.value), f"{path.relative_to(ROOT)}:{node.lineno} names {node.value!r}"


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_another_stage(stage):
    for path in _python_files(stage):
        for line, module in _imports(path):
            top = module.split(".")[0]
            assert top == stage or top not in STAGES, f"{path.relative_to(ROOT)}:{line} imports {module}"


def test_every_command_resolves_and_is_listed_in_help():
    groups = command_groups()
    assert {"hub", "models", "lineage", "build", "train"} <= set(groups)
    top = subprocess.run([sys.executable, "-m", "alignsmith.cli", "--help"], capture_output=True, text=True, check=True)
    for group in groups.values():
        assert (ROOT / group.package).exists(), f"group {group.name}: no {group.package}"
        for name, command in group.commands.items():
            assert callable(_resolve(command.run)), f"{group.name} {name}: {command.run}"
            assert command.recipe is None or isinstance(_resolve(command.recipe), type)
            assert re.search(rf"^  {re.escape(name)} ", top.stdout, re.M), f"{group.name} {name} missing from --help"
            module = command.run.partition(":")[0]
            assert module.startswith(group.package.rstrip("/").replace("/", ".").removesuffix(".py")), (
                f"{group.name} {name} runs {module}, outside {group.package}"
            )


def test_no_import_cycles_between_core_modules():
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in _python_files("alignsmith")}
    graph = {name: {m for _, m in _imports(path) if m in modules and m != name} for name, path in modules.items()}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(n == target or (n not in seen and not seen.add(n) and reaches(n, target, seen)) for n in graph[start])

    cycles = [(a, b) for a in graph for b in graph[a] if reaches(b, a, set())]
    assert not cycles, f"import cycles: {cycles[:5]}"
