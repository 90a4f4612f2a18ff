"""Data flows one way: the import graph of ``llmfair`` follows the pipeline stages; and the public
API (``llmfair.<name>``, imported lazily) resolves, keeps ``import llmfair`` CPU-only and is what
``docs/python_api.md`` shows.

Every module under ``llmfair/`` is parsed with :mod:`ast` (nothing is imported, so this runs in a
fraction of a second). An import counts wherever it is written — at module level or inside a
function ("lazy") — except under ``if TYPE_CHECKING:``, which never runs. Lazy imports count
because they are dependencies all the same: deferring an import keeps ``import llmfair`` fast, it
does not make an earlier stage independent of a later one.

Checked:

(a) no import cycle — neither among module-level imports nor among all imports. The one edge left
    out of the second check is a lazy import of a module's *own* package (``llmfair.sweep.execute``
    reading ``llmfair.sweep.train_head`` at call time so that tests can replace it): the package
    imports the module, the module reads a name back from it once both exist;
(b) no module imports a later stage (:data:`STAGES`), lazily or not. The jobs at the end —
    the public API in ``llmfair/__init__.py``, the CLI, benchmark, demo, sweeps, checks, the
    speech-LLM run — may import anything before them;
(c) no objective method module imports another method module: methods share code only through
    ``llmfair.objectives.base`` and the private ``llmfair.objectives._*`` modules.

A module that no stage claims fails the test: add a new top-level module or package to
:data:`STAGES`. :data:`PENDING` and :data:`PENDING_CYCLE_EDGES` list the violations that remain in
modules owned elsewhere, each with its fix; an entry that no longer occurs fails the test, so the
lists only shrink.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "llmfair"
DOCS = ROOT.parent / "docs" / "python_api.md"

STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("llmfair.errors", "llmfair.options", "llmfair._atomic", "llmfair._registry")),
    # GroupSpec / TrainingStats (data.grouping) and the samplers (data.sampling) live here
    ("data", ("llmfair.data",)),
    ("features and models", ("llmfair.ssl", "llmfair.speechllm")),
    ("group inference", ("llmfair.groups",)),
    ("objectives", ("llmfair.objectives",)),
    # the frozen-feature head's training loops (one head, many batched heads and their batched
    # objectives) are trainers, like FairTrainer; the shipped launch configs are the trainers'
    # accelerate / DeepSpeed settings
    ("training", ("llmfair.training", "llmfair.ssl.train_head", "llmfair.ssl.batched_head",
                  "llmfair.ssl._batched_objectives", "llmfair.launch_configs")),
    ("predictions", ("llmfair.predictions",)),
    ("metrics", ("llmfair.metrics",)),
    ("correction", ("llmfair.correction",)),
    ("report", ("llmfair.report",)),
    ("jobs", ("llmfair", "llmfair.__main__", "llmfair.cli", "llmfair.benchmark", "llmfair.demo", "llmfair.sweep",
              "llmfair.check", "llmfair.speechllm.run", "llmfair.speechllm.selection", "llmfair.speechllm.sweep",
              "llmfair.speechllm.export")),
]
"""Pipeline stages in order (docs/architecture.md); a module belongs to the longest prefix that
names it (``llmfair`` itself names only the package's ``__init__``)."""

PENDING: dict[tuple[str, str], str] = {}
"""Stage violations (importer, imported) left in modules owned elsewhere, with their fix."""

PENDING_CYCLE_EDGES: dict[tuple[str, str], str] = {}
"""Imports (importer, imported) that close a cycle, left in modules owned elsewhere, with their fix."""


# ------------------------------------------------------------------------------------- the graph
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The llmfair module a dotted name refers to (its longest prefix that is a module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Collects (target module, lazy?, line) for every llmfair import of one module."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.depth = 0
        self.found: list[tuple[str, bool, int]] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _nested(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _nested

    def _add(self, name: str | None, line: int) -> None:
        target = _resolve(name) if name else None
        if target and target != self.module:
            self.found.append((target, self.depth > 0, line))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == "llmfair" or alias.name.startswith("llmfair."):
                self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            full = f"{base}.{node.module}" if node.module else base
        else:
            full = node.module or ""
        if not (full == "llmfair" or full.startswith("llmfair.")):
            return
        for alias in node.names:
            sub = f"{full}.{alias.name}"
            self._add(sub if sub in MODULES else full, node.lineno)


def _edges() -> dict[str, list[tuple[str, bool, int]]]:
    edges = {}
    for name, path in MODULES.items():
        visitor = _Imports(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        edges[name] = visitor.found
    return edges


EDGES = _edges()


def stage_of(module: str) -> int | None:
    """Index into STAGES of the longest prefix naming ``module`` (None: no stage claims it)."""
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(STAGES):
        for prefix in prefixes:
            hit = module == prefix or (prefix != "llmfair" and module.startswith(prefix + "."))
            if hit and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _where(importer: str, target: str) -> str:
    lines = sorted({line for t, _, line in EDGES[importer] if t == target})
    return f"{MODULES[importer].relative_to(ROOT.parent)}:{','.join(map(str, lines))}"


# ------------------------------------------------------------------------------------- the checks
def test_the_parser_sees_the_package() -> None:
    """Guards against a check that passes because it parsed nothing."""
    assert len(MODULES) > 50 and "llmfair.objectives.base" in MODULES
    assert ("llmfair.objectives.base", False) in {(t, lazy) for t, lazy, _ in EDGES["llmfair.objectives.erm"]}
    assert any(lazy for t, lazy, _ in EDGES["llmfair.ssl.train_head"] if t.startswith("llmfair.training"))
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_has_a_stage() -> None:
    unclaimed = sorted(m for m in MODULES if stage_of(m) is None)
    assert not unclaimed, f"modules that no stage claims (add them to STAGES in {Path(__file__).name}): {unclaimed}"


def test_no_import_cycle_at_module_level() -> None:
    graph = {m: {t for t, lazy, _ in edges if not lazy} for m, edges in EDGES.items()}
    assert _cycles(graph) == []


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        for child in graph.get(todo.pop(), ()):
            if child == goal:
                return True
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return False


def test_no_import_cycle_through_lazy_imports() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, edges in EDGES.items():
        for target, lazy, _ in edges:
            if lazy and module.startswith(target + "."):
                continue  # a module reading a name back from its own package at call time
            if (module, target) not in PENDING_CYCLE_EDGES:
                graph[module].add(target)
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)
    stale = sorted((m, t) for m, t in PENDING_CYCLE_EDGES
                   if t not in {target for target, _, _ in EDGES.get(m, ())} or not _reaches(graph, t, m))
    assert not stale, f"PENDING_CYCLE_EDGES entries that no longer close a cycle (remove them): {stale}"


def test_no_module_imports_a_later_stage() -> None:
    violations = {}
    for module, edges in EDGES.items():
        mine = stage_of(module)
        for target, _, _ in edges:
            theirs = stage_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                violations[(module, target)] = f"{STAGES[mine][0]} imports {STAGES[theirs][0]}"
    unexpected = {k: v for k, v in violations.items() if k not in PENDING}
    assert not unexpected, "earlier stages import later ones:\n" + "\n".join(
        f"  {_where(m, t)} {m} -> {t} ({why})" for (m, t), why in sorted(unexpected.items()))
    stale = sorted(k for k in PENDING if k not in violations)
    assert not stale, f"PENDING entries that no longer occur (remove them): {stale}"


def _is_method_module(module: str) -> bool:
    head, _, leaf = module.rpartition(".")
    return head == "llmfair.objectives" and not leaf.startswith("_") and leaf != "base"


def test_objective_methods_do_not_import_each_other() -> None:
    methods = sorted(m for m in MODULES if _is_method_module(m))
    assert {"llmfair.objectives.erm", "llmfair.objectives.gdro", "llmfair.objectives.lff"} <= set(methods)
    bad = set()
    for module in MODULES:
        if not module.startswith("llmfair.objectives.") or module == "llmfair.objectives":
            continue
        for target, _, _ in EDGES[module]:
            if target == "llmfair.objectives" or (_is_method_module(target) and target != module):
                bad.add(f"{_where(module, target)} {module} -> {target}")
    assert not bad, ("objective modules may import only llmfair.objectives.base and the private "
                     "llmfair.objectives._* modules:\n  " + "\n  ".join(sorted(bad)))


def test_one_registry_implementation() -> None:
    """Objectives, feature extractors and samplers are registered through ``llmfair._registry``."""
    for module in ("llmfair.objectives.base", "llmfair.ssl.extractors", "llmfair.data.sampling"):
        assert module in MODULES, f"{module} is missing"
        assert "llmfair._registry" in {t for t, _, _ in EDGES[module]}, f"{module} does not use llmfair._registry"


# ------------------------------------------------------------------------------------- the public API
def test_import_llmfair_loads_neither_torch_nor_transformers() -> None:
    code = ("import sys, llmfair; heavy = sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules); "
            "print(','.join(heavy)); assert not heavy, heavy")
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT.parent)
    assert done.returncode == 0, f"import llmfair loaded {done.stdout.strip()} {done.stderr[-400:]}"


def test_every_public_name_resolves() -> None:
    import llmfair

    exports = llmfair._EXPORTS
    assert set(llmfair.__all__) == set(exports) | {"__version__"}
    shadowing = sorted(n for n in exports if f"llmfair.{n}" in MODULES)
    assert not shadowing, f"public names that hide a submodule: {shadowing}"
    for name, (module, attribute) in sorted(exports.items()):
        value = getattr(llmfair, name)
        assert value is getattr(sys.modules[module], attribute), name
    assert set(exports) <= set(dir(llmfair))
    with pytest.raises(AttributeError, match="no attribute 'no_such_job'"):
        llmfair.no_such_job  # noqa: B018


def _doc_blocks() -> list[tuple[bool, str]]:
    """(tested?, code) of every python block of docs/python_api.md."""
    text = DOCS.read_text(encoding="utf-8")
    return [(bool(mark), code) for mark, code in re.findall(r"(<!-- tested -->\n)?```python\n(.*?)```", text, re.S)]


def test_the_docs_use_public_names() -> None:
    import llmfair

    blocks = _doc_blocks()
    assert len(blocks) >= 8 and sum(tested for tested, _ in blocks) >= 3
    used = set()
    for _, code in blocks:
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "llmfair":
                used.add(node.attr)
    assert used - set(llmfair.__all__) == set(), f"docs/python_api.md uses non-public names: {used - set(llmfair.__all__)}"
    cli = (ROOT / "cli.py").read_text(encoding="utf-8")
    for job in ("generate_corpus", "read_meld_st", "train", "predict", "export_run", "run_benchmark", "write_report",
                "run_sweep", "fit_correction", "apply_correction", "train_gender_model", "check_recipe"):
        assert job in used, f"docs/python_api.md does not show {job}"
        assert re.search(rf"\b{llmfair._EXPORTS[job][1]}\(", cli), f"the CLI does not call {job}"


def test_the_tested_doc_blocks_run(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "python_api_doc"}
    for tested, code in _doc_blocks():
        if tested:
            exec(compile(code, str(DOCS), "exec"), namespace)  # noqa: S102 - our own documentation
    assert (tmp_path / "report" / "metrics.json").is_file() and namespace["result"]["markdown"]
