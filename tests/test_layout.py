"""The package's layout rules, checked on the source: layers whose imports point down, no import cycle, no module
over 400 lines, remote-code files that hold the model contract only, and one loader.

The layers, bottom to top (a module may import its own layer and those below, never one above):

    contract   tinygpt/__init__.py, configuration_ / modeling_ / tokenization_tinygpt.py (uploaded as remote code)
    data       tinygpt/data/
    decoding   tinygpt/decoding/
    hub        tinygpt/hub/ (the one loader, pull, push, export, card, Space)
    evaluation tinygpt/evaluation/ (bits per byte, lm-evaluation-harness, `tinygpt eval`)
    training   tinygpt/training/
    serving    tinygpt/serving/
    app        tinygpt/app/
    cli        tinygpt/cli.py, tinygpt/__main__.py

Imports inside functions count: hiding an import in a function hides a cycle, it does not remove it.
"""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tinygpt"
LAYERS = ["contract", "data", "decoding", "hub", "evaluation", "training", "serving", "app", "cli"]
REMOTE_CODE = ("configuration_tinygpt", "modeling_tinygpt", "tokenization_tinygpt")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in REMOTE_CODE:
        return "contract"
    if parts[1] in ("cli", "__main__"):
        return "cli"
    assert parts[1] in LAYERS, f"{module} is in no layer: put it in one of tinygpt's subpackages"
    return parts[1]


def imported_modules(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The tinygpt modules that `module` imports, anywhere in its file (functions included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from tinygpt.x import y` imports tinygpt.x.y when y is a module, else tinygpt.x
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in known and target != module}
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {module: imported_modules(module, path, known) for module, path in known.items()}


def test_every_import_points_to_the_same_layer_or_one_below():
    upward = [
        f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
        for module, targets in import_graph().items()
        for target in targets
        if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(module))
    ]
    assert not upward, "imports pointing up a layer:\n" + "\n".join(upward)


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("module", sorted(modules()))
def test_module_is_at_most_400_lines(module):
    lines = len(modules()[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines: split it by concern"


def test_remote_code_files_import_only_each_other_and_relatively():
    for name in REMOTE_CODE:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("tinygpt"):
                pytest.fail(f"{name}.py imports {node.module} absolutely: remote code must write `from .x import Y`")
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module in REMOTE_CODE, f"{name}.py imports {node.module}"


def test_remote_code_files_hold_no_training_code():
    source = "".join((PACKAGE / f"{name}.py").read_text(encoding="utf-8") for name in REMOTE_CODE)
    for training_name in ("build_tokenizer", "DataError", "train_bpe_tokenizer", "BpeTrainer", "encode_conversations"):
        assert training_name not in source, f"{training_name} belongs in tinygpt.data, not in uploaded remote code"


def names_used(path: Path) -> set[str]:
    """Every name a module imports, reads or takes as an attribute (comments and strings left out)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.add(node.name)
    return names


def test_only_the_one_loader_calls_the_checked_load():
    """Every entry point (commands, app, export, train.py's --init_from and resume) loads a model through
    tinygpt.hub.loader.load, which pulls a Hub repo id with pull_model's checks: none calls the checks' own
    load_model_and_tokenizer, which would take a repo id straight to from_pretrained."""
    callers = [
        module
        for module, path in modules().items()
        if module not in ("tinygpt.hub.checks", "tinygpt.hub.loader") and "load_model_and_tokenizer" in names_used(path)
    ]
    assert not callers, f"load through tinygpt.hub.loader.load, not load_model_and_tokenizer: {callers}"


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The rules above can fail: a made-up package with a cycle and an upward import is caught."""
    fake = tmp_path / "tinygpt"
    (fake / "data").mkdir(parents=True)
    (fake / "hub").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text("")
    (fake / "hub" / "__init__.py").write_text("")
    (fake / "data" / "a.py").write_text("def f():\n    from tinygpt.hub.b import g\n")
    (fake / "hub" / "b.py").write_text("from tinygpt.data.a import f\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    with pytest.raises(AssertionError, match="tinygpt.data.a .data. imports tinygpt.hub.b .hub."):
        test_every_import_points_to_the_same_layer_or_one_below()
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycle()
