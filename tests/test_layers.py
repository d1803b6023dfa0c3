"""The layer order of docs/architecture.md, checked on the source: every import of every
module (at the top or inside a function) points to a lower layer, and no modules import
each other in a cycle."""

import ast
from pathlib import Path

import difforge

SRC = Path(difforge.__file__).parent

# Lowest first; a package may import from its own package and from lower layers only.
LAYERS = [
    {"diffusion", "io"},  # pure tensor maths; pixels <-> files and model space, output paths
    {"sampling", "models"},  # samplers over D(x, sigma, cond); networks and the Denoiser
    {"config", "defaults"},  # typed configs; sampling defaults
    {"runs", "runtime", "hub", "allocator"},  # run directories, checkpoints (reading); device, precision, malloc; Hub
    {"data", "model_files"},  # datasets, prepare / inspect; model and run folders read into networks
    {"pipeline"},  # a loaded model that generates
    {"train", "eval", "tasks", "interop"},  # what is done with models (interop: diffusers folders)
    {"serve"},  # the HTTP service
    {"cli"},  # the command line
    {"__main__"},  # `python -m difforge`
]
SAME_LAYER = {("train", "eval")}  # training measures FD with eval's in-training evaluation
LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported difforge module, line) for every import statement in the file."""
    found = []
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in
                   ast.unparse(block.test) for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("difforge")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module.startswith("difforge"):
                # `from difforge.eval import metrics` imports the module difforge.eval.metrics;
                # `from difforge.eval import evaluate_fn` what difforge/eval/__init__.py holds
                for a in node.names:
                    sub = (SRC.parent / f"{module}.{a.name}".replace(".", "/")).with_suffix(".py")
                    found.append((f"{module}.{a.name}" if sub.is_file() else module, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {m: set() for m in files}
    for m, p in files.items():
        for target, _ in _imports(p):
            while target not in files and "." in target:  # `from difforge.data.store import x` -> the module
                target = target.rsplit(".", 1)[0]
            if target in files and target != m:
                graph[m].add(target)
    return graph


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def test_every_package_has_a_layer():
    parts = {_part(m) for m in _graph()} - {"__init__"}
    assert parts <= set(LAYER), f"add {sorted(parts - set(LAYER))} to LAYERS (and to docs/architecture.md)"


def test_imports_point_down_the_layers():
    wrong = []
    for m, targets in _graph().items():
        a = _part(m)
        for t in targets:
            b = _part(t)
            if a == b or b == "__init__" or a == "__init__":
                continue
            if LAYER[b] > LAYER[a] or (LAYER[b] == LAYER[a] and (a, b) not in SAME_LAYER):
                wrong.append(f"{m} -> {t}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_function_level_imports():
    """The scan reads imports inside functions, not only at the top (a check that cannot fail is no check)."""
    f = SRC / "model_files.py"
    assert any(t.startswith("difforge.runs") for t, _ in _imports(f))  # imported inside its functions only
