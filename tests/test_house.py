"""The package's shape: imports run one way (no circles, lazy imports inside functions included), no module over
400 lines, the scripts folder holds the user's entry points only, and nothing but project files sits at the root."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "pdp_hf")


def modules() -> dict[str, str]:
    """Dotted module name -> file, for every .py file of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: str, known: set[str]) -> set[str]:
    """Package modules that `name` imports anywhere in its file (top level or inside functions)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
            for alias in node.names:  # `from . import x` imports the module x
                if f"{target}.{alias.name}" in known:
                    found.add(f"{target}.{alias.name}")
            found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name and m != "pdp_hf"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    graph = {name: imports_of(name, path, known) for name, path in found.items()}
    # a package's __init__ imports its submodules by design; a submodule importing its own package's face is the
    # circle to catch, so subpackage faces stay in the graph and only the top-level face is left out
    graph.pop("pdp_hf", None)
    return graph


def test_no_import_circles():
    assert find_cycle(import_graph()) is None, f"import circle: {' -> '.join(find_cycle(import_graph()))}"


def test_the_circle_finder_finds_a_circle():
    graph = import_graph()
    graph["pdp_hf.config"] = graph["pdp_hf.config"] | {"pdp_hf.methods"}  # the 0.3.0 circle through TEMPERATURE_MODES
    assert find_cycle(graph) is not None


def test_layers_run_one_way():
    """The config sits at the bottom (it imports only the version and the role groups); methods never reach the pruner or injection;
    nothing below the export layer imports it."""
    graph = import_graph()
    assert graph["pdp_hf.config"] <= {"pdp_hf.version", "pdp_hf.roles", "pdp_hf.config_io"}
    below_pruner = ("pdp_hf.config", "pdp_hf.targets", "pdp_hf.layers", "pdp_hf.units", "pdp_hf.methods")
    upper = {"pdp_hf.pruner", "pdp_hf.injection", "pdp_hf.trainer", "pdp_hf.export", "pdp_hf.cli"}
    for name, deps in graph.items():
        if name.startswith(below_pruner):
            assert not deps & upper, f"{name} imports {deps & upper}"


def test_no_module_over_400_lines():
    long = {}
    for name, path in modules().items():
        with open(path, encoding="utf-8") as f:
            lines = sum(1 for _ in f)
        if lines > 400:
            long[name] = lines
    assert not long, f"modules over 400 lines: {long}"


def test_scripts_are_entry_points_and_the_root_is_clean():
    scripts = sorted(f for f in os.listdir(os.path.join(ROOT, "scripts")) if f.endswith(".py"))
    assert scripts == ["demo.py", "run_glue.py", "run_image_classification.py"]
    tracked_root = {f for f in os.listdir(ROOT) if not f.startswith(".") or f in (".probe_prof.py",)}
    allowed = {"setup.py", "Makefile", "README.md", "ruff.toml", "pdp_hf", "scripts", "tests", "benchmarks", "tools",
               "docs", "model_cards", "outputs", "pdp_hf.egg-info", "build", "dist"}
    assert tracked_root <= allowed, f"unexpected at the root: {sorted(tracked_root - allowed)}"
    assert not [f for f in os.listdir(ROOT) if f.startswith(".probe")]


def test_readme_is_short_and_links_every_docs_page():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert readme.count("\n") <= 300
    pages = sorted(f for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))
    assert pages and all(f"(docs/{page})" in readme for page in pages), [p for p in pages if f"(docs/{p})" not in readme]
