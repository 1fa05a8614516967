"""The package's import layering (DESIGN.md): one direction, no cycles, gin only at the edges.

Every `import plmjax.X` / `from plmjax.X import ...` in plmjax/ and tasks/, at module level or inside a function
(a lazy import is still a dependency), is an edge between two units (the first component under plmjax/, or
`tasks`). An edge may only go down the ranks or stay within one; no two units may import each other.
"""
import ast
import itertools
import pathlib

import pytest

from tests.conftest import REPO_ROOT

# DESIGN.md: layers <- models <- objectives / compression / peft / decode / analysis <- train
#   <- {evaluation, prompting, convert} <- {plan, bench, launch} <- cli; data and tasks never import models or train.
RANKS = {"layers": 0, "sharding": 0, "data": 0, "models": 1, "objectives": 2, "peft": 2, "decode": 2,
         "compression": 2, "analysis": 2, "train": 3, "evaluation": 4, "prompting": 4, "convert": 4,
         "plan": 5, "bench": 5, "launch": 5, "interactive": 5, "cli": 6}
# tasks/ (installed as plmjax.tasks) registers seqio tasks from data and prompting's PET preprocessors.
TASKS_MAY_IMPORT = {"data", "prompting", "tasks"}
GIN_FILES = {"plmjax/cli.py", "plmjax/launch.py", "plmjax/models/config.py"}  # and everything under tasks/


def _unit(path: pathlib.Path) -> str:
    rel = path.relative_to(REPO_ROOT).parts
    if rel[0] == "tasks":
        return "tasks"
    return rel[1][:-3] if rel[1].endswith(".py") else rel[1]


def _sources():
    for root in ("plmjax", "tasks"):
        for path in sorted((REPO_ROOT / root).rglob("*.py")):
            yield path, ast.parse(path.read_text(), str(path))


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield node.lineno, [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]


def _edges():
    edges = {}
    for path, tree in _sources():
        src = _unit(path)
        for line, names in _imports(tree):
            for name in names:
                parts = name.split(".")
                if parts[0] != "plmjax" or len(parts) < 2:
                    continue
                dst = "tasks" if parts[1] == "tasks" else parts[1]
                if dst != src and (dst in RANKS or dst == "tasks"):
                    edges.setdefault((src, dst), []).append(f"{path.relative_to(REPO_ROOT)}:{line}")
    return edges


EDGES = _edges()


def test_every_unit_has_a_rank():
    units = {_unit(path) for path, _ in _sources()} - {"tasks", "__init__"}
    assert units <= set(RANKS), f"give {sorted(units - set(RANKS))} a rank in RANKS (and DESIGN.md's order)"


def test_imports_go_down_the_layers():
    upward = {edge: where for edge, where in EDGES.items() if edge[0] != "tasks" and edge[1] != "tasks"
              and RANKS[edge[0]] < RANKS[edge[1]]}
    assert not upward, "\n".join(f"{a} -> {b}: {where[:3]}" for (a, b), where in sorted(upward.items()))


def test_no_package_imports_the_tasks_but_the_edges():
    into_tasks = {edge: where for edge, where in EDGES.items() if edge[1] == "tasks" and RANKS[edge[0]] < 3}
    assert not into_tasks, into_tasks  # data, models and the libraries above them take task names, not tasks


def test_tasks_import_only_data_and_prompting():
    bad = {edge: where for edge, where in EDGES.items() if edge[0] == "tasks" and edge[1] not in TASKS_MAY_IMPORT}
    assert not bad, bad


def test_no_import_cycles():
    units = sorted({unit for edge in EDGES for unit in edge})
    cycles = [(a, b) for a, b in itertools.combinations(units, 2) if (a, b) in EDGES and (b, a) in EDGES]
    assert not cycles, {cycle: (EDGES[cycle][:2], EDGES[cycle[::-1]][:2]) for cycle in cycles}


@pytest.mark.parametrize("path", [p for p, _ in _sources()], ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_gin_only_at_the_edges(path):
    rel = str(path.relative_to(REPO_ROOT))
    if rel in GIN_FILES or rel.startswith("tasks/"):
        return
    tree = ast.parse(path.read_text())
    uses = [line for line, names in _imports(tree) if any(n == "gin" or n.startswith("gin.") for n in names)]
    assert not uses, f"{rel}:{uses} imports gin: bind its settings in plmjax/launch.py and pass plain values"
