"""The layout docs/architecture.md describes, checked on the source: every module sits in a layer,
imports point down only, no import circle crosses a package, every tool has the same model
options, and names that moved still work from their old paths (with a DeprecationWarning)."""
import argparse
import ast
import importlib
import warnings
from collections import defaultdict
from pathlib import Path

import pytest

from xnect_app.options import MODEL_FIELD_OPTIONS, SOURCE_OPTIONS
from xnect_app.runtime.config import ModelConfig

PACKAGE = Path(__file__).resolve().parents[1] / "xnect_app"

# Packages (or top-level modules) by layer, bottom first; docs/architecture.md has the same table.
LAYERS = [
    ("definitions", ["xnect_app", "xnect_app._moved", "xnect_app.skeleton", "xnect_app.types", "xnect_app.assets",
                     # old paths of moved modules (they import nothing else)
                     "xnect_app.export", "xnect_app.motion_mask", "xnect_app.torch_thread"]),
    ("networks, geometry", ["xnect_app.nn", "xnect_app.pose"]),
    ("weights", ["xnect_app.weights"]),
    ("runtime, teachers", ["xnect_app.runtime", "xnect_app.teachers"]),
    ("estimator", ["xnect_app.estimator"]),
    ("I/O, training", ["xnect_app.io", "xnect_app.train"]),
    ("pipeline", ["xnect_app.pipeline"]),
    ("command-line options", ["xnect_app.options"]),
    ("front ends", ["xnect_app.cli", "xnect_app.server", "xnect_app.bench"]),
]
# Imports between packages of one layer that are allowed (everything else in a layer is apart).
SIDEWAYS = {("xnect_app.cli", "xnect_app.server"), ("xnect_app.cli", "xnect_app.bench")}
# Import circles inside one package that are left (data loading and its teachers).
CIRCLES_ALLOWED_IN = {"xnect_app.train"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, str | None]]:
    """(imported xnect_app module, imported name or None) for every import in the file, also those
    inside functions and under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] == "xnect_app"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "xnect_app":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.append((sub, None) if sub in MODULES else (target, a.name))
    return found


def _owner(module: str) -> str:
    """The LAYERS entry a module belongs to (the longest prefix)."""
    best = None
    for _, packages in LAYERS:
        for p in packages:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > len(best)):
                best = p
    assert best is not None, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return best


RANK = {p: i for i, (_, packages) in enumerate(LAYERS) for p in packages}
EDGES = {m: {t for t, _ in _imports(m, p) if t in MODULES and t != m} for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    for m in MODULES:
        _owner(m)


def test_imports_point_down_the_layers():
    wrong = []
    for m, targets in EDGES.items():
        a = _owner(m)
        for t in targets:
            b = _owner(t)
            if a == b or RANK[a] == RANK[b] == 0:  # the definitions may use each other
                continue
            if RANK[b] > RANK[a] or (RANK[b] == RANK[a] and (a, b) not in SIDEWAYS):
                wrong.append(f"{m} -> {t}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


INFERENCE = ("xnect_app.nn", "xnect_app.pose", "xnect_app.weights", "xnect_app.runtime", "xnect_app.estimator",
             "xnect_app.io", "xnect_app.pipeline")


def test_nothing_at_inference_imports_training():
    for m, targets in EDGES.items():
        if _owner(m) in INFERENCE:
            assert not [t for t in targets if _owner(t) in ("xnect_app.train", "xnect_app.teachers")], m


def test_training_uses_the_estimator_only_through_its_facade():
    for m, path in MODULES.items():
        if _owner(m) != "xnect_app.train":
            continue
        for target, name in _imports(m, path):
            if target == "xnect_app.estimator":
                assert name == "PoseEstimator", f"{m} imports estimator.{name}"


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_crosses_a_package():
    for comp in _cycles(EDGES):
        owners = {_owner(m) for m in comp}
        assert len(owners) == 1, f"an import circle across packages: {sorted(comp)}"
        assert owners <= CIRCLES_ALLOWED_IN, f"an import circle in {owners.pop()}: {sorted(comp)}"
    packages = defaultdict(set)
    for m, targets in EDGES.items():
        packages[_owner(m)] |= {_owner(t) for t in targets} - {_owner(m)}
    assert not _cycles(packages), _cycles(packages)


# --------------------------------------------------------------------------- one model-options group

def _parsers() -> dict[str, argparse.ArgumentParser]:
    from xnect_app.bench import backbone, dynconv, fastpath, pipeline, tta
    from xnect_app.cli import demo, eval as eval_cli, export, process, server

    def sub(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return action.choices[name]

    return {"xnect-demo": demo.build_parser(), "xnect-process": process.build_parser(),
            "xnect-server": server.build_parser(), "xnect-eval coco": sub(eval_cli.build_parser(), "coco"),
            "xnect-eval lspet": sub(eval_cli.build_parser(), "lspet"),
            "xnect-bench pipeline": pipeline.build_parser(), "xnect-bench dynconv": dynconv.build_parser(),
            "xnect-bench tta": tta.build_parser(), "xnect-bench fastpath": fastpath.build_parser(),
            "xnect-export onnx": sub(export.build_parser(), "onnx"), "xnect-bench backbone": backbone.build_parser()}


def _model_actions(parser: argparse.ArgumentParser) -> dict[str, tuple]:
    model_flags = {flag for flags in MODEL_FIELD_OPTIONS.values() for flag in flags}
    return {a.option_strings[0]: (a.dest, a.default, a.help, a.choices, a.metavar)
            for a in parser._actions if a.option_strings and a.option_strings[0] in model_flags}


def test_every_tool_that_runs_the_model_has_the_same_model_options():
    every_field = set(ModelConfig.field_names()) - {"torch_thread"} | {"min_score", "fov"}
    assert set(MODEL_FIELD_OPTIONS) == every_field
    full = {flag for flags in MODEL_FIELD_OPTIONS.values() for flag in flags}
    source = {flag for name in SOURCE_OPTIONS for flag in MODEL_FIELD_OPTIONS[name]}
    parsers = _parsers()
    reference = _model_actions(parsers["xnect-demo"])
    assert set(reference) == full
    for tool, parser in parsers.items():
        actions = _model_actions(parser)
        if tool in ("xnect-export onnx", "xnect-bench fastpath"):  # they run the networks their own way
            actions.pop("--input-size")  # and say what the size means there
            assert actions == {flag: reference[flag] for flag in source}, tool
        elif tool == "xnect-bench backbone":  # bare backbones, no weights
            assert not actions, tool
        else:
            assert actions == reference, f"{tool}: the model options differ from the other tools'"


# --------------------------------------------------------------------------- old paths

MOVED = [
    ("xnect_app.estimator", "letterbox", "xnect_app.runtime.preprocess"),
    ("xnect_app.estimator", "Letterbox", "xnect_app.runtime.preprocess"),
    ("xnect_app.estimator", "cpu_has_bf16", "xnect_app.runtime.precision"),
    ("xnect_app.estimator", "resolve_precision", "xnect_app.runtime.precision"),
    ("xnect_app.estimator", "load_weights", "xnect_app.weights"),
    ("xnect_app.estimator", "default_weights_path", "xnect_app.weights"),
    ("xnect_app.export", "OnnxNetworks", "xnect_app.runtime.onnx"),
    ("xnect_app.export", "export_onnx", "xnect_app.runtime.onnx"),
    ("xnect_app.motion_mask", "MotionGate", "xnect_app.runtime.motion"),
    ("xnect_app.torch_thread", "on_torch_thread", "xnect_app.runtime.torch_thread"),
    ("xnect_app.pose.tta", "fuse_scales", "xnect_app.runtime.tta"),
    ("xnect_app.train.export", "export_weights", "xnect_app.train.release"),
    ("xnect_app.train.export", "read_checkpoint", "xnect_app.weights"),
    ("xnect_app.train.export", "WEIGHTS_FORMAT", "xnect_app.weights"),
    ("xnect_app.cli.model_args", "UserError", "xnect_app.options"),
    ("xnect_app.cli.model_args", "add_model_args", "xnect_app.options"),
    ("xnect_app.nn.stage1", "conv_bn_relu", "xnect_app.nn.heads"),
    ("xnect_app.server.session", "poses_message", "xnect_app.server.schemas"),
]


@pytest.mark.parametrize("old,name,new", MOVED)
def test_a_moved_name_still_works_from_its_old_path_with_a_warning(old, name, new):
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        got = getattr(importlib.import_module(old), name)
    assert got is getattr(importlib.import_module(new), name)


def test_unknown_names_of_old_paths_are_attribute_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            importlib.import_module("xnect_app.export").no_such_name
