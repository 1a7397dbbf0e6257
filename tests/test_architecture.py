"""kercr's architecture, read from the source with :mod:`ast` (nothing is imported).

The import graph of kercr's own modules, in two parts: module-level imports (run when the module
is imported; ``if TYPE_CHECKING:`` blocks left out) and function-level ones (run when the function
is called). Checked: no cycle among module-level imports; every import goes to the importer's own
layer or a lower one (:data:`LAYERS`); every function-level import of a kercr module says why it is
there (``# heavy:`` or ``# lazy:``); only the modules of :data:`TENSORFLOW_AT_MODULE_LEVEL` import
TensorFlow when they are imported.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kercr"

#: kercr's layers, lowest first: a module may import from its own layer and the layers below it,
#: never from a higher one (so the numpy data core runs without Keras, detection without the
#: training code, and the console scripts sit on top of everything).
#:
#: A key is a dotted module prefix: it covers that module and everything under it; the longest key
#: that covers a module gives its layer. ``"kercr"`` alone is the exception: it is the package
#: ``__init__`` only (lazy: it imports its names on first use), not a prefix of everything. Every
#: module under ``kercr/`` must be covered (:func:`test_every_module_has_a_layer`), so a new
#: top-level module or package needs a line here. Some keys name a module before and after a move
#: (``kercr.training_data`` and ``kercr.evaluate_report`` are deprecated aliases of
#: ``kercr.training.data`` and ``kercr.evaluation.report``); a key that names no module is harmless.
#:
#: ====  =============================================================================
#: 0     configuration and version: the choice lists every layer checks against
#: 1     the numpy data core; where the shipped weights are (``kercr.weights`` itself)
#: 2     Keras building blocks: models, losses, metrics; model files; plots
#: 3     what trains, evaluates (pooled pixels), exports and tunes models
#: 4     detection on full frames, and what runs it (``kercr-evaluate``'s report)
#: 5     console scripts, the ship/average tools, ``python -m kercr.tuning``, ``kercr``
#: ====  =============================================================================
LAYERS = {
    "kercr.config": 0,
    "kercr._version": 0,
    "kercr._stderr": 0,
    "kercr._files": 0,
    "kercr._net": 0,
    "kercr.data": 1,
    "kercr.weights": 1,
    "kercr.models": 2,
    "kercr.losses": 2,
    "kercr.metrics": 2,
    "kercr.model_files": 2,
    "kercr.plots": 2,
    "kercr.training": 3,
    "kercr.training_data": 3,
    "kercr.evaluation": 3,
    "kercr.export": 3,
    "kercr.tuning": 3,
    "kercr.evaluation.report": 4,
    "kercr.evaluate_report": 4,
    "kercr.detection": 4,
    "kercr.inference": 4,
    "kercr.cli": 5,
    "kercr.weights.ship": 5,
    "kercr.weights.average": 5,
    "kercr.tuning.__main__": 5,
    "kercr": 5,
}

#: Imports that break :data:`LAYERS` today, ``(importer, imported, "module" or "function")``;
#: each is a known debt (see the issue tracker). A new violation fails the test, and so does an
#: entry here that is no longer true (remove it when the import is fixed).
KNOWN_LAYER_VIOLATIONS = {
    # TrainConfig.validate() asks the data core and the model registry to check their own options.
    ("kercr.config", "kercr.data.errors", "function"),
    ("kercr.config", "kercr.data.frames", "function"),
    ("kercr.config", "kercr.data.normalization", "function"),
    ("kercr.config", "kercr.models", "function"),
}

#: Modules that may import TensorFlow at module level (prefixes, as in :data:`LAYERS`): the export
#: code and the one tf.data module. Everything else imports it inside the functions that need it,
#: so the numpy data core, detection with LiteRT, training under JAX and every ``--help`` run
#: without it. (kercr.tuning is allowed too: Keras Tuner is TensorFlow-bound.)
TENSORFLOW_AT_MODULE_LEVEL = ("kercr.export", "kercr.data.pipeline", "kercr.tuning")

#: How a function-level import of a kercr module says why it is not at the top of the file.
IMPORT_REASONS = ("# heavy:", "# lazy:")


# --------------------------------------------------------------------------------------------
# Reading the source
# --------------------------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.lru_cache(maxsize=1)
def modules() -> dict:
    """Module name -> (path, parsed tree, source lines) of every ``.py`` file under ``kercr/``."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        found[_module_name(path)] = (path, ast.parse(text, filename=str(path)), text.splitlines())
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree, *, in_function=False):
    """``(node, in_function)`` for every import statement (``if TYPE_CHECKING:`` bodies left out)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        elif isinstance(node, ast.If) and _is_type_checking(node):
            yield from ((n, in_function) for n, _ in _imports(ast.Module(body=node.orelse, type_ignores=[]),
                                                              in_function=in_function))
        else:
            inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from _imports(node, in_function=inside)


def _targets(node, importer: str, known) -> list:
    """The modules an import statement names (``from a import b``: ``a.b`` when that is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: resolved against the importer's package
        package = importer.split(".")
        is_package = modules()[importer][0].name == "__init__.py"
        package = package[: len(package) - node.level + (1 if is_package else 0)]
        base = ".".join(package + ([node.module] if node.module else []))
    else:
        base = node.module
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]


@functools.lru_cache(maxsize=1)
def import_edges() -> list:
    """``(importer, imported, kind, line number, source line)`` of every import of any module.

    ``kind`` is ``"module"`` or ``"function"``. ``imported`` is the full dotted name as written
    (third-party modules included).
    """
    known = set(modules())
    edges = []
    for name, (_, tree, lines) in modules().items():
        for node, in_function in _imports(tree):
            for target in _targets(node, name, known):
                edges.append((name, target, "function" if in_function else "module", node.lineno,
                              lines[node.lineno - 1]))
    return edges


def kercr_edges(kind: str) -> list:
    """The ``kind`` imports of kercr modules, ``(importer, imported, line number, source line)``."""
    known = set(modules())
    return [(a, b, n, line) for a, b, k, n, line in import_edges()
            if k == kind and (b == "kercr" or b.startswith("kercr.")) and b in known and a != b]


def layer_of(module: str):
    """The layer :data:`LAYERS` gives ``module``, or None."""
    if module == "kercr":
        return LAYERS["kercr"]
    keys = [k for k in LAYERS if k != "kercr" and (module == k or module.startswith(k + "."))]
    return LAYERS[max(keys, key=len)] if keys else None


def _covered(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# --------------------------------------------------------------------------------------------
# The reader itself (so the checks below can fail)
# --------------------------------------------------------------------------------------------
def test_the_reader_sees_module_and_function_level_imports_and_resolves_submodules():
    edges = {(a, b, k) for a, b, k, _, _ in import_edges()}
    # kercr/detection/tiling.py: "from kercr.detection.loading import LoadedModel, round_up" at the top.
    assert ("kercr.detection.tiling", "kercr.detection.loading", "module") in edges
    # kercr/model_files.py imports Keras inside load_keras_model only.
    assert ("kercr.model_files", "keras", "function") in edges
    assert ("kercr.model_files", "keras", "module") not in edges
    # "from kercr.data import normalization" names the module, not the package.
    tree = ast.parse("from kercr.data import normalization, KercrDataError\n")
    names = _targets(tree.body[0], "kercr.config", set(modules()))
    assert names == ["kercr.data.normalization", "kercr.data"]
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert _cycles({"a": ["b"], "b": []}) == []


def test_layers_by_prefix():
    assert layer_of("kercr") == 5 and layer_of("kercr.config") == 0
    assert layer_of("kercr.weights") == 1 and layer_of("kercr.weights.ship") == 5
    assert layer_of("kercr.evaluation") == 3 and layer_of("kercr.evaluation.pooled") == 3
    assert layer_of("kercr.evaluation.report") == 4 and layer_of("kercr.evaluate_report") == 4
    assert layer_of("kercr.training_data") == 3 and layer_of("kercr.tuning.__main__") == 5
    assert layer_of("kercr.trainingwheels") is None  # a prefix ends at a dot


# --------------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------------
def test_every_module_has_a_layer():
    missing = sorted(m for m in modules() if layer_of(m) is None)
    assert not missing, f"add these modules (or their package) to LAYERS in {__file__}: {missing}"


def test_no_import_cycle_among_module_level_imports():
    graph: dict = {}
    for a, b, _, _ in kercr_edges("module"):
        graph.setdefault(a, set()).add(b)
    cycles = _cycles(graph)
    assert not cycles, "module-level import cycles (move one import into the function that needs it):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_imports_go_to_the_same_layer_or_lower():
    found = set()
    where = {}
    for kind in ("module", "function"):
        for a, b, n, line in kercr_edges(kind):
            if layer_of(b) is not None and layer_of(a) is not None and layer_of(b) > layer_of(a):
                found.add((a, b, kind))
                where[(a, b, kind)] = f"{modules()[a][0].relative_to(ROOT)}:{n}: {line.strip()}"
    new = sorted(found - KNOWN_LAYER_VIOLATIONS)
    assert not new, ("imports from a higher layer (LAYERS in tests/test_architecture.py); move the code to the "
                     "right layer or invert the dependency:\n" + "\n".join(
                         f"  {where[v]}   [layer {layer_of(v[0])} -> {layer_of(v[1])}]" for v in new))
    fixed = sorted(KNOWN_LAYER_VIOLATIONS - found)
    assert not fixed, f"fixed: remove these from KNOWN_LAYER_VIOLATIONS: {fixed}"


def test_every_function_level_import_of_kercr_says_why():
    unmarked = sorted({(str(modules()[a][0].relative_to(ROOT)), n, line.strip())
                       for a, b, n, line in kercr_edges("function")
                       if not any(reason in line for reason in IMPORT_REASONS)})
    assert not unmarked, ("a function-level import of a kercr module needs a comment on its line starting "
                          f"{' or '.join(IMPORT_REASONS)} (why it is not at the top):\n"
                          + "\n".join(f"  {path}:{n}: {line}" for path, n, line in unmarked))


def test_tensorflow_is_imported_at_module_level_only_where_allowed():
    importers = {a for a, b, kind, _, _ in import_edges() if kind == "module" and b.split(".")[0] == "tensorflow"}
    assert importers, "no module imports TensorFlow: the reader is broken"
    assert all(_covered(m, TENSORFLOW_AT_MODULE_LEVEL) for m in {"kercr.export.tflite", "kercr.data.pipeline"})
    wrong = sorted(m for m in importers if not _covered(m, TENSORFLOW_AT_MODULE_LEVEL))
    assert not wrong, (f"these modules import TensorFlow at module level; import it inside the functions that "
                       f"need it (allowed at the top only in {TENSORFLOW_AT_MODULE_LEVEL}): {wrong}")
