"""The layer rules of the developers' guide ("Layout"), checked on the import map of the tree.

The map is built with :mod:`ast` from the source files (nothing is imported): for every module of the installed
distribution (``wmoe``, ``wmoe.kernels`` = ``kernels/``, ``wmoe.export`` = ``export/``, ``wmoe.bench`` =
``bench/``) the modules it imports at module level (what runs on ``import``) and, separately, those it imports
inside a function (what runs on a call). Imports under ``if TYPE_CHECKING:`` are neither. Importing ``a.b.c``
also imports the packages ``a`` and ``a.b``, so those are edges too.

The rules are one table, :data:`RULES`, matched by module-name patterns (:mod:`fnmatch`, ``*`` crosses dots), so
that moving a flat module into a subpackage (``wmoe.train`` -> ``wmoe.training.train``) needs at most a pattern
edited here. Each rule says who (``src``), may not import what (``dst``), at which level (``module``: at import
time, ``any``: also inside functions) and whether the ban is transitive (``deep``: through any chain of
module-level imports of wmoe modules). Third-party names are matched too (``torch``).
"""
from __future__ import annotations

import ast
import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the distribution's package dirs (pyproject.toml [tool.setuptools] package-dir)
PACKAGE_DIRS = {"wmoe": ROOT / "wmoe", "wmoe.kernels": ROOT / "kernels", "wmoe.export": ROOT / "export",
                "wmoe.bench": ROOT / "bench"}

# The artifact side of export: what works on exported files (ONNX, engines, repositories) and runs where torch is
# not installed (a Jetson building its engine, a Triton server). The torch side is export.onnx_export, aoti,
# wrapper, plugin_graph, onnx_write (the writer of what torch exported; it imports onnx only, but it is only ever
# called after a torch export).
ARTIFACT_SIDE = ["wmoe.export.trt_build", "wmoe.export.triton_repo", "wmoe.export.trt_plugins",
                 "wmoe.export.repo_commit", "wmoe.export.parity", "wmoe.export.gate", "wmoe.export.quantize",
                 "wmoe.export.calib", "wmoe.export.cpu_precision", "wmoe.export.cli"]
TORCH = ("torch", "torch.*", "torchvision", "torchvision.*", "open_clip", "open_clip.*", "pytorch_wavelets",
         "pytorch_wavelets.*")


@dataclass(frozen=True)
class Rule:
    why: str  # the guide's words: shown when the rule breaks
    src: Tuple[str, ...]  # importing modules (patterns)
    dst: Tuple[str, ...]  # forbidden imports (patterns)
    level: str = "module"  # "module": at import time; "any": also inside functions
    deep: bool = False  # through chains of module-level wmoe imports
    exempt: Tuple[str, ...] = ()  # importing modules the rule does not cover (patterns)
    allow: Tuple[str, ...] = ()  # imports that dst would match but that are allowed (patterns)


# The CLI: the command modules (the console scripts of pyproject.toml and python -m wmoe) and the kit they share
# (parsers, option types, the one-line error handler). The kit may serve every entry point, including the camera
# loop's (wmoe-camera lives in wmoe.runtime.camera) and the bench's __main__ blocks; nothing imports a command.
CLI_COMMANDS = ("wmoe.cli.commands", "wmoe.__main__", "wmoe.export.cli", "wmoe.bench.cli")
CLI_KIT = ("wmoe.cli", "wmoe.cli.run", "wmoe.cli.types", "wmoe.cli.config")
ENTRY_POINTS = (*CLI_COMMANDS, *CLI_KIT, "wmoe.runtime.camera", "wmoe.bench", "wmoe.bench.*")

# The tasks above the model layer, and what serves deployment and the user (nothing below them imports these).
TASKS = ("wmoe.training", "wmoe.training.*", "wmoe.evaluation", "wmoe.evaluation.*", "wmoe.reference",
         "wmoe.reference.*", "wmoe.detector", "wmoe.predict", "wmoe.demo", "wmoe.torch_backend")
DEPLOY_TASKS = ("wmoe.export", "wmoe.export.*", "wmoe.app", "wmoe.app.*", *CLI_COMMANDS)

# The lead's table: edit patterns here when modules move.
RULES = [
    Rule("kernels import nothing else of wmoe", ("wmoe.kernels", "wmoe.kernels.*"), ("wmoe.*",), level="any",
         allow=("wmoe.kernels", "wmoe.kernels.*")),  # (the parent package `wmoe` runs first: not an import)
    Rule("wmoe.runtime imports no torch", ("wmoe.runtime", "wmoe.runtime.*"), TORCH, deep=True),
    Rule("the artifact side of export imports no torch", tuple(ARTIFACT_SIDE), TORCH, deep=True),
    Rule("the contract, the errors and the metadata readers import no torch",
         ("wmoe.contract", "wmoe.errors", "wmoe.onnx_meta"), TORCH, deep=True),
    Rule("nothing imports bench", ("*",), ("wmoe.bench", "wmoe.bench.*"), level="any",
         exempt=("wmoe.bench", "wmoe.bench.*")),
    Rule("nothing imports a CLI command", ("*",), CLI_COMMANDS, level="any", exempt=CLI_COMMANDS),
    Rule("only entry points use the CLI kit", ("*",), CLI_KIT, level="any", exempt=ENTRY_POINTS),
    # CLI -> tasks -> model: the layer packages (docs/architecture.md) import downwards only
    Rule("the model imports no task, export, app or CLI", ("wmoe.model", "wmoe.model.*"), TASKS + DEPLOY_TASKS,
         level="any"),
    Rule("training imports no evaluation, export, app or CLI", ("wmoe.training", "wmoe.training.*"),
         ("wmoe.evaluation", "wmoe.evaluation.*") + DEPLOY_TASKS, level="any"),
    Rule("evaluation imports no training, export, app or CLI", ("wmoe.evaluation", "wmoe.evaluation.*"),
         ("wmoe.training", "wmoe.training.*") + DEPLOY_TASKS, level="any"),
]


def _match(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def module_files() -> Dict[str, Path]:
    """module name -> source file, for every module of the distribution."""
    out: Dict[str, Path] = {}
    for pkg, folder in PACKAGE_DIRS.items():
        for f in sorted(folder.rglob("*.py")):
            rel = f.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts]
            if any(p.startswith(".") or p in ("results", "__pycache__") for p in parts):
                continue
            name = ".".join([pkg, *parts])
            if name.endswith(".__init__"):
                name = name[: -len(".__init__")]
            # a sub-folder of wmoe/ that is one of the other package dirs would be listed twice: keep the mapping's
            out.setdefault(name, f)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_pkg: bool) -> Iterator[Tuple[str, bool]]:
    """(imported module or module.attr, at module level?) for every import statement of ``tree``."""
    def walk(node: ast.AST, in_function: bool) -> Iterator[Tuple[str, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for c in child.orelse:  # the else branch runs
                    yield from walk(c, in_function)
                continue
            if isinstance(child, ast.Import):
                for a in child.names:
                    yield a.name, not in_function
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(child, module, is_pkg)
                for a in child.names:
                    yield (f"{base}.{a.name}" if a.name != "*" else base), not in_function
                yield base, not in_function
            fn = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from walk(child, in_function or fn)
    yield from walk(tree, False)


def _resolve(node: ast.ImportFrom, module: str, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    if not is_pkg:
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


@dataclass
class ImportMap:
    files: Dict[str, Path]
    module_level: Dict[str, Set[str]]  # module -> imported names (wmoe modules resolved, third party as written)
    function_level: Dict[str, Set[str]]

    def edges(self, level: str) -> Dict[str, Set[str]]:
        if level == "module":
            return self.module_level
        return {m: self.module_level[m] | self.function_level[m] for m in self.files}

    def closure(self, module: str) -> Dict[str, List[str]]:
        """Everything ``module`` imports at import time, transitively: name -> the chain that reaches it."""
        seen: Dict[str, List[str]] = {module: [module]}
        todo = [module]
        while todo:
            m = todo.pop()
            for d in sorted(self.module_level.get(m, ())):
                if d not in seen:
                    seen[d] = seen[m] + [d]
                    if d in self.files:
                        todo.append(d)
        del seen[module]
        return seen


def _wmoe_target(name: str, files: Dict[str, Path]) -> Optional[str]:
    """The wmoe module an imported name means (``wmoe.kernels.Kernels`` -> ``wmoe.kernels``), None if third party."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in files:
            return cand
    return None


def build_import_map() -> ImportMap:
    files = module_files()
    mod: Dict[str, Set[str]] = {m: set() for m in files}
    fun: Dict[str, Set[str]] = {m: set() for m in files}
    for m, f in files.items():
        tree = ast.parse(f.read_text(encoding="utf-8"), filename=str(f))
        for name, top in _imports(tree, m, f.name == "__init__.py"):
            target = _wmoe_target(name, files)
            if target is None:
                if name.split(".")[0] == "wmoe":
                    continue  # an attribute of a package (from wmoe import __version__): the package is an edge
                names = {name}
            else:
                # importing a.b.c runs a and a.b first
                parts = target.split(".")
                names = {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & set(files) | {target}
            names.discard(m)
            (mod if top else fun)[m] |= names
    return ImportMap(files, mod, fun)


def violations(imap: ImportMap, rules=RULES) -> List[str]:
    out = []
    for rule in rules:
        for m in sorted(imap.files):
            if not _match(m, rule.src) or _match(m, rule.exempt):
                continue
            if rule.deep:
                reached = imap.closure(m)
            else:
                reached = {d: [m, d] for d in imap.edges(rule.level)[m]}
            for d, chain in sorted(reached.items()):
                if _match(d, rule.dst) and not _match(d, rule.allow):
                    out.append(f"{rule.why}: {' -> '.join(chain)}")
    return out


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in edges:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    import sys
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(edges):
            if v not in index:
                strong(v)
    finally:
        sys.setrecursionlimit(limit)
    return out


def _package_edges(edges: Dict[str, Set[str]]) -> Dict[str, Set[str]]:
    """The edges without those from a package's __init__ to its own submodules and back (a package re-exporting
    its modules is not a cycle of the layers)."""
    out = {}
    for m, ds in edges.items():
        out[m] = {d for d in ds if not (d.startswith(m + ".") or m.startswith(d + "."))}
    return out


@pytest.fixture(scope="module")
def imap() -> ImportMap:
    return build_import_map()


def test_the_map_sees_the_tree(imap):
    """The map covers every package dir, and reads both levels (a map that saw nothing would pass every rule)."""
    assert {"wmoe.kernels.dispatch", "wmoe.export.trt_build", "wmoe.runtime.session", "wmoe.bench.harness"} <= set(
        imap.files)
    assert "torch" in imap.module_level["wmoe.kernels.dispatch"]
    assert "wmoe.contract" in imap.module_level["wmoe.export.trt_build"]
    assert "wmoe.export.trt_plugins" in imap.function_level["wmoe.export.trt_build"]
    # a rule that is broken on purpose is found, with its chain
    bad = violations(imap, [Rule("test", ("wmoe.export.trt_build",), ("wmoe.contract",), deep=True)])
    assert bad and bad[0].endswith("wmoe.export.trt_build -> wmoe.contract"), bad


@pytest.mark.parametrize("rule", RULES, ids=[r.why for r in RULES])
def test_layer_rule(imap, rule):
    assert violations(imap, [rule]) == []


def test_no_import_cycle(imap):
    """No cycle at module level, and none even through function-level imports (a lazy import that points back up
    is an upward arrow all the same: the issue's dispatch <-> ops, contract <-> onnx_meta)."""
    assert cycles(_package_edges(imap.edges("module"))) == []
    assert cycles(_package_edges(imap.edges("any"))) == []


def test_artifact_side_imports_without_torch():
    """The static rule, run: with torch (and open_clip) unimportable, every artifact-side module of export and the
    runtime import (the issue's done-when: ``sys.modules['torch'] = None; import wmoe.export.trt_build,
    wmoe.export.triton_repo``)."""
    import subprocess
    import sys
    code = ("import sys\n"
            "for m in ('torch', 'torchvision', 'open_clip', 'pytorch_wavelets'):\n"
            "    sys.modules[m] = None\n"
            "import importlib\n"
            f"for m in {[*ARTIFACT_SIDE, 'wmoe.runtime', 'wmoe.contract', 'wmoe.onnx_meta']!r}:\n"
            "    importlib.import_module(m)\n"
            "print('imported', len(sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr[-3000:]
