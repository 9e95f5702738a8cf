import subprocess
import sys


def test_import_curation_is_light():
    """`import curation` (and the modules the app reads through) pulls in no heavy library."""
    code = ("import sys, curation, curation.store, curation.ingest, curation.demo, curation.cli, "
            "curation.embed, curation.embed_ray, curation.reward; "
            "heavy = [m for m in ('streamlit', 'torch', 'open_clip', 'duckdb', 'faiss', 'umap', 'hdbscan', 'ray') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "curation", "--help"], capture_output=True, text=True).stdout
    for cmd in ("demo", "embed", "ingest", "reward", "info"):
        assert cmd in out


def _import_graph():
    """{module: {modules of curation it imports}}, function-level imports included."""
    import ast
    from pathlib import Path

    pkg = Path(__file__).resolve().parents[1] / "curation"
    names = {p.stem for p in pkg.glob("*.py")}
    graph = {}
    for p in sorted(pkg.glob("*.py")):
        edges = set()
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "curation":
                parts = node.module.split(".")
                if len(parts) > 1:
                    edges.add(parts[1])
                else:
                    edges |= {a.name for a in node.names if a.name in names}
            elif isinstance(node, ast.Import):
                edges |= {a.name.split(".")[1] for a in node.names if a.name.startswith("curation.")}
        graph[p.stem] = edges - {p.stem, "__init__", "__main__"}
    return graph


def test_no_import_circle_inside_curation():
    """The import graph shows the architecture only if it has no circle (a function-level import that
    closes one counts): kernels and the store at the bottom, workflows above, the CLI on top."""
    graph = _import_graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)
