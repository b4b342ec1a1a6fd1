"""The kernel package's floors (README "Layout"): contract at the bottom, implementations in the
middle, public ops on top, and no import circle anywhere in specdec_kernels.

The graph is read from the source (every ``import`` statement, function-local ones included), so an
import hidden inside a function to dodge a circle at load time still counts as an edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "specdec_kernels"

# Which floors a floor may import (besides itself). testing/ is a client of the public API.
ALLOWED = {
    "contract": {"contract"},
    "reference": {"contract", "reference"},
    "triton": {"contract", "triton", "_backend"},
    "ops": {"contract", "ops", "_backend"},
}


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent)
    parts = list(rel.parts)
    parts[-1] = parts[-1].split(".")[0]  # mod.py, _C.cpython-311-x86_64-linux-gnu.so
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(current: str, is_pkg: bool, node: ast.ImportFrom) -> tuple[list[str], str]:
    if node.level == 0:
        base = node.module or ""
    else:
        pkg = current.split(".") if is_pkg else current.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([node.module] if node.module else []))
    # "from . import x" / "from .pkg import mod" name submodules; "from .m import f" names module m
    return [f"{base}.{a.name}" for a in node.names], base


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the specdec_kernels modules it imports (edges to packages point at __init__)."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    files.update({_module_name(p, root): p for p in root.rglob("*.so")})  # compiled: leaves
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges: set[str] = set()
        is_pkg = path.name == "__init__.py"
        if path.suffix != ".py":
            graph[name] = set()
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                submodules, base = _resolve(name, is_pkg, node)
                # "from .. import _backend" imports the submodule; "from .m import f" imports m
                targets = [t for t in submodules if t in files] or [base]
            for t in targets:
                while t and t not in files:  # "import pkg.mod.attr" -> "pkg.mod"
                    t = t.rpartition(".")[0]
                if t and t.startswith("specdec_kernels") and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def _floor(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_find_cycle_negative_control():
    # The detector must see a circle through a function-local import like the ones this layout removed.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_import_graph_sees_function_local_imports(tmp_path):
    pkg = tmp_path / "specdec_kernels"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "reference").mkdir()
    for d in (pkg, pkg / "ops", pkg / "reference"):
        (d / "__init__.py").write_text("")
    (pkg / "ops" / "x.py").write_text("from ..reference import x\n\n\ndef g():\n    pass\n")
    (pkg / "reference" / "x.py").write_text("def f():\n    from ..ops.x import g\n")
    g = import_graph(pkg)
    assert find_cycle(g) is not None


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("floor", sorted(ALLOWED))
def test_floors_import_only_below(floor):
    bad = []
    for module, edges in import_graph().items():
        if _floor(module) != floor:
            continue
        for target in edges:
            if _floor(target) not in ALLOWED[floor]:
                bad.append(f"{module} imports {target}")
    assert not bad, "\n".join(sorted(bad))


def test_reference_is_reachable_as_an_attribute():
    # README: "specdec_kernels.reference": reachable as sk.reference after a bare `import specdec_kernels`
    # (a fresh interpreter: in this session other tests may have imported the submodule already).
    import subprocess
    import sys

    code = ("import specdec_kernels as sk, torch; x = torch.tensor([[1]]); logits = torch.eye(3)[None, :2]; "
            "print(sk.reference.verify_chain_greedy(x, logits).tokens.tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[[0, -1]]"  # row 0 argmax is 0, not the draft 1
