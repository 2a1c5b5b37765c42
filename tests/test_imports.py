"""The package's import graph: no circles, every module importable alone, the registry at the
bottom, and what Grain's worker processes unpickle free of JAX."""

import ast
import importlib
import pathlib
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "imgcls_jax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))


def _imports(module: str) -> set[str]:
    """The package's modules that `module` imports anywhere (also inside functions)."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in MODULES and name != module}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_the_import_graph_has_no_circles():
    graph = {module: _imports(module) for module in MODULES}
    # A package importing its own submodules (to register them) is not a circle.
    for module, imported in graph.items():
        graph[module] = {m for m in imported if not module.startswith(m + ".")}
    cycles = _cycles(graph)
    assert not cycles, f"Import circles: {cycles}"
    assert _imports("imgcls_jax.registry") == set()  # The bottom of the graph.
    assert _imports("imgcls_jax.config") == {"imgcls_jax.registry"}


def test_the_graph_check_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", [m for m in MODULES if m != "imgcls_jax.convert.__main__"])
def test_every_module_imports_alone(module):
    """Each module imported first, in a process where no other module of the package is."""
    saved = {name: sys.modules.pop(name) for name in list(sys.modules)
             if name == "imgcls_jax" or name.startswith("imgcls_jax.")}  # fmt: skip
    try:
        importlib.import_module(module)
    finally:
        for name in [n for n in sys.modules if n == "imgcls_jax" or n.startswith("imgcls_jax.")]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_grain_workers_read_batch_rows_without_importing_jax(tmp_path):
    """What a Grain worker process unpickles and calls (the rows of a streamed image folder)
    imports NumPy and PIL, not JAX, and reads the batch the training process would."""
    import pickle
    import subprocess

    import numpy as np
    import PIL.Image

    from imgcls_jax.data import Split, batch_rows
    from imgcls_jax.data.image_folder import list_image_folder

    for label, name in enumerate(("ant", "bee")):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(4):
            pixels = np.full((10 + i, 12, 3), 60 * label + 10 * i, np.uint8)
            PIL.Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    images, labels, _ = list_image_folder(str(tmp_path / "images"), 8, 3)
    rows = batch_rows.LocalTrainRows(Split(images, labels), batch_rows.TrainOrder(8, 4, 0),
                                     slice(1, 3))  # fmt: skip
    (tmp_path / "rows.pkl").write_bytes(pickle.dumps(rows))
    code = ("import pickle, sys; rows = pickle.load(open(sys.argv[1], 'rb')); "
            "batch = rows(1); print(int(batch['image'].sum()), 'jax' in sys.modules)")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "rows.pkl")],
                         capture_output=True, text=True, cwd=PACKAGE.parent, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(int(rows(1)["image"].sum())), "False"]
