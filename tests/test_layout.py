"""Tests of the package layout: one subpackage per pipeline stage, imports
running one way down the pipeline, no cycles, no private names shared
across modules. Read from the sources (ast); nothing is imported."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_shufflenet"

# What each stage may import (besides itself).
ALLOWED = {
    "utils": set(),
    "models": {"utils"},
    "data": {"utils"},
    "training": {"models", "data", "utils"},
    "lite": {"models", "data", "utils", "version"},
    "weights": {"models", "utils"},
    # Needs the [qat] extra; imported by nothing of the package.
    "qat": {"models", "data", "training", "lite", "utils"},
}
# Function-local imports are for heavy or optional dependencies only.
LAZY = {
    "matplotlib",
    "matplotlib.pyplot",
    "tensorflow_datasets",
    "sklearn.datasets",
    "sklearn.model_selection",
    "torch",
    "ai_edge_quantizer",
    # The probe of the TensorFlow backend, in a stage that is backend-free.
    "tensorflow",
    # The JAX trainer imports jax and orbax, installed with the [jax] extra.
    "keras_shufflenet.training.jax_training",
}
MAX_MODULE_LINES = 650
# Code lines of one function, its docstring aside.
MAX_FUNCTION_LINES = 80


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path, ast.parse(path.read_text())


MODULES = {name: (path, tree) for name, path, tree in _modules()}


def _ours(tree):
    """`(module, [names], is_top_level)` for every import of this package."""
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (
            node.module or ""
        ).startswith("keras_shufflenet"):
            yield node.module, [a.name for a in node.names], id(node) in top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("keras_shufflenet"):
                    yield alias.name, [], id(node) in top


def _dependencies(module):
    """Modules that importing `module` runs, packages' __init__ included."""
    deps = set()
    for target, names, _ in _ours(MODULES[module][1]):
        parts = target.split(".")
        # Importing a.b.c runs a/__init__ and a/b/__init__ first.
        deps.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
        deps.update(f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES)
    parents = module.split(".")
    deps -= {".".join(parents[:i]) for i in range(1, len(parents) + 1)}
    return {d for d in deps if d in MODULES}


def _stage(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_the_library_has_no_import_cycle():
    graph = {m: _dependencies(m) for m in MODULES if m != "keras_shufflenet"}
    visiting, done, cycles = [], set(), []

    def visit(module):
        if module in done:
            return
        if module in visiting:
            cycles.append(visiting[visiting.index(module):] + [module])
            return
        visiting.append(module)
        for dep in sorted(graph.get(module, ())):
            visit(dep)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert cycles == []


@pytest.mark.parametrize("stage", sorted(ALLOWED))
def test_a_stage_imports_only_the_stages_above_it(stage):
    wrong = sorted(
        f"{module} imports {dep}"
        for module in MODULES
        if _stage(module) == stage
        for dep in _dependencies(module)
        if _stage(dep) not in ALLOWED[stage] | {stage}
    )
    assert wrong == []


def test_no_private_name_is_imported_across_modules():
    private = sorted(
        f"{module}: {target}.{name}"
        for module, (_, tree) in MODULES.items()
        for target, names, _ in _ours(tree)
        for name in names
        if name.startswith("_") and name != "__version__"
    )
    assert private == []


def test_function_local_imports_are_only_heavy_optional_dependencies():
    local = []
    for module, (_, tree) in MODULES.items():
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if id(node) in top:
                continue
            if isinstance(node, ast.Import):
                local += [(module, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                local.append((module, node.module))
    assert sorted(
        f"{module}: {name}" for module, name in local if name not in LAZY
    ) == []


def test_every_subpackage_states_what_it_owns():
    for module, (path, tree) in MODULES.items():
        if path.name == "__init__.py":
            assert ast.get_docstring(tree), module


def test_no_module_is_longer_than_a_reader_can_hold():
    long = {
        module: len(path.read_text().splitlines())
        for module, (path, _) in MODULES.items()
    }
    assert {m: n for m, n in long.items() if n > MAX_MODULE_LINES} == {}


def test_no_function_body_is_longer_than_a_screen():
    long = []
    for module, (_, tree) in MODULES.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            body = node.body
            if ast.get_docstring(node) and len(body) > 1:
                body = body[1:]
            lines = node.end_lineno - body[0].lineno + 1
            if lines > MAX_FUNCTION_LINES:
                long.append(f"{module}.{node.name}: {lines} lines")
    assert long == []


# The names a user calls, chosen on purpose; the stages hold the rest.
TOP_LEVEL = [
    "ChannelShuffle",
    "PointwiseGroupConv2D",
    "ShuffleNet",
    "complexity",
    "convert",
    "data",
    "feature_extractor",
    "from_official_checkpoint",
    "lite",
    "models",
    "network_parts",
    "preprocess_input",
    "shufflenet_widths",
    "train",
    "training",
    "training_model",
    "weights",
]


def test_the_top_level_exports_the_users_names_and_no_internals():
    import types

    import keras_shufflenet

    assert sorted(keras_shufflenet.__all__) == TOP_LEVEL
    # Whatever else is importable from the top is a stage (a submodule).
    others = {
        name
        for name in dir(keras_shufflenet)
        if not name.startswith("_") and name not in TOP_LEVEL
    }
    assert {
        name
        for name in others
        if not isinstance(getattr(keras_shufflenet, name), types.ModuleType)
    } == set()


def test_a_stage_exports_only_what_its_docstring_names():
    missing = []
    for module, (path, tree) in MODULES.items():
        if path.name != "__init__.py" or module == "keras_shufflenet":
            continue
        doc = ast.get_docstring(tree)
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                missing += [
                    f"{module}: {alias.name}"
                    for alias in node.names
                    if f"`{alias.name}" not in doc
                ]
    assert missing == []
